"""Hits and cold misses against nginx in the same run: the data plane's figures (issue table).

    PYTHONPATH=. .venv/bin/python bench/get_bench.py [--duration 3] [--rounds 3] [--cold-rounds 3] [--floor]

Starts a moto S3 server (the upstream), a sidecar in front of it (default settings, warm cache),
Debian's nginx (1 worker, sendfile; twice: tcp_nopush off and on, each case compared with the
faster) serving the same bytes from disk, and a third nginx as a
``proxy_cache`` in front of moto. Each server is pinned to CPU 0 and wrk to CPU 1 (taskset);
nginx and the sidecar alternate, and each figure is the median of ``--rounds`` runs.

Hit cases (wrk, keep-alive): 4 KiB objects c=64; 1 MiB and 64 MiB objects c=16; random
unaligned ranges of 64 KiB, 256 KiB and 1 MiB inside a 64 MiB object c=16 (a wrk Lua script
sets a random Range per request). For each: req/s, MiB/s, and CPU-s/GiB of the server (its
processes' user+system CPU time over the run, divided by GiB served). Under each row, where
the sidecar's hits of that case came from (its counters): chunk reads from memory, bytes sent
from chunk files unchecked, bytes read and checked; a case that stops coming from memory, or
checks its bytes on every run, shows there. Each row also gives wrk's own CPU share (one
thread) against nginx and against the sidecar: at 90 % or more the client, not the server, sets
the pace ("client-bound"), and CPU-s/GiB is then the figure that compares the servers. On
loopback part of the kernel's work for each byte is charged to whichever side's CPU happens to
run it (nginx's tcp_nopush moves it from the client to the server), so the row also gives the
server's and the client's CPU-s/GiB added together.

``--floor`` adds bench/floor_server.py, pinned like the others: a Python static file server on
uvloop doing only what every hit must (head, Range, sendfile) and none of the sidecar's own work
per hit. Its req/s and CPU-s/GiB, beside nginx's, split a gap into the interpreter's share and
the sidecar's.

With the 64 MiB case: the sidecar's peak RSS (VmHWM) after 64 clients read 64 MiB objects.

Cold 64 MiB misses (one fresh object per request, one at a time): a direct upstream GET, nginx
``proxy_cache`` (proxy_buffering on: it streams to the client while writing its cache file)
and the sidecar; time to first and last byte, and the ratio to the direct GET. They run before
the hit cases: in the three full runs that had them after, every server's misses, the direct
GET's included, ran 2-4x slower than in runs of misses alone. (Slow phases also came in runs of
misses alone: the proxies' fills then took about twice their usual system CPU, which the fill
columns show.) The proxies stay on CPU 0; for these rounds the upstream (moto) and the client
(this process) are pinned to CPU 1, so that where the scheduler puts them does not change a
proxy's share of CPU 0 from request to request. The sidecar's TTLB over nginx's is also given
round by round (median and range), and each proxy's CPU time per GiB filled (its processes'
user and system time over the misses).

Absolute figures on a shared machine are noisy; ratios within one run are what count. Each row
also gives the "paired" ratios: the median over rounds of each round's sidecar/nginx ratio
(the two ran back to back in that round), steadier when the machine's speed drifts during a run.
Prints one table and writes bench/out/get_bench.json.

The daemon under test is ``python -m sidecar`` started in the current directory, so it is the
``sidecar`` package found there first (then on PYTHONPATH), not necessarily this file's: to
compare two checkouts, run the bench from inside each (``cd OTHER && PYTHONPATH=$PWD python
/path/to/bench/get_bench.py``), or, better, in one run: ``--baseline OTHER`` starts a second
sidecar from the checkout OTHER, measured interleaved with the first (a column "baseline", and
the ratio of the sidecar under test to it; among the cold misses, a row of its own). The first
line printed names the packages used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.observe import metric  # noqa: E402
from support.procs import CHILD_ENV, MotoServer, Sidecar, free_port, wait_port  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BUCKET = "bench"
KiB, MiB, GiB = 1024, 1024**2, 1024**3
SERVER_CPU, CLIENT_CPU = 0, 1
CLIENT_BOUND = 0.9  # wrk busy this share of the run or more: the client sets the pace

# (name, object size, concurrency, range length or None)
HIT_CASES = [
    ("4 KiB objects, c=64", 4 * KiB, 64, None),
    ("1 MiB objects, c=16", 1 * MiB, 16, None),
    ("64 MiB objects, c=16", 64 * MiB, 16, None),
    ("64 KiB ranges in 64 MiB, c=16", 64 * MiB, 16, 64 * KiB),
    ("256 KiB ranges in 64 MiB, c=16", 64 * MiB, 16, 256 * KiB),
    ("1 MiB ranges in 64 MiB, c=16", 64 * MiB, 16, 1 * MiB),
]

RANGE_LUA = """
local size, len = {size}, {length}
local seeded = false
request = function()
  if not seeded then math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16)); seeded = true end
  local a = math.random(0, size - len)
  return wrk.format("GET", nil, {{["Range"] = "bytes=" .. a .. "-" .. (a + len - 1)}})
