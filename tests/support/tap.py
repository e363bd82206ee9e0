"""A recording reverse proxy placed between the sidecar and its upstream.

It forwards every request unchanged and keeps a log of what the sidecar sent, so tests see
independently of the sidecar's own counters whether a read reached the upstream. Faults can
be injected per request (delay, error status, body cut short, refused connection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable

import aiohttp
from aiohttp import web
from yarl import URL

from .procs import free_port

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclasses.dataclass
class Seen:
    method: str
    path: str  # raw path and query
    headers: dict[str, str]
    status: int = 0

    @property
    def is_object_get(self) -> bool:
        return self.method == "GET" and "range" in self.headers


@dataclasses.dataclass
class Fault:
    """What to do to one request: delay it, answer with ``status`` instead of forwarding,
    cut the body after ``cut_after`` bytes, or drop the connection."""

    delay: float = 0.0
    status: int | None = None
    body: bytes = b""
    cut_after: int | None = None
    drop: bool = False
    throttle_bps: float | None = None
    answer_delay: float = 0.0  # hold the upstream's whole answer this long before relaying it


class Tap:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[Seen] = []
        self.fault: Callable[[Seen], Fault | None] | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("tap did not start")

    # --- inspection ----------------------------------------------------------------------

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    def requests(self, method: str | None = None, path_contains: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method)
                    and (path_contains is None or path_contains in s.path)]

    def object_gets(self, key_path: str | None = None) -> list[Seen]:
        return [s for s in self.requests("GET", key_path) if "range" in s.headers or "?" not in s.path]

    # --- server --------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._start())
        self._ready.set()
        loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        server = web.Server(self._handle, max_line_size=16384, max_field_size=16384, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)  # faults may hold requests for long
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        seen = Seen(request.method, request.raw_path, {k.lower(): v for k, v in request.headers.items()})
        with self._lock:
            self.seen.append(seen)
        fault = self.fault(seen) if self.fault is not None else None
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                request.transport.abort()
                return web.Response(status=500)
            if fault.status is not None:
                seen.status = fault.status
                await request.read()
                return web.Response(status=fault.status, body=fault.body,
                                    content_type="application/xml" if fault.body else None)
        # Expect: 100-continue is this hop's to answer (web.Server does not): answer, don't forward
        if request.headers.get("expect", "").lower() == "100-continue" and request.transport is not None:
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP and k.lower() != "expect"}
        data = request.content.iter_chunked(65536) if request.body_exists else None
        async with self._session.request(request.method, URL(self.target + request.raw_path, encoded=True),
                                         headers=headers,
                                         data=data, allow_redirects=False) as up:
            seen.status = up.status
            if fault is not None and fault.answer_delay:
                held = await up.read()  # the upstream answered now; the sidecar hears it later
                await asyncio.sleep(fault.answer_delay)
                return web.Response(status=up.status, body=held,
                                    headers={k: v for k, v in up.headers.items()
                                             if k.lower() not in HOP and k.lower() != "content-length"})
            out = web.StreamResponse(status=up.status,
                                     headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})
            if up.content_length is not None:
                out.content_length = up.content_length
            await out.prepare(request)
            sent = 0
            async for piece in up.content.iter_chunked(65536):
                if fault is not None and fault.cut_after is not None and sent + len(piece) > fault.cut_after:
                    await out.write(piece[: fault.cut_after - sent])
                    request.transport.abort()
                    return out
                if fault is not None and fault.throttle_bps:
                    await asyncio.sleep(len(piece) / fault.throttle_bps)
                await out.write(piece)
                sent += len(piece)
            await out.write_eof()
            return out

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
