"""Prefetch in the live daemon: workloads replayed over HTTP (boto3) through a real sidecar
process in front of a throttled local upstream, each with and without prefetch.

    .venv/bin/python bench/live_prefetch.py [--latency 30ms] [--bandwidth 100MiB] [--interval 1s]
                                            [--workloads first-epoch,epochs,zipf,model-load] [--rounds 5]

The upstream is a ``file://`` directory with the daemon's own throttle (``?latency=…&bandwidth=…``:
a delay before every answer and one byte rate shared by all requests, a narrow link; with
``--connection-bandwidth`` each request also gets its own rate, as S3 serves each connection,
and ``--bandwidth 0`` leaves only that), so a miss costs what a distant store costs. Each run starts a fresh sidecar on an empty cache. Workloads (each lists its prefix first,
as training jobs and loaders do):

- ``first-epoch``: 60 shards of 2 MiB read once in order, 0.15 s of "compute" after each;
- ``epochs``: 3 epochs over 40 shards of 2 MiB with a 48 MiB cache (larger than the cache);
- ``zipf``: 800 reads, Zipf(1.0) over 300 objects of 64 KiB–1 MiB, 20 ms apart;
- ``model-load``: 4 files of 24 MiB read one after the other at start.

``--pooled`` workloads (epochs and model-load) run ``--rounds`` times on a fresh sidecar each,
with and without prefetch interleaved, latencies pooled: a p99 over one run is its slowest
read or two. The on/off p99 ratio comes with a 95 % bootstrap interval and each round's ratio;
``--slowest N`` and ``--dump FILE`` show the reads behind it.

Figures: byte hit ratio (cache bytes / bytes read), prefetched bytes and the share of them read,
upstream bytes, demand latency p50/p99 (client-side, whole GET), and the highest prefetch rate
over any 1 s window (the daemon's counters polled every 0.25 s) against the cap
(``--bandwidth-cap``, which prefetch must respect per window, not only on average).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.procs import Sidecar  # noqa: E402

MiB = 1024 * 1024
BUCKET = "bench"


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{.*}})? (\S+)$", line)
        if m:
            total += float(m.group(1))
    return total


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] if xs else float("nan")


def p99_ratio_interval(on: list[float], off: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of p99(on) / p99(off): both sets of reads resampled with
    replacement. A p99 over a few hundred reads rests on its few slowest ones; the interval says
    how far another run's ratio may land from this one for that reason alone."""
    import random

    rnd = random.Random(seed)
    ratios = sorted(pct(rnd.choices(on, k=len(on)), 0.99) / pct(rnd.choices(off, k=len(off)), 0.99)
                    for _ in range(n))
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def purpose_bytes(text: str, purposes: tuple[str, ...]) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(r'^sidecar_upstream_bytes_total\{purpose="(\w+)"\} (\S+)$', line)
        if m and m.group(1) in purposes:
            total += float(m.group(2))
    return total


class RateSampler:
    """Polls the daemon's upstream byte counters every ``every`` seconds in a thread, so the
    background rate can be judged over windows (the cap holds per second, not per run)."""

    def __init__(self, sc, every: float = 0.25) -> None:
        import threading

        self.sc, self.every = sc, every
        self.samples: list[tuple[float, float, float]] = []  # (t, prefetch bytes, background bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                text = self.sc.metrics_text()
            except OSError:
                break
            self.samples.append((time.perf_counter(), purpose_bytes(text, ("prefetch",)),
                                 purpose_bytes(text, ("prefetch", "readahead"))))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def rate_at(self, t: float, column: int = 2) -> float:
        """The rate between the two samples around ``t`` (NaN outside them)."""
        s = self.samples
        for a, b in zip(s, s[1:]):
            if a[0] <= t < b[0]:
                return (b[column] - a[column]) / (b[0] - a[0])
        return float("nan")

    def max_rate(self, window: float = 1.0, column: int = 1) -> float:
        """Highest bytes/s over any span of at least ``window`` between two samples."""
        s = self.samples
        best, j = 0.0, 0
        for i in range(len(s)):
            j = max(j, i + 1)
            while j < len(s) and s[j][0] - s[i][0] < window:
                j += 1
            if j >= len(s):
                break
            best = max(best, (s[j][column] - s[i][column]) / (s[j][0] - s[i][0]))
        return best


def put(root: Path, key: str, size: int, rnd) -> None:
    p = root / BUCKET / key
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(rnd.randbytes(size))


