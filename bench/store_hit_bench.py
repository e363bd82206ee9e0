"""CPU per hit of the chunk store's read calls, with the daemon's policy (QoS over LRU-2).

    PYTHONPATH=$PWD .venv/bin/python bench/store_hit_bench.py [--hits 200000]

- RAM hit: ``ChunkStore.ram_chunk`` on a 4 KiB chunk held by the RAM tier (the small-object hit).
- file hit: ``ChunkStore.open_chunk`` + ``close`` of a 1 MiB chunk whose pieces were checked
  (handed out for sendfile): the open, fstat and close of the file are most of it.
Best of 9 runs of CPU time (``time.process_time``) per call, so other load on the machine
matters less; run it on two checkouts with the same interpreter to compare them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from sidecar.cache.policy import make_policy
from sidecar.cache.qos import QoSPolicy
from sidecar.cache.rules import RuleSet
from sidecar.cache.store import ChunkStore
from sidecar.objects import ObjectMeta


def _store(root: str, chunk_size: int, size: int, ram: int) -> tuple[ChunkStore, str]:
    policy = QoSPolicy(RuleSet(), lambda: make_policy("lru-k", k=2))
    s = ChunkStore(root, chunk_size=chunk_size, capacity=1 << 30, policy=policy, ram_cache_size=ram)
    # as the daemon does (server.py): the policy locates a chunk's object through the index
    policy._locate = lambda key: s.object_of(key[0])
    s.open()
    v = s.version_for(ObjectMeta("b", "k", '"e"', size, "Tue, 14 Nov 2023 22:13:20 GMT", ()))
    w = s.begin_write(v, 0)
    w.write(os.urandom(size))
    s.commit(w)
    w.close()
    return s, v.vid


def _best(call, n: int) -> float:
    best = float("inf")
    for _ in range(9):
        t = time.process_time()
        for _ in range(n):
            call()
        best = min(best, (time.process_time() - t) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=200_000)
    n = ap.parse_args().hits
    with tempfile.TemporaryDirectory() as d:
        s, vid = _store(d + "/ram", 64 * 1024, 4096, 1 << 20)
        assert s.ram_chunk(vid, 0) is None and s.open_chunk(vid, 0) is not None  # now in the RAM tier
        print(f"RAM hit  (4 KiB):            {_best(lambda: s.ram_chunk(vid, 0), n) * 1e9:7.0f} ns")
        f, fvid = _store(d + "/file", 1 << 20, 1 << 20, 0)
        c = f.open_chunk(fvid, 0)
        c.check(0, c.length - 1)
        c.close()  # the check is remembered: later opens hand the file out for sendfile

        def file_hit() -> None:
            chunk = f.open_chunk(fvid, 0, 0, 4095)
            assert chunk.verified
            chunk.close()

        print(f"file hit (1 MiB, sendfile):  {_best(file_hit, n // 4) * 1e9:7.0f} ns")


if __name__ == "__main__":
    main()
