"""The access log (ring, rotation, read-back) and the incremental features against brute-force recomputation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.predict.accesslog import Access, AccessLog, log_files, read_log
from sidecar.predict.features import FEATURES, NEVER, FeatureTracker

COL = {name: i for i, name in enumerate(FEATURES)}
T0 = 1_767_225_600.0


def acc(t: float, key: str, bucket: str = "b", size: int = 1000, outcome: str = "miss") -> Access:
    return Access(t, bucket, key, 0, size - 1, size, outcome)


def none_cached(obj) -> float:
    return 0.0


# --- access log -------------------------------------------------------------------------

def test_ring_is_bounded_and_recent_filters_by_time():
    log = AccessLog(None, ring_size=100)
    for i in range(250):
        log.record(acc(T0 + i, f"k{i}"))
    assert len(log) == 100
    got = log.recent()
    assert [a.key for a in got] == [f"k{i}" for i in range(150, 250)]
    assert [a.key for a in log.recent(since=T0 + 240)] == [f"k{i}" for i in range(240, 250)]
    assert log.recent(since=T0 + 1000) == []
    log.flush()   # no directory: nothing to write, no error
    log.close()


def test_record_does_no_file_io_and_flush_writes(tmp_path):
    log = AccessLog(tmp_path, ring_size=1000)
    for i in range(10):
        log.record(acc(T0 + i, f"k{i}"))
    assert log_files(tmp_path) == []          # nothing written before flush
    log.flush()
    assert [a.key for a in read_log(tmp_path)] == [f"k{i}" for i in range(10)]
    log.close()


def test_files_rotate_at_the_cap_and_only_files_kept_remain(tmp_path):
    cap = 2000
    log = AccessLog(tmp_path, ring_size=10_000, file_max_bytes=cap, files_kept=3)
    written = []
    for i in range(400):
        a = acc(T0 + i, f"data/shard-{i:05d}", size=i + 1)
        log.record(a)
        written.append(a)
        if i % 37 == 0:
            log.flush()
    log.close()
    files = log_files(tmp_path)
    assert len(files) == 3
    assert all(f.stat().st_size <= cap for f in files)
    back = list(read_log(tmp_path))
    # What remains is the newest records, in order, each exactly as written.
    assert back == written[len(written) - len(back):]
    assert sum(f.stat().st_size for f in files) > 2 * cap * 0.8


def test_read_log_round_trip_with_odd_keys_and_a_torn_line(tmp_path):
    records = [Access(T0 + 0.123456, "bkt", "a b/ü+%2F/../x\t\"q\"\udcff", 5, 10, 11, "partial"),
               Access(T0 + 1.5, "bkt", "k", 0, 0, 1, "prefetched"),
               Access(T0 + 2.25, "other", "z/y", 100, 8 * 2**20 - 1, 2**40, "hit")]
    log = AccessLog(tmp_path)
    for r in records:
        log.record(r)
    log.close()
    with open(log_files(tmp_path)[-1], "a", encoding="utf-8") as fh:
        fh.write('[1767225603.0,"bkt","torn",0,')   # a crash mid-line
    assert list(read_log(tmp_path)) == records


def test_a_restarted_log_appends_after_the_existing_files(tmp_path):
    first = AccessLog(tmp_path, file_max_bytes=10_000)
    first.record(acc(T0, "old"))
    first.close()
    second = AccessLog(tmp_path, file_max_bytes=10_000)
    second.record(acc(T0 + 1, "new"))
    second.close()
    assert [a.key for a in read_log(tmp_path)] == ["old", "new"]


def test_unflushed_records_are_bounded_when_flush_falls_behind(tmp_path):
    log = AccessLog(tmp_path, ring_size=50)
    for i in range(120):
        log.record(acc(T0 + i, f"k{i}"))
    log.close()
    assert log.dropped == 70
    assert [a.key for a in read_log(tmp_path)] == [f"k{i}" for i in range(70, 120)]


# --- features against brute force --------------------------------------------------------

def brute_force(times: list[float], now: float, lam: float, crp: float) -> dict[str, float]:
    """The features of one object straight from their definitions over its access times."""
    reads, prev = [], None
    for t in times:
        if prev is None or t - prev > crp:
            reads.append(t)
        prev = t
    gaps = np.diff(reads)
    out = {
        "hotness": sum(math.exp(-lam * (now - t)) for t in reads),
        "reads_1m": sum(math.exp(-(now - t) / 60.0) for t in reads),
        "reads_10m": sum(math.exp(-(now - t) / 600.0) for t in reads),
        "reads_1h": sum(math.exp(-(now - t) / 3600.0) for t in reads),
        "reads_total": len(reads),
        "since_last": now - times[-1],
        "gap_mean": float(gaps.mean()) if len(gaps) else NEVER,
        "gap_std": float(gaps.std(ddof=1)) if len(gaps) >= 2 else -1.0,
    }
    if len(gaps):
        out["until_due"] = reads[-1] + gaps.mean() - now
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0.0, 900.0)), min_size=1, max_size=60),
       st.floats(0.0, 4000.0), st.sampled_from([60.0, 600.0]))
def test_incremental_features_match_brute_force(events, wait, half_life):
    tracker = FeatureTracker(half_life=half_life, correlated_period=1.0)
    t = T0
    times: dict[str, list[float]] = {}
    for obj, gap in events:
        t += gap
        key = f"p/k{obj}"
        tracker.observe(acc(t, key))
        times.setdefault(key, []).append(t)
    now = t + wait
    keys = sorted(times)
    X = tracker.matrix([("b", k) for k in keys], now, none_cached)
    lam = math.log(2) / half_life
    for row, key in zip(X, keys):
        want = brute_force(times[key], now, lam, 1.0)
        for name, value in want.items():
            assert row[COL[name]] == pytest.approx(value, rel=2e-5, abs=2e-3), (key, name)
        assert tracker.hotness(("b", key), now) == pytest.approx(want["hotness"], rel=1e-9, abs=1e-12)


def test_parts_of_one_read_count_once():
    tracker = FeatureTracker()
    for i in range(16):   # 16 parts of one 128 MiB shard, 50 ms apart
        tracker.observe(Access(T0 + 0.05 * i, "b", "ds/shard-0", i * 8 << 20, ((i + 1) * 8 << 20) - 1,
                               128 << 20, "miss"))
    row = tracker.matrix([("b", "ds/shard-0")], T0 + 1.0, none_cached)[0]
    assert row[COL["reads_total"]] == 1
    assert row[COL["since_last"]] == pytest.approx(0.25, abs=1e-3)
    assert row[COL["size_log2"]] == pytest.approx(math.log2((128 << 20) + 1))


def test_predecessor_just_read_is_a_neighbour_signal_and_successors_are_candidates():
    tracker = FeatureTracker(neighbours=2)
    keys = [f"ds/shard-{i:03d}" for i in range(10)]
    for i, k in enumerate(keys):               # a first epoch makes every shard known
        tracker.observe(acc(T0 + i, k))
    t = T0 + 3 * 3600.0                        # long after: nothing is recent any more
    for i in range(5):                         # second epoch, up to shard 4
        tracker.observe(acc(t + i, keys[i]))
    now = t + 5
    X = tracker.matrix([("b", k) for k in keys], now, none_cached)
    pred_since = X[:, COL["pred_since"]]
    pred_after = X[:, COL["pred_after"]]
    assert pred_since[5] == pytest.approx(1.0)          # shard 4 read a second ago
    assert pred_after[5] > 3 * 3600 - 10                 # ... and long after shard 5 was
    assert pred_since[6] >= 3 * 3600                     # shard 5 has not been read this epoch
    assert pred_since[0] == NEVER                        # nothing precedes shard 0
    assert X[5, COL["pred2_since"]] == pytest.approx(2.0)
    assert X[3, COL["succ_since"]] == pytest.approx(1.0)
    assert X[5, COL["prefix_since"]] == pytest.approx(1.0)
    cands = tracker.candidates(now)
    assert set(cands) == {("b", k) for k in keys[:7]}  # shards 0-4 and the next two
    assert cands[0] == ("b", keys[4])                   # most recent first


def test_neighbours_are_per_prefix_and_known_objects_join_candidates():
    tracker = FeatureTracker()
    tracker.observe(acc(T0, "a/1"))
    tracker.observe(acc(T0 + 1, "b/0"))        # lexically after a/1 but another prefix
    tracker.know("b", "a/2", size=42)
    X = tracker.matrix([("b", "b/0"), ("b", "a/2"), ("b", "never/seen")], T0 + 2, none_cached)
    assert X[0, COL["pred_since"]] == NEVER
    assert X[1, COL["pred_since"]] == pytest.approx(2.0)
    assert X[1, COL["reads_total"]] == 0 and X[1, COL["since_last"]] == NEVER
    assert tracker.size(("b", "a/2")) == 42 and tracker.size(("b", "never/seen")) is None
    assert X[2, COL["hotness"]] == 0 and X[2, COL["prefix_since"]] == NEVER
    assert ("b", "a/2") in tracker.candidates(T0 + 2)


def test_cached_fraction_comes_from_the_callback():
    tracker = FeatureTracker()
    tracker.observe(acc(T0, "x"))
    tracker.observe(acc(T0, "y"))
    X = tracker.matrix([("b", "x"), ("b", "y")], T0 + 1, lambda o: 0.25 if o == ("b", "x") else 1.0)
    assert X[:, COL["cached_fraction"]].tolist() == [0.25, 1.0]


def test_band_places_hot_objects_above_the_boundary_and_cold_ones_below():
    tracker = FeatureTracker(half_life=600.0)
    t = T0
    for i in range(400):
        t += 1.5
        tracker.observe(acc(t, "hot" if i % 2 else f"cold{i}"))
    X = tracker.matrix([("b", "hot"), ("b", "cold0")], t, none_cached)
    assert tracker.boundary > 0
    assert X[0, COL["band"]] > 1.0
    assert X[1, COL["band"]] < -1.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3)), min_size=1, max_size=200),
       st.integers(5, 20))
def test_memory_is_bounded_and_neighbour_links_survive_forgetting(events, limit):
    tracker = FeatureTracker(limit=limit)
    for i, (k, p) in enumerate(events):
        tracker.observe(acc(T0 + 2 * i, f"p{p}/k{k:03d}"))
    assert len(tracker) <= limit
    # The most recently read object is never the one forgotten.
    k, p = events[-1]
    assert ("b", f"p{p}/k{k:03d}") in tracker
    # Every tracked object's predecessor signal is that of its predecessor among the tracked.
    tracked = sorted(o for o in tracker._slot)
    now = T0 + 2 * len(events)
    X = tracker.matrix(tracked, now, none_cached)
    for row, (b, key) in zip(X, tracked):
        prefix = key.rpartition("/")[0]
        before = [o for o in tracked if o[1].rpartition("/")[0] == prefix and o[1] < key]
        want = NEVER if not before else min(NEVER, now - tracker.last_access(before[-1]))
        assert row[COL["pred_since"]] == pytest.approx(want)


def test_unknown_objects_and_empty_input():
    tracker = FeatureTracker()
    assert tracker.matrix([], T0, none_cached).shape == (0, len(FEATURES))
    X = tracker.matrix([("b", "nope")], T0, none_cached)
    assert X.dtype == np.float32 and X.shape == (1, len(FEATURES))
    assert X[0, COL["since_last"]] == NEVER and X[0, COL["reads_total"]] == 0
    assert tracker.candidates(T0) == []


def test_cached_fraction_can_be_pushed_or_given_in_order():
    tracker = FeatureTracker()
    for k in ("x", "y", "z"):
        tracker.observe(acc(T0, k))
    objs = [("b", "x"), ("b", "y"), ("b", "z"), ("b", "unknown")]
    tracker.set_cached_fraction(("b", "y"), 0.5)
    tracker.set_cached_fraction(("b", "unknown"), 0.9)     # not tracked: ignored
    assert tracker.matrix(objs, T0 + 1, None)[:, COL["cached_fraction"]].tolist() == [0, 0.5, 0, 0]
    given_ = tracker.matrix(objs, T0 + 1, np.array([0.25, 0.5, 0.75, 1.0]))
    assert given_[:, COL["cached_fraction"]].tolist() == [0.25, 0.5, 0.75, 1.0]
    tracker.forget(("b", "y"))
    tracker.observe(acc(T0 + 2, "y"))                      # a new slot starts uncached
    assert tracker.matrix([("b", "y")], T0 + 3, None)[0, COL["cached_fraction"]] == 0


def test_candidates_honour_the_limit_and_leave_out_wholly_cached_objects():
    tracker = FeatureTracker()
    for i in range(50):
        tracker.observe(acc(T0 + i, f"q{i:02d}/k"))
    assert tracker.candidates(T0 + 50, limit=5) == [("b", f"q{i:02d}/k") for i in range(49, 44, -1)]
    tracker.set_cached_fraction(("b", "q49/k"), 1.0)
    tracker.set_cached_fraction(("b", "q48/k"), 0.5)
    got = tracker.candidates(T0 + 50, limit=3, max_cached=1.0)
    assert got == [("b", "q48/k"), ("b", "q47/k"), ("b", "q46/k")]
    # Fast path and plain look-ups give the same rows.
    a = tracker.matrix(got, T0 + 50, None)
    b = tracker.matrix(list(got), T0 + 50, None)
    assert np.array_equal(a, b)


def test_a_candidate_list_changed_by_the_caller_still_maps_to_the_right_objects():
    tracker = FeatureTracker()
    for i in range(6):
        tracker.observe(acc(T0 + i, f"k{i}", size=100 * (i + 1)))
    cands = tracker.candidates(T0 + 6)
    cands.pop()                                   # caller drops one
    cands.reverse()
    sizes = 2 ** tracker.matrix(cands, T0 + 6, None)[:, COL["size_log2"]] - 1
    assert np.allclose(sizes, [tracker.size(o) for o in cands], rtol=1e-5)


def test_hotness_is_the_cache_s_decayed_counter_over_reads():
    from sidecar.cache.hotness import DecayedCounter, half_life_to_lambda

    lam = half_life_to_lambda(300.0)
    tracker = FeatureTracker(half_life=300.0)
    counter = DecayedCounter()
    rng = np.random.default_rng(1)
    t = T0
    for gap in rng.exponential(120.0, 200).tolist():
        t += gap + 1.5                        # every access a new read
        tracker.observe(acc(t, "obj"))
        counter.touch(t, lam)
    for later in (0.0, 60.0, 3600.0):
        assert tracker.hotness(("b", "obj"), t + later) == pytest.approx(counter.at(t + later, lam), rel=1e-12)
