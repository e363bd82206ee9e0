"""Time ``sidecar verify`` (offline) over a cache of N chunks, from the page cache and from disk;
with ``--serve``, the cost per GiB of serving hits under each verification mode instead.

    .venv/bin/python bench/verify_bench.py --objects 4 --chunks-per-object 64 --chunk-size 4MiB
    .venv/bin/python bench/verify_bench.py --serve --objects 1 --chunks-per-object 16 --range 256KiB

``--serve`` reads random unaligned ranges from the warm page cache through the store's read API
exactly as the reader does, and sends them into a socket drained by a thread: strict
(``every-read``: read the touched pieces, check, send that buffer), first read under the default
(``when-changed``: the same, once), and checked hits under the default (``sendfile``). It prints
CPU-s per GiB served for each (this process, all threads, the drain included in every mode).

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


def serve(root: Path, cs: int, total: int, rng: int, gib: float) -> None:
    import random  # noqa: PLC0415
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

    def drain() -> None:
        buf = bytearray(1 << 20)
        while b.recv_into(buf):
            pass

    threading.Thread(target=drain, daemon=True).start()
    CHECK_BATCH = 1 << 20
    for mode in ("every-read", "when-changed, first read", "when-changed, checked"):
        s = ChunkStore(root, chunk_size=cs, capacity=total * 2, policy=LRUPolicy(),
                       verify_every_read=mode == "every-read")
        s.open()
        keys = [(v.vid, i, v.length(i)) for v in s.versions.values() for i in v.chunks]
        if mode == "when-changed, checked":  # every piece checked once, as the scrub or earlier reads do
            for vid, i, _ in keys:
                s.open_verified(vid, i).close()
        want = int(gib * 2**30)
        sent, unchecked = 0, 0
        r = random.Random(1)
        c0, t0 = time.process_time(), time.perf_counter()
        while sent < want:
            vid, i, length = keys[r.randrange(len(keys))]
            lo = r.randrange(0, length - rng)
            hi = lo + rng - 1
            if mode == "when-changed, first read":
                s.forget_checked(vid, i)  # as after a start: nothing checked yet
            c = s.open_chunk(vid, i, lo, hi)
            if c.verified:
                n, off = hi - lo + 1, lo
                while n:
                    k = os.sendfile(a.fileno(), c.fd, off, n)
                    off, n = off + k, n - k
                unchecked += hi - lo + 1
            else:
                pos = lo
                while pos <= hi:
                    b1 = min(hi, (pos // CHECK_BATCH + 1) * CHECK_BATCH - 1)
                    view = c.check(pos, b1)
                    assert view is not None
                    a.sendall(view)
                    pos = b1 + 1
            c.close()
            sent += hi - lo + 1
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        print(f"  {mode:<26} {cpu / (sent / 2**30):.3f} CPU-s/GiB, {sent / 2**20 / wall:7.0f} MiB/s "
              f"({unchecked / max(sent, 1):.0%} sent unchecked by sendfile)")
    a.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", action="store_true", help="cost per GiB of serving hits under each verification mode")
    ap.add_argument("--range", default="256KiB", help="--serve: bytes per read")
    ap.add_argument("--gib", type=float, default=2.0, help="--serve: GiB served per mode")
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--chunks-per-object", type=int, default=64)
    ap.add_argument("--chunk-size", default="4MiB")
    ap.add_argument("--dir", default=None, help="where to build the cache (default: a temp dir under /tmp)")
    args = ap.parse_args()
    cs = parse_size(args.chunk_size)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        root = Path(d)
        total = fill(root, args.objects, args.chunks_per_object, cs)
        if args.serve:
            rng = parse_size(args.range)
            print(f"hits of random unaligned {args.range} ranges over {total / 2**20:.0f} MiB of "
                  f"{args.chunk_size} chunks (warm page cache):")
            serve(root, cs, total, rng, args.gib)
            return
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
                  f"(command: sidecar admin verify)")
        finally:
            sc.stop()


if __name__ == "__main__":
    main()
