"""An upstream that answers with raw bytes a test scripts: header values and statuses that no
well-behaved HTTP library would write (control characters, odd codes), to see what the
sidecar makes of them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from .procs import free_port

# (method, raw path) -> the whole raw answer; None: the default answer
Script = Callable[[str, str], bytes | None]


def answer(status: str, headers: list[tuple[str, bytes | str]], body: bytes = b"") -> bytes:
    """A raw HTTP/1.1 answer, headers written byte for byte as given."""
    lines = [f"HTTP/1.1 {status}".encode()]
    for name, value in headers:
        lines.append(name.encode() + b": " + (value.encode() if isinstance(value, str) else value))
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


DEFAULT = answer("200 OK", [("Content-Type", "application/xml")], b"<ListAllMyBucketsResult/>")


class ScriptedUpstream:
    def __init__(self, script: Script | None = None) -> None:
        self.script = script or (lambda method, path: None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted upstream did not start")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                fields = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip()
                          for ln in lines[1:] if ":" in ln}
                length = int(fields.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                reply = self.script(method, path) or DEFAULT
                if method == "HEAD" and b"\r\n\r\n" in reply:
                    reply = reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
