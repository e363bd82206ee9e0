"""The background scrub: reads every cached chunk from the media, past the page cache, at a
bounded rate, and drops chunks whose bytes no longer match their piece CRC32Cs.

Reads are checked when a chunk file's identity changed since it was last checked; a bit that
rots on the device under an unchanged file is this module's to find (as ZFS and Ceph scrub, see
docs/integrity.md). O_DIRECT reads go to the device without disturbing the page cache that
serves hits; where the file system refuses O_DIRECT (tmpfs), the file's cached pages are
dropped (posix_fadvise DONTNEED) before it is read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import mmap
import os
import time

from ..telemetry import get_logger
from . import chunkfile
from .store import ChunkStore

log = get_logger("sidecar.scrub")

START_DELAY = 60.0  # seconds after start before the first pass: start-up reads come first
IDLE = 10.0  # seconds between looks at an empty cache
_ALIGN = 4096


def read_direct(path: str, size: int) -> bytes | None:
    """A file's first ``size`` bytes (the whole file should be that long) read from the device,
    not the page cache; None when it is shorter. OSError when the disk fails."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        direct = True
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        direct = False
    try:
        if not direct:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return os.pread(fd, size + 1, 0)
        buf = mmap.mmap(-1, (size + _ALIGN) // _ALIGN * _ALIGN + _ALIGN)  # page aligned, as O_DIRECT needs
        try:
            view = memoryview(buf)
            got = 0
            while True:
                want = len(view) - got
                n = os.preadv(fd, [view[got:]], got)
                got += max(n, 0)
                if n < want:  # the end of the file (a direct read past it is short, not an error)
                    break
            data = bytes(view[:got])
            view.release()
            return data
        except OSError as e:
            if e.errno != 22:  # EINVAL: O_DIRECT refused after all; read through the cache
                raise
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return os.pread(fd, size + 1, 0)
        finally:
            buf.close()
    finally:
        os.close(fd)


def scrub_file(path: str, length: int, crc: int) -> bool:
    """Whether a chunk file read from the media holds exactly the recorded bytes."""
    try:
        raw = read_direct(path, chunkfile.file_size(length))
    except OSError:
        return False
    return raw is not None and chunkfile.check_bytes(raw, length, crc)


class Scrubber:
    """Passes over the store's chunks at ``rate`` bytes/s, forever (``run``) or once (``scrub_pass``)."""

    def __init__(self, store: ChunkStore, rate: int, executor: concurrent.futures.Executor | None = None) -> None:
        self.store = store
        self.rate = rate
        self.executor = executor

    def full_pass_seconds(self) -> float:
        """Time to scrub the whole cache at the configured rate."""
        return self.store.used_bytes / self.rate if self.rate > 0 else 0.0

    async def run(self) -> None:
        await asyncio.sleep(START_DELAY)
        while True:
            if not await self.scrub_pass():
                await asyncio.sleep(IDLE)

    async def scrub_pass(self) -> int:
        """Check every chunk cached when the pass begins; returns how many were checked."""
        store = self.store
        loop = asyncio.get_running_loop()
        todo = [(v.vid, i, crc, v.length(i)) for v in store.iter_versions() for i, crc in list(v.chunks.items())]
        checked = 0
        for vid, index, crc, length in todo:
            v = store.versions.get(vid)
            if v is None or v.chunks.get(index) != crc:
                continue  # evicted or replaced meanwhile
            path = str(chunkfile.chunk_path(store.root, vid, index, crc))
            t0 = time.monotonic()
            ok = await loop.run_in_executor(self.executor, scrub_file, path, length, crc)
            store.stats.scrubbed_bytes += length
            checked += 1
            v = store.versions.get(vid)
            if not ok and v is not None and v.chunks.get(index) == crc:
                store.stats.scrub_failures += 1
                log.warning("scrub_found_corrupt_chunk", bucket=v.meta.bucket, key=v.meta.key, chunk=index)
                store.drop_corrupt(vid, index)
            if self.rate > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.sleep(max(0.0, length / self.rate - (time.monotonic() - t0)))
        if todo:
            store.stats.scrub_passes += 1
        return checked
