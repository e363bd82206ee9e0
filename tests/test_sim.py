"""The trace simulator: trace parsing, chunking, its numbers against plain references, the command."""

from __future__ import annotations

import functools
import struct
from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache.lruk import LRUKPolicy
from sidecar.cache.policy import LRUPolicy
from sidecar.cli import main
from sidecar.sim.oracle import BeladyPolicy, BeladySizePolicy
from sidecar.sim.replay import Replay, Workload
from sidecar.sim.trace import Trace, TraceError, next_accesses, read_csv, read_trace, write_oracle_general

# CI clones the repository with shared/ beside it (../shared from the repository's root); a git
# worktree one level further down finds it one level further up.
_REPO = Path(__file__).resolve().parents[1]
TRACES = next((p for p in (_REPO.parent / "shared" / "traces", _REPO.parent.parent / "shared" / "traces")
               if p.exists()), _REPO.parent / "shared" / "traces")
CLOUD = TRACES / "cloudPhysicsIO.oracleGeneral.bin"
needs_traces = pytest.mark.skipif(not CLOUD.exists(), reason="shared traces not present")


# --- parsing -----------------------------------------------------------------------------------

def test_oracle_general_records_are_read_little_endian(tmp_path):
    path = tmp_path / "t.oracleGeneral.bin"
    path.write_bytes(b"".join(struct.pack("<IQIq", *r) for r in [
        (10, 2**40 + 1, 512, 3), (11, 7, 4096, -1), (12, 2**40 + 1, 512, -1)]))
    trace = read_trace(path)
    assert trace.times == [10.0, 11.0, 12.0]
    assert trace.keys == [2**40 + 1, 7, 2**40 + 1]
    assert trace.sizes == [512, 4096, 512]
    assert trace.next_access == [3, -1, -1] and next_accesses(trace.keys) == [2, -1, -1]
    assert trace.offsets is None and trace.unique_bytes() == 4608
    assert len(read_trace(path, limit=2)) == 2


def test_oracle_general_written_and_read_back(tmp_path):
    path = tmp_path / "w.bin"
    write_oracle_general(path, [1, 2, 3, 4], [5, 6, 5, 5], [100, 200, 100, 100])
    trace = read_trace(path)
    assert trace.keys == [5, 6, 5, 5] and trace.next_access == [3, -1, 4, -1]  # 1-based, as libCacheSim


