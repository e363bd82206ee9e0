"""The reader's claims: fills held for the reads about to come (Reader._claim), on a real store."""

from __future__ import annotations

import asyncio

from sidecar.cache.policy import LRUPolicy
from sidecar.cache.store import ChunkStore
from sidecar.objects import ObjectMeta
from sidecar.reader import CLAIMED_FILLS, DEMAND, ChunkFill, Reader
from sidecar.telemetry import Metrics

CS = 64 * 1024


def test_fills_held_for_reads_that_never_come_are_bounded_oldest_first(tmp_path):
    async def claim_without_reading() -> None:
        store = ChunkStore(tmp_path, chunk_size=CS, capacity=1024 * CS, policy=LRUPolicy())
        store.open()
        reader = Reader(store, None, Metrics())  # (no fill here reaches the upstream)
        versions = [store.version_for(ObjectMeta("b", f"k{i}", '"e"', 8 * CS, "", ())) for i in
                    range(CLAIMED_FILLS // 8 + 4)]
        fills = {v.vid: [ChunkFill(v, i, CS, DEMAND) for i in range(8)] for v in versions}
        for v in versions:  # each claimed for a read that never comes (it failed before reading)
            reader._claim(v, fills[v.vid])
        held = [f for fs in fills.values() for f in fs if f.refs]
        assert len(held) <= CLAIMED_FILLS
        oldest, newest = versions[0].vid, versions[-1].vid
        assert not any(f.refs for f in fills[oldest]) and all(f.refs == 1 for f in fills[newest])
        # the reads that do come take what is still held for them
        assert reader._take_claim(oldest) is None
        assert sorted(reader._take_claim(newest)) == list(range(8))

    asyncio.run(claim_without_reading())


def test_each_read_takes_its_own_claim_in_order(tmp_path):
    async def two_reads() -> None:
        store = ChunkStore(tmp_path, chunk_size=CS, capacity=1024 * CS, policy=LRUPolicy())
        store.open()
        reader = Reader(store, None, Metrics())
        v = store.version_for(ObjectMeta("b", "k", '"e"', 2 * CS, "", ()))
        fills = [ChunkFill(v, i, CS, DEMAND) for i in range(2)]
        reader._claim(v, fills)
        reader._claim(v, fills, another_read=True)  # a second read joins the same fills
        assert [f.refs for f in fills] == [2, 2]
        first, second = reader._take_claim(v.vid), reader._take_claim(v.vid)
        assert first is not None and second is not None and first is not second
        assert reader._take_claim(v.vid) is None

    asyncio.run(two_reads())
