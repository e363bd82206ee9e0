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
       st.sampled_from([0.05, 0.1, 0.3]), st.booleans())
def test_probation_keeps_the_byte_budget_and_a_consistent_index(requests, share, adaptive):
    policy = ProbationLRUK(2, probation=share, correlated_period=0.5, adaptive=adaptive)
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


def test_adaptive_probation_grows_on_ghost_hits_and_shrinks_on_retained_returns():
    policy = ProbationLRUK(2, probation=0.1, adaptive=True)
    space = CacheSpace(10, policy)
    t = 0.0
    for key in range(10):  # ten entries read twice: into the main queue
        for _ in range(2):
            t += 1
            if not space.hit(key, t):
                space.insert(key, 1, t)
    for key in range(100, 130):  # one-hit wonders through probation: ghosts
        t += 1
        space.insert(key, 1, t)
    before = policy.probation
    t += 1
    space.insert(129 - 1, 1, t)  # a ghost comes back: probation was too small for it
    grown = policy.probation
    assert grown > before
    evicted = [k for k in range(10) if k not in space]
    assert evicted, "the main queue gave way"
    t += 1
    space.insert(evicted[0], 1, t)  # a key LRU-K remembers comes back: the main queue was too small
    assert policy.probation < grown
    assert evicted[0] in policy.main


def test_make_policy_builds_probation_only_when_asked():
    assert isinstance(make_policy("lru-k", k=2, probation=0.1), ProbationLRUK)
    assert isinstance(make_policy("lru-k", k=2, probation=0.0), LRUKPolicy)
    with pytest.raises(ValueError):
        ProbationLRUK(2, probation=1.5)


# --- predictor-weighted retention: LRUKPolicy.boost and QoSPolicy.boost ---------------------------

def _twins(k: int = 2) -> LRUKPolicy:
    """Two entries with the same history shape, ``a`` referenced before ``b``: ``a`` goes first."""
    p = LRUKPolicy(k)
    for key in ("a", "b"):
        for _ in range(k):
            p.admit(key, 1, 0.0) if key not in p else p.touch(key, 0.0)
    for i in range(20):  # time passes: other keys come and go
        p.admit(f"x{i}", 1, 0.0)
        p.touch(f"x{i}", 0.0)
    return p


def test_a_boosted_entry_outlives_an_equal_unboosted_one():
    p = _twins()
    assert p.order()[:2] == ["a", "b"]
    p.boost("a", 0.3)
    assert p.order().index("a") > p.order().index("b")
    p.remove(p.victim())
    assert "a" in p and "b" not in p


def test_boost_does_not_compound_and_a_reference_resets_it():
    p = _twins()
    p.boost("a", 0.3)
    once = p.order()
    p.boost("a", 0.3)
    assert p.order() == once
    p.touch("a", 0.0)
    p.touch("b", 0.0)  # both referenced again: ranked by history alone, a before b
    assert p.order().index("a") < p.order().index("b")


@given(st.lists(st.integers(0, 15), max_size=150), st.sets(st.integers(0, 15)))
@settings(max_examples=60, deadline=None)
def test_weight_zero_changes_nothing(requests, boosted):
    plain, zero = LRUKPolicy(2), LRUKPolicy(2)
    space_p, space_z = CacheSpace(6, plain), CacheSpace(6, zero)
    for t, key in enumerate(requests):
        for space in (space_p, space_z):
            if not space.hit(key, float(t)):
                space.insert(key, 1, float(t))
        for b in boosted:
            zero.boost(b, 0.0)
        assert plain.order() == zero.order()


