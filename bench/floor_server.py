"""The floor of a Python hit path: a static file server on uvloop that does only what every hit
must (find the request head, map its path to an open file, read a plain Range, write a response
head, sendfile the bytes), and nothing the sidecar does besides (no catalog freshness, no check
of the file's identity, no cache policy, metrics, request log or read hook).

    python bench/floor_server.py ROOT PORT

Serves GET ``/<path>`` from the files under ROOT, whole (200) or ``Range: bytes=first-last``
(206), with keep-alive; anything else gets 400 and the connection closes. It is a measuring
stick, not a server to deploy: bench/get_bench.py ``--floor`` runs it pinned beside nginx and
the sidecar, so a case's row tells how much of the gap to nginx is the interpreter and the
event loop (the floor's) and how much is the sidecar's own work per hit.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from email.utils import formatdate
from pathlib import Path

import uvloop

_RANGE = re.compile(rb"\r\nRange: bytes=(\d+)-(\d+)\r\n", re.IGNORECASE)
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Files:
    """Open files by request path, each with its size (opened once, kept open)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.open: dict[bytes, tuple[int, int]] = {}
        self._sec = -1
        self._date = b""

    def get(self, path: bytes) -> tuple[int, int] | None:
        f = self.open.get(path)
        if f is None:
            p = (self.root / path.decode("ascii", "replace").lstrip("/")).resolve()
            if self.root not in p.parents or not p.is_file():
                return None
            fd = os.open(p, os.O_RDONLY)
            f = self.open[path] = (fd, os.fstat(fd).st_size)
        return f

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._sec:
            self._sec = now
            self._date = formatdate(now, usegmt=True).encode()
        return self._date


class Floor(asyncio.Protocol):
    def __init__(self, files: Files) -> None:
        self.files = files
        self.buf = b""
        self.rest: tuple[int, int, int] | None = None  # (file, offset, bytes left) while the socket is full
        self.wfd = -1  # a duplicate of the socket's descriptor, to wait for it to drain

    def connection_made(self, transport) -> None:
        self.t = transport
        self.sock = transport.get_extra_info("socket").fileno()

    def connection_lost(self, exc) -> None:
        if self.wfd >= 0:
            asyncio.get_running_loop().remove_writer(self.wfd)
            os.close(self.wfd)
            self.wfd = -1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._answer()

    def _answer(self) -> None:
        while self.rest is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end + 4], self.buf[end + 4:]
            line = head[:head.find(b"\r\n")].split(b" ")
            f = self.files.get(line[1]) if len(line) == 3 and line[0] == b"GET" else None
            if f is None:
                self.t.write(_BAD)
                self.t.close()
                return
            fd, size = f
            m = _RANGE.search(head)
            if m is None:
                start, n, status = 0, size, b"200 OK"
                extra = b""
            else:
                start, last = int(m.group(1)), min(int(m.group(2)), size - 1)
                n, status = last - start + 1, b"206 Partial Content"
                extra = b"Content-Range: bytes %d-%d/%d\r\n" % (start, last, size)
            self.t.write(b"HTTP/1.1 %s\r\nServer: floor\r\nDate: %s\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n%s\r\n" % (status, self.files.date(), n, extra))
            self._send(fd, start, n)

    def _send(self, fd: int, offset: int, count: int) -> None:
        try:
            while count and not self.t.get_write_buffer_size():
                sent = os.sendfile(self.sock, fd, offset, count)
                offset += sent
                count -= sent
        except BlockingIOError:
            pass
        except OSError:
            self.t.abort()
            return
        if not count:
            if self.rest is not None:
                self.rest = None
                asyncio.get_running_loop().remove_writer(self.wfd)
                self.t.resume_reading()
                self._answer()
            return
        if self.rest is None:
            self.t.pause_reading()
            if self.wfd < 0:
                self.wfd = os.dup(self.sock)
            asyncio.get_running_loop().add_writer(self.wfd, self._writable)
        self.rest = (fd, offset, count)

    def _writable(self) -> None:
        if self.rest is not None:
            self._send(*self.rest)


async def serve(root: Path, port: int) -> None:
    files = Files(root)
    server = await asyncio.get_running_loop().create_server(lambda: Floor(files), "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(Path(sys.argv[1]), int(sys.argv[2])))
