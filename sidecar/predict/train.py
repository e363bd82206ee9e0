"""Training the access predictor: (features at t, read within the horizon?) pairs, a boosted-tree fit, ONNX export."""

from __future__ import annotations

import bisect
import collections
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .accesslog import Access
from .features import FEATURES, FeatureTracker, ObjectId
from .known import KnownKeys, prefix_of
from .model import META_FEATURES, META_HORIZON, META_METRICS, META_TRAINED_ON

THRESHOLD = 0.7          # the daemon's default prefetch_threshold: precision/recall are reported there
MAX_ROWS = 60_000        # rows fitted: the exact-split GBDT costs ~linear time in rows


class SimulatedCache:
    """A byte-budget LRU over whole objects, standing in for the cache during replay so that
    ``cached_fraction`` has the values the loop would see."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._held: collections.OrderedDict[ObjectId, tuple[int, int]] = collections.OrderedDict()

    def read(self, a: Access) -> None:
        obj = (a.bucket, a.key)
        held, size = self._held.pop(obj, (0, a.size))
        add = min(a.size, held + (a.end - a.start + 1)) - held
        self._held[obj] = (held + add, a.size)
        self.used += add
        while self.used > self.capacity and self._held:
            _, (b, _) = self._held.popitem(last=False)
            self.used -= b

    def fraction(self, obj: ObjectId) -> float:
        held = self._held.get(obj)
        return held[0] / held[1] if held and held[1] > 0 else 0.0


class Listings:
    """The listings a replayed trace implies: a reader lists a prefix before it reads it, so the
    first read under a prefix makes every key the trace has there known, as the listing passing
    through the daemon's face does (``known``: the ``KnownKeys`` catalogue)."""

    def __init__(self, accesses: Sequence[Access]) -> None:
        self._by_prefix: dict[tuple[str, str], dict[str, int]] = collections.defaultdict(dict)
        for a in accesses:
            self._by_prefix[(a.bucket, prefix_of(a.key))][a.key] = a.size
        self.known = KnownKeys(max_keys=max(1_000_000, sum(map(len, self._by_prefix.values()))))
        self._listed: set[tuple[str, str]] = set()

    def observe(self, a: Access) -> None:
        pk = (a.bucket, prefix_of(a.key))
        if pk not in self._listed:
            self._listed.add(pk)
            for key, size in sorted(self._by_prefix[pk].items()):
                self.known.add(a.bucket, key, size)


