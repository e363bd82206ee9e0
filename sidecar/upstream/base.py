"""The upstream protocol: what the cache needs from an S3 store, and raw pass-through for the rest."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from ..errors import S3Error
from ..objects import ObjectMeta


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
    """An S3 store: the cache path (head, head_part, get_range, open_object) and the
    pass-through path (forward); ``docs/upstream.md`` describes both and the wrappers.
    ``open_object`` may be left out by a backend whose metadata and bytes come separately: the
    wrappers then use ``open_object_by_head``."""

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
                          checksum_mode: bool, if_match: str | None = None) -> OpenedObject:
        """GET the current version (bytes start..end, or all when start is None) and learn its
        metadata from the answer: a cold read costs one request, not a HEAD and a GET.
        ``if_match``: only the version with this ETag (S3Error PreconditionFailed otherwise); a
        fill of a known version that wants the whole-object answer's headers as well."""
        ...

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        """Every other S3 call, passed through as a REST request (listings, writes, copies, deletes,
        tagging, multipart). Kept whole rather than one method per operation: the S3 backend
        re-signs and sends the request as it came, byte for byte, and S3's long tail (presigned
        URLs, new sub-resources, headers the sidecar does not know) reaches the store unchanged.
        A backend that is not an S3 server routes it itself (``local/rest.py``)."""
        ...

    async def close(self) -> None: ...


async def open_object_by_head(upstream: Upstream, bucket: str, key: str, *, start: int | None, end: int | None,
                              checksum_mode: bool, if_match: str | None = None) -> OpenedObject:
    """``open_object`` for upstreams where metadata and bytes come separately."""
    meta = await upstream.head(bucket, key)
    if if_match is not None and meta.etag != if_match:
        raise S3Error("PreconditionFailed", Condition="If-Match")
    first = start or 0
    last = meta.size - 1 if end is None else min(end, meta.size - 1)
    cm = upstream.get_range(bucket, key, first, last, if_match=meta.etag)
    body = await cm.__aenter__()

    async def release() -> None:
        await cm.__aexit__(None, None, None)

    return OpenedObject(meta, first, last, body, release)