end
"""


def ensure_tools() -> None:
    missing = [p for p, b in (("nginx", "/usr/sbin/nginx"), ("wrk", "/usr/bin/wrk")) if not shutil.which(b)]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, capture_output=True)


def pin(pid: int, cpu: int) -> None:
    """Pin a process and all its threads/children to one CPU."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        for t in p.threads():
            try:
                os.sched_setaffinity(t.id, {cpu})
            except OSError:
                pass


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process and its children (nginx's worker, the sidecar's
    threads)."""
    user = system = 0.0
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        try:
            t = p.cpu_times()
            user += t.user
            system += t.system
        except psutil.Error:
            pass
    return user, system


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process and its children."""
    return sum(cpu_split(pid))


class PinnedServer:
    """A server process started on ``self.port``, pinned to the servers' CPU."""

    port: int

    def _start(self, cmd: list[str], **popen) -> None:
        self.proc = subprocess.Popen(cmd, **popen)
        wait_port(self.port, proc=self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        pin(self.proc.pid, SERVER_CPU)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Nginx(PinnedServer):
    """nginx with one worker: a static file server (sendfile) or a proxy_cache in front of ``upstream``."""

    def __init__(self, workdir: Path, *, root: Path | None = None, upstream: str | None = None,
                 nopush: bool = False) -> None:
        self.port = free_port()
        name = ("static-nopush" if nopush else "static") if root is not None else "proxy"
        if root is not None:
            server = f"root {root};"
        else:
            cache = workdir / "ngx-cache"
            shutil.rmtree(cache, ignore_errors=True)
            server = f"""
    location / {{
      proxy_pass {upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $http_host;
      proxy_cache c; proxy_cache_valid 200 1h; proxy_buffering on;
      proxy_max_temp_file_size 0;
    }}"""
        # tcp_nopush off is nginx's default; on (Debian's packaged config) it sends large files
        # faster but makes a 64 KiB range wait ~40 ms for a delayed ACK. Both run; each case
        # compares with the faster of the two.
        conf = workdir / f"nginx-{name}.conf"
        cache_path = f"proxy_cache_path {workdir}/ngx-cache keys_zone=c:10m max_size=20g inactive=1h use_temp_path=off;" \
            if upstream else ""
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx-{name}.pid;
error_log {workdir}/nginx-{name}-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush {"on" if nopush else "off"};
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path {workdir}/ngx-body; proxy_temp_path {workdir}/ngx-proxy;
  fastcgi_temp_path {workdir}/ngx-fcgi; uwsgi_temp_path {workdir}/ngx-uwsgi; scgi_temp_path {workdir}/ngx-scgi;
  {cache_path}
  server {{ listen 127.0.0.1:{self.port}; {server} }}
}}
""")
        self._start(["nginx", "-c", str(conf), "-e", str(workdir / f"nginx-{name}-error.log")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Floor(PinnedServer):
    """bench/floor_server.py serving the same files as nginx."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self._start([sys.executable, str(Path(__file__).resolve().parent / "floor_server.py"), str(root),
                     str(self.port)], env=CHILD_ENV)


