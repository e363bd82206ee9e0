"""Synthetic read workloads for training and evaluating the predictor: epochs, batch jobs, Zipf, scans."""

from __future__ import annotations

import numpy as np

from .accesslog import Access

MiB = 1024 * 1024
PART = 8 * MiB
KINDS = ("periodic", "zipf", "mixed")
START = 1_767_225_600.0   # 2026-01-01T00:00:00Z: logs carry Unix times, so do generated ones


def _read(out: list[Access], t: float, bucket: str, key: str, size: int, *, parts: bool,
          throughput: float) -> float:
    """One read of a whole object, as one GET or as consecutive 8 MiB part GETs spaced by the
    transfer time; returns when it ends."""
    if not parts or size <= PART:
        out.append(Access(t, bucket, key, 0, size - 1, size, "miss"))
        return t + size / throughput
    for start in range(0, size, PART):
        end = min(size, start + PART) - 1
        out.append(Access(t, bucket, key, start, end, size, "miss"))
        t += (end - start + 1) / throughput
    return t


def _epochs(out: list[Access], rng: np.random.Generator, t0: float, duration: float, *,
            datasets: int, shards: tuple[int, int]) -> None:
    """Training jobs: each reads its dataset's shards in order, epoch after epoch, with a
    pause between epochs (evaluation, checkpointing)."""
    for d in range(datasets):
        n = int(rng.integers(shards[0], shards[1] + 1))
        size = int(rng.choice([64, 128, 256])) * MiB
        parts = bool(rng.random() < 0.5)
        throughput = float(rng.uniform(100, 400)) * MiB
        compute = float(rng.uniform(2.0, 10.0))       # seconds of training per shard
        pause = float(rng.uniform(60, 600))
        keys = [f"datasets/ds{d:02d}/train-{i:05d}-of-{n:05d}.tar" for i in range(n)]
        t = t0 + float(rng.uniform(0, 1200))
        while t < t0 + duration:
            for key in keys:
                t = _read(out, t, "train-data", key, size, parts=parts, throughput=throughput)
                t += compute * float(rng.uniform(0.8, 1.2))
                if t >= t0 + duration:
                    break
            t += pause * float(rng.uniform(0.7, 1.3))


def _batch_jobs(out: list[Access], rng: np.random.Generator, t0: float, duration: float, *,
                jobs: int) -> None:
    """Scheduled jobs (hourly, every 15 or 30 min) that read the same fixed set each run."""
    for j in range(jobs):
        period = float(rng.choice([900.0, 1800.0, 3600.0]))
        phase = float(rng.uniform(0, period))
        count = int(rng.integers(10, 60))
        sizes = (rng.lognormal(np.log(8 * MiB), 0.8, count)).astype(np.int64) + 1
        keys = [f"reports/job{j:02d}/part-{i:04d}.parquet" for i in range(count)]
        run = t0 + phase
        while run < t0 + duration:
            t = run + float(rng.normal(0, 20))
            for key, size in zip(keys, sizes.tolist()):
                t = _read(out, t, "warehouse", key, size, parts=False, throughput=200 * MiB)
                t += float(rng.exponential(1.0))
            run += period


def _zipf(out: list[Access], rng: np.random.Generator, t0: float, duration: float, *,
          objects: int, alpha: float, rate: float) -> None:
    """Independent reads of Zipf-popular objects at Poisson times; a fifth are 256 KiB ranges."""
    ranks = np.arange(1, objects + 1, dtype=np.float64)
    p = ranks ** -alpha
    p /= p.sum()
    # Popularity is unrelated to key order: shuffle which key gets which rank.
    ids = rng.permutation(objects)
    sizes = rng.lognormal(np.log(2 * MiB), 1.2, objects).astype(np.int64) + 1024
    count = int(rng.poisson(rate * duration))
    times = np.sort(rng.uniform(t0, t0 + duration, count))
    picks = rng.choice(objects, size=count, p=p)
    ranged = rng.random(count) < 0.2
    for t, k, r in zip(times.tolist(), picks.tolist(), ranged.tolist()):
        i = int(ids[k])
        size = int(sizes[i])
        key = f"objects/{i % 64:02x}/obj-{i:06d}.bin"
        if r and size > 256 * 1024:
            start = int(rng.integers(0, size - 256 * 1024))
            out.append(Access(t, "assets", key, start, start + 256 * 1024 - 1, size, "miss"))
        else:
            out.append(Access(t, "assets", key, 0, size - 1, size, "miss"))


