"""Prefetched entries' credit in QoSPolicy: protected from demand data until read or their horizon."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache.ledger import PrefetchedChunks
from sidecar.cache.lruk import LRUKPolicy
from sidecar.cache.qos import QoSPolicy
from sidecar.cache.rules import RuleSet
from sidecar.cache.space import CacheSpace
from sidecar.cache.store import ChunkStore
from sidecar.predict.loop import prefetch_budget
from sidecar.objects import ObjectMeta


def lruk_qos() -> QoSPolicy:
    return QoSPolicy(RuleSet(), lambda: LRUKPolicy(2))


def key(name: str, index: int = 0) -> tuple[str, str, int]:
    return ("b", name, index)


def test_a_credited_chunk_is_not_the_victim_while_colder_demand_data_exists():
    space = CacheSpace(4, lruk_qos())
    space.insert(key("p"), 1, 0.0, credit_until=300.0)  # prefetched first: the oldest entry
    for i, name in enumerate(["a", "b", "c"]):
        space.insert(key(name), 1, 1.0 + i)
    evicted = []
    for i in range(3):  # three more demand chunks push out the three demand ones, not p
        evicted += space.insert(key(f"d{i}"), 1, 10.0 + i)
    assert key("p") in space
    assert sorted(evicted) == [key("a"), key("b"), key("c")]
    assert space.policy.is_credited(key("p"))


def test_credit_lapses_after_its_horizon_and_the_unread_chunk_goes_first():
    space = CacheSpace(3, lruk_qos())
    space.insert(key("a"), 1, 0.0)
    space.insert(key("p"), 1, 1.0, credit_until=100.0)
    space.insert(key("b"), 1, 2.0)
    assert space.policy.is_credited(key("p"))
    evicted = space.insert(key("c"), 1, 150.0)  # after p's horizon: p was a wrong guess
    assert evicted == [key("p")]
    assert key("a") in space and key("b") in space


def test_reading_a_prefetched_chunk_makes_it_ordinary():
    policy = lruk_qos()
    space = CacheSpace(3, policy)
    space.insert(key("p"), 1, 0.0, credit_until=1000.0)
    assert policy.credited_bytes == 1 and policy.admitted_bytes == 0, "a prefetch is not demand"
    assert space.hit(key("p"), 5.0)
    assert not policy.is_credited(key("p")) and policy.credited_bytes == 0
    # Its read is its first reference: now it ages like any once-read chunk.
    space.insert(key("a"), 1, 6.0)
    space.insert(key("b"), 1, 7.0)
    assert space.insert(key("c"), 1, 8.0) == [key("p")]


def test_with_only_credited_entries_left_the_longest_credit_goes():
    space = CacheSpace(2, lruk_qos())
    space.insert(key("p1"), 1, 0.0, credit_until=500.0)
    space.insert(key("p2"), 1, 0.0, credit_until=200.0)
    assert space.insert(key("a"), 1, 1.0) == [key("p1")]


def test_pinned_prefetch_needs_no_credit():
    policy = lruk_qos()
    policy.pin("b", "")
    policy.admit(key("p"), 1, 0.0, credit_until=100.0)
    assert not policy.is_credited(key("p")) and policy.is_pinned(key("p"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["demand", "prefetch", "read", "evict"]), st.integers(0, 11),
                          st.floats(0, 50)), max_size=60))
def test_credited_entries_never_go_before_demand_data(ops):
    policy = lruk_qos()
    space = CacheSpace(6, policy)
    now = 0.0
    for op, n, dt in ops:
        now += dt
        k = key(f"o{n}")
        if op == "demand":
            if not space.hit(k, now):
                space.insert(k, 1, now)
        elif op == "prefetch":
            if k not in space:
                space.insert(k, 1, now, credit_until=now + 100.0)
        elif op == "read":
            space.hit(k, now)
        else:
            v = policy.victim()
            if v is not None:
                credited = [e for e in space.sizes if policy.is_credited(e)]
                if policy.is_credited(v):
                    # A credited victim only when every entry left is credited and unexpired.
                    assert len(credited) == len(space.sizes)
                space.remove(v)
        assert policy.credited_bytes == sum(1 for e in space.sizes if e in policy._credit)
        assert space.used <= space.capacity


def test_store_commits_a_prefetched_chunk_with_a_credit(tmp_path):
    clock = [0.0]
    cs = 1024
    s = ChunkStore(tmp_path, chunk_size=cs, capacity=3 * cs, policy=lruk_qos(), clock=lambda: clock[0])
    s.open()
    s.prefetched.credit = 100.0

    def put(name: str, prefetched: bool) -> tuple[str, int]:
        m = ObjectMeta("b", name, '"e"', cs, "Tue, 14 Nov 2023 22:13:20 GMT", ())
        v = s.version_for(m)
        w = s.begin_write(v, 0)
        w.write(os.urandom(cs))
        assert s.commit(w, prefetched=prefetched)
        w.close()
        return v.vid, 0

    p = put("p", True)
    clock[0] = 1.0
    a, b = put("a", False), put("b", False)
    clock[0] = 2.0
    put("c", False)
    assert p in s.space and a not in s.space, "demand data went before the unread prefetch"
    clock[0] = 200.0
    put("d", False)
    assert p not in s.space, "an unread prefetch past its horizon goes first"
    assert b in s.space


def test_the_ledger_counts_a_prefetched_chunk_read_once_and_one_that_left_unread(tmp_path):
    cs = 1024
    wasted: list[int] = []
    ledger = PrefetchedChunks(on_wasted=wasted.append)
    s = ChunkStore(tmp_path, chunk_size=cs, capacity=2 * cs, policy=lruk_qos(), prefetched=ledger)
    s.open()

    def put(name: str, prefetched: bool) -> str:
        v = s.version_for(ObjectMeta("b", name, '"e"', cs, "Tue, 14 Nov 2023 22:13:20 GMT", ()))
        w = s.begin_write(v, 0)
        w.write(os.urandom(cs))
        assert s.commit(w, prefetched=prefetched)
        w.close()
        return v.vid

    read, unread = put("read", True), put("unread", True)
    assert ledger.objects() == {("b", "read"), ("b", "unread")}
    assert ledger.take(read, 0) == cs, "the first read of a prefetched chunk takes its credit"
    assert ledger.take(read, 0) == 0, "only the first"
    s.drop_version(unread)
    assert wasted == [cs], "a prefetched chunk that leaves unread is wasted"
    assert not ledger and ledger.objects() == set()
    put("demand", False)
    assert not ledger, "demand data is not entered"


class _PrefetchAt:
    """A replay hook that prefetches one item at its first tick, with or without a credit."""

    def __init__(self, key, until):
        self.key, self.until, self.done = key, until, False

    def request(self, replay, index, missed):
        pass

    def tick(self, replay, now):
        if not self.done:
            self.done = replay.prefetch(self.key, 1, now, self.until)


def test_the_simulator_credits_prefetches_like_the_daemon():
    from sidecar.sim.replay import Replay, Workload
    from sidecar.sim.trace import Trace

    # After the prefetch of "p", a scan of 6 other items through a 3-item cache, then p is read.
    names = ["a", "b", "c", "d", "e", "f", "g", "p"]
    trace = Trace(times=[float(i) for i in range(len(names))], keys=[f"b/{n}" for n in names],
                  sizes=[1] * len(names))
    results = {}
    for until in (None, 1000.0):
        w = Workload.build(trace)
        hook = _PrefetchAt("b/p", until)
        policy = QoSPolicy(RuleSet(), lambda: LRUKPolicy(2))
        replay = Replay(w, 3, policy, hooks=[hook], tick=0.5)
        results[until] = replay.run()
    assert results[None].missed_bytes == len(names), "without a credit the scan pushes p out"
    assert results[1000.0].missed_bytes == len(names) - 1, "with a credit p survives until read"


def test_a_run_plans_only_what_fits_beside_unread_prefetches_and_incoming_demand():
    assert prefetch_budget(100, 30, 50, None) == 20
    assert prefetch_budget(100, 30, 50, 10) == 10
    assert prefetch_budget(100, 80, 50, None) == 0


def test_credits_stay_right_after_many_prefetches_were_read():
    policy = lruk_qos()
    space = CacheSpace(1000, policy)
    for i in range(500):  # each leaves stale heap items behind once read
        space.insert(key(f"r{i}"), 1, float(i), credit_until=i + 50.0)
        space.hit(key(f"r{i}"), i + 0.5)
    space.insert(key("late"), 1, 600.0, credit_until=900.0)
    space.insert(key("soon"), 1, 600.0, credit_until=700.0)
    assert policy.credited_bytes == 2
    assert policy.victim() not in (key("late"), key("soon")), "ordinary entries go first"
    for i in range(500):
        space.remove(key(f"r{i}"))
    assert policy.victim() == key("late")
    policy.advance(800.0)
    assert policy.victim() == key("soon"), "its credit lapsed unread"