def test_qos_policy_boosts_chunks_but_not_credited_ones():
    from sidecar.cache.qos import QoSPolicy

    q = QoSPolicy(class_policy=lambda: LRUKPolicy(2))
    for name in ("a", "b"):
        q.admit(("bkt", name, 0), 1, 0.0)
        q.touch(("bkt", name, 0), 1.0)
    q.admit(("bkt", "c", 0), 1, 1.0, credit_until=100.0)
    for i in range(20):  # hot chunks referenced since: a's and b's distances grow alike
        q.admit(("bkt", f"x{i}", 0), 1, 2.0)
        q.touch(("bkt", f"x{i}", 0), 2.0)
    assert q.victim() == ("bkt", "a", 0)
    assert q.boost([("bkt", "a", 0), ("bkt", "c", 0), ("bkt", "gone", 0)], 0.3) == 1
    assert q.victim() == ("bkt", "b", 0)
    assert q.boost([("bkt", "b", 0)], 0.0) == 0


# --- AdmitLRUK: LRU-K behind an adaptive probationary FIFO ------------------------------------------

from sidecar.cache.lruk import AdmitLRUK  # noqa: E402
from sidecar.cache.qos import QoSPolicy  # noqa: E402
from sidecar.cache.rules import RuleSet  # noqa: E402

admit_ops = st.lists(
    st.tuples(st.sampled_from(["read", "read", "read", "remove", "forget", "boost", "victim"]),
              st.integers(0, 25), st.integers(1, 30), st.sampled_from([0.0, 0.2, 1.0, 5.0])),
    min_size=1, max_size=300)


@settings(max_examples=150, deadline=None)
@given(ops=admit_ops, capacity=st.integers(30, 150), crp=st.sampled_from([0.0, 0.5]),
       rip=st.sampled_from([None, 20.0]), history_size=st.sampled_from([None, 0, 4]),
       max_share=st.sampled_from([0.0, 0.3, 0.5, 0.9]), start=st.sampled_from([0.0, 0.1]),
       chances=st.sampled_from([0, 1, 3]), k=st.sampled_from([1, 2, 2, 3]), fresh=st.booleans(),
       ghost=st.sampled_from([1.0, 1.5]), fill=st.booleans(), hold=st.booleans())
def test_admit_lruk_keeps_the_budget_and_a_consistent_index(ops, capacity, crp, rip, history_size, max_share,
                                                            start, chances, k, fresh, ghost, fill, hold):
    policy = AdmitLRUK(k, correlated_period=crp, retained_period=rip, history_size=history_size,
                       target=min(start, max_share), max_share=max_share, chances=chances,
                       fresh_returns=fresh, ghost=ghost, fill_main=fill, hold=hold)
    space = CacheSpace(capacity, policy)
    sizes: dict[int, int] = {}
    now = 0.0
    for op, key, size, dt in ops:
        now += dt
        size = sizes.setdefault(key, size)
        if op == "read":
            if not space.hit(key, now):
                space.insert(key, size, now)
        elif op == "remove":
            space.remove(key)
        elif op == "forget":
            space.forget(key)
        elif op == "boost":
            policy.boost(key, 0.5)
        else:
            victim = policy.victim()
            assert (victim is None) == (len(space) == 0)
            if victim is not None:
                space.remove(victim)
        resident = {k for k in sizes if k in space}
        assert space.used <= capacity
        assert {k for k in sizes if k in policy} == resident and len(policy) == len(resident)
        assert policy.probation_bytes + policy.main_bytes + policy.held_bytes == space.used
        assert policy.probation_bytes == sum(sizes[k] for k in resident if policy.on_probation(k))
        assert policy.held_bytes == sum(sizes[k] for k in resident if policy.held(k))
        assert policy.held_count == sum(policy.held(k) for k in resident)
        assert hold or not policy.held_count
        assert policy.held_bytes <= space.used
        assert sorted(policy.order()) == sorted(resident)  # each resident key once, in one part
        victim = policy.victim()
        assert victim is None if not resident else victim in resident  # never an absent entry
        # the ghost list is LRU-K's retained history: bounded, and its two kinds add up
        bound = int(ghost * (len(resident) + 1)) if history_size is None else history_size
        assert policy.retained <= bound + 2
        assert sum(policy._left) == policy.retained and min(policy._left) >= 0
        assert 0.0 <= policy.share <= max_share
        assert len(policy._heap) <= 2 * len(resident) + 65
        assert len(policy._held) - policy._held_head <= 2 * policy.held_count + 65


