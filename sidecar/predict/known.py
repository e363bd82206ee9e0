"""The known-key catalogue: keys a pod has listed or read, per prefix and in key order, bounded in memory.

The prefetch loop needs keys nobody has read yet: the next shards of a dataset the client
listed. Every ListObjects (V1 or V2) response that passes through the face is parsed (in the
predictor's worker thread, not on the request path) and its keys, sizes and ETags recorded
under their "directory" (``prefix_of``), in key order, so that "the n keys after this one" is
a bisect and a slice. Reads and upstream HEADs (a client's HEAD, the lookup before a read; via
``Catalog.on_learned``) add the keys they name, and at start the access log of earlier runs
(the cache directory survives restarts) adds the keys read before.

Memory: per prefix a sorted list of the key's last path segment (a str), an ``array('q')`` of
sizes and 16 bytes of ETag (an MD5 ETag's digest; multipart and other ETags are kept as
zeros: the catalogue only guides prefetch, a fetch always asks the upstream). At ``max_keys``
the prefixes used least recently are dropped whole. ``bench/prefetch_bench.py --catalogue``
measures bytes per key.
"""

from __future__ import annotations

import array
import bisect
import collections
import sys
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable

LISTING_MAX_BYTES = 16 * 1024 * 1024  # a ListObjects page of 1000 keys is ~0.3 MB; more is not a listing
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def prefix_of(key: str) -> str:
    """The "directory" of a key: shards of one dataset share it."""
    return key.rpartition("/")[0]


def _etag_digest(etag: str | None) -> bytes:
    e = (etag or "").strip('"')
    if len(e) == 32:
        try:
            return bytes.fromhex(e)
        except ValueError:
            pass
    return bytes(16)


class _Prefix:
    __slots__ = ("names", "sizes", "etags")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sizes = array.array("q")
        self.etags = bytearray()

    def put(self, name: str, size: int, etag: bytes) -> bool:
        """Record one key; True if it is new."""
        names = self.names
        if not names or name > names[-1]:  # listings arrive in key order: appends
            i, new = len(names), True
        else:
            i = bisect.bisect_left(names, name)
            new = i == len(names) or names[i] != name
        if new:
            names.insert(i, name)
            self.sizes.insert(i, size)
            self.etags[16 * i:16 * i] = etag
        else:
            if size >= 0:
                self.sizes[i] = size
            if any(etag):
                self.etags[16 * i:16 * i + 16] = etag
        return new


class KnownKeys:
    """Keys per (bucket, prefix), in key order; at most ``max_keys`` in all. Used from one thread
    (the loop's worker)."""

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self.max_keys = max_keys
        self._prefixes: collections.OrderedDict[tuple[str, str], _Prefix] = collections.OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, bucket: str, key: str, size: int = -1, etag: str | None = None) -> None:
        pk = (bucket, prefix_of(key))
        p = self._prefixes.get(pk)
        if p is None:
            p = self._prefixes[pk] = _Prefix()
        else:
            self._prefixes.move_to_end(pk)
        if p.put(key[len(pk[1]) + 1 if pk[1] else 0:], size, _etag_digest(etag)):
            self._count += 1
            if self._count > self.max_keys:
                self._shrink(pk)

    def _shrink(self, keep: tuple[str, str]) -> None:
        while self._count > self.max_keys and self._prefixes:
            pk, p = next(iter(self._prefixes.items()))
            if pk == keep:
                if len(self._prefixes) == 1:
                    # One prefix over the bound on its own: keep its first max_keys names.
                    n = len(p.names) - self.max_keys
                    del p.names[self.max_keys:], p.sizes[self.max_keys:], p.etags[16 * self.max_keys:]
                    self._count -= n
                    return
                self._prefixes.move_to_end(pk)
                continue
            del self._prefixes[pk]
            self._count -= len(p.names)

    def touch(self, bucket: str, key: str) -> None:
        """A key of this prefix was read: the prefix is in use (dropped last)."""
        pk = (bucket, prefix_of(key))
        if pk in self._prefixes:
            self._prefixes.move_to_end(pk)

    def size(self, bucket: str, key: str) -> int | None:
        pk = (bucket, prefix_of(key))
        p = self._prefixes.get(pk)
        if p is None:
            return None
        name = key[len(pk[1]) + 1 if pk[1] else 0:]
        i = bisect.bisect_left(p.names, name)
        if i < len(p.names) and p.names[i] == name and p.sizes[i] >= 0:
            return int(p.sizes[i])
        return None

    def count(self, bucket: str, key: str) -> int:
        """How many keys are known under ``key``'s prefix."""
        p = self._prefixes.get((bucket, prefix_of(key)))
        return len(p.names) if p is not None else 0

    def after(self, bucket: str, key: str, n: int) -> list[tuple[str, int]]:
        """The next ``n`` known keys after ``key`` under its prefix, in key order, with sizes (-1: unknown)."""
        pk = (bucket, prefix_of(key))
        p = self._prefixes.get(pk)
        if p is None or n <= 0:
            return []
        head = pk[1] + "/" if pk[1] else ""
        name = key[len(head):]
        i = bisect.bisect_right(p.names, name)
        return [(head + nm, int(sz)) for nm, sz in zip(p.names[i:i + n], p.sizes[i:i + n])]

    def nbytes(self) -> int:
        """Approximate memory held (the names' str objects, the arrays, the tables)."""
        total = sys.getsizeof(self._prefixes)
        for (b, pre), p in self._prefixes.items():
            total += 200 + len(pre) + sys.getsizeof(p.names) + sys.getsizeof(p.sizes) + sys.getsizeof(p.etags)
            total += sum(49 + len(nm) for nm in p.names)  # compact ASCII str; close enough for others
        return total

    def add_listing(self, bucket: str, body: bytes) -> int:
        """Record the keys of a ListObjects (V1/V2) response body; returns how many it named."""
        entries = parse_listing(body)
        for key, size, etag in entries:
            self.add(bucket, key, size, etag)
        return len(entries)


