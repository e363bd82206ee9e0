"""An upstream wrapper that counts and times every call for the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from ..errors import NotModified, S3Error, UpstreamUnavailable
from ..objects import ObjectMeta
from ..telemetry import Metrics
from .base import (ByteStream, ForwardRequest, ForwardResponse, OpenedObject, PartInfo, Upstream,
                   open_object_by_head)


def _outcome(e: BaseException | None) -> str:
    if e is None:
        return "ok"
    if isinstance(e, NotModified):
        return "not-modified"
    if isinstance(e, UpstreamUnavailable):
        return "unavailable"
    if isinstance(e, S3Error):
        return e.code
    return "error"


# Object reads whose time to response headers tells how loaded the upstream is (the token bucket's signal).
_OBJECT_READS = frozenset({"HeadObject", "HeadObjectPart", "GetObject"})


class MeteredUpstream:
    """``observe(latency=None, *, error=False, throttled=False, kind=...)``, if given, hears of
    every object read: its time to response headers (``kind``: which series it belongs to), or
    that it failed or was throttled. The token bucket adapts its rate to these."""

    def __init__(self, inner: Upstream, metrics: Metrics, observe: Callable[..., None] | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.m = metrics
        self.observe = observe

    def _done(self, op: str, t0: float, e: BaseException | None, kind: str | None = None) -> None:
        outcome = _outcome(e)
        elapsed = time.monotonic() - t0
        self.m.upstream_requests.labels(op, outcome).inc()
        self.m.upstream_duration.labels(op).observe(elapsed)
        if outcome in ("unavailable", "SlowDown", "error"):
            self.m.upstream_errors.labels(outcome).inc()
        if self.observe is not None and op in _OBJECT_READS:
            if outcome in ("ok", "not-modified") or (isinstance(e, S3Error) and e.status < 500):
                self.observe(elapsed, kind=kind or op)  # an answer, even NoSuchKey: its latency counts
            elif outcome == "SlowDown":
                self.observe(throttled=True)
            elif not isinstance(e, (asyncio.CancelledError, GeneratorExit)):
                # (A cancelled call says nothing: the client left, or the deadline above cut it.)
                self.observe(error=True)

    async def start(self) -> None:
        if hasattr(self.inner, "start"):
            await self.inner.start()  # type: ignore[attr-defined]

    async def head(self, bucket: str, key: str, *, if_none_match: str | None = None) -> ObjectMeta:
        t0, err = time.monotonic(), None
        try:
            return await self.inner.head(bucket, key, if_none_match=if_none_match)
        except BaseException as e:
            err = e
            raise
        finally:
            self._done("HeadObject", t0, err)

    async def head_part(self, bucket: str, key: str, part_number: int, etag: str) -> PartInfo:
        t0, err = time.monotonic(), None
        try:
            return await self.inner.head_part(bucket, key, part_number, etag)
        except BaseException as e:
            err = e
            raise
        finally:
            self._done("HeadObjectPart", t0, err)

    @contextlib.asynccontextmanager
    async def get_range(self, bucket: str, key: str, start: int, end: int, *,
                        if_match: str) -> AsyncIterator[ByteStream]:
        t0, err = time.monotonic(), None
        try:
            async with self.inner.get_range(bucket, key, start, end, if_match=if_match) as body:
                self._done("GetObject", t0, None)
                t0 = -1.0
                yield body
        except BaseException as e:
            err = e
            raise
        finally:
            if t0 >= 0:
                self._done("GetObject", t0, err)
            elif err is not None and not isinstance(err, GeneratorExit):
                self.m.upstream_errors.labels("body").inc()
                if self.observe is not None and isinstance(err, (UpstreamUnavailable, OSError)):
                    self.observe(error=True)  # the body broke off

    async def open_object(self, bucket: str, key: str, *, start: int | None, end: int | None,
                          checksum_mode: bool, if_match: str | None = None) -> OpenedObject:
        t0, err = time.monotonic(), None
        try:
            if hasattr(self.inner, "open_object"):
                return await self.inner.open_object(bucket, key, start=start, end=end, checksum_mode=checksum_mode,
                                                    if_match=if_match)
            return await open_object_by_head(self.inner, bucket, key, start=start, end=end,
                                             checksum_mode=checksum_mode, if_match=if_match)
        except BaseException as e:
            err = e
            raise
        finally:
            # Its own latency series: a GET with its object's metadata may cost more than a ranged GET.
            self._done("GetObject", t0, err, kind="OpenObject")

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        t0, err = time.monotonic(), None
        try:
            return await self.inner.forward(request)
        except BaseException as e:
            err = e
            raise
        finally:
            self._done("Forward", t0, err)

    async def close(self) -> None:
        await self.inner.close()