def test_a_truncated_oracle_general_file_is_an_error(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\0" * 30)
    with pytest.raises(TraceError, match="24-byte"):
        read_trace(path)


@needs_traces
def test_the_shared_trace_parses_to_its_documented_shape():
    trace = read_trace(CLOUD, limit=20_000)
    assert len(trace) == 20_000 and trace.times[0] == 5633898.0 and trace.sizes[3] == 6656
    # next_access_vtime is the 1-based position of the next request to the object
    ours = next_accesses(trace.keys)
    assert all(b == (a + 1 if a >= 0 else -1) for a, b in zip(ours, trace.next_access) if b <= len(trace))
    assert sum(1 for b in trace.next_access if 0 <= b <= len(trace)) > 1000


def test_csv_with_header_and_ranges(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("key,time,size,offset,length\nbucket/a,1.5,100,,\nbucket/b,2,1000,10,20\n"
                    "bucket/b,3,1000,990,50\n\n")
    trace = read_csv(path)
    assert trace.keys == ["bucket/a", "bucket/b", "bucket/b"] and trace.times == [1.5, 2.0, 3.0]
    assert trace.offsets == [0, 10, 990] and trace.lengths == [None, 20, 10]  # clipped at the end
    assert trace.unique_bytes() == 1100


def test_csv_without_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0,x,10\n1,y,20\n2,x,10\n")
    trace = read_trace(path)
    assert trace.keys == ["x", "y", "x"] and trace.sizes == [10, 20, 10] and trace.offsets is None


@pytest.mark.parametrize(("text", "message"), [
    ("time,key\n1,a\n", "lacks column"),
    ("time,key,size,colour\n1,a,2,red\n", "unknown column"),
    ("time,key,size\n1,a,big\n", ":2: expected"),
    ("1,a\n", "without a header"),
    ("time,key,size,offset\n1,a,10,11\n", "past the object's end"),
])
def test_bad_csv_names_the_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        read_trace(path)


# --- workload ----------------------------------------------------------------------------------

def test_requests_split_into_the_chunks_their_ranges_cover():
    trace = Trace(times=[0, 1, 2], keys=["a", "a", "b"], sizes=[10, 10, 3],
                  offsets=[0, 4, 0], lengths=[None, 3, 0])
    w = Workload.build(trace, chunk_size=4)
    assert w.keys == [("a", 0), ("a", 1), ("a", 2), ("a", 1)]
    assert w.sizes == [4, 4, 2, 4] and w.wanted == [4, 4, 2, 3]
    assert w.first == [0, 3, 4, 4]  # the empty read of b touches nothing
    whole = Workload.build(trace)
    assert whole.first is None and whole.wanted == [10, 3, 0] and whole.sizes == [10, 10, 3]


# --- numbers against plain references ------------------------------------------------------------

def plain_lru(trace: Trace, capacity: int, chunk_size: int | None = None) -> tuple[int, int, int]:
    """A cache written without any of the sidecar's classes: (request misses, missed bytes, wanted)."""
    cache: OrderedDict = OrderedDict()
    used = request_misses = missed = wanted_total = 0
    offsets = trace.offsets or [0] * len(trace)
    lengths = trace.lengths or [None] * len(trace)
    for key, size, off, length in zip(trace.keys, trace.sizes, offsets, lengths):
        end = size if length is None else off + length
        pieces = [(key, size, end - off)] if not chunk_size else [
            ((key, i), min(chunk_size, size - i * chunk_size), min(end, (i + 1) * chunk_size) - max(off, i * chunk_size))
            for i in range(off // chunk_size, (end - 1) // chunk_size + 1)] if end > off else []
        any_miss = False
        for k, cost, want in pieces:
            wanted_total += want
            if k in cache:
                cache.move_to_end(k)
                continue
            any_miss = True
            missed += want
            if cost > capacity:
                continue
            while used + cost > capacity:
                _, gone = cache.popitem(last=False)
                used -= gone
            cache[k] = cost
            used += cost
        request_misses += any_miss
    return request_misses, missed, wanted_total


@needs_traces
def test_simulated_lru_equals_a_plain_lru_on_a_real_trace():
    trace = read_trace(CLOUD, limit=30_000)
    w = Workload.build(trace)
    for share in (0.01, 0.1):
        capacity = int(w.unique_bytes() * share)
        r = Replay(w, capacity, LRUPolicy()).run()
        assert (r.request_misses, r.missed_bytes, r.wanted_bytes) == plain_lru(trace, capacity)
        k1 = Replay(w, capacity, LRUKPolicy(1)).run()
        assert (k1.request_misses, k1.missed_bytes) == (r.request_misses, r.missed_bytes)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 9000), st.integers(0, 9000), st.integers(0, 5000)),
                min_size=1, max_size=150),
       st.integers(1, 40_000), st.sampled_from([None, 1024, 4096]))
def test_simulated_lru_equals_a_plain_lru_with_ranges_and_chunks(requests, capacity, chunk_size):
    sizes = {}
    keys, object_sizes, offsets, lengths = [], [], [], []
    for key, size, off, length in requests:
        size = sizes.setdefault(key, size)
        keys.append(key)
        object_sizes.append(size)
        offsets.append(min(off, size))
        lengths.append(min(length, size - min(off, size)))
    trace = Trace(times=[float(i) for i in range(len(keys))], keys=keys, sizes=object_sizes,
                  offsets=offsets, lengths=lengths)
    r = Replay(Workload.build(trace, chunk_size), capacity, LRUPolicy()).run()
    assert (r.request_misses, r.missed_bytes, r.wanted_bytes) == plain_lru(trace, capacity, chunk_size)


