"""Time ``sidecar verify`` (offline) over a cache of N chunks, from the page cache and from disk.

    .venv/bin/python bench/verify_bench.py --objects 4 --chunks-per-object 64 --chunk-size 4MiB

Fills a temporary cache directory through the real ChunkStore, then runs the command as a user
would and prints wall time and throughput. "cold" drops the files from the page cache first
(posix_fadvise DONTNEED), so bytes come from the device.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

from sidecar.cache.policy import LRUPolicy  # noqa: E402
from sidecar.cache.store import ChunkStore  # noqa: E402
from sidecar.config import parse_size  # noqa: E402
from sidecar.objects import ObjectMeta  # noqa: E402
from support.procs import Sidecar  # noqa: E402


def fill(root: Path, objects: int, per_object: int, cs: int) -> int:
    s = ChunkStore(root, chunk_size=cs, capacity=objects * per_object * cs * 2, policy=LRUPolicy())
    s.open()
    block = os.urandom(cs)
    for o in range(objects):
        m = ObjectMeta("bench", f"obj-{o}", f'"e{o}"', per_object * cs, "Tue, 14 Nov 2023 22:13:20 GMT", ())
        v = s.version_for(m)
        for i in range(per_object):
            w = s.begin_write(v, i)
            w.write(block[:8] + i.to_bytes(8, "big") + block[16:])
            assert s.commit(w)
            w.close()
    return objects * per_object * cs


def drop_page_cache(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--chunks-per-object", type=int, default=64)
    ap.add_argument("--chunk-size", default="4MiB")
    ap.add_argument("--dir", default=None, help="where to build the cache (default: a temp dir under /tmp)")
    args = ap.parse_args()
    cs = parse_size(args.chunk_size)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        root = Path(d)
        total = fill(root, args.objects, args.chunks_per_object, cs)
        cmd = [sys.executable, "-m", "sidecar", "verify", "--cache-dir", str(root)]
        print(f"cache: {args.objects * args.chunks_per_object} chunks, {total / 2**30:.2f} GiB; command: "
              f"{' '.join(cmd[1:])}")
        for label in ("warm", "cold", "warm"):
            if label == "cold":
                subprocess.run(["sync"], check=False)
                drop_page_cache(root)
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            print(f"{label:>5}: exit {r.returncode}, {dt:.2f} s wall ({total / 2**20 / dt:.0f} MiB/s); "
                  f"{r.stdout.strip()}")
        # online: a daemon restored on the same cache, asked through its admin API
        upstream = root / "upstream"
        upstream.mkdir()
        sc = Sidecar(f"file://{upstream}", root, root, chunk_size=args.chunk_size, cache_size=str(total * 2))
        try:
            cmd = [sys.executable, "-m", "sidecar", "verify", "--admin", sc.admin_url.removeprefix("http://")]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            print(f"online: exit {r.returncode}, {dt:.2f} s wall; {r.stdout.strip()} "
                  f"(command: sidecar verify --admin HOST:PORT)")
        finally:
            sc.stop()


if __name__ == "__main__":
    main()