@settings(max_examples=150, deadline=None)
@given(ops=operations, rip=st.sampled_from([None, 2.0, 10.0]), history_size=st.sampled_from([None, 0, 1, 3]))
def test_admit_lruk_with_no_probation_share_is_plain_lruk(ops, rip, history_size):
    """At a target of 0, without second chances and with returns ranked by their history,
    strangers go first, oldest first, and a returning key is admitted on its history: exactly
    LRU-K's choices (K=2, no correlated period: every main entry has K references)."""
    admit = AdmitLRUK(2, retained_period=rip, history_size=history_size, max_share=0.0, chances=0,
                      fresh_returns=False, ghost=1.0)
    plain = LRUKPolicy(2, retained_period=rip, history_size=history_size)
    now = 0.0
    for op, key, dt in ops:
        now += dt
        for policy in (admit, plain):
            if op == "admit":
                policy.admit(key, 1, now)
            elif op == "touch":
                policy.touch(key, now)
            elif op == "remove":
                policy.remove(key)
        if op == "victim":
            victim = plain.victim()
            assert admit.victim() == victim
            if victim is not None:
                admit.remove(victim)
                plain.remove(victim)
        assert admit.victim() == plain.victim()
        assert admit.retained == plain.retained
        for key in range(6):
            assert admit.history(key) == plain.history(key)


def test_a_stranger_waits_on_probation_and_a_second_read_moves_it_to_main():
    policy = AdmitLRUK(2, max_share=0.5)
    policy.admit("a", 10, 1.0)
    assert policy.on_probation("a") and policy.probation_bytes == 10 and policy.main_bytes == 0
    policy.touch("a", 2.0)
    assert not policy.on_probation("a") and policy.main_bytes == 10
    policy.admit("b", 10, 3.0)
    assert policy.victim() == "b"  # probation is over its target (0): its oldest goes first
    policy.remove("b")
    assert policy.left_probation("b") is True
    policy.admit("b", 10, 4.0)  # back while its history is retained: straight to main
    assert not policy.on_probation("b") and policy.history("b")[1] > 0


def test_probation_share_grows_when_its_leavers_return_and_shrinks_when_mains_do():
    policy = AdmitLRUK(2, max_share=0.5, window=1.0)
    space = CacheSpace(100, policy)
    t = 0.0

    def read(key):
        nonlocal t
        t += 1
        if not space.hit(key, t):
            space.insert(key, 10, t)

    for key in range(10):  # ten entries read twice: all in main
        read(key)
        read(key)
    for key in range(100, 104):  # strangers push main entries out, then leave probation unread
        read(key)
    assert policy.target == 0
    gone = [k for k in range(100, 104) if k not in space and policy.left_probation(k)]
    assert gone
    read(gone[0])  # one that left probation comes back: a bigger probation would have kept it
    grown = policy.target
    assert grown > 0
    left_main = [k for k in range(10) if k not in space and policy.left_probation(k) is False]
    assert left_main
    read(left_main[0])  # one that left main comes back: main was too small
    assert policy.target < grown


def test_a_larger_target_shields_new_entries_from_a_main_of_old_favourites():
    policy = AdmitLRUK(2, max_share=0.5, target=0.5)
    space = CacheSpace(100, policy)
    for t, key in enumerate([*range(10), *range(10)]):  # main full of entries read twice
        if not space.hit(key, float(t)):
            space.insert(key, 10, float(t))
    for t, key in enumerate(range(100, 104), start=50):
        space.insert(key, 10, float(t))
    # probation holds up to half the bytes: the newcomers displaced main entries, not each other
    assert all(key in space for key in range(100, 104))