def optimal_misses(keys: list, capacity: int) -> int:
    """Fewest misses of any unit-size cache of ``capacity`` entries (bypass allowed), by search."""

    @functools.lru_cache(maxsize=None)
    def best(i: int, cached: frozenset) -> int:
        if i == len(keys):
            return 0
        key = keys[i]
        if key in cached:
            return best(i + 1, cached)
        options = [best(i + 1, cached)]  # do not cache it
        if len(cached) < capacity:
            options.append(best(i + 1, cached | {key}))
        else:
            options += [best(i + 1, (cached - {out}) | {key}) for out in cached]
        return 1 + min(options)

    return best(0, frozenset())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=18), st.integers(1, 3))
def test_belady_is_optimal_for_equal_sizes(keys, capacity):
    trace = Trace(times=[0.0] * len(keys), keys=keys, sizes=[1] * len(keys))
    r = Replay(Workload.build(trace), capacity, BeladyPolicy()).run()
    assert r.request_misses == optimal_misses(keys, capacity)


@needs_traces
def test_reference_policies_reproduce_libcachesim_figures():
    """README figures (libCacheSim) for LRU and for its LRU-K, which forgets evicted history."""
    w = Workload.build(read_trace(CLOUD))
    capacity = int(w.unique_bytes() * 0.10)
    lru = Replay(w, capacity, LRUPolicy()).run()
    assert (round(lru.object_miss_ratio, 4), round(lru.byte_miss_ratio, 4)) == (0.8097, 0.9518)
    forget = Replay(w, capacity, LRUKPolicy(2, history_size=0)).run()
    assert (round(forget.object_miss_ratio, 4), round(forget.byte_miss_ratio, 4)) == (0.7903, 0.9296)
    belady = Replay(w, capacity, BeladySizePolicy()).run()
    assert belady.object_miss_ratio < lru.object_miss_ratio and belady.byte_miss_ratio < 0.76
    kept = Replay(w, capacity, LRUKPolicy(2)).run()
    assert kept.byte_miss_ratio < forget.byte_miss_ratio  # retained history pays on this trace


def test_hooks_see_every_request_and_a_tick_every_period():
    class Recorder:
        def __init__(self):
            self.requests, self.ticks = [], []

        def request(self, replay, index, missed):
            self.requests.append((index, missed))

        def tick(self, replay, now):
            self.ticks.append(now)

    trace = Trace(times=[0.0, 10.0, 70.0, 75.0], keys=[1, 1, 2, 1], sizes=[5, 5, 5, 5])
    hook = Recorder()
    Replay(Workload.build(trace), 100, LRUPolicy(), hooks=[hook], tick=30.0).run()
    assert hook.requests == [(0, True), (1, False), (2, True), (3, False)]
    assert hook.ticks == [30.0, 60.0]


def test_a_prefetching_hook_turns_misses_into_hits():
    class NextObject:
        """On each tick, prefetch the object after the last one read (keys are 0, 1, 2...)."""

        def __init__(self):
            self.last = None

        def request(self, replay, index, missed):
            self.last = replay.workload.keys[index]

        def tick(self, replay, now):
            if self.last is not None:
                replay.prefetch(self.last + 1, 10, now)

    trace = Trace(times=[40.0 * i for i in range(10)], keys=list(range(10)), sizes=[10] * 10)
    plain = Replay(Workload.build(trace), 100, LRUPolicy()).run()
    ahead = Replay(Workload.build(trace), 100, LRUPolicy(), hooks=[NextObject()], tick=30.0).run()
    assert plain.request_misses == 10
    assert ahead.request_misses == 1 and ahead.prefetched_items == 9 and ahead.prefetched_bytes == 90


