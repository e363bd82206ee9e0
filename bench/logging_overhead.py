"""Cost of per-request logging and metrics on the hit path: 4 KiB cache hits, log level info vs off.

    .venv/bin/python bench/logging_overhead.py [--duration 5] [--rounds 3] [--connections 16]

Starts a moto S3 server and two sidecars in front of it that differ only in ``--log-level``
(``info``: one JSON line per request, written to a file as a container runtime's pipe would
take it; ``off``: nothing). Both serve the same 4 KiB object from their cache. In each round
two wrk processes (Debian's package, installed with apt-get if missing) drive both sidecars at
the same time, so whatever else runs on a shared machine weighs on both alike. Prints req/s
and the sidecar's CPU time per request for each, and the cost of logging as the median over
rounds of the per-round ratio.

Then, in this process, the per-request telemetry calls alone (access-log line rendered to a
throwaway stream, metrics updates) in microseconds, so the split between logging and metrics
is visible. The metrics cannot be switched off in the daemon; their share is this figure over
the CPU time per request.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.procs import MotoServer, Sidecar  # noqa: E402

BUCKET = "bench"
KEY = "hot-4k"


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("installing wrk with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, capture_output=True)


def wrk_start(url: str, connections: int, duration: float) -> subprocess.Popen:
    return subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(proc: subprocess.Popen) -> float:
    out, err = proc.communicate(timeout=120)
    if proc.returncode != 0 or re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"wrk failed:\n{out}{err}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wrk(url: str, connections: int, duration: float) -> float:
    return wrk_result(wrk_start(url, connections, duration))


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def drive(sidecars: dict[str, Sidecar], connections: int, duration: float) -> dict[str, tuple[float, float]]:
    """{name: (req/s, sidecar CPU microseconds per request)}, all driven at once."""
    before = {k: (cpu_seconds(sc.proc.pid), requests_served(sc)) for k, sc in sidecars.items()}
    runs = {k: wrk_start(f"{sc.url}/{BUCKET}/{KEY}", connections, duration) for k, sc in sidecars.items()}
    rps = {k: wrk_result(p) for k, p in runs.items()}
    out = {}
    for k, sc in sidecars.items():
        cpu, n = cpu_seconds(sc.proc.pid) - before[k][0], requests_served(sc) - before[k][1]
        out[k] = (rps[k], cpu / max(n, 1) * 1e6)
    return out


def requests_served(sc: Sidecar) -> int:
    text = sc.metrics_text()
    return int(sum(float(m.group(1)) for m in re.finditer(
        r'^sidecar_requests_total\{operation="GetObject",status="200"\} ([\d.e+]+)$', text, re.M)))


def micro() -> dict[str, float]:
    """Microseconds per request for the telemetry calls alone, in this process."""
    from sidecar import telemetry  # noqa: PLC0415
    from sidecar.telemetry import Metrics  # noqa: PLC0415

    sink = io.StringIO()
    telemetry.setup_logging("info", "json", stream=sink)
    access = telemetry.AccessLog(key_mode="plain")
    m = Metrics()

    def log_line() -> None:
        access.emit("0123456789ABCDEF", "GET", "GetObject", BUCKET, KEY, None, 200, "hit", 4096, 4096, 0,
                    0.000123)
        if sink.tell() > 1 << 20:
            sink.seek(0)
            sink.truncate()

    def metrics() -> None:
        m.observe_request("GetObject", 200, "hit", 0.000123)
        m.count_read("", 4096, 0)

    n = 20000
    out = {"log_line_us": min(timeit.repeat(log_line, number=n, repeat=3)) / n * 1e6,
           "metrics_us": min(timeit.repeat(metrics, number=n, repeat=3)) / n * 1e6}
    telemetry.setup_logging("off", "json", stream=sink)
    out["log_line_off_us"] = min(timeit.repeat(log_line, number=n, repeat=3)) / n * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="sidecar-logbench-"))
    moto = MotoServer(work)
    sidecars: dict[str, Sidecar] = {}
    try:
        s3 = moto.client()
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key=KEY, Body=os.urandom(4096))
        for level in ("info", "off"):
            sidecars[level] = Sidecar(moto.url, work / f"cache-{level}", work, log_level=level)
            sidecars[level].client().get_object(Bucket=BUCKET, Key=KEY)["Body"].read()  # warm
            wrk(f"{sidecars[level].url}/{BUCKET}/{KEY}", args.connections, 1)  # and warm up
        figures: dict[str, list[tuple[float, float]]] = {"info": [], "off": []}
        for r in range(args.rounds):
            got = drive(sidecars, args.connections, args.duration)
            for level, (rps, cpu_us) in got.items():
                figures[level].append((rps, cpu_us))
            print(f"round {r + 1}  info {got['info'][0]:8.0f} req/s {got['info'][1]:6.1f} CPU-us/req   "
                  f"off {got['off'][0]:8.0f} req/s {got['off'][1]:6.1f} CPU-us/req", flush=True)
        lines = sum(1 for line in sidecars["info"].log_path.read_text().splitlines() if '"event": "request"' in line)
        served = requests_served(sidecars["info"])
    finally:
        for sc in sidecars.values():
            sc.stop()
        moto.stop()
    rps = {k: statistics.median(x for x, _ in v) for k, v in figures.items()}
    cpu = {k: statistics.median(y for _, y in v) for k, v in figures.items()}
    pairs = list(zip(figures["info"], figures["off"]))
    mic = micro()
    summary = {
        "rps_info": rps["info"], "rps_off": rps["off"],
        "rps_cost": statistics.median(1 - i[0] / o[0] for i, o in pairs),
        "cpu_us_per_req_info": cpu["info"], "cpu_us_per_req_off": cpu["off"],
        "cpu_cost": statistics.median(i[1] / o[1] - 1 for i, o in pairs),
        "request_lines_logged": lines, "requests_served": served,
        **mic, "metrics_share_of_cpu_off": mic["metrics_us"] / cpu["off"],
    }
    print("\n== 4 KiB hits: log level info vs off (medians; cost: median of per-round ratios) ==")
    print(f"req/s        info {rps['info']:9.0f}   off {rps['off']:9.0f}   cost {summary['rps_cost'] * 100:5.1f} %")
    print(f"CPU-us/req   info {cpu['info']:9.1f}   off {cpu['off']:9.1f}   cost {summary['cpu_cost'] * 100:5.1f} %")
    print(f"request lines logged {lines} for {served} requests served")
    print(f"in-process: access-log line {mic['log_line_us']:.2f} us (level off: {mic['log_line_off_us']:.2f} us), "
          f"metrics updates {mic['metrics_us']:.2f} us = {summary['metrics_share_of_cpu_off'] * 100:.1f} % "
          f"of a hit's CPU time")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "logging_overhead.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
