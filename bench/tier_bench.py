"""Shared tier payoff: N sidecars (pods) reading one dataset, with and without a shared tier.

    .venv/bin/python bench/tier_bench.py [--pods 1,2,4] [--objects 6] [--size 8MiB] [--chunk 2MiB]

One moto server is the upstream, a second moto server holds the tier. For each N, N fresh
sidecars (each its own empty cache) read the whole dataset one pod after the other, as pods of
a job that start minutes apart do; with the tier, each pod's background writes are let finish
before the next pod starts. Prints the upstream bytes all pods together pulled (the sidecars'
own ``sidecar_upstream_bytes_total``) against the dataset size, and the median time to last
byte of a whole-object GET served by an upstream miss (pod 1) and by tier hits (pods 2..N),
next to a direct GET from the upstream.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sidecar.config import format_size, parse_size  # noqa: E402
from support.procs import MotoServer, Sidecar  # noqa: E402


def upstream_bytes(sc: Sidecar) -> float:
    return float(sc.admin("/stats")["upstream"]["bytes"])


def drain(sc: Sidecar, timeout: float = 60.0) -> None:
    """Wait until the pod's tier writes have landed (queue empty, nothing being written)."""
    deadline = time.monotonic() + timeout
    last = -1.0
    while time.monotonic() < deadline:
        tier = sc.admin("/stats")["tier"]
        done = sum(tier["writes"].values())
        if tier["write_queue"] == 0 and done == last:
            return
        last = done
        time.sleep(0.2)


def ttlb(client, bucket: str, key: str) -> float:
    t0 = time.perf_counter()
    client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return time.perf_counter() - t0


def run(n: int, tier: bool, upstream: MotoServer, tier_store: MotoServer, bucket: str, keys: list[str],
        chunk: str, work: Path, logs: Path) -> tuple[float, list[float], list[float]]:
    flags = dict(chunk_size=chunk, prefetch="false", metadata_ttl=60)
    if tier:
        tier_bucket = "tier-" + uuid.uuid4().hex[:10]
        tier_store.client().create_bucket(Bucket=tier_bucket)
        flags.update(shared_tier=f"s3://{tier_bucket}/job", shared_tier_endpoint=tier_store.url)
    total = 0.0
    first: list[float] = []
    later: list[float] = []
    for pod in range(n):
        sc = Sidecar(upstream.url, work / f"cache-{uuid.uuid4().hex[:8]}", logs, **flags)
        try:
            c = sc.client()
            times = [ttlb(c, bucket, k) for k in keys]
            (first if pod == 0 else later).extend(times)
            if tier:
                drain(sc)
            total += upstream_bytes(sc)
        finally:
            sc.stop()
    return total, first, later


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="1,2,4")
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--size", default="8MiB")
    ap.add_argument("--chunk", default="2MiB")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="tier-bench-"))
    logs = work / "logs"
    logs.mkdir()
    upstream, tier_store = MotoServer(logs), MotoServer(logs)
    try:
        s3 = upstream.client()
        bucket = "data"
        s3.create_bucket(Bucket=bucket)
        keys = [f"shard-{i:03d}" for i in range(args.objects)]
        for k in keys:
            s3.put_object(Bucket=bucket, Key=k, Body=os.urandom(size))
        dataset = size * len(keys)
        direct = statistics.median(ttlb(s3, bucket, k) for k in keys)
        print(f"dataset {len(keys)} x {format_size(size)} = {dataset / 2**20:.0f} MiB, chunk {args.chunk}; "
              f"direct upstream GET TTLB median {direct * 1000:.1f} ms")
        print(f"{'pods':>4} {'tier':>5} {'upstream MiB':>13} {'x dataset':>10} {'miss TTLB ms':>13} "
              f"{'later pods TTLB ms':>19}")
        for n in (int(x) for x in args.pods.split(",")):
            for tier in (False, True):
                total, first, later = run(n, tier, upstream, tier_store, bucket, keys, args.chunk, work, logs)
                later_ms = f"{statistics.median(later) * 1000:.1f}" if later else "-"
                print(f"{n:>4} {'yes' if tier else 'no':>5} {total / 2**20:>13.1f} {total / dataset:>10.2f} "
                      f"{statistics.median(first) * 1000:>13.1f} {later_ms:>19}", flush=True)
    finally:
        upstream.stop()
        tier_store.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
