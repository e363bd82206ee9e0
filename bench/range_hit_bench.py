"""What verification costs on warm hits: random unaligned ranges inside a cached object, served by
a sidecar in each ``chunk_verification`` mode, in sidecar CPU-seconds per GiB served.

    .venv/bin/python bench/range_hit_bench.py [--size 64MiB] [--range 256KiB] [--requests 2000] [-c 16]

Per mode: a fresh sidecar over a local-directory upstream, the object read once (filled) and
once more (checked, so when-changed has the pieces known good), then the timed requests. Prints
req/s, MiB/s, sidecar CPU-s/GiB and the bytes it read back to check (``checked_bytes``) per
GiB served. The client shares the machine: compare modes with each other, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from sidecar.config import format_size, parse_size  # noqa: E402
from support.procs import Sidecar  # noqa: E402

GiB = 1024**3


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def checked_bytes(sc: Sidecar) -> float:
    """sidecar_cache_checked_bytes_total from /metrics (0 on a sidecar without it)."""
    with urllib.request.urlopen(sc.admin_url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("sidecar_cache_checked_bytes_total "):
                return float(line.split()[1])
    return 0.0


async def get_ranges(url: str, ranges: list[tuple[int, int]], concurrency: int) -> int:
    total = 0
    queue = list(ranges)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal total
        while queue:
            lo, hi = queue.pop()
            async with session.get(url, headers={"Range": f"bytes={lo}-{hi}"}) as r:
                body = await r.read()
            if r.status != 206 or len(body) != hi - lo + 1:
                raise RuntimeError(f"HTTP {r.status}, {len(body)} bytes")
            total += len(body)

    async with aiohttp.ClientSession(auto_decompress=False) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="64MiB")
    ap.add_argument("--range", default="256KiB")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--modes", default="when-changed,every-read")
    ap.add_argument("--baseline", action="store_true",
                    help="the sidecar on PYTHONPATH predates scrub_rate and checked_bytes (a before figure)")
    args = ap.parse_args()
    size, span = parse_size(args.size), parse_size(args.range)
    work = Path(tempfile.mkdtemp(prefix="sidecar-hits-"))
    (work / "up" / "bench").mkdir(parents=True)
    (work / "up" / "bench" / "obj").write_bytes(os.urandom(size))
    rnd = random.Random(1)
    ranges = [(lo, lo + span - 1) for lo in (rnd.randrange(0, size - span) for _ in range(args.requests))]
    print(f"{args.requests} random {format_size(span)} ranges of a {format_size(size)} object, c={args.concurrency}")
    try:
        for mode in args.modes.split(","):
            cache = work / f"cache-{mode}"
            flags = {} if args.baseline else {"scrub_rate": "0"}
            sc = Sidecar(f"file://{work / 'up'}", cache, work, cache_size="4GiB", chunk_verification=mode, **flags)
            try:
                url = f"{sc.url}/bench/obj"
                asyncio.run(get_ranges(url, [(0, size - 1)], 1))  # fill
                time.sleep(0.2)  # past the files' ctime tick, so a check can be remembered
                asyncio.run(get_ranges(url, [(0, size - 1)], 1))  # checked once
                c0, k0, t0 = cpu_seconds(sc.proc.pid), checked_bytes(sc), time.perf_counter()
                served = asyncio.run(get_ranges(url, ranges, args.concurrency))
                dt = time.perf_counter() - t0
                cpu = cpu_seconds(sc.proc.pid) - c0
                checked = checked_bytes(sc) - k0
            finally:
                sc.stop()
            print(f"  {mode:>12}: {args.requests / dt:7.0f} req/s {served / dt / 2**20:7.0f} MiB/s  "
                  f"sidecar {cpu / (served / GiB):.2f} CPU-s/GiB  read back to check: "
                  f"{checked / (served / GiB) / GiB:.2f} GiB per GiB served")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
