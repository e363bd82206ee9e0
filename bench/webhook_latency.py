"""Admission webhook latency per review: prints p50/p90/p99/max for several pod shapes.

Starts the real `sidecar inject serve` (HTTPS, uvloop) as a subprocess with a throwaway
certificate, sends AdmissionReviews over keep-alive HTTPS as the API server does, and times
each round trip. Also times `review.answer` alone (JSON in, patch out, no network).

    .venv/bin/python bench/webhook_latency.py [--reviews 2000] [--concurrency 1,8]

Goal: p99 <= 10 ms per review.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aiohttp  # noqa: E402
import uvloop  # noqa: E402

from k8s_support import admission_review, write_tls  # noqa: E402
from sidecar.inject import review, spec  # noqa: E402


def _container(i: int, env: int) -> dict:
    return {"name": f"c{i}", "image": "registry.example/app:1.0",
            "env": [{"name": f"VAR_{j}", "value": "x" * 20} for j in range(env)],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}


SHAPES = {
    "single container": {"metadata": {"generateName": "web-", "namespace": "apps"},
                         "spec": {"containers": [_container(0, 3)]}},
    "3 containers + 2 init, annotated": {
        "metadata": {"generateName": "etl-", "namespace": "apps", "annotations": {
            "sidecar.s3cache.io/cache-size": "20GiB", "sidecar.s3cache.io/chunk-size": "8MiB",
            "sidecar.s3cache.io/upstream": "http://minio.storage.svc:9000"}},
        "spec": {"containers": [_container(i, 5) for i in range(3)],
                 "initContainers": [_container(10 + i, 2) for i in range(2)]}},
    "large pod (20 containers x 50 env)": {"metadata": {"generateName": "big-", "namespace": "apps"},
                                           "spec": {"containers": [_container(i, 50) for i in range(20)]}},
}


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def line(label: str, samples: list[float]) -> str:
    ms = [x * 1000 for x in samples]
    return (f"  {label:<40} n={len(ms):<6} p50={pct(ms, 50):6.3f} ms  p90={pct(ms, 90):6.3f} ms  "
            f"p99={pct(ms, 99):6.3f} ms  max={max(ms):6.3f} ms  mean={statistics.fmean(ms):6.3f} ms")


def in_process(n: int) -> None:
    s = spec.InjectSpec()
    print("review.answer alone (parse, plan, encode; no network):")
    for name, pod in SHAPES.items():
        body = json.dumps(admission_review(pod)).encode()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            ans = review.answer(body, s)
            times.append(time.perf_counter() - t)
        assert ans.outcome == "injected", ans.reason
        print(line(name, times))


async def over_https(url: str, ca: Path, n: int, concurrency: int) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    connector = aiohttp.TCPConnector(ssl=ctx, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        print(f"over HTTPS, keep-alive, {concurrency} review(s) in flight:")
        for name, pod in SHAPES.items():
            body = json.dumps(admission_review(pod)).encode()
            for _ in range(20):  # warm-up: connections, caches
                async with session.post(url, data=body) as r:
                    await r.read()
            times: list[float] = []

            async def worker(count: int) -> None:
                for _ in range(count):
                    t = time.perf_counter()
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                        doc = await r.json()
                    times.append(time.perf_counter() - t)
                    assert doc["response"]["allowed"] and "patch" in doc["response"]

            before = await server_seconds(session, url)
            await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
            after = await server_seconds(session, url)
            server_ms = (after[0] - before[0]) / max(1, after[1] - before[1]) * 1000
            print(line(name, times) + f"  (server side: mean {server_ms:.3f} ms)")


async def server_seconds(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(sum, count) of the webhook's own review-duration histogram: time spent inside the handler."""
    async with session.get(url.replace("/mutate", "/metrics")) as r:
        text = await r.text()
    values = {}
    for metric in ("sidecar_inject_review_duration_seconds_sum", "sidecar_inject_review_duration_seconds_count"):
        values[metric] = float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith(metric)))
    return values["sidecar_inject_review_duration_seconds_sum"], values["sidecar_inject_review_duration_seconds_count"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviews", type=int, default=2000, help="reviews per pod shape and concurrency")
    ap.add_argument("--concurrency", default="1,8", help="comma-separated numbers of reviews in flight")
    args = ap.parse_args()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.reviews} reviews per shape")
    in_process(args.reviews)
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = write_tls(Path(tmp))
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "inject", "serve", f"--listen=127.0.0.1:{port}",
             f"--tls-cert={cert}", f"--tls-key={key}", "--log-level=info", "--drain-delay=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("webhook did not start")
                    time.sleep(0.1)
            url = f"https://localhost:{port}/mutate"
            for c in (int(x) for x in args.concurrency.split(",")):
                uvloop.run(over_https(url, ca, args.reviews, c))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
