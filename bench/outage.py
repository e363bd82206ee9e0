"""Upstream outage: how fast uncached reads fail, how much cached data is still served, how fast
the sidecar recovers.

    .venv/bin/python bench/outage.py [--faults drop,silent,error] [--outage 15] [--clients 8] [--objects 40]

A sidecar sits in front of a recording tap (tests/support/tap.py) in front of moto, with a
short metadata TTL (so every cached object needs revalidation during the outage and is served
stale-if-error) and the default 2 s ``upstream_answer_within``. The cache is warmed, then for
each fault the tap makes the upstream unreachable — ``drop``: every connection is cut;
``silent``: requests are swallowed, never answered; ``error``: every request gets a 500 — and
``--clients`` threads read for ``--outage`` seconds: uncached objects (each must be answered
S3 ``503 ServiceUnavailable``; the time to that answer is measured, goal ≤ 2 s) and cached
objects, whole and ranged (each must be 200/206 with the right bytes, goal 100 %). Then the
upstream comes back and the time until an uncached read succeeds is measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import statistics
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from support import raw  # noqa: E402
from support.tap import Fault, Tap  # noqa: E402

from support.procs import MotoServer, Sidecar  # noqa: E402

BUCKET = "outage"
SIZE = 600 * 1024  # three chunks at 256 KiB
FAULTS = {"drop": Fault(drop=True), "silent": Fault(delay=60), "error": Fault(status=500)}
# (a request held by "silent" is forwarded after ``delay``: set to the outage's length in main, so
# none is still held when the tap closes)


def code_of(reply: raw.Reply) -> str | None:
    try:
        return ET.fromstring(reply.body).findtext("Code") if reply.body else None
    except ET.ParseError:
        return None


class Outage:
    def __init__(self, sc: Sidecar, tap: Tap, cached: dict[str, bytes], uncached: list[str]) -> None:
        self.sc, self.tap, self.cached, self.uncached = sc, tap, cached, uncached
        self.lock = threading.Lock()

    def run(self, name: str, seconds: float, clients: int) -> dict:
        cached_ok = cached_bad = 0
        uncached_times: list[float] = []
        uncached_bad: list[str] = []
        bad_examples: list[str] = []
        stop = time.monotonic() + seconds

        def worker() -> None:
            nonlocal cached_ok, cached_bad
            while time.monotonic() < stop:
                if random.random() < 0.3:
                    key = random.choice(self.uncached)
                    t0 = time.monotonic()
                    r = raw.request(self.sc.url, "GET", f"/{BUCKET}/{key}", sign=False)
                    dt = time.monotonic() - t0
                    with self.lock:
                        uncached_times.append(dt)
                        if r.status != 503 or code_of(r) != "ServiceUnavailable":
                            uncached_bad.append(f"{key}: HTTP {r.status} {code_of(r)}")
                else:
                    key = random.choice(list(self.cached))
                    data = self.cached[key]
                    if random.random() < 0.5:
                        r = raw.request(self.sc.url, "GET", f"/{BUCKET}/{key}", sign=False)
                        ok = r.status == 200 and r.body == data
                    else:
                        a = random.randrange(len(data))
                        b = min(len(data) - 1, a + random.randrange(300_000))
                        r = raw.request(self.sc.url, "GET", f"/{BUCKET}/{key}", {"Range": f"bytes={a}-{b}"},
                                        sign=False)
                        ok = r.status == 206 and r.body == data[a:b + 1]
                    with self.lock:
                        if ok:
                            cached_ok += 1
                        else:
                            cached_bad += 1
                            if len(bad_examples) < 5:
                                bad_examples.append(f"{key}: HTTP {r.status} {code_of(r)}")

        self.tap.fault = lambda seen: FAULTS[name]
        try:
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                for f in [pool.submit(worker) for _ in range(clients)]:
                    f.result()
        finally:
            self.tap.fault = None
        # recovery: the upstream is back; how long until an uncached read succeeds
        t0 = time.monotonic()
        key = self.uncached[0]
        recovered = None
        while time.monotonic() - t0 < 120:
            r = raw.request(self.sc.url, "GET", f"/{BUCKET}/{key}", sign=False)
            if r.status == 200:
                recovered = time.monotonic() - t0
                break
            time.sleep(0.05)
        # the key read to prove recovery is now cached: drop it from the uncached pool
        self.uncached.remove(key)
        times = sorted(uncached_times)
        return {
            "fault": name,
            "uncached": len(times),
            "uncached_wrong": len(uncached_bad),
            "uncached_p50": statistics.median(times) if times else float("nan"),
            "uncached_p99": times[int(len(times) * 0.99)] if times else float("nan"),
            "uncached_max": times[-1] if times else float("nan"),
            "cached_ok": cached_ok,
            "cached_bad": cached_bad,
            "recovery": recovered,
            "examples": uncached_bad[:5] + bad_examples,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", default="drop,silent,error")
    ap.add_argument("--outage", type=float, default=15.0, help="seconds each fault lasts")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--objects", type=int, default=40, help="cached objects (as many again stay uncached)")
    ap.add_argument("--answer-within", default="2", help="the sidecar's upstream_answer_within")
    args = ap.parse_args()
    faults = args.faults.split(",")
    FAULTS["silent"] = Fault(delay=args.outage + 1)
    work = Path(tempfile.mkdtemp(prefix="sidecar-outage-"))
    moto = MotoServer(work)
    tap = Tap(moto.url)
    sc = None
    try:
        s3 = moto.client()
        s3.create_bucket(Bucket=BUCKET)
        cached = {f"cached/{i}": random.randbytes(SIZE) for i in range(args.objects)}
        uncached = [f"uncached/{i}" for i in range(args.objects)]
        for k, v in cached.items():
            s3.put_object(Bucket=BUCKET, Key=k, Body=v)
        for k in uncached:
            s3.put_object(Bucket=BUCKET, Key=k, Body=b"only upstream has this")
        sc = Sidecar(tap.url, work / "cache", work, chunk_size="256KiB", metadata_ttl=1,
                     upstream_answer_within=args.answer_within, log_level="warning", prefetch="false")
        for k, v in cached.items():  # warm
            assert raw.request(sc.url, "GET", f"/{BUCKET}/{k}", sign=False).body == v
        time.sleep(1.2)  # every cached object's metadata is now due for revalidation
        out = Outage(sc, tap, cached, uncached)
        results = []
        for name in faults:
            print(f"fault {name}: upstream unreachable for {args.outage:g} s, {args.clients} clients ...", flush=True)
            results.append(out.run(name, args.outage, args.clients))
            time.sleep(1.2)  # cached metadata expires again before the next fault
    finally:
        if sc is not None:
            sc.stop()
        tap.close()
        moto.stop()
    print()
    print(f"upstream_answer_within {args.answer_within} s, metadata_ttl 1 s (cached objects served stale-if-error)")
    print(f"{'fault':7s} {'uncached':>8s} {'503 p50':>8s} {'p99':>7s} {'max':>7s} {'wrong':>5s}   "
          f"{'cached reads':>12s} {'served':>7s}   {'recovery':>8s}")
    ok = True
    for r in results:
        total = r["cached_ok"] + r["cached_bad"]
        share = 100.0 * r["cached_ok"] / total if total else float("nan")
        rec = f"{r['recovery']:.2f} s" if r["recovery"] is not None else "never"
        print(f"{r['fault']:7s} {r['uncached']:8d} {r['uncached_p50']:7.2f}s {r['uncached_p99']:6.2f}s "
              f"{r['uncached_max']:6.2f}s {r['uncached_wrong']:5d}   {total:12d} {share:6.2f}%   {rec:>8s}")
        for e in r["examples"]:
            print("   ", e)
        ok &= r["uncached_wrong"] == 0 and r["cached_bad"] == 0 and r["recovery"] is not None \
            and r["uncached_max"] <= float(args.answer_within) + 0.5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