def make_data(root: Path, workload: str, rnd) -> list[tuple[str, float]]:
    """Write the workload's objects; return its reads as (key, pause after it)."""
    if workload == "first-epoch":
        keys = [f"ds/shard-{i:05d}.tar" for i in range(60)]
        for k in keys:
            put(root, k, 2 * MiB, rnd)
        return [(k, 0.15) for k in keys]
    if workload == "epochs":
        keys = [f"big/shard-{i:05d}.tar" for i in range(40)]
        for k in keys:
            put(root, k, 2 * MiB, rnd)
        return [(k, 0.05) for _ in range(3) for k in keys]
    if workload == "zipf":
        keys = [f"assets/obj-{i:05d}.bin" for i in range(300)]
        for k in keys:
            put(root, k, int(math.exp(rnd.uniform(math.log(64 * 1024), math.log(MiB)))), rnd)
        weights = [1.0 / (r + 1) for r in range(len(keys))]
        order = keys[:]
        rnd.shuffle(order)  # popularity unrelated to key order
        return [(k, 0.02) for k in rnd.choices(order, weights=weights, k=800)]
    if workload == "model-load":
        keys = [f"model/weights-{i:02d}.safetensors" for i in range(4)]
        for k in keys:
            put(root, k, 24 * MiB, rnd)
        return [(k, 0.0) for k in keys]
    raise SystemExit(f"unknown workload {workload}")


def upstream_query(args) -> str:
    q = f"latency={args.latency}"
    if args.bandwidth not in ("", "0"):
        q += f"&bandwidth={args.bandwidth}"
    if args.connection_bandwidth not in ("", "0"):
        q += f"&connection_bandwidth={args.connection_bandwidth}"
    return q


_READS: dict[str, list[tuple[str, float]]] = {}


