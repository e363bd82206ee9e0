"""An upstream wrapper that behaves like a distant store: a delay before each answer, and a limit
on object bytes — one rate shared by all requests (a narrow link: a pod's NIC, a congested
path), a rate per request (S3 serves each connection at roughly 50–100 MB/s and scales with
parallel connections), or both. For demos and benchmarks on a local upstream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from ..objects import ObjectMeta
from .base import ByteStream, ForwardRequest, ForwardResponse, OpenedObject, PartInfo, Upstream


RECEIVE_BUFFER = 1024 * 1024  # bytes a connection takes in while its reader is busy elsewhere


class _Pacer:
    """Releases bytes no faster than ``rate`` per second to the streams that share it. With a
    ``buffer``, time the reader spent elsewhere is made up for, up to that many bytes: a
    connection's bytes keep arriving into its socket's receive buffer meanwhile."""

    def __init__(self, rate: float, buffer: int = 0) -> None:
        self.rate = rate
        self.lag = buffer / rate  # seconds of bytes that may have arrived unread
        self.next_free = time.monotonic()

    def reserve(self, n: int, now: float) -> float:
        """Book ``n`` bytes; the time they have passed."""
        start = max(now - self.lag, self.next_free)
        self.next_free = start + n / self.rate
        return self.next_free


class _PacedBody:
    """One response body, held to the shared pacer and to its own connection's rate: each piece
    is released when both have let it through."""

    def __init__(self, body: ByteStream, shared: _Pacer | None, connection: float = 0.0) -> None:
        self._body = body
        own = _Pacer(connection, RECEIVE_BUFFER) if connection > 0 else None
        self._pacers = [p for p in (shared, own) if p is not None]

    async def read(self, n: int) -> bytes:
        data = await self._body.read(min(n, 256 * 1024))
        if data and self._pacers:
            now = time.monotonic()
            delay = max(p.reserve(len(data), now) for p in self._pacers) - now
            if delay > 0.0005:
                await asyncio.sleep(delay)
        return data


class ThrottledUpstream:
    def __init__(self, inner: Upstream, *, latency: float = 0.0, bandwidth: float = 0.0,
                 connection_bandwidth: float = 0.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.latency = latency
        self.pacer = _Pacer(bandwidth) if bandwidth > 0 else None  # shared by every request
        self.connection_bandwidth = connection_bandwidth  # each request's own rate (0: none)

    async def _wait(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

    async def start(self) -> None:
        if hasattr(self.inner, "start"):
            await self.inner.start()  # type: ignore[attr-defined]

    async def head(self, bucket: str, key: str, *, if_none_match: str | None = None) -> ObjectMeta:
        await self._wait()
        return await self.inner.head(bucket, key, if_none_match=if_none_match)

    async def head_part(self, bucket: str, key: str, part_number: int, etag: str) -> PartInfo:
        await self._wait()
        return await self.inner.head_part(bucket, key, part_number, etag)

    @contextlib.asynccontextmanager
    async def get_range(self, bucket: str, key: str, start: int, end: int, *,
                        if_match: str) -> AsyncIterator[ByteStream]:
        await self._wait()
        async with self.inner.get_range(bucket, key, start, end, if_match=if_match) as body:
            yield _PacedBody(body, self.pacer, self.connection_bandwidth)

    async def open_object(self, bucket: str, key: str, *, start: int | None, end: int | None,
                          checksum_mode: bool, if_match: str | None = None) -> OpenedObject:
        from .base import open_object_by_head  # noqa: PLC0415

        if not hasattr(self.inner, "open_object"):
            return await open_object_by_head(self, bucket, key, start=start, end=end, checksum_mode=checksum_mode,
                                             if_match=if_match)
        # the inner upstream's own GET: its answer (checksums included) is not a HEAD's
        await self._wait()
        opened = await self.inner.open_object(bucket, key, start=start, end=end, checksum_mode=checksum_mode,
                                              if_match=if_match)
        opened.body = _PacedBody(opened.body, self.pacer, self.connection_bandwidth)
        return opened

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        await self._wait()
        return await self.inner.forward(request)

    async def close(self) -> None:
        await self.inner.close()
