"""Figures of predictive prefetch (issue 4): hit ratios with and without it, share of prefetched
bytes later read, inference time for 100k candidates, and the loop's CPU.

    .venv/bin/python bench/prefetch_bench.py [--seed 1] [--sizes 10%] [--threshold 0.7]

Hit ratios come from ``sidecar.sim.prefetch.compare``: the generator's workload is split in
time, a model is trained on the first half (``train.train``) and the second half is replayed
through the daemon's ``CacheSpace``/``QoSPolicy`` over LRU-K at the same cache size without and
with the predictor loop's decision every 30 s of simulated time. Inference and CPU are measured
on the real ``FeatureTracker``/``Predictor``/``planner`` path (``loop.choose``) of the daemon.

The periodic workload's byte hit ratio without prefetch is 0 at 10 % and 25 % (and at 50 %):
its bytes are epochs over datasets larger than the cache, a loop LRU-K (like LRU) cannot hold
any of until the cache holds most of it (LRU-K: 0.31 at 75 %, 0.92 at 100 %); the batch jobs'
files are a small share of the bytes. That is the case prefetch is for, not a bench artefact.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sidecar.cache.rules import RuleSet  # noqa: E402
from sidecar.predict.accesslog import Access  # noqa: E402
from sidecar.predict.features import FeatureTracker  # noqa: E402
from sidecar.predict.loop import choose  # noqa: E402
from sidecar.predict.model import Predictor, shipped_model_path  # noqa: E402
from sidecar.sim import prefetch as simp  # noqa: E402


def gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def hit_ratios(args: argparse.Namespace) -> list[tuple[str, dict]]:
    from sidecar.predict.train import train  # noqa: PLC0415
    from sidecar.predict.workload import generate  # noqa: PLC0415

    rows = []
    for kind in ("periodic", "zipf"):
        accesses = generate(kind, seed=args.seed)
        train_part, _ = simp.split(accesses, 0.5)
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "predictor.onnx"
            t = time.perf_counter()
            metrics = train(train_part, model, progress=False, seed=args.seed)
            trained_s = time.perf_counter() - t
            for size in args.sizes.split(","):
                c = simp.compare(accesses, capacity=size.strip(), model=model, threshold=args.threshold,
                                 interval=args.interval, name=f"{kind} (seed {args.seed})")
                f = c.figures()
                f.update(auc=metrics.get("auc", float("nan")), train_s=trained_s, size=size.strip(),
                         capacity=c.capacity, unique=c.unique_bytes, runs=c.prefetch.runs,
                         wasted=c.prefetch.wasted_bytes, eval_requests=c.eval_requests)
                rows.append((kind, f))
    return rows


def inference(n: int, model: Path | None) -> dict:
    """Scoring ``n`` candidates: the tracker's matrix, the model, and the whole decision."""
    predictor = Predictor.load(model)
    tracker = FeatureTracker(limit=max(200_000, 2 * n))
    now = 1_767_225_600.0
    # n objects under 1000 prefixes, each read a few times over the last hour.
    for i in range(n):
        for r in range(1 + i % 3):
            tracker.observe(Access(now - 3500 + (i * 7 + r * 900) % 3500, "b", f"p{i % 1000:04d}/obj-{i:07d}",
                                   0, 1_000_000 - 1, 1_000_000, "miss"))
    objs = tracker.candidates(now, n)
    t = time.perf_counter()
    X = tracker.matrix(objs, now, [0.0] * len(objs))  # values, as loop.choose passes them
    matrix_s = time.perf_counter() - t
    predictor.score(X)  # warm-up: onnxruntime allocates on its first run
    best = best_cpu = float("inf")
    for _ in range(5):
        t, c = time.perf_counter(), time.thread_time()
        predictor.score(X)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.thread_time() - c)
    c0 = time.thread_time()
    t = time.perf_counter()
    chosen, report = choose(tracker, predictor, now, {}, 10 * 1024**3, [], RuleSet(), threshold=0.7,
                            max_bytes=1024**3, limit=n)
    run_s = time.perf_counter() - t
    run_cpu = time.thread_time() - c0
    return {"candidates": len(objs), "matrix_ms": 1e3 * matrix_s, "score_ms": 1e3 * best,
            "score_cpu_ms": 1e3 * best_cpu, "run_ms": 1e3 * run_s, "run_cpu_ms": 1e3 * run_cpu,
            "chosen": len(chosen.items)}