def wrk(url: str, concurrency: int, duration: float, script: Path | None) -> dict:
    cmd = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s"]
    if script is not None:
        cmd += ["-s", str(script)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed responses under wrk:\n{out}")
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),\s+([\d.]+)(B|KB|MB|GB|TB) read", out)
    if m is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests = int(m.group(1))
    seconds = float(m.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    nbytes = float(m.group(4)) * {"B": 1, "KB": KiB, "MB": MiB, "GB": GiB, "TB": 1024 * GiB}[m.group(5)]
    client_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"requests": requests, "seconds": seconds, "bytes": nbytes, "client_cpu": client_cpu}


def measure(pid: int, url: str, concurrency: int, duration: float, script: Path | None, body: int) -> dict:
    c0 = cpu_seconds(pid)
    r = wrk(url, concurrency, duration, script)
    cpu = cpu_seconds(pid) - c0
    served = r["requests"] * body
    return {"rps": r["requests"] / r["seconds"], "mibps": served / MiB / r["seconds"],
            "cpu_s_per_gib": cpu / (served / GiB) if served else float("nan"), "cpu_s": cpu,
            "client_cpu_share": r["client_cpu"] / r["seconds"],
            "client_cpu_s_per_gib": r["client_cpu"] / (served / GiB) if served else float("nan")}


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def sign(url: str) -> dict[str, str]:
    """SigV4 headers for a GET of ``url`` straight from moto (bench/cold_miss.py's direct GET)."""
    req = AWSRequest(method="GET", url=url, headers={})
    req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def signed_headers(host: str, path: str) -> str:
    """SigV4 headers for moto (signed for its host: nginx's proxy_pass sends the same Host)."""
    req = AWSRequest(method="GET", url=f"http://{host}{path}", headers={})
    req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1").add_auth(req)
    return "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())