def build_dataset(accesses: Iterable[Access], *, horizon: float = 300.0, sample_every: float = 30.0,
                  max_rows: int | None = None, seed: int = 0, cache_share: float = 0.2,
                  tracker: FeatureTracker | None = None, progress: bool = False,
                  skip_cached: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay ``accesses`` through a FeatureTracker on their own (simulated) time; every
    ``sample_every`` seconds, the tracker's candidates give rows of features at that time,
    labelled 1 if the object is accessed within the next ``horizon`` seconds.

    Samples start after one horizon of warm-up and stop one horizon before the end (their
    labels would be cut short). With ``max_rows``, each sample keeps a uniform random subset
    of its candidates (the same share for positives and negatives, so probabilities stay
    calibrated). ``cached_fraction`` comes from an LRU holding ``cache_share`` of the unique bytes;
    with ``skip_cached`` wholly cached candidates are left out, as the loop leaves them out
    (for measuring what the loop sees).
    Returns X (float32, n x len(FEATURES)), y (int8) and each row's sample time.
    """
    acc = sorted(accesses, key=lambda a: a.t)
    empty = (np.empty((0, len(FEATURES)), np.float32), np.empty(0, np.int8), np.empty(0))
    if not acc:
        return empty
    times: dict[ObjectId, list[float]] = collections.defaultdict(list)
    sizes: dict[ObjectId, int] = {}
    for a in acc:
        times[(a.bucket, a.key)].append(a.t)
        sizes[(a.bucket, a.key)] = a.size
    cache = SimulatedCache(max(1, int(cache_share * sum(sizes.values()))))
    tracker = tracker or FeatureTracker()
    listings = Listings(acc)
    first, end = acc[0].t, acc[-1].t
    samples = np.arange(first + horizon, end - horizon, sample_every)
    if len(samples) == 0:
        return empty
    per_sample = None if max_rows is None else max(1, max_rows // len(samples))
    rng = np.random.default_rng(seed)
    blocks, labels, stamps = [], [], []
    i = 0
    bar = _bar(len(samples), "features", progress)
    for T in samples.tolist():
        while i < len(acc) and acc[i].t <= T:
            listings.observe(acc[i])
            tracker.observe(acc[i])
            cache.read(acc[i])
            i += 1
        # (small_set=0: a rate-less reader's whole small prefix is the loop's planning rule, not a
        # candidate set the model is fitted on)
        tracker.look_ahead(listings.known, T, sample_every, small_set=0)
        cands = tracker.candidates(T)
        if skip_cached:
            # The loop scores only objects not wholly cached. Fitting on all candidates measured
            # better even on that view (more rows near the decision), hence not the default.
            cands = [o for o in cands if cache.fraction(o) < 1.0]
        if per_sample is not None and len(cands) > per_sample:
            pick = np.sort(rng.choice(len(cands), size=per_sample, replace=False))
            cands = [cands[j] for j in pick.tolist()]
        if cands:
            blocks.append(tracker.matrix(cands, T, cache.fraction))
            y = np.empty(len(cands), np.int8)
            for j, obj in enumerate(cands):
                ts = times.get(obj, ())
                k = bisect.bisect_right(ts, T)
                y[j] = k < len(ts) and ts[k] <= T + horizon
            labels.append(y)
            stamps.append(np.full(len(cands), T))
        bar.update(1)
    bar.close()
    if not blocks:
        return empty
    return np.concatenate(blocks), np.concatenate(labels), np.concatenate(stamps)


def _bar(total: int, desc: str, enabled: bool, unit: str = "sample"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """AUC, and precision/recall of "p >= threshold" (the planner's rule)."""
    y = y.astype(bool)
    pick = p >= threshold
    tp = int((pick & y).sum())
    return {
        "auc": _auc(y, p),
        "precision": tp / int(pick.sum()) if pick.any() else 0.0,
        "recall": tp / int(y.sum()) if y.any() else 0.0,
        "threshold": threshold,
        "positive_rate": float(y.mean()) if len(y) else 0.0,
    }


def fit(X: np.ndarray, y: np.ndarray, *, seed: int = 0, progress: bool = False):
    """A small gradient-boosted tree ensemble. Exact-split GBDT because skl2onnx converts it
    cleanly (its HistGradientBoosting converter fails with numpy 2). 30 trees of depth 4 score
    100k rows in ~35 ms of one core and measured as well as 60 trees on held-out workloads."""
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=30, max_depth=4, learning_rate=0.25,
                                       subsample=0.8, min_samples_leaf=20, random_state=seed)
    bar = _bar(model.n_estimators, "trees", progress, unit="tree")

    def monitor(i, est, env) -> bool:   # called after each tree; False: go on
        bar.update(1)
        return False

    model.fit(X, y, monitor=monitor)
    bar.close()
    return model


def export(model, out: Path, *, horizon: float, metrics: dict, trained_on: str) -> bytes:
    """Write the fitted model as ONNX with the feature schema and horizon in its metadata."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(model, initial_types=[("X", FloatTensorType([None, len(FEATURES)]))],
                  options={id(model): {"zipmap": False}}, target_opset=17)
    for k, v in ((META_FEATURES, json.dumps(list(FEATURES))), (META_HORIZON, repr(float(horizon))),
                 (META_METRICS, json.dumps(metrics, sort_keys=True)), (META_TRAINED_ON, trained_on)):
        p = onx.metadata_props.add()
        p.key, p.value = k, v
    onx.doc_string = "sidecar access predictor: P(object read within the horizon)"
    data = onx.SerializeToString()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return data


def train(accesses: Sequence[Access], out: Path, *, horizon: float = 300.0,
          test_fraction: float = 0.25, progress: bool = True, seed: int = 0,
          sample_every: float = 30.0, max_rows: int | None = MAX_ROWS,
          trained_on: str = "access log", log: Callable[[str], None] | None = None) -> dict:
    """Build the dataset, fit on the earlier ``1 - test_fraction`` of the sample times, and
    measure on the later slice; the exported model is the one measured (fitted on the earlier part only)."""
    from .model import Predictor

    started = time.perf_counter()
    X, y, T = build_dataset(accesses, horizon=horizon, sample_every=sample_every,
                            max_rows=max_rows, seed=seed, progress=progress)
    if len(y) == 0:
        raise ValueError("the access log is too short to train on: it needs reads spanning "
                         f"more than twice the horizon ({2 * horizon:.0f} s)")
    split = np.quantile(T, 1.0 - test_fraction)
    # Rows within one horizon before the split see labels from the test slice: leave them out.
    train_rows = T < split - horizon
    test_rows = T >= split
    if not train_rows.any() or not test_rows.any():
        raise ValueError("the access log is too short to hold out a later time slice")
    ytr = y[train_rows]
    if ytr.min() == ytr.max():
        raise ValueError("every training sample has the same label: the log has no variety to learn from")
    if log:
        log(f"{len(y)} samples ({int(train_rows.sum())} train, {int(test_rows.sum())} test), "
            f"{y.mean():.1%} positive; fitting")
    model = fit(X[train_rows], ytr, seed=seed, progress=progress)
    metrics = evaluate(y[test_rows], model.predict_proba(X[test_rows])[:, 1])
    metrics.update(train_samples=int(train_rows.sum()), test_samples=int(test_rows.sum()),
                   horizon=float(horizon))
    export(model, out, horizon=horizon, metrics=metrics, trained_on=trained_on)
    # The file is what the daemon runs: score the test slice through onnxruntime again.
    onnx_p = Predictor.load(out).score(X[test_rows])
    skl_p = model.predict_proba(X[test_rows])[:, 1]
    metrics["onnx_max_abs_diff"] = float(np.abs(onnx_p - skl_p).max())
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return metrics