def _scans(out: list[Access], rng: np.random.Generator, t0: float, duration: float, *,
           every: float) -> None:
    """One-off scans: a prefix never seen before, read once in order (an export, a backfill)."""
    t = t0 + float(rng.exponential(every))
    s = 0
    while t < t0 + duration:
        n = int(rng.integers(20, 120))
        size = int(rng.choice([4, 16, 64])) * MiB
        for i in range(n):
            t = _read(out, t, "logs", f"scans/scan{s:03d}/file-{i:05d}.gz", size, parts=False,
                      throughput=150 * MiB)
        s += 1
        t += float(rng.exponential(every))


def _first_epochs(out: list[Access], rng: np.random.Generator, t0: float, duration: float, *,
                  every: float) -> None:
    """Readers new to a listed prefix (a first epoch, a model load, a job's input scan): its keys
    in order at the reader's own pace; some stop part-way."""
    t = t0 + float(rng.exponential(every))
    r = 0
    while t < t0 + duration:
        n = int(rng.integers(10, 200))
        size = int(float(rng.choice([0.125, 0.5, 2, 8, 64])) * MiB)
        gap = float(np.exp(rng.uniform(np.log(0.05), np.log(20.0))))  # seconds between objects
        stop = n if rng.random() < 0.7 else int(rng.integers(1, n))
        u = t
        for i in range(stop):
            u = _read(out, u, "fresh", f"runs/r{r:04d}/shard-{i:05d}.tar", size, parts=False,
                      throughput=200 * MiB)
            u += gap * float(rng.uniform(0.7, 1.3))
        r += 1
        t += float(rng.exponential(every))


def generate(kind: str, *, seed: int = 0, duration: float = 6 * 3600.0, **params) -> list[Access]:
    """A time-ordered synthetic workload, the same for the same arguments.

    ``periodic``: training epochs over sharded datasets + scheduled batch jobs; ``zipf``:
    independent reads of Zipf-hot objects; ``mixed``: both plus one-off scans and first epochs
    over newly listed prefixes (some stopped part-way).
    Parameters (defaults): datasets (3), shards ((40, 120): per dataset), jobs (4),
    zipf_objects (3000), zipf_alpha (1.0), zipf_rate (reads/s: 1.0, or 0.3 in mixed),
    scan_every (s between one-off scans: 1800), start (Unix time of the first second).
    """
    if kind not in KINDS:
        raise ValueError(f"workload kind must be one of {', '.join(KINDS)}, not {kind!r}")
    unknown = set(params) - {"datasets", "shards", "jobs", "zipf_objects", "zipf_alpha", "zipf_rate",
                             "scan_every", "first_epoch_every", "start"}
    if unknown:
        raise ValueError(f"unknown workload parameters: {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(seed)
    t0 = float(params.get("start", START))
    out: list[Access] = []
    if kind in ("periodic", "mixed"):
        _epochs(out, rng, t0, duration, datasets=int(params.get("datasets", 3)),
                shards=tuple(params.get("shards", (40, 120))))
        _batch_jobs(out, rng, t0, duration, jobs=int(params.get("jobs", 4)))
    if kind in ("zipf", "mixed"):
        _zipf(out, rng, t0, duration, objects=int(params.get("zipf_objects", 3000)),
              alpha=float(params.get("zipf_alpha", 1.0)),
              rate=float(params.get("zipf_rate", 1.0 if kind == "zipf" else 0.3)))
    if kind == "mixed":
        _scans(out, rng, t0, duration, every=float(params.get("scan_every", 1800.0)))
        _first_epochs(out, rng, t0, duration, every=float(params.get("first_epoch_every", 300.0)))
    out = [a for a in out if a.t < t0 + duration]
    out.sort(key=lambda a: a.t)
    return out
