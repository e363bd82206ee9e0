"""Limits of the S3 endpoint (header size, client connections, request rate) and S3 error XML
for the requests aiohttp's HTTP parser refuses before the S3 face sees them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from ..errors import S3Error
from ..telemetry import get_logger

log = get_logger("sidecar.s3")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# (request, error) -> the S3 error answer; the face's, so these answers look like all others
Reject = Callable[[web.BaseRequest, S3Error], web.StreamResponse]

SLOW_DOWN = "Please reduce your request rate."


class RequestBucket:
    """A token bucket of requests: ``rate`` a second, at most ``burst`` saved up; ``take`` spends one
    if there is one (refusing, never waiting: a throttled request is answered at once)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class RateLimit:
    """One token bucket per client address. Buckets that have refilled are forgotten once there
    are many, so a flood of addresses cannot grow this without bound."""

    PRUNE_AT = 10_000

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(1, burst), clock
        self.buckets: dict[str, RequestBucket] = {}

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= self.PRUNE_AT:
                self.buckets = {k: b for k, b in self.buckets.items() if not b.full(now)}
            bucket = self.buckets[client] = RequestBucket(self.rate, self.burst, now)
        return bucket.take(now)


class _S3RequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, answering unparsable requests as S3 does. With the lean
    hit path on, an idle connection whose next request that path answers goes back to it."""

    _at_boundary = True  # the bytes parsed so far end with a request head's empty line

    def data_received(self, data: bytes) -> None:
        server = self._manager
        if (server is not None and server.fast is not None and self._at_boundary
                and self._waiter is not None and not self._waiter.done() and not self._messages
                and not self._request_in_progress and self._payload_parser is None and not self._upgraded
                and not self._force_close and not self._close and self not in server._over
                and self.transport is not None and server.fast.take_back(self, data)):
            return
        self._at_boundary = data.endswith(b"\r\n\r\n")
        super().data_received(data)

    def detach(self) -> asyncio.Transport:
        """Give up the connection without closing it (the lean path takes it back)."""
        transport = self.transport
        assert transport is not None
        self.transport = None  # so that connection_lost below leaves it open
        self.connection_lost(None)
        return transport

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        server = self._manager
        assert isinstance(server, S3Server)
        if request.writer.output_size > 0:  # an answer is under way: only closing is left
            raise ConnectionError("response already started")
        if isinstance(exc, LineTooLong) or (isinstance(exc, HttpProcessingError) and "Too many headers" in str(exc)):
            err = S3Error("RequestHeaderSectionTooLarge")
        elif isinstance(exc, HttpProcessingError) or status < 500:
            err = S3Error("InvalidRequest", "The request is not valid HTTP/1.1.")
        else:
            # Not reached through the face (it answers its own errors): keep the evidence.
            log.error("http_error", error=repr(exc), remote=request.remote)
            err = S3Error("InternalError")
        if status < 500:
            log.debug("bad_http_request", error=repr(exc)[:200], remote=request.remote)
        resp = server.reject(request, err)
        resp.force_close()
        return resp


class S3Server(web.Server):
    """aiohttp's low-level server with the endpoint's limits.

    Connections beyond ``max_connections`` are not refused at accept (the client would see a
    reset and retry at once): each of their requests is answered 503 SlowDown and the
    connection closed. Requests over a client address's rate get 503 SlowDown too, as S3
    answers a caller it throttles.
    """

    def __init__(self, handler: Handler, *, reject: Reject, max_connections: int, rate: RateLimit,
                 **kwargs) -> None:
        super().__init__(self._limited, **kwargs)
        self._inner = handler
        self.reject = reject
        self.max_connections = max_connections
        self.rate = rate
        self._over: set[RequestHandler] = set()

    # the lean hit path (fastpath.FastPath) when on: connections start there, and it hands
    # them to ``handler()`` for anything it does not answer itself
    fast: "Callable[[], asyncio.Protocol] | None" = None

    def __call__(self) -> asyncio.Protocol:
        if self.fast is not None:
            return self.fast()
        return self.handler()

    def handler(self) -> RequestHandler:
        return _S3RequestHandler(self, loop=self._loop, **self._kwargs)

    def _fast_connections(self) -> int:
        return len(self.fast.connections) if self.fast is not None else 0  # type: ignore[attr-defined]

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) + self._fast_connections() - len(self._over) > self.max_connections:
            self._over.add(handler)

    async def shutdown(self, timeout: float | None = None) -> None:
        if self.fast is not None:
            await self.fast.shutdown(timeout)  # type: ignore[attr-defined]
        await super().shutdown(timeout)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._over.discard(handler)

    async def _limited(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.protocol in self._over:
            resp = self.reject(request, S3Error("SlowDown", "Too many connections; " + SLOW_DOWN))
            resp.force_close()
            return resp
        if not self.rate.allow(request.remote or ""):
            return self.reject(request, S3Error("SlowDown", SLOW_DOWN))
        return await self._inner(request)
