"""What the sidecar knows of one version of an object (``ObjectMeta``), and HTTP dates.

Shared by the upstream backends that learn it, the cache that stores it and the face that
replays it; imports none of them.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import functools
from collections.abc import Iterable

# Response headers that describe the transfer or the upstream server, not the object: never cached
# or replayed. Everything else an upstream HEAD returns is part of the object's metadata.
TRANSIENT_HEADERS = frozenset({
    "date", "server", "connection", "keep-alive", "content-length", "content-range", "accept-ranges",
    "transfer-encoding", "x-amz-request-id", "x-amz-id-2", "x-amzn-requestid", "x-amz-content-sha256",
    "x-amz-mp-parts-count", "vary", "proxy-connection", "age", "via", "x-amz-cf-id", "x-amz-cf-pop",
    "strict-transport-security",
})


def _is_transient(name: str) -> bool:
    return name in TRANSIENT_HEADERS or name.startswith("access-control-")


def is_checksum_header(name: str) -> bool:
    return name.startswith("x-amz-checksum-")


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What an upstream HEAD says of one version of an object."""

    bucket: str
    key: str
    etag: str
    size: int
    last_modified: str
    # object headers replayed on every response (content-type, x-amz-meta-*, ...), lower-case names
    headers: tuple[tuple[str, str], ...]
    # The whole-object checksum headers (x-amz-checksum-*) the upstream gave, in checksum mode,
    # to each kind of request: a whole-object GET and a HEAD. None: not learned yet. Upstreams
    # answer the two differently (moto: a multipart object's composite value without its -N and
    # no x-amz-checksum-type on HEAD), and a client validates what it is given, so each kind is
    # replayed only on its own kind of response and never derived from the other.
    get_checksums: tuple[tuple[str, str], ...] | None = None
    head_checksums: tuple[tuple[str, str], ...] | None = None

    @property
    def last_modified_ts(self) -> float | None:
        return _parsed_date(self.last_modified)

    def checksums_for(self, kind: str) -> tuple[tuple[str, str], ...] | None:
        """What the upstream answered ``kind`` ("GET" or "HEAD") of whole-object request; None: unknown."""
        return self.head_checksums if kind == "HEAD" else self.get_checksums

    def same_version(self, other: "ObjectMeta") -> bool:
        """Whether ``other`` describes the same bytes: the ETag and size name a version (headers
        and checksum answers may differ between two answers about it)."""
        return self.etag == other.etag and self.size == other.size

    def learned(self, other: "ObjectMeta") -> "ObjectMeta":
        """This metadata, with the checksum answers ``other`` (the same version) knows and it does not."""
        get = self.get_checksums if self.get_checksums is not None else other.get_checksums
        head = self.head_checksums if self.head_checksums is not None else other.head_checksums
        if get is self.get_checksums and head is self.head_checksums:
            return self
        return dataclasses.replace(self, get_checksums=get, head_checksums=head)

    @classmethod
    def from_headers(cls, bucket: str, key: str, headers: Iterable[tuple[str, str]], *,
                     size: int | None = None, answers: tuple[str, ...] = ("HEAD",)) -> "ObjectMeta":
        """``answers``: the kinds of request ("GET", "HEAD") whose checksum-mode answer these
        headers are; () when they carry no whole-object checksums (a ranged GET, checksum mode off)."""
        keep: list[tuple[str, str]] = []
        checksums: list[tuple[str, str]] = []
        etag = ""
        total = size
        size = -1
        last_modified = ""
        for name, value in headers:
            name = name.lower()
            if name == "content-length":
                size = int(value)
            if name == "etag":
                etag = value
            elif name == "last-modified":
                last_modified = value
            if _is_transient(name):
                continue
            (checksums if is_checksum_header(name) else keep).append((name, value))
        if total is not None:
            size = total
        if size < 0:
            raise ValueError("upstream HEAD without Content-Length")
        sums = tuple(checksums)
        return cls(bucket, key, etag, size, last_modified, tuple(keep),
                   sums if "GET" in answers else None, sums if "HEAD" in answers else None)

    def to_json(self) -> dict:
        return {"bucket": self.bucket, "key": self.key, "etag": self.etag, "size": self.size,
                "last_modified": self.last_modified, "headers": [list(h) for h in self.headers],
                "get_checksums": _pairs_json(self.get_checksums), "head_checksums": _pairs_json(self.head_checksums)}

    @classmethod
    def from_json(cls, d: dict) -> "ObjectMeta":
        # Metadata stored before the kinds were kept apart ("checksums") says nothing of which
        # kind answered: it is left unknown, to be asked again.
        return cls(d["bucket"], d["key"], d["etag"], int(d["size"]), d["last_modified"],
                   tuple((str(a), str(b)) for a, b in d["headers"]),
                   _pairs(d.get("get_checksums")), _pairs(d.get("head_checksums")))


def _pairs_json(pairs: tuple[tuple[str, str], ...] | None) -> list | None:
    return None if pairs is None else [list(h) for h in pairs]


def _pairs(value) -> tuple[tuple[str, str], ...] | None:
    return None if value is None else tuple((str(a), str(b)) for a, b in value)


@functools.lru_cache(maxsize=4096)
def _parsed_date(value: str) -> float | None:
    """Last-Modified values repeat on every read of an object: parse each once."""
    return http_date_to_ts(value)


def http_date(ts: float) -> str:
    """A Unix time as an HTTP date (IMF-fixdate)."""
    return email.utils.formatdate(ts, usegmt=True)


def http_date_to_ts(value: str | None) -> float | None:
    """An HTTP date (RFC 9110: IMF-fixdate, or the obsolete forms) as a Unix time; None if invalid."""
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:  # HTTP dates are GMT
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()