def catalogue_memory(n: int = 1_000_000) -> None:
    """Memory of the known-key catalogue (predict/known.py) holding ``n`` keys: shard-like keys,
    1,000 per prefix, each with a size and an MD5 ETag, measured with tracemalloc."""
    import tracemalloc

    from sidecar.predict.known import KnownKeys

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    known = KnownKeys(max_keys=n)
    t = time.perf_counter()
    for i in range(n):
        known.add("datasets", f"corpus/part-{i // 1000:05d}/shard-{i % 1000:06d}.tar", 256 * 1024**2,
                  f'"{i:032x}"')
    dt = time.perf_counter() - t
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"known-key catalogue: {n:,} keys ({n // 1000:,} prefixes): {used / 1024**2:.1f} MiB traced "
          f"= {used / n:.0f} B per key ({used * 1_000_000 / n / 1024**2:.0f} MiB per 1 M keys); "
          f"its own estimate (sidecar_known_keys_bytes) {known.nbytes() / 1024**2:.1f} MiB; "
          f"{n / dt / 1e3:.0f} k adds/s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sizes", default="10%", help="cache sizes, %% of the evaluated part's unique bytes")
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--candidates", type=int, default=100_000)
    p.add_argument("--model", default=None, help="model for the inference figure [the shipped one]")
    p.add_argument("--skip-sim", action="store_true", help="only the inference and CPU figures")
    p.add_argument("--catalogue", type=int, metavar="KEYS", default=None,
                   help="only the known-key catalogue's memory for this many keys (e.g. 1000000)")
    args = p.parse_args()
    if args.catalogue:
        catalogue_memory(args.catalogue)
        return 0
    model = Path(args.model) if args.model else shipped_model_path()

    if not args.skip_sim:
        print(f"hit ratios (6 h generated workloads, trained on the first 3 h, replayed the last 3 h; "
              f"threshold {args.threshold}, predictor every {args.interval:g} s)")
        print(f"{'workload':<10} {'cache':>6} {'byte hit w/o':>12} {'byte hit with':>13} {'change':>8} "
              f"{'obj hit w/o':>11} {'obj hit with':>12} {'prefetched':>11} {'read later':>10} {'auc':>6}")
        for kind, f in hit_ratios(args):
            print(f"{kind:<10} {f['size']:>6} {f['byte_hit_without']:12.4f} {f['byte_hit_with']:13.4f} "
                  f"{100 * (f['byte_hit_with'] - f['byte_hit_without']):+7.2f}p "
                  f"{f['object_hit_without']:11.4f} {f['object_hit_with']:12.4f} "
                  f"{gib(f['prefetched_bytes']):>11} {100 * f['prefetched_read_share']:9.1f}% {f['auc']:6.3f}")
            print(f"{'':<10} {'':>6} cache {gib(f['capacity'])} of {gib(f['unique'])} unique; {f['runs']} runs, "
                  f"{1e3 * f['cpu_per_run_s']:.1f} ms CPU per run = "
                  f"{100 * f['cpu_per_run_s'] / args.interval:.3f}% of a core; evicted unread {gib(f['wasted'])}")
    r = inference(args.candidates, model)
    print(f"\ninference, {r['candidates']:,} candidates ({model.name}): model {r['score_ms']:.1f} ms "
          f"wall, {r['score_cpu_ms']:.1f} ms CPU (best of 5), feature matrix {r['matrix_ms']:.1f} ms; "
          f"one whole decision (matrix + model + plan) {r['run_ms']:.1f} ms wall, {r['run_cpu_ms']:.1f} ms CPU")
    print(f"loop CPU at a {args.interval:g} s interval with {r['candidates']:,} candidates: "
          f"{100 * r['run_cpu_ms'] / 1e3 / args.interval:.2f}% of a core")
    print(f"(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
