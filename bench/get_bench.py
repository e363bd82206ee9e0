"""GET throughput and latency: sidecar hits, sidecar cold misses, direct upstream, nginx ceiling.

    .venv/bin/python bench/get_bench.py [--duration 5] [--sizes 4KiB,1MiB,64MiB] [--concurrency 1,16,64]

Starts a moto S3 server (the upstream), a sidecar in front of it, and Debian's nginx serving
the same bytes from disk (installed here with apt-get if missing, with wrk as the load
generator). Hits and nginx are driven by wrk over keep-alive connections; cold misses and
direct upstream GETs (which need a fresh object per request, and signatures for moto) by an
asyncio client. Prints one table and writes bench/out/get_bench.json.

The sidecars run with ``upstream_answer_within=60s`` (override with ``--set``): moto on a
shared 2-core machine takes longer than the 2 s default to start answering 16-64 concurrent
64 MiB GETs, and the bench measures throughput, not the sidecar's 503 for a silent upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import psutil
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sidecar.config import format_size, parse_size  # noqa: E402
from support.procs import MotoServer, Sidecar, free_port, wait_port  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BUCKET = "bench"


def ensure_tools() -> None:
    missing = [p for p, b in (("nginx", "/usr/sbin/nginx"), ("wrk", "/usr/bin/wrk")) if not shutil.which(b)]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, capture_output=True)


class Nginx:
    def __init__(self, root: Path, workdir: Path, workers: str = "auto") -> None:
        self.port = free_port()
        conf = workdir / f"nginx-{workers}.conf"
        conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {workdir}/nginx-{workers}.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {workdir}/ngx-body; proxy_temp_path {workdir}/ngx-proxy;
  fastcgi_temp_path {workdir}/ngx-fcgi; uwsgi_temp_path {workdir}/ngx-uwsgi; scgi_temp_path {workdir}/ngx-scgi;
  server {{ listen 127.0.0.1:{self.port}; root {root}; }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(workdir / "nginx-error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wrk(url: str, concurrency: int, duration: float) -> dict:
    threads = min(2, concurrency)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}

    def lat(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * unit[m.group(2)] if m else float("nan")

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    mbps = float(m.group(1)) * {"B": 1e-6, "KB": 1024 / 1e6, "MB": 1024**2 / 1e6, "GB": 1024**3 / 1e6}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed responses under wrk")
    return {"rps": rps, "mbps": mbps, "p50": lat("50"), "p99": lat("99"),
            "errors": int(errors.group(1)) if errors else 0}


def sign(url: str) -> dict[str, str]:
    req = AWSRequest(method="GET", url=url, headers={})
    req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1").add_auth(req)
    return dict(req.headers.items())


async def fetch_all(urls: list[str], concurrency: int, signed: bool) -> dict:
    """GET every URL once, ``concurrency`` at a time; time to last byte per request."""
    latencies: list[float] = []
    total = 0
    queue = list(urls)
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False,
                                     timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def worker() -> None:
            nonlocal total
            while queue:
                url = queue.pop()
                headers = sign(url) if signed else {}
                t0 = time.perf_counter()
                async with session.get(url, headers=headers) as r:
                    if r.status != 200:
                        raise RuntimeError(f"{url}: HTTP {r.status}")
                    async for piece in r.content.iter_chunked(1 << 20):
                        total += len(piece)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {"rps": len(latencies) / wall, "mbps": total / wall / 1e6, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], "errors": 0}


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def requests_for(size: int, concurrency: int) -> int:
    """Enough cold requests for a stable figure without uploading gigabytes."""
    per_client = max(1, min(20, (256 << 20) // max(size, 1) // concurrency))
    return concurrency * per_client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--sizes", default="4KiB,1MiB,64MiB")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--chunk-size", default="4MiB")
    ap.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                    help="extra sidecar setting, e.g. --set chunk_verification=when-changed")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    ensure_tools()
    OUT.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    work.chmod(0o755)  # nginx workers run unprivileged and must read the files
    www = work / "www" / BUCKET
    www.mkdir(parents=True)
    for d in (www, www.parent):
        d.chmod(0o755)
    moto = MotoServer(work)
    s3 = moto.client()
    s3.create_bucket(Bucket=BUCKET)
    print(f"uploading objects to the upstream ({work}) ...", flush=True)
    for size in sizes:
        body = os.urandom(size)
        s3.put_object(Bucket=BUCKET, Key=f"hot-{size}", Body=body)
        (www / f"hot-{size}").write_bytes(body)
        (www / f"hot-{size}").chmod(0o644)
        for i in range(max(requests_for(size, c) for c in levels)):
            s3.put_object(Bucket=BUCKET, Key=f"cold-{size}-{i}", Body=body[:-8] + i.to_bytes(8, "big") if size > 8
                          else os.urandom(size))
    nginx = Nginx(work / "www", work)
    rows: list[dict] = []
    peak_rss: dict[str, int] = {}

    def record(kind: str, size: int, c: int, r: dict) -> None:
        row = {"kind": kind, "size": size, "concurrency": c, **r}
        rows.append(row)
        print(f"{kind:<14} {format_size(size):>6} c={c:<3} {r['mbps']:9.1f} MB/s {r['rps']:9.1f} req/s "
              f"p50 {r['p50'] * 1e3:8.2f} ms  p99 {r['p99'] * 1e3:8.2f} ms", flush=True)

    try:
        for size in sizes:
            for c in levels:
                # cold misses: a fresh sidecar cache each round, one distinct object per request
                settings = {"upstream_answer_within": "60s", **dict(kv.split("=", 1) for kv in args.set)}
                sc = Sidecar(moto.url, work / f"cache-{size}-{c}", work, chunk_size=args.chunk_size,
                             cache_size="20GiB", **settings)
                n = requests_for(size, c)
                urls = [f"{sc.url}/{BUCKET}/cold-{size}-{i}" for i in range(n)]
                with RssSampler(sc.proc.pid) as rss:
                    record("sidecar-miss", size, c, asyncio.run(fetch_all(urls, c, signed=False)))
                    hot = f"{sc.url}/{BUCKET}/hot-{size}"
                    asyncio.run(fetch_all([hot], 1, signed=False))  # warm
                    record("sidecar-hit", size, c, wrk(hot, c, args.duration))
                peak_rss[f"{format_size(size)} c={c}"] = rss.peak
                sc.stop()
                record("upstream", size, c, asyncio.run(fetch_all(
                    [f"{moto.url}/{BUCKET}/cold-{size}-{i}" for i in range(n)], c, signed=True)))
                record("nginx", size, c, wrk(f"{nginx.url}/{BUCKET}/hot-{size}", c, args.duration))
    finally:
        nginx.stop()
        moto.stop()

    def get(kind: str, size: int, c: int) -> dict | None:
        return next((r for r in rows if (r["kind"], r["size"], r["concurrency"]) == (kind, size, c)), None)

    print("\n== summary ==")
    summary = {}
    for size in sizes:
        for c in levels:
            hit, ng, miss, up = (get(k, size, c) for k in ("sidecar-hit", "nginx", "sidecar-miss", "upstream"))
            key = f"{format_size(size)} c={c}"
            summary[key] = {
                "hit_vs_nginx_throughput": hit["mbps"] / ng["mbps"],
                "hit_vs_nginx_rps": hit["rps"] / ng["rps"],
                "miss_ttlb_p50_vs_upstream": miss["p50"] / up["p50"],
                "peak_rss_mib": peak_rss[key] / 2**20,
            }
            s = summary[key]
            print(f"{key:<12} hit/nginx {s['hit_vs_nginx_throughput']:5.2f} (req/s {s['hit_vs_nginx_rps']:5.2f})  "
                  f"cold-miss TTLB p50 / direct {s['miss_ttlb_p50_vs_upstream']:5.2f}  "
                  f"peak RSS {s['peak_rss_mib']:6.1f} MiB")
    (OUT / "get_bench.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