# --- the command -------------------------------------------------------------------------------

def test_sim_command_prints_a_table_and_draws_the_curve(tmp_path, capsys):
    path = tmp_path / "t.csv"
    rows = ["time,key,size,offset,length"]
    for i in range(400):
        key = f"obj{(i * 7) % 23 if i % 3 else i % 5}"
        rows.append(f"{i},{key},{10_000 + 1000 * (hash(key) % 7)},{(i * 997) % 5000},3000")
    path.write_text("\n".join(rows) + "\n")
    plot = tmp_path / "mrc.png"
    code = main(["sim", str(path), "--sizes", "10%,50%,100000",
                 "--policies", "lru,lru-k,lru-2-forget,lru-2-p10,lru-2-admit,lru-1-admit20-w5-c1-f,default,belady",
                 "--chunk-size", "4KiB", "--plot", str(plot), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "chunk miss" in out and out.count("lru-2-forget") == 3 and out.count("belady") == 3
    assert out.count("lru-2-p10") == 3 and out.count("default") == 3
    assert out.count("lru-2-admit ") == 3 and out.count("lru-1-admit20-w5-c1-f") == 3
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sim_command_has_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sim", "--help"])
    assert e.value.code == 0 and "--chunk-size" in capsys.readouterr().out


def test_sim_command_rejects_bad_arguments(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("0,a,10\n")
    assert main(["sim", str(path), "--policies", "fifo", "--no-progress"]) == 2
    assert "lru-K" in capsys.readouterr().err
    assert main(["sim", str(path), "--sizes", "150%", "--no-progress"]) == 2
    assert main(["sim", str(tmp_path / "missing.csv"), "--no-progress"]) == 2


def test_sim_runs_the_qos_policy_with_rules(tmp_path, capsys):
    """A Guaranteed bucket read now and then survives a BestEffort scan through the simulator."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - bucket: scan\n    qos: BestEffort\n  - bucket: hot\n    qos: Guaranteed\n")
    path = tmp_path / "t.csv"
    rows = ["time,key,size"]
    for i in range(2000):
        rows.append(f"{i},scan/{i},100")
        if i % 50 == 0:
            rows.append(f"{i},hot/{(i // 50) % 5},100")
    path.write_text("\n".join(rows) + "\n")
    assert main(["sim", str(path), "--sizes", "2000", "--policies", "lru,qos:lru", "--rules", str(rules),
                 "--no-progress"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    hot_reads, scan_reads = 40, 2000
    assert float(lines["lru"][-3]) == 1.0  # LRU loses the hot objects to the scan
    assert float(lines["qos:lru"][-3]) == pytest.approx((5 + scan_reads) / (hot_reads + scan_reads), abs=1e-4)


def test_sim_admit_policy_is_the_daemons_adaptive_admission():
    from sidecar.cache.lruk import AdmitLRUK
    from sidecar.cli import build_parser
    from sidecar.sim.cli import policy_factory

    args = build_parser().parse_args(["sim", "t.csv", "--correlated-period", "1"])
    policy = policy_factory("lru-3-admit20-w5-c1-f", args)()
    assert isinstance(policy, AdmitLRUK)
    assert (policy.k, policy.max_share, policy.window, policy.chances, policy.fresh_returns, policy.ghost) == \
        (3, 0.2, 0.05, 1, True, 1.5)
    plain = policy_factory("lru-2-admit", args)()
    assert (plain.max_share, plain.window, plain.chances, plain.fresh_returns, plain.correlated_period) == \
        (0.5, 0.1, 3, False, 1.0)
    assert not plain.hold and policy_factory("lru-2-admit-h", args)().hold
    daemon = policy_factory("default", args)()  # the daemon's default: AdmitLRUK with its held part
    assert all(isinstance(g.policy, AdmitLRUK) and g.policy.hold for g in daemon._groups())
