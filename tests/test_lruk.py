"""LRU-K against a small reference written straight from the paper, plus its promised behaviour."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache.lruk import LRUKPolicy
from sidecar.cache.policy import LRUPolicy, make_policy
from sidecar.cache.space import CacheSpace


class ReferenceLRUK:
    """LRU-K as the paper's pseudo-code has it: dicts of histories, a victim found by scanning
    every resident key. Slow and obviously right; logical time counts references."""

    def __init__(self, k: int, correlated_period: float, retained_period: float | None,
                 history_size: int | None) -> None:
        self.k, self.crp, self.rip, self.history_size = k, correlated_period, retained_period, history_size
        self.clock = 0
        self.now = 0.0
        self.hist: dict[int, list[int]] = {}  # resident and retained keys
        self.last: dict[int, tuple[int, float]] = {}  # key -> (seq, time) of its last reference
        self.resident: set[int] = set()
        self.retained: list[tuple[int, float]] = []  # (key, evicted at), oldest first

    def reference(self, key: int, now: float) -> None:
        self.clock += 1
        self.now = max(self.now, now)
        hist = self.hist[key]
        last_seq, last_time = self.last[key]
        if hist[0] and now - last_time < self.crp:
            self.last[key] = (self.clock, now)
            return
        if hist[0]:
            burst = last_seq - hist[0]
            for i in range(self.k - 1, 0, -1):
                hist[i] = hist[i - 1] + burst if hist[i - 1] else 0
        hist[0] = self.clock
        self.last[key] = (self.clock, now)

    def admit(self, key: int, now: float) -> None:
        if key in self.resident:
            self.reference(key, now)
            return
        kept = [(k, at) for k, at in self.retained if k == key]
        self.retained = [(k, at) for k, at in self.retained if k != key]
        if not kept or (self.rip is not None and now - kept[0][1] > self.rip):
            self.hist[key] = [0] * self.k
            self.last[key] = (0, 0.0)
        self.resident.add(key)
        self.reference(key, now)
        if self.rip is not None:
            for k, at in [r for r in self.retained if r[1] < now - self.rip]:
                self.retained.remove((k, at))
                del self.hist[k], self.last[k]

    def touch(self, key: int, now: float) -> None:
        if key in self.resident:
            self.reference(key, now)

    def remove(self, key: int) -> None:
        if key not in self.resident:
            return
        self.resident.discard(key)
        limit = len(self.resident) + 1 if self.history_size is None else self.history_size
        self.retained.append((key, self.now))
        while len(self.retained) > limit:
            self.retained.pop(0)
        if key not in [k for k, _ in self.retained]:
            del self.hist[key], self.last[key]
        for k in list(self.hist):
            if k not in self.resident and k not in [r for r, _ in self.retained]:
                del self.hist[k], self.last[k]

    def rank(self, key: int) -> tuple[int, int]:
        oldest = self.hist[key][self.k - 1]
        return (1, oldest) if oldest else (0, self.last[key][0])

    def victims(self) -> set[int]:
        """Every key the policy may rightly name next (ties are broken arbitrarily)."""
        if not self.resident:
            return {None}
        pool = [k for k in self.resident if self.now - self.last[k][1] >= self.crp] or list(self.resident)
        best = min(self.rank(k) for k in pool)
        return {k for k in pool if self.rank(k) == best}

    def history(self, key: int) -> tuple[int, ...]:
        return tuple(self.hist[key]) if key in self.hist else ()


operations = st.lists(
    st.tuples(st.sampled_from(["admit", "admit", "touch", "touch", "remove", "evict"]),
              st.integers(0, 5), st.sampled_from([0.0, 0.0, 0.25, 0.5, 3.0])),
    max_size=120)


@settings(max_examples=300, deadline=None)
@given(k=st.integers(1, 3), crp=st.sampled_from([0.0, 1.0]), rip=st.sampled_from([None, 2.0, 10.0]),
       history_size=st.sampled_from([None, 0, 1, 3]), ops=operations)
def test_lruk_matches_the_reference(k, crp, rip, history_size, ops):
    policy = LRUKPolicy(k, correlated_period=crp, retained_period=rip, history_size=history_size)
    ref = ReferenceLRUK(k, crp, rip, history_size)
    now = 0.0
    for op, key, dt in ops:
        now += dt
        if op == "admit":
            policy.admit(key, 1, now)
            ref.admit(key, now)
        elif op == "touch":
            policy.touch(key, now)
            ref.touch(key, now)
        elif op == "remove":
            policy.remove(key)
            ref.remove(key)
        else:
            victim = policy.victim()
            assert victim in ref.victims()
            if victim is not None:
                policy.remove(victim)
                ref.remove(victim)
        assert len(policy) == len(ref.resident)
        assert {key for key in range(6) if key in policy} == ref.resident
        assert policy.victim() in ref.victims()
        for key in range(6):
            assert policy.history(key) == ref.history(key), key
        assert policy.retained == len(ref.retained)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 4)), max_size=300))
def test_lru_1_evicts_exactly_like_lru(requests):
    lru, lru1 = CacheSpace(10, LRUPolicy()), CacheSpace(10, LRUKPolicy(1))
    for t, (key, size) in enumerate(requests):
        got = []
        for space in (lru, lru1):
            if space.hit(key, float(t)):
                got.append(("hit", []))
            else:
                got.append(("miss", space.insert(key, size, float(t))))
        assert got[0] == got[1]


def test_fewer_than_k_references_go_first_oldest_last_reference_first():
    p = LRUKPolicy(2)
    for t, key in enumerate("abcd"):
        p.admit(key, 1, t)
    p.touch("a", 4)  # a has two references: protected by its K-distance
    p.touch("c", 5)
    assert p.order() == ["b", "d", "a", "c"]
    p.touch("b", 6)  # b's K-th most recent reference is now its admission, between a's and c's
    assert p.order() == ["d", "a", "b", "c"]


def test_largest_backward_k_distance_is_the_victim():
    p = LRUKPolicy(2)
    for key in "xyz":
        p.admit(key, 1, 0)
    p.touch("x", 1)  # HIST(x, 2) = ref 1
    p.touch("y", 2)  # HIST(y, 2) = ref 2
    p.touch("z", 3)  # HIST(z, 2) = ref 3
    p.touch("x", 4)  # now HIST(x, 2) = ref 4 (its previous touch): x is the most recent at K=2
    assert p.order() == ["y", "z", "x"]
    assert p.victim() == "y"


def test_correlated_references_count_as_one():
    p = LRUKPolicy(2, correlated_period=1.0)
    p.admit("burst", 1, 0.0)
    p.touch("burst", 0.2)
    p.touch("burst", 0.4)
    p.admit("pair", 1, 0.5)
    p.touch("pair", 5.0)
    assert p.history("burst")[1] == 0  # still one reference: first to go
    p._now = 10.0
    assert p.victim() == "burst"


def test_a_returning_key_keeps_its_past():
    p = LRUKPolicy(2, history_size=10)
    p.admit("a", 1, 0)
    p.remove("a")
    assert p.retained == 1
    p.admit("new", 1, 1)
    p.admit("a", 1, 2)  # second reference: a full history, unlike the newcomer
    assert p.history("a")[1] != 0
    assert p.victim() == "new"


def test_forgetful_lruk_treats_a_returning_key_as_new():
    p = LRUKPolicy(2, history_size=0)
    p.admit("a", 1, 0)
    p.remove("a")
    assert p.retained == 0
    p.admit("new", 1, 1)
    p.admit("a", 1, 2)
    assert p.victim() == "new"  # both have one reference; new's is older
    assert p.history("a")[1] == 0


def test_retained_history_is_bounded_in_time_and_count():
    p = LRUKPolicy(2, retained_period=10.0, history_size=3)
    for i in range(6):
        p.admit(i, 1, float(i))
    for i in range(6):
        p.remove(i)
    assert p.retained == 3  # only the most recently evicted three
    assert p.history(0) == () and p.history(5) != ()
    p.admit("late", 1, 100.0)  # everything evicted at t=5 is now older than 10 s
    assert p.retained == 0
    p.remove("late")
    unbounded = LRUKPolicy(2, retained_period=None)
    for i in range(100):
        unbounded.admit(i, 1, float(i))
        if i >= 10:
            unbounded.remove(i - 10)
    assert unbounded.retained <= len(unbounded) + 1  # default: no more than the resident entries


def test_scan_of_ten_times_the_cache_keeps_the_hot_set():
    """A one-pass scan over 10x the cache, with the hot set re-read between scan steps slowly
    enough that LRU loses it: LRU-2 keeps every hot key."""
    capacity, hot = 100, [f"hot{i}" for i in range(20)]

    def hot_hits(policy) -> tuple[int, int]:
        space = CacheSpace(capacity, policy)
        t = 0.0
        for _ in range(2):
            for key in hot:
                t += 1
                if not space.hit(key, t):
                    space.insert(key, 1, t)
        hits = reads = 0
        for step in range(10 * capacity):
            t += 1
            space.insert(("scan", step), 1, t)
            if step % 10 == 0:
                t += 1
                reads += 1
                key = hot[(step // 10) % len(hot)]
                if space.hit(key, t):
                    hits += 1
                else:
                    space.insert(key, 1, t)
        return hits, reads

    hits, reads = hot_hits(LRUKPolicy(2))
    assert hits == reads
    lru_hits, _ = hot_hits(LRUPolicy())
    assert lru_hits < reads // 2  # the scenario is one plain LRU does fail


def test_heap_stays_bounded_and_victim_skips_stale_values():
    p = LRUKPolicy(2)
    for i in range(50):
        p.admit(i, 1, 0.0)
    for t in range(1, 5001):
        p.touch(t % 50, float(t))
    assert len(p._heap) <= 2 * len(p) + 64
    order = p.order()
    while len(p):
        assert p.victim() == order.pop(0)
        p.remove(p.victim())
    assert p.victim() is None


def test_make_policy_builds_lruk_with_options():
    p = make_policy("lru-k", k=3)
    assert isinstance(p, LRUKPolicy) and p.k == 3 and p.name == "lru-k"
    with pytest.raises(ValueError):
        LRUKPolicy(0)
    with pytest.raises(ValueError):
        LRUKPolicy(2, correlated_period=-1)


# --- ProbationLRUK: LRU-K behind a probationary FIFO and a ghost list -------------------------------

from sidecar.cache.lruk import ProbationLRUK  # noqa: E402


def test_a_scan_of_one_hit_wonders_does_not_displace_the_reused_entries():
    space = CacheSpace(100, ProbationLRUK(2, probation=0.1))
    t = 0.0
    for _ in range(3):  # ten entries read three times: they pass probation into the LRU-K queue
        for key in range(10):
            t += 1
            if not space.hit(key, t):
                space.insert(key, 9, t)
    for key in range(1000, 1200):  # a long scan, each key read once
        t += 1
        if not space.hit(key, t):
            space.insert(key, 9, t)
    kept = sum(key in space for key in range(10))
    assert kept >= 9, kept
    # the same run through plain LRU loses them all
    lru = CacheSpace(100, LRUPolicy())
    for _ in range(3):
        for key in range(10):
            if not lru.hit(key, 0):
                lru.insert(key, 9, 0)
    for key in range(1000, 1200):
        if not lru.hit(key, 0):
            lru.insert(key, 9, 0)
    assert not any(key in lru for key in range(10))


def test_an_entry_back_from_the_ghost_list_enters_the_main_queue():
    policy = ProbationLRUK(2, probation=0.1)
    policy.admit("a", 1, 1.0)
    assert policy.victim() == "a"  # alone, unread again: probation lets it go
    policy.remove("a")
    assert "a" not in policy
    policy.admit("a", 1, 2.0)
    assert "a" in policy
    assert policy.history("a")[1] > 0  # both references count in LRU-K's history


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 30)), min_size=1, max_size=300),
       st.sampled_from([0.05, 0.1, 0.3]))
def test_probation_keeps_the_byte_budget_and_a_consistent_index(requests, share):
    policy = ProbationLRUK(2, probation=share, correlated_period=0.5)
    space = CacheSpace(120, policy)
    sizes: dict[int, int] = {}
    for t, (key, size) in enumerate(requests):
        size = sizes.setdefault(key, size)
        if not space.hit(key, float(t)):
            space.insert(key, size, float(t))
        assert space.used <= 120
        resident = [k for k in sizes if k in space]
        assert len(policy) == len(resident)
        assert sum(sizes[k] for k in resident) == space.used


def test_make_policy_builds_probation_only_when_asked():
    assert isinstance(make_policy("lru-k", k=2, probation=0.1), ProbationLRUK)
    assert isinstance(make_policy("lru-k", k=2, probation=0.0), LRUKPolicy)
    with pytest.raises(ValueError):
        ProbationLRUK(2, probation=1.5)