def timed_get(port: int, path: str, sign_for: str | None = None) -> tuple[float, float, int]:
    """One GET on a fresh connection: (time to first body byte, time to last byte, bytes)."""
    extra = signed_headers(sign_for, path) if sign_for else ""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        host = sign_for or "127.0.0.1"
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            piece = s.recv(65536)
            if not piece:
                raise RuntimeError(f"{path}: connection closed before the headers")
            buf += piece
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"{path}: HTTP {status.decode()}: {head.decode(errors='replace')}")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        got = len(rest)
        while got == 0:
            piece = s.recv(1 << 20)
            if not piece:
                break
            got += len(piece)
        ttfb = time.perf_counter() - t0
        while got < length:
            piece = s.recv(1 << 20)
            if not piece:
                raise RuntimeError(f"{path}: short body {got} of {length}")
            got += len(piece)
        return ttfb, time.perf_counter() - t0, got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per hit case (median)")
    ap.add_argument("--cold-rounds", type=int, default=3, help="cold 64 MiB misses per server (median; 0: none)")
    ap.add_argument("--cases", default="", help="comma-separated substrings selecting hit cases (default all)")
    ap.add_argument("--baseline", type=Path, default=None, metavar="CHECKOUT",
                    help="also measure the sidecar of another checkout, interleaved (hit cases)")
    ap.add_argument("--floor", action="store_true",
                    help="also measure bench/floor_server.py (the least a Python hit path does) on the hit cases")
    ap.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                    help="extra sidecar setting, e.g. --set chunk_verification=when-changed")
    args = ap.parse_args()
    cases = [c for c in HIT_CASES if not args.cases or any(s.strip() in c[0] for s in args.cases.split(","))]
    ensure_tools()
    under_test = subprocess.run([sys.executable, "-c", "import sidecar, os; print(os.path.dirname(sidecar.__file__))"],
                                capture_output=True, text=True, check=True, env=CHILD_ENV).stdout.strip()
    print(f"sidecar under test: {under_test}", flush=True)
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        base_pkg = subprocess.run([sys.executable, "-c", "import sidecar, os; print(os.path.dirname(sidecar.__file__))"],
                                  capture_output=True, text=True, check=True, cwd=args.baseline,
                                  env={**CHILD_ENV, "PYTHONPATH": str(args.baseline)}).stdout.strip()
        print(f"baseline sidecar: {base_pkg}", flush=True)
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
    sizes = sorted({size for _, size, _, _ in cases})
    big = os.urandom(64 * MiB)
    for size in sizes:
        body = big[:size]
        s3.put_object(Bucket=BUCKET, Key=f"hot-{size}", Body=body)
        (www / f"hot-{size}").write_bytes(body)
        (www / f"hot-{size}").chmod(0o644)
    servers = ("direct", "nginx-proxy-cache", "sidecar") + (("baseline",) if args.baseline is not None else ())
    for i in range(args.cold_rounds):
        for who in servers:
            s3.put_object(Bucket=BUCKET, Key=f"cold-{who}-{i}", Body=big[:-8] + i.to_bytes(8, "big"))
    settings = {"upstream_answer_within": "60s", **dict(kv.split("=", 1) for kv in args.set)}
    sc = Sidecar(moto.url, work / "cache", work, cache_size="20GiB", **settings)
    pin(sc.proc.pid, SERVER_CPU)
    baseline = None
    if args.baseline is not None:
        baseline = Sidecar(moto.url, work / "cache-baseline", work, cache_size="20GiB", cwd=args.baseline,
                       env={"PYTHONPATH": str(args.baseline)}, **settings)
        pin(baseline.proc.pid, SERVER_CPU)
    nginx = Nginx(work, root=work / "www")
    nginx_nopush = Nginx(work, root=work / "www", nopush=True)
    proxy = Nginx(work, upstream=moto.url)
    floor = Floor(work / "www") if args.floor else None
    for size in sizes:  # warm the sidecars' caches with every hot object
        timed_get(sc.port, f"/{BUCKET}/hot-{size}")
        if baseline is not None:
            timed_get(baseline.port, f"/{BUCKET}/hot-{size}")
    results: dict[str, dict[str, list[dict]]] = {}
    sources = hit_counters(sc)
    try:
        cold: dict[str, list[tuple[float, float]]] = {who: [] for who in servers}
        proxies = {"nginx-proxy-cache": proxy, "sidecar": sc, "baseline": baseline}
        ports = {"direct": moto.port, **{who: p.port for who, p in proxies.items() if p is not None}}
        fill_pids = {who: p.proc.pid for who, p in proxies.items() if p is not None}
        fill_cpu = {who: [0.0, 0.0] for who in fill_pids}  # user, system seconds over the fills
        # Cold misses first: in three full runs with them after the hit cases, every server's
        # misses ran 2-4x slower, direct GETs from moto included (see the module's docstring).
        # The proxies stay on CPU 0; the upstream and this process (the client) go to CPU 1, so
        # neither takes a proxy's CPU for a varying share of a run (the same for every server).
        cpus = os.sched_getaffinity(0)
        if args.cold_rounds:
            pin(moto.proc.pid, CLIENT_CPU)
            os.sched_setaffinity(0, {CLIENT_CPU})
        for i in range(args.cold_rounds):
            for who in servers if i % 2 == 0 else servers[::-1]:  # neither always first
                before = cpu_split(fill_pids[who]) if who in fill_pids else None
                direct = who in ("direct", "nginx-proxy-cache")  # (nginx passes the client's signature on)
                ttfb, ttlb, n = timed_get(ports[who], f"/{BUCKET}/cold-{who}-{i}",
                                          sign_for=f"127.0.0.1:{moto.port}" if direct else None)
                assert n == 64 * MiB, (who, n)
                cold[who].append((ttfb, ttlb))
                if before is not None:
                    after = cpu_split(fill_pids[who])
                    fill_cpu[who][0] += after[0] - before[0]
                    fill_cpu[who][1] += after[1] - before[1]
        os.sched_setaffinity(0, cpus)
        for name, size, c, length in cases:
            script = None
            if length is not None:
                script = work / f"range-{length}.lua"
                script.write_text(RANGE_LUA.format(size=size, length=length))
            runs = results.setdefault(name, {"nginx": [], "nginx-nopush": [], "sidecar": []})
            if baseline is not None:
                runs["baseline"] = []
            if floor is not None:
                runs["floor"] = []
            for r in range(args.rounds):
                order = [("nginx", nginx.proc.pid, nginx.url), ("sidecar", sc.proc.pid, sc.url),
                         ("nginx-nopush", nginx_nopush.proc.pid, nginx_nopush.url)]
                if baseline is not None:
                    order.insert(2, ("baseline", baseline.proc.pid, baseline.url))
                if floor is not None:
                    order.insert(2, ("floor", floor.proc.pid, floor.url))
                for who, pid, base in order if r % 2 == 0 else order[::-1]:
                    runs[who].append(measure(pid, f"{base}/{BUCKET}/hot-{size}", c, args.duration, script,
                                             length or size))
            print_hit_row(name, runs, flush=True)
            print(f"  {'':<30} sidecar, where this case's hits came from: {hit_sources(sc, sources)}", flush=True)
        rss = None
        if 64 * MiB in sizes:
            # 64 clients on 64 MiB objects: the sidecar's peak resident memory (its high-water mark)
            wrk(f"{sc.url}/{BUCKET}/hot-{64 * MiB}", 64, args.duration, None)
            rss = peak_rss(sc.proc.pid)
            print(f"sidecar peak RSS after 64 clients on 64 MiB objects: {rss / MiB:.0f} MiB", flush=True)
    finally:
        nginx.stop()
        nginx_nopush.stop()
        proxy.stop()
        if floor is not None:
            floor.stop()
        sc.stop()
        if baseline is not None:
            baseline.stop()
        moto.stop()
    print("\n== hits: the faster nginx (1 worker, sendfile) vs sidecar, medians of "
          f"{args.rounds} interleaved {args.duration:g}s runs, servers on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU} ==")
    print(f"{'case':<32} {'nginx req/s':>11} {'MiB/s':>8} {'CPUs/GiB':>8} | {'sidecar req/s':>13} {'MiB/s':>8} "
          f"{'CPUs/GiB':>8} | {'req/s x':>7} {'CPU x':>6}"
          + ("   | baseline req/s CPUs/GiB   x (sidecar/baseline req/s, CPU)" if args.baseline else ""))
    summary: dict = {"hits": {}, "cold": {}, "peak_rss_bytes_64_clients": rss}
    for name, runs in results.items():
        summary["hits"][name] = print_hit_row(name, runs)
    if args.cold_rounds:
        print(f"\n== cold 64 MiB misses, medians of {args.cold_rounds} (fresh object each) ==")
        d_ttlb = statistics.median(t for _, t in cold["direct"])
        for who in servers:
            ttfb = statistics.median(f for f, _ in cold[who])
            ttlb = statistics.median(t for _, t in cold[who])
            summary["cold"][who] = {"ttfb_s": ttfb, "ttlb_s": ttlb, "ttlb_vs_direct": ttlb / d_ttlb}
            line = f"{who:<18} TTFB {ttfb * 1e3:8.1f} ms  TTLB {ttlb * 1e3:8.1f} ms  {ttlb / d_ttlb:5.2f}x direct"
            if who in fill_cpu:
                gib = args.cold_rounds * 64 * MiB / GiB
                user, system = (t / gib for t in fill_cpu[who])
                summary["cold"][who].update(fill_cpu_s_per_gib=user + system, fill_user_s_per_gib=user,
                                            fill_system_s_per_gib=system)
                line += f"  fill {user + system:5.2f} CPU-s/GiB (user {user:4.2f}, system {system:4.2f})"
            print(line)
        n_ttlb = summary["cold"]["nginx-proxy-cache"]["ttlb_s"]
        for who in ("sidecar", "baseline"):
            if who not in cold:
                continue
            paired = sorted(a[1] / n_[1] for a, n_ in zip(cold[who], cold["nginx-proxy-cache"]))
            summary["cold"][f"{who}_vs_proxy_cache_by_round"] = paired
            print(f"{who} TTLB / nginx proxy_cache TTLB: {summary['cold'][who]['ttlb_s'] / n_ttlb:5.2f}x"
                  f"  (paired: median {statistics.median(paired):.2f}x, rounds {paired[0]:.2f}x to {paired[-1]:.2f}x)")
    if rss is not None:
        print(f"\nsidecar peak RSS (VmHWM) with 64 clients on 64 MiB objects: {rss / MiB:.0f} MiB")
    (OUT / "get_bench.json").write_text(json.dumps({"runs": results, "summary": summary}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


_HIT_SOURCES = (("sidecar_cache_ram_hits_total", "chunk reads from memory"),
                ("sidecar_cache_unchecked_bytes_total", "sent from files unchecked"),
                ("sidecar_cache_checked_bytes_total", "read from files and checked"))


def hit_counters(sc: Sidecar) -> dict[str, float]:
    return {name: metric(sc, name) for name, _ in _HIT_SOURCES}


def hit_sources(sc: Sidecar, last: dict[str, float]) -> str:
    """What the sidecar's counters of hit sources gained since ``last`` (updated): a case whose
    small objects stop coming from memory, or whose bytes are checked on every run, shows here."""
    now = hit_counters(sc)
    gained = {name: now[name] - last[name] for name in now}
    last.update(now)
    return ", ".join(f"{gained[name]:.0f} {what}" if "ram" in name else f"{gained[name] / MiB:.0f} MiB {what}"
                     for name, what in _HIT_SOURCES)


def print_hit_row(name: str, runs: dict[str, list[dict]], flush: bool = False) -> dict:
    med = {who: {k: statistics.median(r[k] for r in rs) for k in ("rps", "mibps", "cpu_s_per_gib")}
           for who, rs in runs.items()}
    best = max((who for who in med if who.startswith("nginx")), key=lambda who: med[who]["rps"])
    n, s = med[best], med["sidecar"]
    b = med.get("baseline")
    # The same ratios taken round by round (each round runs both servers back to back) and
    # their median: steadier than the ratio of medians when the machine's speed drifts.
    def paired(other: str, k: str) -> float:
        return statistics.median(x[k] / y[k] for x, y in zip(runs["sidecar"], runs[other]))

    paired_rps, paired_cpu = paired(best, "rps"), paired(best, "cpu_s_per_gib")
    versus = (f"   | {b['rps']:14.0f} {b['cpu_s_per_gib']:8.3f} {s['rps'] / b['rps']:5.2f}x "
              f"{s['cpu_s_per_gib'] / b['cpu_s_per_gib']:5.2f}x (paired {paired('baseline', 'rps'):.2f}x "
              f"{paired('baseline', 'cpu_s_per_gib'):.2f}x)") if b else ""
    f = med.get("floor")
    floor = (f"   | floor {f['rps']:8.0f} req/s {f['cpu_s_per_gib']:7.3f} CPUs/GiB {f['rps'] / n['rps']:5.2f}x "
             f"{f['cpu_s_per_gib'] / n['cpu_s_per_gib']:4.1f}x") if f else ""
    # wrk's own CPU (one thread): near 100 % it, not the server, sets the pace of the case
    client = {who: statistics.median(r["client_cpu_share"] for r in rs) for who, rs in runs.items()}
    both = {who: statistics.median(r["cpu_s_per_gib"] + r["client_cpu_s_per_gib"] for r in rs)
            for who, rs in runs.items()}
    bound = [who for who in (best, "sidecar") if client[who] >= CLIENT_BOUND]
    print(f"{name:<32} {n['rps']:11.0f} {n['mibps']:8.0f} {n['cpu_s_per_gib']:8.3f} | {s['rps']:13.0f} "
          f"{s['mibps']:8.0f} {s['cpu_s_per_gib']:8.3f} | {s['rps'] / n['rps']:6.2f}x "
          f"{s['cpu_s_per_gib'] / n['cpu_s_per_gib']:5.1f}x  (nginx tcp_nopush {'on' if best != 'nginx' else 'off'}; "
          f"paired {paired_rps:.2f}x {paired_cpu:.1f}x; wrk CPU {client[best]:.0%} / {client['sidecar']:.0%}"
          + (f", client-bound: {' and '.join(bound)}" if bound else "")
          + f"; with wrk's CPU {both[best]:.3f} / {both['sidecar']:.3f} CPU-s/GiB = {both['sidecar'] / both[best]:.1f}x)"
          + versus + floor, flush=flush)
    row = {"nginx": n, "nginx_config": best, "sidecar": s, "rps_ratio": s["rps"] / n["rps"],
           "cpu_ratio": s["cpu_s_per_gib"] / n["cpu_s_per_gib"], "paired_rps_ratio": paired_rps,
           "paired_cpu_ratio": paired_cpu, "client_cpu_share": client, "server_and_client_cpu_s_per_gib": both}
    if f:
        row["floor"] = f
    if b:
        row["baseline"] = b
    return row


if __name__ == "__main__":
    sys.exit(main())
