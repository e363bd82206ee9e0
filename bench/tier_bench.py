"""Shared tier payoff and latency: N sidecars (pods) reading one dataset, with and without a shared tier.

    .venv/bin/python bench/tier_bench.py [--pods 1,2,4] [--objects 6] [--size 8MiB] [--chunk 2MiB]
    .venv/bin/python bench/tier_bench.py --pods '' --latency-objects 12   # latency only

One moto server process is the upstream, a second moto server process holds the tier.

Payoff (``--pods``): for each N, N fresh sidecars (each its own empty cache) read the whole
dataset one pod after the other, as pods of a job that start minutes apart do; with the tier,
each pod's background writes are let finish before the next pod starts. Prints the upstream
bytes all pods together pulled (the sidecars' own ``sidecar_upstream_bytes_total``) against the
dataset size, and the upstream requests they sent (HEAD, GET).

Latency (``--latency-objects``): time to first byte and to last byte of a whole-object GET
(boto3's defaults: checksum mode on) of each object, taken in turn, object by object, as
(1) a direct GET from the upstream, (2) a cold miss through a sidecar without a tier, and
(3) a tier hit: a sidecar whose cache is empty reading what another pod put in the tier, and
(4) the same where the pod knew each object's version but its metadata expired (it HEADed them
earlier, metadata TTL 1 s): the revalidating HEAD and the tier's block reads overlap.
Each client is warmed by one read of another object first (connection pools, TLS contexts).
Prints medians, and what the tier-hit pod asked of the upstream meanwhile.

``--upstream-latency 20ms --upstream-bandwidth 100MiB`` puts a proxy in front of the upstream
(for the direct GETs and the sidecars alike) that holds each request that long and paces
bodies at that rate per connection, as a distant S3 region is to a cluster whose tier store is
in the cluster (the tier's store is reached directly). Without them, both stores are moto
processes on this machine, equally near.
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

from sidecar.config import format_size, parse_duration, parse_size  # noqa: E402
from support.procs import MotoServer, Sidecar, client as s3_client  # noqa: E402
from support.tap import Fault, Tap  # noqa: E402


def upstream_bytes(sc: Sidecar) -> float:
    return float(sc.admin("/stats")["upstream"]["bytes"])


def upstream_requests(sc: Sidecar) -> dict[str, float]:
    return {k: v for k, v in sc.admin("/stats")["upstream"]["requests"].items() if v}


def requests_by_op(sc: Sidecar) -> dict[str, float]:
    """Upstream requests the pod sent, by operation (HeadObject, GetObject, ...), whatever their outcome."""
    out: dict[str, float] = {}
    for labels, v in upstream_requests(sc).items():
        op = dict(part.split("=", 1) for part in labels.split(",")).get("operation", "").strip('"')
        out[op] = out.get(op, 0) + v
    return out


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


def timed_get(client, bucket: str, key: str) -> tuple[float, float]:
    """(time to first body byte, time to last byte) of a whole-object GET."""
    t0 = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    body.read(1)
    t1 = time.perf_counter()
    body.read()
    return t1 - t0, time.perf_counter() - t0


def cpu_seconds(sc: Sidecar) -> float:
    """User + system CPU the sidecar process has used so far (Linux /proc)."""
    assert sc.proc is not None
    fields = Path(f"/proc/{sc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ttlb(client, bucket: str, key: str) -> float:
    return timed_get(client, bucket, key)[1]


def run(n: int, tier: bool, upstream: MotoServer, tier_store: MotoServer, bucket: str, keys: list[str],
        chunk: str, work: Path, logs: Path) -> tuple[float, dict[str, float]]:
    """Upstream bytes of all pods together, and their upstream requests by operation."""
    flags = dict(chunk_size=chunk, prefetch="false", metadata_ttl=60)
    if tier:
        tier_bucket = "tier-" + uuid.uuid4().hex[:10]
        tier_store.client().create_bucket(Bucket=tier_bucket)
        flags.update(shared_tier=f"s3://{tier_bucket}/job", shared_tier_endpoint=tier_store.url)
    total = 0.0
    asked: dict[str, float] = {}
    for _ in range(n):
        sc = Sidecar(upstream.url, work / f"cache-{uuid.uuid4().hex[:8]}", logs, **flags)
        try:
            c = sc.client()
            for k in keys:
                ttlb(c, bucket, k)
            if tier:
                drain(sc)
            total += upstream_bytes(sc)
            for op, v in requests_by_op(sc).items():
                asked[op] = asked.get(op, 0) + v
        finally:
            sc.stop()
    return total, asked


def latency(upstream, tier_store: MotoServer, bucket: str, keys: list[str], chunk: str,
            work: Path, logs: Path) -> None:
    warm = "warm-up"
    flags = dict(chunk_size=chunk, prefetch="false", metadata_ttl=60, readahead_chunks=0)
    tier_bucket = "tier-" + uuid.uuid4().hex[:10]
    tier_store.client().create_bucket(Bucket=tier_bucket)
    tiered = dict(flags, shared_tier=f"s3://{tier_bucket}/job", shared_tier_endpoint=tier_store.url)
    filler = Sidecar(upstream.url, work / f"cache-{uuid.uuid4().hex[:8]}", logs, **tiered)
    try:
        c = filler.client()
        for k in [warm, *keys]:
            ttlb(c, bucket, k)
        drain(filler)
    finally:
        filler.stop()
    plain = Sidecar(upstream.url, work / f"cache-{uuid.uuid4().hex[:8]}", logs, **flags)
    reader = Sidecar(upstream.url, work / f"cache-{uuid.uuid4().hex[:8]}", logs, **tiered)
    expired = Sidecar(upstream.url, work / f"cache-{uuid.uuid4().hex[:8]}", logs, **dict(tiered, metadata_ttl=1))
    try:
        cases = {"direct upstream GET": s3_client(upstream.url), "sidecar miss, no tier": plain.client(),
                 "sidecar tier hit": reader.client(), "tier hit, expired entry": expired.client()}
        for client in cases.values():
            ttlb(client, bucket, warm)
        for k in keys:  # known versions whose metadata expires before they are read
            cases["tier hit, expired entry"].head_object(Bucket=bucket, Key=k)
        time.sleep(1.2)
        before = upstream_requests(reader)
        expired_before = upstream_requests(expired)
        hits_before = reader.admin("/stats")["tier"]["reads"].get("hit", 0)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        pods = {"sidecar miss, no tier": plain, "sidecar tier hit": reader, "tier hit, expired entry": expired}
        cpu0 = {name: cpu_seconds(sc) for name, sc in pods.items()}
        for k in keys:
            for name, client in cases.items():
                times[name].append(timed_get(client, bucket, k))
        cpu = {name: cpu_seconds(sc) - cpu0[name] for name, sc in pods.items()}
        after = upstream_requests(reader)
        expired_after = upstream_requests(expired)
        hits = reader.admin("/stats")["tier"]["reads"].get("hit", 0) - hits_before
        guessed = {k: v for k, v in reader.admin("/stats")["tier"].items() if k in ("hints", "speculations")}
    finally:
        plain.stop()
        reader.stop()
        expired.stop()
    print(f"\nwhole-object GET, {len(keys)} objects, medians (min-max) in ms:")
    print(f"{'':24} {'TTFB':>20} {'TTLB':>20} {'sidecar CPU ms/GET':>19}")
    for name, got in times.items():
        cols = []
        for i in (0, 1):
            ms = [t[i] * 1000 for t in got]
            cols.append(f"{statistics.median(ms):7.1f} ({min(ms):.0f}-{max(ms):.0f})")
        used = f"{cpu[name] * 1000 / len(got):.1f}" if name in cpu else "-"
        print(f"{name:24} {cols[0]:>20} {cols[1]:>20} {used:>19}")
    asked = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}
    print(f"tier-hit pod: {hits:.0f} block hits; upstream requests meanwhile: {asked or 'none'}")
    if guessed:
        print(f"tier-hit pod: records of the version last seen and speculative reads: {guessed}")
    asked = {k: v - expired_before.get(k, 0) for k, v in expired_after.items() if v - expired_before.get(k, 0)}
    print(f"expired-entry pod: upstream requests meanwhile: {asked or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="1,2,4", help="pod counts for the payoff table ('' skips it)")
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--latency-objects", type=int, default=8, help="objects timed for latency (0 skips it)")
    ap.add_argument("--size", default="8MiB")
    ap.add_argument("--chunk", default="2MiB")
    ap.add_argument("--upstream-latency", type=parse_duration, default=0.0,
                    help="hold each upstream request this long (a distant region)")
    ap.add_argument("--upstream-bandwidth", type=parse_size, default=0,
                    help="pace upstream bodies at this many bytes/s per connection (0: unpaced)")
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
        keys = [f"shard-{i:03d}" for i in range(max(args.objects, args.latency_objects))]
        for k in [*keys, "warm-up"]:
            s3.put_object(Bucket=bucket, Key=k, Body=os.urandom(size))
        pods = [int(x) for x in args.pods.split(",") if x.strip()]
        if pods:
            dataset = size * args.objects
            print(f"dataset {args.objects} x {format_size(size)} = {dataset / 2**20:.0f} MiB, chunk {args.chunk}")
            print(f"{'pods':>4} {'tier':>5} {'upstream MiB':>13} {'x dataset':>10} {'HEAD':>5} {'GET':>5}")
            for n in pods:
                for tier in (False, True):
                    total, asked = run(n, tier, upstream, tier_store, bucket, keys[:args.objects], args.chunk,
                                       work, logs)
                    print(f"{n:>4} {'yes' if tier else 'no':>5} {total / 2**20:>13.1f} {total / dataset:>10.2f}"
                          f" {asked.get('HeadObject', 0):>5.0f} {asked.get('GetObject', 0):>5.0f}", flush=True)
        if args.latency_objects:
            far = upstream
            if args.upstream_latency or args.upstream_bandwidth:
                far = Tap(upstream.url)
                far.fault = lambda seen: Fault(delay=args.upstream_latency,
                                               throttle_bps=float(args.upstream_bandwidth) or None)
            print(f"objects of {format_size(size)}, chunk {args.chunk}; upstream held "
                  f"{args.upstream_latency * 1000:.0f} ms per request, paced at "
                  f"{format_size(args.upstream_bandwidth) + '/s' if args.upstream_bandwidth else 'no limit'}")
            try:
                latency(far, tier_store, bucket, keys[:args.latency_objects], args.chunk, work, logs)
            finally:
                if far is not upstream:
                    far.close()
    finally:
        upstream.stop()
        tier_store.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