def test_admit_lruk_victim_skips_pinned_entries_under_qos():
    rules = RuleSet.from_config([{"bucket": "b", "prefix": "keep/", "pin": True}])
    policy = QoSPolicy(rules, lambda: AdmitLRUK(2, max_share=0.5), locate=lambda key: ("b", key))
    space = CacheSpace(50, policy)
    space.insert("keep/a", 10, 0.0)
    space.insert("keep/b", 10, 0.0)
    for t, key in enumerate(["x", "y", "z", "w", "v", "u", "x", "t"], start=1):
        if not space.hit(key, float(t)):
            space.insert(key, 10, float(t))
        assert "keep/a" in space and "keep/b" in space
        assert policy.victim() not in ("keep/a", "keep/b")


def test_make_policy_and_the_daemon_settings_build_admit_lruk():
    assert isinstance(make_policy("lru-k", k=2, admission="adaptive"), AdmitLRUK)
    assert type(make_policy("lru-k", k=2, admission="off")) is LRUKPolicy
    assert isinstance(make_policy("lru-k", k=2, probation=0.1, admission="adaptive"), ProbationLRUK)
    assert make_policy("lru-k", k=2, admission="hold").hold
    assert not make_policy("lru-k", k=2, admission="adaptive").hold
    with pytest.raises(ValueError):
        make_policy("lru-k", k=2, admission="sometimes")
    with pytest.raises(ValueError):
        AdmitLRUK(2, max_share=1.0)
    from sidecar.config import load  # noqa: PLC0415

    settings = load({"lru_k_admission": "adaptive"}, {})
    policy = QoSPolicy.from_settings(settings, locate=lambda key: None)
    assert all(isinstance(group.policy, AdmitLRUK) for group in policy._groups())
    assert not any(group.policy.hold for group in policy._groups())
    held = QoSPolicy.from_settings(load({}, {}), locate=lambda key: None)  # the default: with a held part
    assert all(isinstance(group.policy, AdmitLRUK) and group.policy.hold for group in held._groups())


def test_a_main_entry_read_often_gets_second_chances_over_one_read_once():
    policy = AdmitLRUK(2, correlated_period=10.0, chances=3)
    for key in ("often", "once"):  # both move to main on a second reference within one burst
        policy.admit(key, 1, 0.0)
        policy.touch(key, 0.0)
    for _ in range(3):
        policy.touch("often", 0.0)  # correlated: LRU-K's history cannot tell them apart
    policy.touch("once", 0.0)  # the later reference: LRU-K alone would evict "often" first
    plain = AdmitLRUK(2, correlated_period=10.0, chances=0)
    for key in ("often", "once"):
        plain.admit(key, 1, 0.0)
        plain.touch(key, 0.0)
    for _ in range(3):
        plain.touch("often", 0.0)
    plain.touch("once", 0.0)
    assert plain.victim() == "often"
    assert policy.victim() == "once"  # "often" is spared, "once" (count 1) spared then taken


def test_a_returning_key_ranks_as_if_just_read_not_by_its_stale_history():
    fresh, plain = AdmitLRUK(2, fresh_returns=True), AdmitLRUK(2)
    for policy in (fresh, plain):
        t = 0.0
        for key in ("old", "a", "b"):  # "old" read twice long ago, then evicted
            for _ in range(2):
                t += 1
                policy.admit(key, 1, t) if key not in policy else policy.touch(key, t)
        policy.remove("old")
        t += 1
        policy.admit("old", 1, t)  # back, within its retained history
        assert not policy.on_probation("old")
    assert plain.victim() == "old"  # LRU-K: its second-newest reference is the oldest of all
    assert fresh.victim() == "a"


def test_with_fill_main_the_cold_start_fills_main_and_later_strangers_pass_probation():
    policy = AdmitLRUK(2, fill_main=True)
    space = CacheSpace(30, policy)
    for t, key in enumerate("abc"):
        space.insert(key, 10, float(t))
    assert not any(policy.on_probation(k) for k in "abc") and policy.main_bytes == 30
    space.insert("d", 10, 3.0)  # the first victim ("a": nothing on probation yet); full from now on
    assert policy.on_probation("d") and "a" not in space
    for t, key in enumerate("efgh", start=4):  # more strangers: each pushes out the one before
        space.insert(key, 10, float(t))
    assert [k for k in "bcdefgh" if k in space] == ["b", "c", "h"]  # a cyclic scan keeps a frozen part


