"""The prefetch planner: threshold, rules, room and order, as unit and property tests."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache.rules import QoSClass, Rule
from sidecar.predict.planner import Candidate, Room, eligible, plan

BURSTABLE = Rule()
BEST_EFFORT = Rule(qos=QoSClass.BEST_EFFORT)
GUARANTEED = Rule(qos=QoSClass.GUARANTEED)
NO_CACHE = Rule(cache=False)
SMALL_ONLY = Rule(max_object_size=1000)


def cand(name: str, size: int = 100, p: float = 0.9, *, cached: float = 0.0, hot: float = 0.0,
         rule: Rule = BURSTABLE) -> Candidate:
    return Candidate(("b", name), size, cached, p, hot, rule)


def test_threshold_and_rules_exclude():
    cands = [cand("ok"), cand("low", p=0.69), cand("be", rule=BEST_EFFORT), cand("nc", rule=NO_CACHE),
             cand("big", size=5000, rule=SMALL_ONLY), cand("full", cached=1.0), cand("g", rule=GUARANTEED)]
    p = plan(cands, Room(10_000), threshold=0.7)
    assert [i.obj[1] for i in p.items] == ["ok", "g"]
    assert p.eligible == 2 and p.considered == len(cands)


def test_only_missing_bytes_are_planned():
    p = plan([cand("half", size=1000, cached=0.5)], Room(10_000))
    assert p.items[0].nbytes == 500


def test_order_is_probability_then_hotness():
    cands = [cand("a", p=0.8, hot=1.0), cand("b", p=0.95), cand("c", p=0.8, hot=3.0)]
    assert [i.obj[1] for i in plan(cands, Room(10_000)).items] == ["b", "c", "a"]


def test_room_limits_and_skips_to_smaller_items():
    cands = [cand("big", size=800, p=0.99), cand("too-big", size=500, p=0.9), cand("small", size=150, p=0.8)]
    p = plan(cands, Room(1000))
    assert [i.obj[1] for i in p.items] == ["big", "small"]
    assert p.skipped_room == 1 and p.nbytes == 950


def test_never_displaces_hotter_data():
    # No free space; 300 bytes at hotness 0.5 and 300 at hotness 5.
    room = Room.build(0, [(5.0, 300), (0.5, 300)])
    p = plan([cand("x", size=300, p=0.9, hot=0.0), cand("y", size=300, p=0.8, hot=0.1)], room)
    # x (worth 0.9) may displace the 0.5-hot data; y (worth 0.8) finds nothing colder left.
    assert [i.obj[1] for i in p.items] == ["x"]
    hot_item = plan([cand("z", size=400, p=0.9, hot=9.0)], room)
    assert hot_item.nbytes == 400


def test_max_bytes_and_items():
    cands = [cand(str(i), size=100) for i in range(10)]
    assert plan(cands, Room(10**6), max_bytes=350).nbytes == 300
    assert len(plan(cands, Room(10**6), max_items=4).items) == 4


rules = st.sampled_from([BURSTABLE, BEST_EFFORT, GUARANTEED, NO_CACHE, SMALL_ONLY])
candidates = st.lists(st.builds(
    Candidate, st.tuples(st.just("b"), st.text(min_size=1, max_size=6)), st.integers(0, 5000),
    st.floats(0, 1), st.floats(0, 1), st.floats(0, 20), rules), max_size=40,
    unique_by=lambda c: c.obj)
rooms = st.builds(Room.build, st.integers(0, 20_000),
                  st.lists(st.tuples(st.floats(0, 20), st.integers(0, 5000)), max_size=10))


@settings(max_examples=300, deadline=None)
@given(candidates, rooms, st.floats(0, 1), st.one_of(st.none(), st.integers(0, 30_000)))
def test_plan_properties(cands, room, threshold, max_bytes):
    p = plan(cands, room, threshold=threshold, max_bytes=max_bytes)
    by_obj = {c.obj: c for c in cands}
    assert p.nbytes <= room.total
    if max_bytes is not None:
        assert p.nbytes <= max_bytes
    assert len(p.objects()) == len(p.items)
    total = 0
    for item in p.items:
        c = by_obj[item.obj]
        assert eligible(c, threshold)
        assert c.probability >= threshold and c.rule.prefetchable and c.rule.caches(c.size)
        assert item.nbytes == c.missing > 0
        total += item.nbytes
        # Bytes beyond the free space come only from data colder than this item.
        colder = sum(n for h, n in room.displaceable if h < c.worth)
        assert max(0, total - room.free) <= colder
    keys = [(-i.probability, -i.hotness) for i in p.items]
    assert keys == sorted(keys)
    # Greedy: an eligible candidate left out would not have fitted in the free space left.
    if max_bytes is None and not room.displaceable:
        left = room.free - p.nbytes
        planned = p.objects()
        assert all(c.missing > left for c in cands if eligible(c, threshold) and c.obj not in planned
                   and c.probability <= min((i.probability for i in p.items), default=1.0))


def test_a_key_ahead_of_a_reader_displaces_what_the_reader_just_read_and_a_guess_does_not():
    # Cached: a shard read moments ago (hotness ~1). The next shard of a cyclic reader, last
    # read an epoch ago (hotness 0.4), will be read within seconds; a guess of the same
    # probability with no reader behind it may not push the fresh shard out.
    room = Room.build(0, [(1.0, 100)])
    ahead = Candidate(("b", "next"), 100, 0.0, 0.9, 0.4, BURSTABLE, eta=5.0)
    guess = Candidate(("b", "guess"), 100, 0.0, 0.9, 0.4, BURSTABLE)
    assert [i.obj[1] for i in plan([ahead], room).items] == ["next"]
    assert plan([guess], room).items == ()