def parse_listing(body: bytes) -> list[tuple[str, int, str | None]]:
    """(key, size, etag) of each ``Contents`` of a ListBucketResult; [] for anything else."""
    try:
        root = ET.fromstring(body)  # the upstream's own response, bounded in size; no DTDs in S3 XML
    except ET.ParseError:
        return []
    if root.tag.rpartition("}")[2] != "ListBucketResult":
        return []
    ns = _NS if root.tag.startswith(_NS) else ""
    url = (root.findtext(f"{ns}EncodingType") or "").lower() == "url"
    out = []
    for c in root.iter(f"{ns}Contents"):
        key = c.findtext(f"{ns}Key")
        if not key:
            continue
        if url:
            key = urllib.parse.unquote(key)
        try:
            size = int(c.findtext(f"{ns}Size") or -1)
        except ValueError:
            size = -1
        out.append((key, size, c.findtext(f"{ns}ETag")))
    return out


class ListingTap:
    """Collects one listing's body as it streams to the client, then hands it to ``deliver``."""

    __slots__ = ("bucket", "deliver", "parts", "n")

    def __init__(self, bucket: str, deliver: Callable[[str, bytes], None]) -> None:
        self.bucket, self.deliver, self.parts, self.n = bucket, deliver, [], 0

    def __call__(self, piece: bytes | None) -> None:
        if piece is None:
            if self.parts is not None and self.parts:
                self.deliver(self.bucket, b"".join(self.parts))
            self.parts = None
            return
        if self.parts is None:
            return
        self.n += len(piece)
        if self.n > LISTING_MAX_BYTES:
            self.parts = None  # not a listing page we want to hold
        else:
            self.parts.append(piece)


def listing_tap(deliver: Callable[[str, bytes], None], method: str, bucket: str | None, key: str | None,
                query: Iterable[tuple[str, str]] | str, status: int) -> ListingTap | None:
    """A tap for a successful ListObjects(V2) response, else None. ``query``: the request's
    query pairs (or raw string): a bucket GET with no sub-resource but list parameters."""
    if method != "GET" or not bucket or key is not None or status != 200:
        return None
    if isinstance(query, str):
        query = urllib.parse.parse_qsl(query, keep_blank_values=True)
    names = {k for k, _ in query}
    subresources = {"versions", "uploads", "location", "acl", "policy", "tagging", "cors", "lifecycle",
                    "website", "logging", "notification", "replication", "encryption", "versioning",
                    "accelerate", "requestPayment", "object-lock", "ownershipControls", "publicAccessBlock",
                    "analytics", "inventory", "metrics", "intelligent-tiering"}
    if names & subresources:
        return None
    return ListingTap(bucket, deliver)
