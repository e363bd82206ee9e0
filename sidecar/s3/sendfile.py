"""Zero-copy response bodies: ``os.sendfile`` from chunk files straight to the client socket.

uvloop has no ``loop.sendfile``, so aiohttp's FileResponse falls back to reading files in a
thread pool. Here the socket is driven directly: once the transport's own buffer is empty,
``os.sendfile`` writes file pages to the socket, and when the socket is full we wait for it
to drain on a duplicate of its descriptor (the loop refuses watchers on a descriptor a
transport owns; a dup is a separate number for the same socket).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import select
from collections.abc import Awaitable, Callable


class ClientGone(Exception):
    """The client closed the connection mid-response."""

    client_fault = True  # never the upstream's failure (``errors.client_fault``)


def sendfile_until_full(sock_fd: int, fd: int, offset: int, count: int, wait: float = 0.0) -> int:
    """Send file bytes until done or the socket stays full for ``wait`` seconds; returns bytes
    sent. With ``wait`` (in a worker thread) a fast client is fed without returning to the
    event loop at every full socket buffer; a slow one hands the thread back soon."""
    sent = 0
    poller = None
    while sent < count:
        try:
            n = os.sendfile(sock_fd, fd, offset + sent, count - sent)
        except (BlockingIOError, InterruptedError):
            if not wait:
                break
            if poller is None:
                poller = select.poll()
                poller.register(sock_fd, select.POLLOUT)
            if not poller.poll(wait * 1000):
                break
            continue
        if n == 0:  # an I/O error of the cache's file, as a read of it would be
            raise OSError(errno.EIO, "chunk file shorter than its index entry")
        sent += n
    return sent


class BodySender:
    """Sends body segments (bytes, or spans of open files) on one prepared response.

    File spans sent from a worker thread, and waits for a full socket, use a duplicate of the
    client socket's descriptor, which this sender owns: if the connection closes meanwhile, the
    number cannot be reused for another client while a send is in progress. Spans sent on the
    loop itself use the transport's descriptor (nothing can close it during the call). Large spans are sent from a worker
    thread (sendfile releases the GIL), so copying into the socket runs beside the loop.
    """

    THREAD_MIN = 1024 * 1024  # below this a worker-thread hop costs more than it saves

    def __init__(self, transport: asyncio.Transport | None, write: Callable[[bytes | memoryview], Awaitable[None]],
                 executor: concurrent.futures.Executor | None = None) -> None:
        """``write``: sends bytes through the transport with its flow control (e.g. an aiohttp
        response's ``write``)."""
        self._write = write
        self._transport = transport
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        self._sock_fd = sock.fileno() if sock is not None else -1
        self._fd = -1
        self._loop = asyncio.get_running_loop()
        self._executor = executor
        self.sent = 0
        # TLS transports cannot sendfile: their bytes must go through the transport
        self.zero_copy = self._sock_fd >= 0 and self._transport.get_extra_info("sslcontext") is None

    async def send_bytes(self, data: bytes | memoryview) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ClientGone()
        try:
            await self._write(data)
        except (ConnectionResetError, RuntimeError) as e:
            raise ClientGone() from e
        self.sent += len(data)

    async def send_file(self, fd: int, offset: int, count: int) -> None:
        if not self.zero_copy:
            await self._send_file_copying(fd, offset, count)
            return
        await self._drain_transport()
        while count > 0:
            if self._transport.is_closing():
                raise ClientGone()
            try:
                if count >= self.THREAD_MIN and self._executor is not None:
                    n = await self._loop.run_in_executor(self._executor, sendfile_until_full,
                                                         self._dup(), fd, offset, count, 0.05)
                else:
                    # On the loop, right after is_closing() said no: the transport still owns
                    # this number, so no dup (two system calls a response) is needed for it.
                    n = sendfile_until_full(self._sock_fd, fd, offset, count)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
                raise ClientGone() from e
            if n == 0:
                await self._writable()
                continue
            offset += n
            count -= n
            self.sent += n

    async def _send_file_copying(self, fd: int, offset: int, count: int) -> None:
        while count > 0:
            data = os.pread(fd, min(count, 1 << 20), offset)
            if not data:
                raise OSError("chunk file shorter than its index entry")
            await self.send_bytes(data)
            offset += len(data)
            count -= len(data)

    async def _drain_transport(self) -> None:
        """Wait until bytes queued in the transport (headers, earlier writes) reach the socket."""
        while self._transport.get_write_buffer_size() > 0:
            if self._transport.is_closing():
                raise ClientGone()
            await self._writable()

    def _dup(self) -> int:
        """This sender's own number for the client socket (for worker threads and waits)."""
        if self._fd < 0:
            self._fd = os.dup(self._sock_fd)
        return self._fd

    async def _writable(self) -> None:
        fut = self._loop.create_future()
        self._loop.add_writer(self._dup(), lambda: fut.done() or fut.set_result(None))
        try:
            await asyncio.wait_for(fut, timeout=60.0)
        except asyncio.TimeoutError as e:
            raise ClientGone() from e
        finally:
            self._loop.remove_writer(self._fd)

    async def send_segments(self, first, segments, on_unreadable: Callable[[object], None]) -> None:
        """Send ``first`` and the rest of ``segments`` (the reader's: bytes already checked, or a
        chunk file's checked span for sendfile). A chunk file that fails to read under sendfile
        (EIO) is reported to ``on_unreadable`` so that the next read checks that chunk first."""
        seg = first
        try:
            while seg is not None:
                if seg.data is not None:
                    await self.send_bytes(seg.data)
                else:
                    await self.send_file(seg.fd, seg.offset, seg.length)
                seg = await anext(segments, None)
        except OSError:
            if seg is not None and seg.chunk is not None:
                on_unreadable(seg)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
