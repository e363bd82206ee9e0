"""The known-key catalogue (predict/known.py): listings parsed, keys in order per prefix, memory bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache.rules import Rule
from sidecar.predict.known import KnownKeys, listing_tap, parse_listing
from sidecar.predict.planner import Candidate, PlanItem, PrefetchLedger

V2 = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>ds/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>
<Contents><Key>ds/a%20b%2Bc</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>
<ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag><Size>10</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>ds/shard-1</Key><ETag>"x-3"</ETag><Size>20</Size></Contents>
<CommonPrefixes><Prefix>ds/sub/</Prefix></CommonPrefixes></ListBucketResult>"""

V1 = b"""<ListBucketResult><Name>b</Name><Marker></Marker><Contents><Key>k/1</Key><Size>5</Size></Contents>
</ListBucketResult>"""


def test_listings_v1_and_v2_give_keys_sizes_and_etags():
    assert parse_listing(V2) == [("ds/a b+c", 10, '"0123456789abcdef0123456789abcdef"'), ("ds/shard-1", 20, '"x-3"')]
    assert parse_listing(V1) == [("k/1", 5, None)]
    for junk in (b"", b"<Error><Code>NoSuchBucket</Code></Error>", b"<ListAllMyBucketsResult/>", b"\xff<"):
        assert parse_listing(junk) == []
    known = KnownKeys()
    assert known.add_listing("b", V2) == 2
    assert known.size("b", "ds/a b+c") == 10 and known.size("b", "ds/nope") is None
    assert known.after("b", "ds/a b+c", 5) == [("ds/shard-1", 20)]


def test_only_successful_object_listings_are_tapped():
    got = []
    tap = listing_tap(lambda b, body: got.append((b, body)), "GET", "b", None, [("list-type", "2")], 200)
    tap(b"<a")
    tap(b"/>")
    tap(None)
    assert got == [("b", b"<a/>")]
    assert listing_tap(got.append, "GET", "b", None, [("versions", "")], 200) is None
    assert listing_tap(got.append, "GET", "b", "key", [], 200) is None
    assert listing_tap(got.append, "GET", "b", None, [], 404) is None
    assert listing_tap(got.append, "PUT", "b", None, [], 200) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "a/b", "c/d/e", ""]), st.text(min_size=1, max_size=6).filter(
    lambda s: "/" not in s)), max_size=80), st.integers(1, 30))
def test_keys_stay_in_order_per_prefix_and_within_the_bound(entries, bound):
    known = KnownKeys(max_keys=bound)
    for prefix, name in entries:
        known.add("b", f"{prefix}/{name}" if prefix else name, len(name))
        assert len(known) <= bound
    for prefix in {p for p, _ in entries}:
        first = (f"{prefix}/" if prefix else "") + "\x00"
        listed = [k for k, _ in known.after("b", first, 10_000)]
        assert listed == sorted(set(listed))
        assert all(known.size("b", k) == len(k.rpartition("/")[2]) for k in listed)
    assert known.nbytes() > 0


def _cand(obj, p=0.9):
    return Candidate(obj, 100, 0.0, p, 0.0, Rule())


def test_ledger_quiets_a_prefix_whose_prefetches_are_not_read_and_keeps_one_probing():
    ledger = PrefetchLedger(target=0.6, half_life=1e9, prior=1.0)
    group = lambda obj: obj[1].rpartition("/")[0]  # noqa: E731
    last: dict = {}
    now = 0.0
    # "good/": every prefetch read; "bad/": none read.
    for rnd in range(10):
        cands = [_cand(("b", f"good/{rnd}")), _cand(("b", f"bad/{rnd}"))]
        admitted = ledger.admit(cands, now, group)
        ledger.record([PlanItem(c.obj, 100, 0.9, 0.0, probe=c.probe) for c in admitted], now, group)
        last[("b", f"good/{rnd}")] = now + 1
        now += 400
        ledger.settle(now, last.get, horizon=300)
    assert ledger.share("good", now) > 0.9 and ledger.share("bad", now) < 0.6
    admitted = ledger.admit([_cand(("b", "good/x")), _cand(("b", "bad/x")), _cand(("b", "bad/y"))], now, group)
    assert [c.obj[1] for c in admitted] == ["good/x", "bad/x"] and admitted[1].probe


def test_a_reader_without_a_rate_gets_the_rest_of_a_small_prefix_or_the_next_two_keys():
    from sidecar.predict.accesslog import Access
    from sidecar.predict.features import FeatureTracker

    known = KnownKeys()
    for i in range(4):
        known.add("b", f"model/w-{i}", 24 << 20)
    for i in range(40):
        known.add("b", f"ds/s-{i:03d}", 2 << 20)
    tracker = FeatureTracker()
    tracker.observe(Access(100.0, "b", "model/w-0", 0, (24 << 20) - 1, 24 << 20, "miss"))
    tracker.observe(Access(100.0, "b", "ds/s-000", 0, (2 << 20) - 1, 2 << 20, "miss"))
    tracker.look_ahead(known, 100.5, 30.0)
    assert sorted(tracker.cold) == [("b", "ds/s-001"), ("b", "ds/s-002"),
                                    ("b", "model/w-1"), ("b", "model/w-2"), ("b", "model/w-3")]
    assert [tracker.ahead(("b", f"model/w-{i}")) for i in range(4)] == [0, 1, 2, 3]
    # A second read gives the prefix a rate: its keys are the model's to judge again.
    tracker.observe(Access(101.0, "b", "model/w-1", 0, (24 << 20) - 1, 24 << 20, "miss"))
    tracker.look_ahead(known, 101.5, 30.0)
    assert all(o[1].startswith("ds/") for o in tracker.cold)