def run(workload: str, prefetch: bool, args, tmp: Path) -> dict:
    import random

    up = tmp / f"up-{workload}"
    if workload not in _READS:  # the same objects and reads for both runs
        _READS[workload] = make_data(up, workload, random.Random(1))
    reads = _READS[workload]
    cache_size = "48MiB" if workload == "epochs" else "1GiB"
    cache = Path(tempfile.mkdtemp(dir=tmp, prefix=f"cache-{workload}-{int(prefetch)}-"))
    sc = Sidecar(f"file://{up}?{upstream_query(args)}", cache, tmp,
                 prefetch=str(prefetch).lower(), prefetch_interval=args.interval, cache_size=cache_size,
                 bandwidth_cap=args.bandwidth_cap, chunk_size="1MiB")
    try:
        s3 = sc.client()
        prefix = reads[0][0].rpartition("/")[0] + "/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            pass
        time.sleep(1.0)  # the predictor loop's first run takes in the listing
        sampler = RateSampler(sc)
        lat: list[float] = []
        starts: list[float] = []
        nbytes = 0
        t0 = time.perf_counter()
        for key, pause in reads:
            t = time.perf_counter()
            starts.append(t)
            nbytes += len(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            lat.append(time.perf_counter() - t)
            if pause:
                time.sleep(pause)
        wall = time.perf_counter() - t0
        time.sleep(1.0)  # prefetches still under way count against the cap too
        sampler.stop()
        m = sc.metrics_text()
    finally:
        sc.stop()
    served = [e for e in sc.log_events() if e.get("event") == "request" and e.get("operation") == "GetObject"]
    detail = [{"i": i, "key": key, "t": starts[i] - t0, "ms": lat[i] * 1e3,
               "server_ms": served[i]["ms"] if len(served) == len(reads) else float("nan"),
               "outcome": served[i]["outcome"] if len(served) == len(reads) else "?",
               "upstream": served[i]["bytes_upstream"] if len(served) == len(reads) else -1,
               "bg_rate": sampler.rate_at(starts[i], 2)}
              for i, (key, _) in enumerate(reads)]
    hit = metric(m, "sidecar_cache_hit_bytes_total")
    miss = metric(m, "sidecar_cache_miss_bytes_total")
    pf = metric(m, "sidecar_prefetch_bytes_total")
    useful = metric(m, "sidecar_prefetch_useful_bytes_total")
    upstream = metric(m, "sidecar_upstream_bytes_total")
    return {"workload": workload, "prefetch": prefetch, "read": nbytes, "hit_ratio": hit / max(1.0, hit + miss),
            "prefetched": pf, "prefetched_read": useful / pf if pf else float("nan"), "upstream": upstream,
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "wall": wall, "upstream_rate": upstream / wall,
            "latencies": lat, "detail": detail, "max_prefetch_rate": sampler.max_rate(1.0, 1),
            "max_background_rate": sampler.max_rate(1.0, 2)}


def pooled(runs: list[dict]) -> dict:
    """Rounds of one workload and setting as one row: bytes summed, latencies pooled, worst window."""
    r = dict(runs[0])
    for k in ("read", "prefetched", "upstream", "wall"):
        r[k] = sum(x[k] for x in runs)
    hit = sum(x["hit_ratio"] * x["read"] for x in runs)
    r["hit_ratio"] = hit / max(1, r["read"])
    useful = sum(x["prefetched_read"] * x["prefetched"] for x in runs if x["prefetched"])
    r["prefetched_read"] = useful / r["prefetched"] if r["prefetched"] else float("nan")
    lat = [v for x in runs for v in x["latencies"]]
    r["detail"] = [dict(d, round=n) for n, x in enumerate(runs) for d in x["detail"]]
    r["round_p99"] = [x["p99"] for x in runs]
    r.update(latencies=lat, p50=pct(lat, 0.5), p99=pct(lat, 0.99), upstream_rate=r["upstream"] / r["wall"],
             max_prefetch_rate=max(x["max_prefetch_rate"] for x in runs),
             max_background_rate=max(x["max_background_rate"] for x in runs))
    return r


def main() -> None:
    from sidecar.config import parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", default="30ms")
    ap.add_argument("--bandwidth", default="100MiB",
                    help="the upstream's byte rate shared by all requests (0: none)")
    ap.add_argument("--connection-bandwidth", default="0",
                    help="the upstream's byte rate per request (0: none), as S3 serves each connection")
    ap.add_argument("--bandwidth-cap", default="80MiB", help="the sidecar's upstream cap (bandwidth_cap)")
    ap.add_argument("--interval", default="1s", help="prefetch_interval")
    ap.add_argument("--workloads", default="first-epoch,epochs,zipf,model-load")
    ap.add_argument("--rounds", type=int, default=5,
                    help="fresh sidecars per setting for model-load (4 reads each: one round's p99 is its slowest read)")
    ap.add_argument("--pooled", default="model-load,epochs",
                    help="workloads run --rounds times per setting (the others once)")
    ap.add_argument("--dump", help="write every read's detail (JSON lines) to this file")
    ap.add_argument("--slowest", type=int, default=0, help="print the N slowest reads of each row")
    args = ap.parse_args()
    cap = parse_size(args.bandwidth_cap)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for w in args.workloads.split(","):
            runs: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.rounds if w in args.pooled.split(",") else 1):
                for pf in (False, True):  # interleaved: load on the machine falls on both alike
                    r = run(w, pf, args, tmp)
                    runs[pf].append(r)
                    print(f"# {w} prefetch={pf}: {r['wall']:.1f} s", file=sys.stderr, flush=True)
            rows.extend(pooled(runs[pf]) for pf in (False, True))
    print(f"upstream: latency {args.latency}, {args.bandwidth}/s shared, {args.connection_bandwidth}/s "
          f"per request; bandwidth_cap {args.bandwidth_cap}; "
          f"prefetch_interval {args.interval}")
    print("| workload | prefetch | MiB read | byte hit ratio | prefetched MiB | prefetched read | "
          "upstream MiB | demand p50 ms | demand p99 ms | max prefetch MiB/s (1 s) | of cap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = "–" if r["prefetched"] == 0 else f"{r['prefetched_read']:.0%}"
        print(f"| {r['workload']} | {'on' if r['prefetch'] else 'off'} | {r['read'] / MiB:.0f} | "
              f"{r['hit_ratio']:.1%} | {r['prefetched'] / MiB:.1f} | {share} | {r['upstream'] / MiB:.0f} | "
              f"{r['p50'] * 1e3:.0f} | {r['p99'] * 1e3:.0f} | {r['max_prefetch_rate'] / MiB:.1f} | "
              f"{r['max_prefetch_rate'] / cap:.0%} |" if cap else "– |")
    if args.dump:
        import json

        with open(args.dump, "w") as f:
            for r in rows:
                for d in r["detail"]:
                    f.write(json.dumps(dict(d, workload=r["workload"], prefetch=r["prefetch"])) + "\n")
    for r in rows if args.slowest else ():
        print(f"# slowest reads, {r['workload']} prefetch={'on' if r['prefetch'] else 'off'}: "
              "round, read #, key, s since start, client ms, server ms, outcome, upstream KiB, "
              "background MiB/s then")
        for d in sorted(r["detail"], key=lambda d: -d["ms"])[:args.slowest]:
            print(f"#   {d['round']} {d['i']:4d} {d['key']} {d['t']:6.2f} {d['ms']:6.1f} {d['server_ms']:6.1f} "
                  f"{d['outcome']} {d['upstream'] // 1024} {d['bg_rate'] / MiB:.1f}")
    by = {(r["workload"], r["prefetch"]): r for r in rows}
    for w in args.workloads.split(","):
        off, on = by[(w, False)], by[(w, True)]
        lo, hi = p99_ratio_interval(on["latencies"], off["latencies"])
        rounds = ""
        if len(on["round_p99"]) > 1:
            rounds = " (one round each: " + ", ".join(
                f"{a / b:.2f}" for a, b in zip(on["round_p99"], off["round_p99"])) + ")"
        print(f"# {w}: p99 on/off {on['p99'] / off['p99']:.2f}x over {len(on['latencies'])} reads each, "
              f"95 % interval {lo:.2f}-{hi:.2f}{rounds} (goal <= 1.1x); "
              f"max 1 s background (prefetch + readahead) {on['max_background_rate'] / MiB:.1f} MiB/s "
              + (f"= {on['max_background_rate'] / cap:.0%} of the cap" if cap else "(no cap)"))


if __name__ == "__main__":
    main()
