"""Crash safety: SIGKILL a sidecar again and again under concurrent reads, overwrites and deletes,
restart it on the same cache dir, and check every byte it then serves against the upstream.

    .venv/bin/python bench/crash_cycles.py [--cycles 50] [--objects 40] [--chunk-size 64KiB] [--seed N]

One cycle: reader threads (whole objects and ranges, objects spanning several chunks) and
writer threads (PutObject, DeleteObject, DeleteObjects) drive the sidecar with boto3; after a
random time the sidecar is killed with SIGKILL, preferably while a chunk is being written (a
file in the cache's ``tmp/``); it is restarted on the same cache dir, and every object is read
through it — whole and at random ranges — and compared (SHA-256) with the object fetched from
moto directly. Reads during the chaos are checked too: after a write through the sidecar
returned success, a read that starts later must never get the version it replaced.

Every object body is derived from (key, generation), so any body seen can be traced to the
write that produced it: a body of an older generation than allowed is a *stale version*, a body
of none is a *mismatch*. ``tests/test_crash_safety.py`` runs a few cycles of the same rig.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sidecar.config import parse_size  # noqa: E402
from support.procs import CREDS, MotoServer, Sidecar  # noqa: E402


def body(key: str, gen: int, chunk_size: int) -> bytes:
    """The bytes of generation ``gen`` of ``key``: 1 to 5 chunks, sometimes chunk-aligned."""
    rnd = random.Random(f"{key}\0{gen}")
    chunks = rnd.randint(1, 5)
    size = chunks * chunk_size if rnd.random() < 0.2 else rnd.randint((chunks - 1) * chunk_size + 1,
                                                                         chunks * chunk_size)
    return rnd.randbytes(size)


def differing(a: bytes | None, b: bytes | None) -> int:
    """Bytes that differ between two bodies (a missing body counts as all of the other)."""
    if a == b:
        return 0
    a, b = a or b"", b or b""
    n = min(len(a), len(b))
    if n and a[:n] == b[:n]:
        return abs(len(a) - len(b))
    return sum(x != y for x, y in zip(a[:n], b[:n])) + abs(len(a) - len(b))


@dataclasses.dataclass
class Generation:
    gen: int
    sha: str | None  # None: a delete
    started: float
    done: float | None = None  # monotonic time the sidecar answered success; None: failed or unknown


@dataclasses.dataclass
class Tally:
    cycles: int = 0
    kills_mid_write: int = 0  # kills that left a chunk temp file behind
    chaos_reads: int = 0
    chaos_read_bytes: int = 0
    chaos_interrupted: int = 0  # requests cut by the kill (the client saw an error)
    writes_ok: int = 0
    deletes_ok: int = 0
    writes_unknown: int = 0
    objects_checked: int = 0
    ranges_checked: int = 0
    bytes_checked: int = 0
    mismatched_bytes: int = 0
    mismatched_reads: int = 0
    stale_versions: int = 0
    errors_after_restart: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(what)

    @property
    def clean(self) -> bool:
        return not (self.mismatched_bytes or self.mismatched_reads or self.stale_versions
                    or self.errors_after_restart)


class History:
    """Every generation written to each key, with when its write started and succeeded."""

    def __init__(self, keys: list[str], chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.lock = threading.Lock()
        self.gens: dict[str, list[Generation]] = {}
        self.next_gen = {k: 1 for k in keys}
        for k in keys:
            self.gens[k] = [Generation(0, hashlib.sha256(body(k, 0, chunk_size)).hexdigest(), 0.0, 0.0)]

    def begin(self, key: str, delete: bool) -> tuple[Generation, bytes | None]:
        with self.lock:
            gen = self.next_gen[key]
            self.next_gen[key] += 1
        data = None if delete else body(key, gen, self.chunk_size)
        g = Generation(gen, None if data is None else hashlib.sha256(data).hexdigest(), time.monotonic())
        with self.lock:
            self.gens[key].append(g)
        return g, data

    def floor(self, key: str, at: float) -> int:
        """The newest generation whose write succeeded before ``at``: nothing older may be served."""
        with self.lock:
            done = [g.gen for g in self.gens[key] if g.done is not None and g.done <= at]
        return max(done)

    def settle(self, key: str, gen: int, at: float) -> None:
        """The upstream was seen holding ``gen`` (a write whose answer was lost may have landed)."""
        with self.lock:
            for g in self.gens[key]:
                if g.gen == gen and g.done is None:
                    g.done = at

    def classify(self, key: str, served: bytes | None, rng: tuple[int, int] | None,
                 started: float, ended: float) -> tuple[str, int]:
        """('ok' | 'stale' | 'mismatch', mismatched bytes) for what a read returned; ``served``
        None is a 404. ``rng``: the (first, last) bytes asked for, None for the whole object."""
        floor = self.floor(key, started)
        with self.lock:
            gens = list(self.gens[key])
        allowed = [g for g in gens if g.gen >= floor and g.started <= ended]
        older = [g for g in gens if g.gen < floor]

        def matches(g: Generation) -> bool:
            if g.sha is None or served is None:
                return g.sha is None and served is None
            if rng is None:
                return hashlib.sha256(served).hexdigest() == g.sha
            full = body(key, g.gen, self.chunk_size)
            return served == _slice(full, rng)

        if any(matches(g) for g in reversed(allowed)):
            return "ok", 0
        if any(matches(g) for g in reversed(older)):
            return "stale", 0
        newest = allowed[-1] if allowed else gens[-1]
        truth = None if newest.sha is None else body(key, newest.gen, self.chunk_size)
        if truth is not None and rng is not None:
            truth = _slice(truth, rng)
        return "mismatch", max(1, differing(served, truth))

    def gen_of(self, key: str, sha: str | None) -> int | None:
        with self.lock:
            for g in reversed(self.gens[key]):
                if g.sha == sha:
                    return g.gen
        return None


def _slice(data: bytes, rng: tuple[int, int]) -> bytes:
    first, last = rng
    if first < 0:  # a suffix range: the last -first bytes
        return data[first:] if -first < len(data) else data
    return data[first:last + 1]


def random_range(size_hint: int) -> tuple[str, tuple[int, int]]:
    """A Range header value and (first, last) for _slice; (-n, 0) is a suffix range."""
    r = random.random()
    if r < 0.15:
        n = random.randint(1, size_hint)
        return f"bytes=-{n}", (-n, 0)
    first = random.randrange(size_hint)
    if r < 0.3:
        return f"bytes={first}-", (first, 1 << 62)
    last = first + random.randint(0, size_hint)
    return f"bytes={first}-{last}", (first, last)


class CrashRig:
    """A moto server, a sidecar in front of it on a cache dir that outlives kills, and the load."""

    def __init__(self, work: Path, *, objects: int = 40, chunk_size: str = "64KiB", readers: int = 6,
                 writers: int = 3, moto: MotoServer | None = None, bucket: str | None = None) -> None:
        self.work = Path(work)
        self.chunk_size = parse_size(chunk_size)
        self.own_moto = moto is None
        self.moto = moto or MotoServer(self.work)
        self.upstream = self.moto.client(response_checksum_validation="when_required")
        self.bucket = bucket or "crash-" + os.urandom(4).hex()
        self.upstream.create_bucket(Bucket=self.bucket)
        self.keys = [f"obj/{i:03d}" for i in range(objects)] + ["dir/with space+plus", "dir/ü%2F"]
        self.history = History(self.keys, self.chunk_size)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: self.upstream.put_object(Bucket=self.bucket, Key=k,
                                                             Body=body(k, 0, self.chunk_size)), self.keys))
        self.readers, self.writers = readers, writers
        self.key_locks = {k: threading.Lock() for k in self.keys}
        # Metadata is trusted for an hour: what the sidecar serves after a write depends on its
        # invalidation alone (and, after a restart, on revalidating what it restored).
        self.sidecar = Sidecar(self.moto.url, self.work / "cache", self.work, chunk_size=chunk_size,
                               metadata_ttl=3600, log_level="warning", prefetch="false")
        self.tally = Tally()
        self._session = boto3.session.Session()

    def _client(self):
        cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=15,
                     max_pool_connections=4)
        # One session for all (its loaded service model is reused); clients are made on this thread.
        return self._session.client("s3", endpoint_url=self.sidecar.url, config=cfg, **CREDS)

    # --- chaos -------------------------------------------------------------------------

    def _read_once(self, s3, t: Tally) -> None:
        key = random.choice(self.keys)
        whole = random.random() < 0.5
        header, rng = random_range(5 * self.chunk_size) if not whole else (None, None)
        started = time.monotonic()
        try:
            kw = {"Range": header} if header else {}
            served = s3.get_object(Bucket=self.bucket, Key=key, **kw)["Body"].read()
        except ClientError as e:
            code = e.response["Error"]["Code"]
            if code in ("NoSuchKey", "404"):
                served = None
            elif code == "InvalidRange":
                return
            else:
                t.chaos_interrupted += 1
                return
        except (BotoCoreError, OSError):
            t.chaos_interrupted += 1
            return
        self._judge(t, key, served, rng, started, time.monotonic(), "during chaos")
        t.chaos_reads += 1
        t.chaos_read_bytes += len(served or b"")

    def _judge(self, t: Tally, key: str, served, rng, started: float, ended: float, when: str) -> None:
        verdict, bad = self.history.classify(key, served, rng, started, ended)
        if verdict == "stale":
            t.stale_versions += 1
            t.note(f"stale {when}: {key} range={rng}")
        elif verdict == "mismatch":
            t.mismatched_reads += 1
            t.mismatched_bytes += bad
            t.note(f"mismatch {when}: {key} range={rng}: {bad} bytes differ")

    def _write_once(self, s3, t: Tally) -> None:
        r = random.random()
        keys = random.sample(self.keys, 2) if r < 0.08 else [random.choice(self.keys)]
        delete = r < 0.25
        locks = [self.key_locks[k] for k in sorted(keys)]
        for lk in locks:
            lk.acquire()
        try:
            gens = [self.history.begin(k, delete) for k in keys]
            try:
                if len(keys) > 1:
                    out = s3.delete_objects(Bucket=self.bucket,
                                            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
                    if out.get("Errors"):
                        raise ClientError({"Error": {"Code": "Partial"}}, "DeleteObjects")
                elif delete:
                    s3.delete_object(Bucket=self.bucket, Key=keys[0])
                else:
                    s3.put_object(Bucket=self.bucket, Key=keys[0], Body=gens[0][1])
            except (ClientError, BotoCoreError, OSError):
                t.writes_unknown += 1
                return
            now = time.monotonic()
            for g, _ in gens:
                g.done = now
            if delete:
                t.deletes_ok += len(keys)
            else:
                t.writes_ok += 1
        finally:
            for lk in locks:
                lk.release()

    def _worker(self, s3, stop: threading.Event, write: bool) -> Tally:
        t = Tally()
        while not stop.is_set():
            if write:
                self._write_once(s3, t)
            else:
                self._read_once(s3, t)
        return t

    def _merge(self, part: Tally) -> None:
        for f in dataclasses.fields(Tally):
            if f.name != "examples":
                setattr(self.tally, f.name, getattr(self.tally, f.name) + getattr(part, f.name))
        for e in part.examples:
            self.tally.note(e)

    def chaos_and_kill(self, run_for: float) -> bool:
        """Drive the load for ``run_for`` seconds, then SIGKILL the sidecar, at a moment a chunk
        is being written if one comes within half a second. Returns whether a temp file was left."""
        stop = threading.Event()
        clients = [self._client() for _ in range(self.readers + self.writers)]
        tmp = self.sidecar.cache_dir / "v2" / "tmp"
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            futs = [pool.submit(self._worker, c, stop, i >= self.readers) for i, c in enumerate(clients)]
            time.sleep(run_for)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and not _nonempty(tmp):
                time.sleep(0.0005)
            os.kill(self.sidecar.proc.pid, signal.SIGKILL)
            mid_write = _nonempty(tmp)
            self.sidecar.kill()  # reaps the process
            stop.set()
            for f in futs:
                self._merge(f.result())
        self.tally.kills_mid_write += mid_write
        return mid_write

    # --- after a restart ---------------------------------------------------------------

    def verify(self, ranges_per_object: int = 3) -> None:
        """Every object, whole and at random ranges, through the restarted sidecar against moto."""
        s3 = self._client()
        t = self.tally
        for key in self.keys:
            try:
                truth = self.upstream.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as e:
                if e.response["Error"]["Code"] != "NoSuchKey":
                    raise
                truth = None
            now = time.monotonic()
            gen = self.history.gen_of(key, None if truth is None else hashlib.sha256(truth).hexdigest())
            if gen is None:
                raise RuntimeError(f"moto holds a body for {key} that no write produced")
            self.history.settle(key, gen, now)
            reads = [(None, None)] + [random_range(max(1, len(truth or b"x"))) for _ in range(ranges_per_object)]
            for header, rng in reads:
                started = time.monotonic()
                try:
                    kw = {"Range": header} if header else {}
                    served = s3.get_object(Bucket=self.bucket, Key=key, **kw)["Body"].read()
                except ClientError as e:
                    if e.response["Error"]["Code"] == "NoSuchKey":
                        served = None
                    else:  # (the ranges asked for here are all satisfiable)
                        t.errors_after_restart += 1
                        t.note(f"error after restart: {key} {header}: {e}")
                        continue
                except (BotoCoreError, OSError) as e:
                    t.errors_after_restart += 1
                    t.note(f"error after restart: {key} {header}: {e!r}")
                    continue
                expected = truth if rng is None or truth is None else _slice(truth, rng)
                if served != expected:
                    # Wrong against the upstream: an older generation is stale, else garbage.
                    verdict, bad = self.history.classify(key, served, rng, started, time.monotonic())
                    if verdict == "stale" or (verdict == "ok" and served is not None):
                        t.stale_versions += 1
                        t.note(f"stale after restart: {key} {header}")
                    else:
                        t.mismatched_reads += 1
                        t.mismatched_bytes += max(1, differing(served, expected))
                        t.note(f"mismatch after restart: {key} {header}")
                if rng is None:
                    t.objects_checked += 1
                else:
                    t.ranges_checked += 1
                t.bytes_checked += len(served or b"")

    def cycle(self, run_for: float | None = None) -> None:
        self.chaos_and_kill(run_for if run_for is not None else random.uniform(0.3, 2.0))
        time.sleep(0.1)  # let moto finish a request whose client was killed
        self.sidecar.start()
        self.verify()
        self.tally.cycles += 1

    def tracebacks(self) -> list[str]:
        """Error-level events in every sidecar log of this rig (a crash must not cause any)."""
        out = []
        for log in self.work.glob("sidecar-*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if '"level": "error"' in line or "Traceback" in line:
                    out.append(line[:300])
        return out

    def close(self) -> None:
        self.sidecar.stop()
        if self.own_moto:
            self.moto.stop()


def _nonempty(d: Path) -> bool:
    try:
        with os.scandir(d) as it:
            return any(not e.name.endswith(".meta") for e in it)
    except FileNotFoundError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--objects", type=int, default=40)
    ap.add_argument("--chunk-size", default="64KiB")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    work = Path(tempfile.mkdtemp(prefix="sidecar-crash-"))
    rig = CrashRig(work, objects=args.objects, chunk_size=args.chunk_size)
    t0 = time.monotonic()
    try:
        for i in range(args.cycles):
            rig.cycle()
            t = rig.tally
            print(f"cycle {i + 1:3d}: reads {t.chaos_reads:6d}  writes {t.writes_ok:5d}  deletes {t.deletes_ok:5d}  "
                  f"checked {t.objects_checked} objects + {t.ranges_checked} ranges  "
                  f"mismatched bytes {t.mismatched_bytes}  stale {t.stale_versions}", flush=True)
        errors = rig.tracebacks()
    finally:
        rig.close()
    t = rig.tally
    print()
    print(f"seed {seed}; {args.objects + 2} objects, chunk size {args.chunk_size}, "
          f"{time.monotonic() - t0:.0f} s")
    print(f"kill -9 cycles run: {t.cycles} ({t.kills_mid_write} killed with a chunk temp file open)")
    print(f"during the load: {t.chaos_reads} reads checked ({t.chaos_read_bytes} bytes), {t.writes_ok} overwrites "
          f"and {t.deletes_ok} deletes acknowledged, {t.writes_unknown} writes cut by a kill, "
          f"{t.chaos_interrupted} requests cut by a kill")
    print(f"after restarts: {t.objects_checked} whole objects and {t.ranges_checked} ranges checked against "
          f"moto, {t.bytes_checked} bytes")
    print(f"mismatched bytes: {t.mismatched_bytes} in {t.mismatched_reads} reads (goal 0)")
    print(f"stale versions served: {t.stale_versions} (goal 0)")
    print(f"errors reading after a restart: {t.errors_after_restart}")
    print(f"error lines in the sidecar logs: {len(errors)}")
    for e in t.examples + errors[:10]:
        print("   ", e)
    return 0 if t.clean and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
