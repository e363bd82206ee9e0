"""``sidecar demo``: the sidecar on a local sample upstream, driven by boto3, explained as it goes.

Seeds a local-directory upstream with sample objects (dataset shards, model weights, a table,
a config file), starts ``sidecar serve`` on it, and runs a scripted workload through boto3:
cold and warm reads, ranged and sequential reads, an overwrite, a corrupted cache file and a
restart. Prints what each step cost and where its bytes came from.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MiB = 1024 * 1024
BUCKET = "demo-data"


def _free(port: int) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def seed(root: Path) -> dict[str, bytes]:
    """Sample objects, written as plain files: the local upstream serves a directory as is."""
    rng = random.Random(7)
    objects = {f"datasets/train/shard-{i:05d}.bin": rng.randbytes(4 * MiB) for i in range(6)}
    objects["models/resnet/weights.bin"] = rng.randbytes(48 * MiB)
    objects["tables/events.csv"] = "".join(
        f"{i},{rng.choice(['click', 'view', 'buy'])},{rng.random():.6f}\n" for i in range(60_000)).encode()
    objects["config/app.json"] = json.dumps({"version": 1, "feature_flags": ["a", "b"]}).encode()
    for key, data in objects.items():
        path = root / BUCKET / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return objects


class Daemon:
    """``sidecar serve`` as a child process."""

    def __init__(self, upstream: Path, cache: Path, log: Path, port: int, admin_port: int) -> None:
        # The sample upstream is a directory on this machine, made to answer like a store in
        # the same region: 15 ms before each answer, 250 MB/s for object bytes.
        self.args = [sys.executable, "-m", "sidecar", "serve", "--upstream",
                     f"file://{upstream}?latency=15ms&bandwidth=250MB",
                     "--cache-dir", str(cache), "--listen", f"127.0.0.1:{port}",
                     "--admin-listen", f"127.0.0.1:{admin_port}", "--chunk-size", "4MiB", "--cache-size", "1GiB",
                     "--log-format", "json"]
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"sidecar exited early; see {self.log}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.admin + "/readyz", timeout=1):
                    return
            time.sleep(0.05)
        raise SystemExit(f"sidecar did not become ready; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def stats(self) -> dict:
        with urllib.request.urlopen(self.admin + "/stats", timeout=5) as r:
            return json.loads(r.read())


def _fmt_bytes(n: float) -> str:
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{int(n)} B"


class Step:
    """Times one step and reports how many bytes the upstream had to send for it."""

    def __init__(self, daemon: Daemon, title: str) -> None:
        self.daemon, self.title = daemon, title

    def __enter__(self) -> "Step":
        self.before = self.daemon.stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            return
        ms = (time.perf_counter() - self.t0) * 1000
        after = self.daemon.stats()
        upstream = after["upstream"]["bytes"] - self.before["upstream"]["bytes"]
        cached = after["reads"]["hit_bytes"] - self.before["reads"]["hit_bytes"]
        print(f"  {self.title:<58} {ms:8.1f} ms   from cache {_fmt_bytes(cached):>10}   "
              f"from upstream {_fmt_bytes(upstream):>10}")


class Tour:
    """One run of the demo: the daemon, an S3 client on it, and the objects seeded upstream."""

    def __init__(self, workdir: Path, daemon: Daemon, objects: dict[str, bytes]) -> None:
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        self.workdir = workdir
        self.daemon = daemon
        self.objects = objects
        self.s3 = boto3.client("s3", endpoint_url=daemon.url, region_name="us-east-1", aws_access_key_id="demo",
                               aws_secret_access_key="demo", config=Config(retries={"max_attempts": 1}))

    def get(self, key: str, **kw) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=key, **kw)["Body"].read()

    def step(self, title: str) -> "Step":
        return Step(self.daemon, title)


WEIGHTS = "models/resnet/weights.bin"


def show_endpoint(t: Tour) -> None:
    print("1. What the application sees: an ordinary S3 endpoint")
    keys = [o["Key"] for o in t.s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    print(f"  list_objects_v2 -> {len(keys)} objects, e.g. {keys[0]}, {WEIGHTS}\n")


def show_second_read_is_local(t: Tour) -> None:
    print("2. The same object twice: the second read is served from local disk")
    with t.step(f"get {WEIGHTS} (48 MiB, cold)"):
        assert t.get(WEIGHTS) == t.objects[WEIGHTS]
    with t.step(f"get {WEIGHTS} (48 MiB, warm)"):
        assert t.get(WEIGHTS) == t.objects[WEIGHTS]
    print()


def show_training_epochs(t: Tour) -> None:
    print("3. A training loop reading dataset shards in 1 MiB pieces, two epochs")
    with t.step("read 6 shards x 4 MiB as 1 MiB ranges, first epoch"):
        for i in range(6):
            key = f"datasets/train/shard-{i:05d}.bin"
            data = b"".join(t.get(key, Range=f"bytes={o}-{o + MiB - 1}") for o in range(0, 4 * MiB, MiB))
            assert data == t.objects[key]
    with t.step("the same, second epoch"):
        for i in range(6):
            key = f"datasets/train/shard-{i:05d}.bin"
            for o in range(0, 4 * MiB, MiB):
                t.get(key, Range=f"bytes={o}-{o + MiB - 1}")
    print()


def show_table_reads(t: Tour) -> None:
    print("4. A table read the way pyarrow does: footer first, then column ranges")
    table = t.objects["tables/events.csv"]
    with t.step("head + last 64 KiB + two 256 KiB ranges"):
        size = t.s3.head_object(Bucket=BUCKET, Key="tables/events.csv")["ContentLength"]
        assert t.get("tables/events.csv", Range="bytes=-65536") == table[-65536:]
        assert t.get("tables/events.csv", Range="bytes=0-262143") == table[:262144]
        assert t.get("tables/events.csv", Range="bytes=262144-524287") == table[262144:524288]
    print(f"  ({size} bytes; every byte compared with the upstream's)\n")


def show_writes_invalidate(t: Tour) -> None:
    print("5. Writes go through and invalidate at once")
    new_config = json.dumps({"version": 2, "feature_flags": ["a", "b", "c"]}).encode()
    assert json.loads(t.get("config/app.json"))["version"] == 1
    with t.step("put config/app.json (version 2) through the sidecar"):
        t.s3.put_object(Bucket=BUCKET, Key="config/app.json", Body=new_config)
    with t.step("get config/app.json"):
        got = json.loads(t.get("config/app.json"))
    upstream_file = t.workdir / "upstream" / BUCKET / "config/app.json"
    print(f"  -> version {got['version']} (upstream file now: "
          f"{json.loads(upstream_file.read_bytes())['version']})\n")


def show_damaged_chunk_refetched(t: Tour) -> None:
    print("6. A damaged cache file is never served: every chunk carries a CRC32C")
    chunk = sorted(p for p in (t.workdir / "cache" / "v2").glob("??/*") if not p.name.endswith(".meta"))[0]
    with open(chunk, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    print(f"  flipped one bit in {chunk.relative_to(t.workdir)}")
    with t.step("read everything again"):
        for key, data in t.objects.items():
            if key != "config/app.json":
                assert hashlib.sha256(t.get(key)).digest() == hashlib.sha256(data).digest()
    print(f"  -> all bytes correct; CRC failures detected: {t.daemon.stats()['cache']['crc_failures']}"
          " (the chunk was dropped and fetched again)\n")


def show_restart_keeps_cache(t: Tour) -> None:
    print("7. A restart keeps the cache")
    t.daemon.stop()
    t.daemon.start()
    restored = t.daemon.stats()["cache"]["restored_chunks"]
    with t.step(f"get {WEIGHTS} after restart"):
        assert t.get(WEIGHTS) == t.objects[WEIGHTS]
    print(f"  -> {restored} chunks restored from disk; only a metadata check went upstream\n")


def show_totals(t: Tour) -> None:
    st = t.daemon.stats()
    print("Totals since the restart:")
    print(f"  cache: {_fmt_bytes(st['cache']['used_bytes'])} in {st['cache']['chunks']} chunks"
          f" of {_fmt_bytes(st['cache']['chunk_size'])}")
    print(f"  reads: {int(st['reads']['hits'])} hits, {int(st['reads']['misses'])} misses; "
          f"{_fmt_bytes(st['reads']['hit_bytes'])} served from cache, "
          f"{_fmt_bytes(st['upstream']['bytes'])} fetched from upstream")
    print(f"\nMetrics: curl {t.daemon.admin}/metrics   Logs: {t.workdir / 'sidecar.log'}")


TOUR = (show_endpoint, show_second_read_is_local, show_training_epochs, show_table_reads, show_writes_invalidate,
        show_damaged_chunk_refetched, show_restart_keeps_cache, show_totals)


def run_demo(workdir: Path, keep: bool) -> int:
    upstream, cache = workdir / "upstream", workdir / "cache"
    print(f"Seeding a local upstream in {upstream} ...")
    objects = seed(upstream)
    port, admin_port = _free(9400), _free(9401)
    daemon = Daemon(upstream, cache, workdir / "sidecar.log", port, admin_port)
    daemon.start()
    print(f"sidecar serving S3 on {daemon.url} (admin {daemon.admin}), cache in {cache}")
    print("(the sample upstream answers like a remote store: 15 ms per request, 250 MB/s)\n")
    try:
        tour = Tour(workdir, daemon, objects)
        for show in TOUR:
            show(tour)
        if keep:
            print(f"\nStill running. Try:  aws --endpoint-url {daemon.url} s3 ls s3://{BUCKET}/ --recursive"
                  "\nPress Ctrl-C to stop.")
            with contextlib.suppress(KeyboardInterrupt):
                daemon.proc.wait()  # type: ignore[union-attr]
    finally:
        daemon.stop()
    return 0


def _demo(args: argparse.Namespace) -> int:
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run_demo(workdir, args.keep_running)
    finally:
        if not args.dir and not args.keep_running:
            shutil.rmtree(workdir, ignore_errors=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a short demonstration on built-in sample data")
    p.add_argument("--dir", help="work directory to keep (default: a temporary one, removed afterwards)")
    p.add_argument("--keep-running", action="store_true", help="leave the sidecar running after the demo")
    p.set_defaults(func=_demo)
