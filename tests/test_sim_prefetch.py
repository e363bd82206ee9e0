"""The simulator with the predictor in the loop: accounting of prefetched bytes, rules, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.cache.lruk import LRUKPolicy
from sidecar.cache.qos import QoSPolicy
from sidecar.cache.rules import RuleSet
from sidecar.predict.accesslog import Access
from sidecar.predict.features import FEATURES, FeatureTracker
from sidecar.sim import prefetch as simp
from sidecar.sim.replay import Replay, Workload

MiB = 1024 * 1024


class Constant:
    """A predictor that gives every candidate the same probability (the hook's accounting is
    what these tests check, not the model)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def score(self, X):
        return np.full(len(X), self.p, dtype=np.float32)


class NextShard:
    """A rule in place of a model: likely read soon when the key before it was just read."""

    def score(self, X):
        since = X[:, FEATURES.index("pred_since")]
        return np.where(since < 30.0, 0.95, 0.05).astype(np.float32)


def _epochs(prefix: str = "ds", shards: int = 20, epochs: int = 3, step: float = 5.0, pause: float = 60.0,
            bucket: str = "b") -> list[Access]:
    out, t = [], 1_000_000.0
    for _ in range(epochs):
        for i in range(shards):
            out.append(Access(t, bucket, f"{prefix}/shard-{i:03d}", 0, MiB - 1, MiB, "miss"))
            t += step
        t += pause
    return out


def _run(accesses, predictor, rules=None, capacity=64 * MiB, tick=5.0, threshold=0.7):
    rules = rules or RuleSet()
    tracker = FeatureTracker()
    hook = simp.PrefetchHook(predictor, tracker, rules, MiB, threshold=threshold)
    workload = Workload.build(simp.accesses_to_trace(accesses), MiB)
    policy = simp._Watched(QoSPolicy(rules, lambda: LRUKPolicy(2), locate=simp._locate), hook.on_remove)
    result = Replay(workload, capacity, policy, hooks=[hook], tick=tick).run()
    return result, hook.stats


def test_prefetch_accounting_adds_up():
    result, st = _run(_epochs(), Constant(0.9), capacity=8 * MiB)
    assert st.runs > 0 and st.prefetched_bytes > 0
    assert st.prefetched_bytes == result.prefetched_bytes
    assert st.useful_bytes + st.wasted_bytes <= st.prefetched_bytes
    assert 0.0 <= st.useful_share <= 1.0


def test_prefetch_raises_hits_of_sequential_epochs():
    accesses = _epochs()
    # The cache holds 8 of the 20 shards: an epoch's scan evicts what the next one starts with.
    base = Replay(Workload.build(simp.accesses_to_trace(accesses), MiB), 8 * MiB,
                  QoSPolicy(RuleSet(), lambda: LRUKPolicy(2), locate=simp._locate)).run()
    with_pf, st = _run(accesses, NextShard(), capacity=8 * MiB)
    assert with_pf.byte_miss_ratio < base.byte_miss_ratio
    assert st.useful_bytes > 0


def test_below_threshold_and_best_effort_are_never_prefetched():
    _, st = _run(_epochs(), Constant(0.5), threshold=0.7)
    assert st.prefetched_bytes == 0
    rules = RuleSet.from_config([{"bucket": "b", "prefix": "ds/", "qos": "BestEffort"}])
    _, st = _run(_epochs(), Constant(0.99), rules=rules)
    assert st.prefetched_bytes == 0 and st.planned_objects == 0


def test_trace_round_trip():
    accesses = _epochs(epochs=1, shards=3)
    back = simp.trace_to_accesses(simp.accesses_to_trace(accesses))
    assert [(a.t, a.bucket, a.key, a.start, a.end, a.size) for a in back] == \
        [(a.t, a.bucket, a.key, a.start, a.end, a.size) for a in accesses]


def test_split_is_by_time():
    accesses = _epochs(epochs=2, shards=10)
    train, rest = simp.split(accesses, 0.5)
    assert train and rest and train[-1].t < rest[0].t
    assert len(train) + len(rest) == len(accesses)


def test_compare_with_trained_model_on_generated_workload():
    pytest.importorskip("sidecar.predict.train")
    from sidecar.predict.workload import generate

    accesses = generate("periodic", seed=1, duration=2 * 3600.0)
    c = simp.compare(accesses, capacity="10%", interval=30.0)
    f = c.figures()
    assert c.prefetch.runs > 0
    assert 0.0 <= f["byte_hit_without"] <= 1.0 and 0.0 <= f["byte_hit_with"] <= 1.0
    assert c.with_prefetch.prefetched_bytes == c.prefetch.prefetched_bytes


def test_cli_prefetch_workload(capsys):
    pytest.importorskip("sidecar.predict.train")
    from sidecar.cli import main

    rc = main(["sim", "--workload", "periodic", "--seed", "1", "--duration", "1h", "--prefetch",
               "--sizes", "10%", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "without prefetch" in out and "with prefetch" in out and "read later" in out


class _Boosts(QoSPolicy):
    """QoSPolicy that records which chunks predictor-weighted retention boosted."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.boosted: list = []

    def boost(self, keys, weight):
        keys = list(keys)
        self.boosted.extend(keys)
        return super().boost(keys, weight)


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_retention_weight_boosts_cached_chunks_of_confident_objects(weight):
    rules = RuleSet()
    hook = simp.PrefetchHook(Constant(0.9), FeatureTracker(), rules, MiB, threshold=0.95,
                             retention_weight=weight, retention_threshold=0.85)
    inner = _Boosts(rules, lambda: LRUKPolicy(2), locate=simp._locate)
    workload = Workload.build(simp.accesses_to_trace(_epochs()), MiB)
    Replay(workload, 8 * MiB, simp._Watched(inner, hook.on_remove), hooks=[hook], tick=5.0).run()
    assert hook.stats.prefetched_bytes == 0  # scored below the prefetch threshold: retention only
    if weight:
        assert inner.boosted and all(str(k[0]).startswith("b/ds/shard-") for k in inner.boosted)
    else:
        assert inner.boosted == []