def _cycles(policy, keys: int, capacity: int, rounds: int) -> int:
    """Hits of ``rounds`` cyclic reads of ``keys`` unit-size keys through a cache of ``capacity``."""
    space = CacheSpace(capacity, policy)
    hits, t = 0, 0.0
    for _ in range(rounds):
        for key in range(keys):
            t += 1.0
            if space.hit(key, t):
                hits += 1
            else:
                space.insert(key, 1, t)
    return hits


def test_with_hold_a_cyclic_read_larger_than_the_cache_keeps_a_held_part():
    # 100 keys read in order, again and again, through room for 40: every recency policy (and
    # AdmitLRUK without hold: probation is a FIFO) misses every read after the first round
    assert _cycles(AdmitLRUK(2), 100, 40, 6) == 0
    assert _cycles(LRUKPolicy(2), 100, 40, 6) == 0
    held = AdmitLRUK(2, hold=True)
    hits = _cycles(held, 100, 40, 6)
    # a fixed part of the loop stays: most of the cache's 40 keys hit in each of the last 5 rounds
    assert hits >= 5 * 30
    assert held.held_count + len([k for k in range(100) if k in held and not held.held(k)]) == 40


def test_the_held_part_gives_room_newest_first_until_an_oldest_outwaits_the_reach():
    policy = AdmitLRUK(2, hold=True)
    space = CacheSpace(20, policy)
    for t in range(20):
        space.insert(t, 1, float(t))
    space.insert(20, 1, 20.0)  # the first victim: probation's oldest entries are held instead
    held = [k for k in range(21) if policy.held(k)]
    assert len(held) >= 15 and policy.reach is None
    for t in range(21, 25):  # later strangers pass probation and leave: the held ones stay
        space.insert(t, 1, float(t))
    assert all(k in space for k in held)
    assert space.hit(held[1], 25.0)  # read again after a wait: on to main, its wait is the reach
    assert not policy.held(held[1]) and policy.reach is not None and policy.reach > 4
    while policy.probation_count:  # empty probation: from now on the held part gives room
        space.remove(policy.victim())
    rest = [k for k in held if policy.held(k)]
    assert policy.victim() == rest[-1]  # newest first: the loop's fixed part stays
    space.remove(rest[-1])
    assert policy.victim() == rest[-2]
    t = 26.0
    while policy.victim() != rest[0]:  # until the oldest has waited 1.25 times the reach
        space.hit(held[1], t)
        t += 1.0
    assert t - 26.0 <= policy.reach
    assert all(policy.held(k) for k in rest[:-1])


@settings(max_examples=100, deadline=None)
@given(reads=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)), min_size=1, max_size=400),
       capacity=st.integers(20, 120))
def test_the_held_part_leaves_probation_its_room_and_gives_room_only_from_its_ends(reads, capacity):
    """Holding never takes probation below 5 % of the bytes beyond one entry, and a victim from
    the held part is its oldest or its newest entry."""
    policy = AdmitLRUK(2, hold=True)
    space = CacheSpace(capacity, policy)
    sizes: dict[int, int] = {}
    for t, (key, size) in enumerate(reads):
        size = sizes.setdefault(key, size)
        if space.hit(key, float(t)):
            continue
        held = [k for k in policy.order() if policy.held(k)]
        victim = policy.victim()
        if policy.held(victim):  # the held part gives room: from one end, probation within its share
            held = [k for k in policy.order() if policy.held(k)]
            assert victim in (held[0], held[-1])
        space.insert(key, size, float(t))
        resident = space.used
        assert policy.held_bytes <= (1 - policy.share - 0.05) * resident + max(sizes.values())
