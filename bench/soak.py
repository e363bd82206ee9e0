"""Soak: many concurrent clients for minutes against a sidecar in front of moto; errors, RSS and fds.

    .venv/bin/python bench/soak.py [--clients 500] [--duration 300] [--sample 5] [--chunk-size 256KiB]

Each client loops over a mix of requests (unsigned: the sidecar needs no signature when client
authentication is off): whole-object hits, ranged hits spanning chunks, misses (a key never read
before, or one just overwritten), and writes (PUTs through the sidecar, which invalidate). Every
body is checked: seeded objects against their known bytes, written objects against the SHA-256
trailer they carry. The sidecar's RSS and open file descriptors are sampled every ``--sample``
seconds. Prints the samples, requests done by kind, errors (goal 0), RSS and fds start/end/max
(goal: flat once warm).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sidecar.config import format_size  # noqa: E402
from support.procs import MotoServer, Sidecar  # noqa: E402

BUCKET = "soak"
HOT = 64  # objects read over and over
HOT_SIZE = 768 * 1024  # spans several chunks at the default 256 KiB
COLD = 3000  # objects read once each (misses) until they run out
COLD_SIZE = 24 * 1024
WRITTEN = 200  # keys overwritten through the sidecar
MIX = (("hit", 45), ("range", 25), ("miss", 15), ("write", 15))


def body_of(key: str, size: int) -> bytes:
    return random.Random(key).randbytes(size)


def signed_body(size: int) -> bytes:
    """Random bytes with their own SHA-256 appended: any reader can tell a torn or mixed body."""
    payload = random.randbytes(size)
    return payload + hashlib.sha256(payload).digest()


def self_checks(data: bytes) -> bool:
    return len(data) >= 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]


class Load:
    def __init__(self, url: str, hot: dict[str, bytes], cold: list[str]) -> None:
        self.url = url
        self.hot = hot
        self.hot_keys = list(hot)
        self.cold = cold
        self.written: set[str] = set()  # keys that exist after a write, readable as misses
        # One request at a time per written key: moto fails a GET racing a PUT of the same key
        # (a 500, "I/O operation on closed file"), which would measure moto, not the sidecar.
        # Reads racing overwrites are bench/crash_cycles.py's subject.
        self.key_locks = collections.defaultdict(asyncio.Lock)
        self.done: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.kinds = [k for k, _ in MIX]
        self.weights = [w for _, w in MIX]

    def fail(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {what}")

    async def one(self, s: aiohttp.ClientSession, kind: str) -> None:
        if kind == "hit":
            key = random.choice(self.hot_keys)
            async with s.get(f"{self.url}/{BUCKET}/{key}") as r:
                data = await r.read()
            if r.status != 200 or data != self.hot[key]:
                self.fail(kind, f"{key}: HTTP {r.status}, {len(data)} bytes")
        elif kind == "range":
            key = random.choice(self.hot_keys)
            a = random.randrange(HOT_SIZE)
            b = min(HOT_SIZE - 1, a + random.randrange(1, 400_000))
            async with s.get(f"{self.url}/{BUCKET}/{key}", headers={"Range": f"bytes={a}-{b}"}) as r:
                data = await r.read()
            if r.status != 206 or data != self.hot[key][a:b + 1]:
                self.fail(kind, f"{key} {a}-{b}: HTTP {r.status}, {len(data)} bytes")
        elif kind == "miss":
            if self.cold:
                key = self.cold.pop()
                async with s.get(f"{self.url}/{BUCKET}/{key}") as r:
                    data = await r.read()
                if r.status != 200 or data != body_of(key, COLD_SIZE):
                    self.fail(kind, f"{key}: HTTP {r.status}, {len(data)} bytes")
            else:  # cold keys used up: an overwritten key is a miss too (its write invalidated it)
                key = f"w/{random.randrange(WRITTEN)}"
                async with self.key_locks[key], s.get(f"{self.url}/{BUCKET}/{key}") as r:
                    data = await r.read()
                if r.status == 404 and key not in self.written:
                    return
                if r.status != 200 or not self_checks(data):
                    self.fail(kind, f"{key}: HTTP {r.status}, {len(data)} bytes")
        else:
            key = f"w/{random.randrange(WRITTEN)}"
            data = signed_body(random.randrange(1024, 300_000))
            async with self.key_locks[key], s.put(f"{self.url}/{BUCKET}/{key}", data=data) as r:
                await r.read()
            if r.status != 200:
                self.fail(kind, f"{key}: HTTP {r.status}")
            else:
                self.written.add(key)

    async def client(self, s: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until:
            kind = random.choices(self.kinds, self.weights)[0]
            t0 = time.monotonic()
            try:
                await self.one(s, kind)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                self.fail(kind, repr(e))
            self.done[kind] += 1
            self.latency[kind].append(time.monotonic() - t0)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def sample(proc: psutil.Process) -> tuple[int, int]:
    return proc.memory_info().rss, proc.num_fds()


async def drive(load: Load, clients: int, duration: float, every: float, proc: psutil.Process) -> list[tuple]:
    samples = [(0.0, *sample(proc), 0)]
    t0 = time.monotonic()
    until = t0 + duration
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as s:
        tasks = [asyncio.ensure_future(load.client(s, until)) for _ in range(clients)]
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=every)
            rss, fds = sample(proc)
            n = sum(load.done.values())
            samples.append((time.monotonic() - t0, rss, fds, n))
            print(f"  t={samples[-1][0]:6.1f}s  rss={mib(rss):>9}  fds={fds:5d}  requests={n:7d}  "
                  f"errors={sum(load.errors.values())}", flush=True)
        for t in tasks:
            t.result()
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS/fd samples")
    ap.add_argument("--chunk-size", default="256KiB")
    ap.add_argument("--answer-within", default="10",
                    help="the sidecar's upstream_answer_within: moto sharing two cores with 500 clients "
                         "answers slower than the default 2 s, and a 503 then would measure moto")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sidecar-soak-"))
    moto = MotoServer(work)
    sc = None
    try:
        s3 = moto.client()
        s3.create_bucket(Bucket=BUCKET)
        hot = {f"hot/{i}": body_of(f"hot/{i}", HOT_SIZE) for i in range(HOT)}
        cold = [f"cold/{i}" for i in range(COLD)]
        t = time.monotonic()
        seed = [(k, v) for k, v in hot.items()] + [(k, None) for k in cold]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0],
                                                   Body=kv[1] if kv[1] is not None else body_of(kv[0], COLD_SIZE)),
                          seed))
        print(f"seeded {HOT} hot x {format_size(HOT_SIZE)} and {COLD} cold x {format_size(COLD_SIZE)} "
              f"in {time.monotonic() - t:.0f} s", flush=True)
        sc = Sidecar(moto.url, work / "cache", work, chunk_size=args.chunk_size, log_level="warning",
                     upstream_answer_within=args.answer_within)
        random.shuffle(cold)
        load = Load(sc.url, hot, cold)
        proc = psutil.Process(sc.proc.pid)
        print(f"{args.clients} clients for {args.duration:g} s; sampling every {args.sample:g} s; "
              f"upstream_answer_within {args.answer_within} s", flush=True)
        samples = asyncio.run(drive(load, args.clients, args.duration, args.sample, proc))
        alive = sc.proc.poll() is None
    finally:
        if sc is not None:
            sc.stop()
        moto.stop()
    total = sum(load.done.values())
    elapsed = samples[-1][0]
    print()
    print(f"requests: {total} in {elapsed:.0f} s ({total / elapsed:.0f}/s) with {args.clients} clients")
    for kind, _ in MIX:
        lat = sorted(load.latency[kind]) or [0.0]
        print(f"  {kind:6s} {load.done[kind]:8d}  errors {load.errors[kind]:4d}  "
              f"p50 {lat[len(lat) // 2] * 1000:7.1f} ms  p99 {lat[int(len(lat) * 0.99)] * 1000:7.1f} ms")
    print(f"errors: {sum(load.errors.values())} (goal 0)")
    for e in load.examples:
        print("   ", e)
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    # "start" is the first sample under load: the idle process before it has not touched its caches
    print(f"RSS: idle {mib(rss[0])}, start {mib(rss[1])}, end {mib(rss[-1])}, max {mib(max(rss))}")
    print(f"fds: idle {fds[0]}, start {fds[1]}, end {fds[-1]}, max {max(fds)}")
    print(f"sidecar still running at the end: {alive}")
    return 0 if not load.errors and alive else 1


if __name__ == "__main__":
    sys.exit(main())
