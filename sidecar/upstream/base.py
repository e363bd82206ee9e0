"""The upstream protocol: what the cache needs from an S3 store, and raw pass-through for the rest."""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import functools
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

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


@dataclasses.dataclass(frozen=True, slots=True)
class PartInfo:
    """Byte span of one part of a multipart object, as an upstream HEAD ?partNumber=N reports it."""

    number: int
    start: int
    end: int  # inclusive; end < start for an empty part
    status: int  # 206 when the upstream answered as S3 does; anything else: not servable from cache
    headers: tuple[tuple[str, str], ...]  # x-amz-mp-parts-count and the part's checksum headers
    etag: str = ""  # the whole object's ETag, as S3 reports it on part requests


@dataclasses.dataclass
class OpenedObject:
    """A GET whose response headers have arrived: the object's metadata and bytes
    ``first``..``last`` still to be read from ``body``. Whoever holds it must ``close`` it."""

    meta: ObjectMeta
    first: int
    last: int
    body: "ByteStream"
    release: object = None  # an async callable that frees the connection

    async def close(self) -> None:
        if self.release is not None:
            release, self.release = self.release, None
            await release()  # type: ignore[operator]


class ByteStream(Protocol):
    """Bytes of a ranged GET, in order. ``read`` returns b"" at the end; a body cut short raises."""

    async def read(self, n: int) -> bytes: ...


@dataclasses.dataclass
class ForwardRequest:
    """A client request passed through to the upstream, keys decoded, body streamed."""

    method: str
    bucket: str | None
    key: str | None
    query: Sequence[tuple[str, str]]
    headers: Sequence[tuple[str, str]]  # end-to-end headers only; no auth, host or hop-by-hop
    body: AsyncIterator[bytes] | None
    content_length: int | None


@dataclasses.dataclass
class ForwardResponse:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    release: object = None  # an async callable that frees the connection

    async def close(self) -> None:
        if self.release is not None:
            await self.release()  # type: ignore[operator]


class Upstream(Protocol):
    """An S3 store: the cache path (head, get_range) and the pass-through path (forward)."""

    name: str

    async def head(self, bucket: str, key: str, *, if_none_match: str | None = None) -> ObjectMeta:
        """Metadata of the current version. Raises NotModified when If-None-Match matches,
        S3Error (NoSuchKey, AccessDenied, ...) as the upstream answers, UpstreamUnavailable."""
        ...

    async def head_part(self, bucket: str, key: str, part_number: int, etag: str) -> PartInfo: ...

    def get_range(self, bucket: str, key: str, start: int, end: int, *,
                  if_match: str) -> AbstractAsyncContextManager[ByteStream]:
        """Bytes start..end (inclusive) of the version with ETag ``if_match``.
        Raises S3Error PreconditionFailed if the object changed."""
        ...

    async def open_object(self, bucket: str, key: str, *, start: int | None, end: int | None,
                          checksum_mode: bool) -> OpenedObject:
        """GET the current version (bytes start..end, or all when start is None) and learn its
        metadata from the answer: a cold read costs one request, not a HEAD and a GET."""
        ...

    async def forward(self, request: ForwardRequest) -> ForwardResponse: ...

    async def close(self) -> None: ...


async def open_object_by_head(upstream: Upstream, bucket: str, key: str, *, start: int | None, end: int | None,
                              checksum_mode: bool) -> OpenedObject:
    """``open_object`` for upstreams where metadata and bytes come separately."""
    meta = await upstream.head(bucket, key)
    first = start or 0
    last = meta.size - 1 if end is None else min(end, meta.size - 1)
    cm = upstream.get_range(bucket, key, first, last, if_match=meta.etag)
    body = await cm.__aenter__()

    async def release() -> None:
        await cm.__aexit__(None, None, None)

    return OpenedObject(meta, first, last, body, release)


@functools.lru_cache(maxsize=4096)
def _parsed_date(value: str) -> float | None:
    """Last-Modified values repeat on every read of an object: parse each once."""
    return http_date_to_ts(value)


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


def ts_to_http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)
