"""The background scrub: re-reads every cached chunk file past the page cache at a bounded rate,
so silent media corruption (which leaves a file's inode, size and times unchanged, and which a
read served from the page cache would never see) is found and the chunk dropped before a client
could be handed those bytes from the device.

A pass visits every chunk once; ``ChunkStore.stats.scrub_pass_seconds`` is how long the last
pass took (about ``cache bytes / rate``). A good check counts as a read's check: the chunk's
pieces are then sent without re-reading them until its file changes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

from .store import ChunkKey, ChunkStore, scrub_file

IDLE_SECONDS = 5.0  # an empty cache is looked at again after this long
# A small cache is not re-read over and over: each pass drops the pages it reads from the page
# cache, which costs the next hits a disk read. Passes begin at most this often.
MIN_PASS_SECONDS = 3600.0


class ScrubRound:
    """The scrub's passes: each visits the chunks the store's index held when it began, in
    index order, skipping those gone since. A pass's duration goes to the store's stats."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.passes = 0  # passes begun
        self._left: list[ChunkKey] = []  # the chunks the current pass has left, last first
        self._started = 0.0

    def next(self) -> tuple[ChunkKey, Path, int, int] | None:
        """The next chunk file to read — (key, path, length, digest) — or None when the cache is
        empty."""
        store = self.store
        while True:
            if not self._left:
                now = store.clock()
                if self._started:
                    store.stats.scrub_pass_seconds = now - self._started
                self._left = store.chunk_keys()
                self._left.reverse()
                self._started = now if self._left else 0.0
                self.passes += bool(self._left)
                if not self._left:
                    return None
            key = self._left.pop()
            where = store.locate(key)
            if where is not None:
                digest, length = where
                return key, store.disk.chunk_path(key[0], key[1], digest), length, digest


async def scrub_forever(store: ChunkStore, rate: int, executor: concurrent.futures.Executor | None = None,
                        min_pass: float = MIN_PASS_SECONDS) -> None:
    """Scrub ``store`` at ``rate`` bytes per second until cancelled (``rate`` 0: return at once)."""
    if rate <= 0:
        return
    loop = asyncio.get_running_loop()
    scrub = ScrubRound(store)
    passes, began = 0, None
    while True:
        nxt = scrub.next()
        if nxt is None:
            await asyncio.sleep(IDLE_SECONDS)
            continue
        if scrub.passes != passes:
            passes = scrub.passes
            if began is not None:
                await asyncio.sleep(max(0.0, began + min_pass - loop.time()))
            began = loop.time()
        key, path, length, digest = nxt
        t0 = loop.time()
        problem, checked = await loop.run_in_executor(executor, scrub_file, path, length, digest)
        store.scrubbed(key, digest, problem, checked)
        # The rate bounds the device time the scrub takes from reads: wait out the chunk's share.
        await asyncio.sleep(max(0.0, length / rate - (loop.time() - t0)))
