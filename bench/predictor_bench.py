"""Predictor figures: time to build the feature matrix of 100k candidates and score it with the shipped model.

    .venv/bin/python bench/predictor_bench.py [--objects 100000] [--runs 7] [--model models/predictor.onnx]

A FeatureTracker is fed reads of ``--objects`` objects (2,000 prefixes, several reads each over
an hour of simulated time); then, ``--runs`` times: ``candidates(now)`` (the loop's candidate
list), ``matrix()`` over them and ``Predictor.score()``. ``matrix`` gets the cached fractions
either from a callback (a dict look-up per candidate, standing in for the cache index) or as
values pushed beforehand with ``set_cached_fraction`` (None). Prints the median wall and CPU
time of each step and of matrix + score, the figure the issue's 100 ms goal is about. On a
shared machine wall time includes waiting for a core; CPU time is this process's own.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.predict.accesslog import Access  # noqa: E402
from sidecar.predict.features import FeatureTracker  # noqa: E402
from sidecar.predict.model import Predictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--quality", action="store_true",
                    help="also print AUC/precision/recall on generated workloads (seeds the shipped model "
                         "was not trained on)")
    args = ap.parse_args()
    if args.quality:
        quality(args.model)

    rng = np.random.default_rng(0)
    n = args.objects
    reads = 4 * n
    t0 = 1_767_225_600.0
    times = np.sort(rng.uniform(t0, t0 + 3600.0, reads))
    which = rng.integers(0, n, reads)
    sizes = rng.lognormal(np.log(8 << 20), 1.0, n).astype(np.int64) + 1
    keys = [f"data/p{i % 2000:04d}/part-{i:07d}" for i in range(n)]
    tracker = FeatureTracker(limit=2 * n)
    started = time.perf_counter()
    for t, i in zip(times.tolist(), which.tolist()):
        s = int(sizes[i])
        tracker.observe(Access(t, "bench", keys[i], 0, s - 1, s, "hit"))
    observe_us = (time.perf_counter() - started) / reads * 1e6
    cached = {("bench", k): float(f) for k, f in zip(keys, rng.random(n).tolist())}
    fraction = cached.get
    predictor = Predictor.load(args.model)
    now = t0 + 3600.0

    for obj, f in cached.items():
        tracker.set_cached_fraction(obj, f)

    steps: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for _ in range(args.runs):
        for variant, source in (("callback", lambda o: fraction(o, 0.0)), ("pushed", None)):
            w, c = time.perf_counter(), time.process_time()
            cands = tracker.candidates(now)
            w1, c1 = time.perf_counter(), time.process_time()
            X = tracker.matrix(cands, now, source)
            w2, c2 = time.perf_counter(), time.process_time()
            p = predictor.score(X)
            w3, c3 = time.perf_counter(), time.process_time()
            steps["candidates"].append((w1 - w, c1 - c))
            steps[f"matrix ({variant})"].append((w2 - w1, c2 - c1))
            steps["score"].append((w3 - w2, c3 - c2))
            steps[f"matrix+score ({variant})"].append((w3 - w1, c3 - c1))
            assert p.shape == (len(cands),)
    print(f"objects tracked: {len(tracker)}  candidates: {len(cands)}  features: {X.shape[1]}  "
          f"model: {predictor.path}")
    print(f"observe: {observe_us:.2f} us per read (mean over {reads})")
    for name, v in steps.items():
        wall = statistics.median(x[0] for x in v) * 1e3
        cpu = statistics.median(x[1] for x in v) * 1e3
        print(f"{name:>24}: median {wall:7.1f} ms wall  {cpu:7.1f} ms CPU  ({len(v)} runs)")


def quality(model: Path | None) -> None:
    from sidecar.predict.train import build_dataset, evaluate
    from sidecar.predict.workload import generate

    predictor = Predictor.load(model)
    for kind, seed in (("mixed", 1), ("periodic", 1), ("zipf", 1)):
        for view, skip in (("all candidates", False), ("not wholly cached", True)):
            X, y, _ = build_dataset(generate(kind, seed=seed), max_rows=60_000, seed=seed, skip_cached=skip)
            m = evaluate(y, predictor.score(X))
            print(f"quality {kind:>8} seed {seed}, {view:>17}: AUC {m['auc']:.4f}  precision "
                  f"{m['precision']:.4f}  recall {m['recall']:.4f}  at p >= {m['threshold']:g}  "
                  f"({len(y)} samples, {m['positive_rate']:.1%} positive)")


if __name__ == "__main__":
    main()
