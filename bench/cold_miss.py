"""Cold-miss time to last byte: the sidecar against a direct upstream GET of the same object.

    .venv/bin/python bench/cold_miss.py [--size 64MiB] [--count 8] [--stream-mbps 0]

Each round GETs a fresh object straight from the upstream (moto) and a different fresh object
through a sidecar with an empty cache, alternating so both see the same machine state. Prints
the median time to last byte of each, their ratio, the CPU seconds the sidecar, moto and
the client spent per object, and the sidecar's CPU-s per GiB filled (psutil) — on a 2-core machine all three share the cores, which bounds the
ratio. With ``--stream-mbps N`` both paths go through a proxy that limits each upstream
response to N MB/s, as a single S3 connection delivers (typically 50-100 MB/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from sidecar.config import format_size, parse_size  # noqa: E402
from support.procs import MotoServer, Sidecar  # noqa: E402


def sign(url: str) -> dict[str, str]:
    """SigV4 headers for a GET straight to moto (its test credentials)."""
    req = AWSRequest(method="GET", url=url, headers={})
    req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def ttlb(session: aiohttp.ClientSession, url: str, signed: bool, size: int) -> float:
    t0 = time.perf_counter()
    async with session.get(url, headers=sign(url) if signed else {}) as r:
        n = 0
        async for piece in r.content.iter_chunked(1 << 20):
            n += len(piece)
    if r.status != 200 or n != size:
        raise RuntimeError(f"{url}: HTTP {r.status}, {n} bytes")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="64MiB")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--stream-mbps", type=float, default=0.0)
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="sidecar-cold-"))
    moto = MotoServer(work)
    upstream_url, tap = moto.url, None
    if args.stream_mbps:
        from support.tap import Fault, Tap  # noqa: PLC0415

        tap = Tap(moto.url)
        tap.fault = lambda seen: Fault(throttle_bps=args.stream_mbps * 1e6)
        upstream_url = tap.url
    s3 = moto.client()
    s3.create_bucket(Bucket="cold")
    body = os.urandom(size)
    for i in range(2 * args.count):
        s3.put_object(Bucket="cold", Key=f"o{i}", Body=body[:-8] + i.to_bytes(8, "big"))
    sc = Sidecar(upstream_url, work / "cache", work, cache_size="20GiB")
    direct, cold = [], []
    cpu = {"sidecar": 0.0, "moto": 0.0, "client": 0.0}

    async def run() -> None:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            for i in range(args.count):
                direct.append(await ttlb(session, f"{upstream_url}/cold/o{2 * i}", True, size))
                c0 = (cpu_seconds(sc.proc.pid), cpu_seconds(moto.proc.pid), time.process_time())
                cold.append(await ttlb(session, f"{sc.url}/cold/o{2 * i + 1}", False, size))
                cpu["sidecar"] += cpu_seconds(sc.proc.pid) - c0[0]
                cpu["moto"] += cpu_seconds(moto.proc.pid) - c0[1]
                cpu["client"] += time.process_time() - c0[2]

    try:
        asyncio.run(run())
    finally:
        sc.stop()
        if tap is not None:
            tap.close()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)  # the cache holds 2 x count objects' chunks
    d, c = statistics.median(direct), statistics.median(cold)
    limit = f", upstream limited to {args.stream_mbps:g} MB/s per response" if args.stream_mbps else ""
    print(f"cold miss of {format_size(size)} objects ({args.count} each{limit}):")
    print(f"  direct upstream GET  p50 {d * 1e3:8.1f} ms")
    print(f"  through the sidecar  p50 {c * 1e3:8.1f} ms   ratio {c / d:.2f}")
    if tap is not None:
        cpu["client and proxy"] = cpu.pop("client")  # the proxy runs in this process
    print("  CPU per object through the sidecar: " +
          ", ".join(f"{k} {v / args.count * 1e3:.0f} ms" for k, v in cpu.items()))
    print(f"  sidecar CPU per GiB filled: {cpu['sidecar'] / (args.count * size / 2**30):.3f} CPU-s/GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
