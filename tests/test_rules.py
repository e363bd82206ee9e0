"""Cache rules: parsing and errors, longest-prefix matching, QoS ordering, quotas, pins, hotness."""

from __future__ import annotations

import math

import pytest
import yaml

from sidecar.cache.hotness import HotnessTable
from sidecar.cache.lruk import LRUKPolicy
from sidecar.cache.policy import LRUPolicy
from sidecar.cache.qos import QoSPolicy, object_of
from sidecar.cache.rules import PrefixMap, QoSClass, RuleSet
from sidecar.cache.space import CacheSpace, NoRoom
from sidecar.config import ConfigError, settings_for_tests

RULES = yaml.safe_load("""
rules:
  - bucket: "*"
    prefix: tmp/
    qos: BestEffort
  - bucket: models
    qos: Guaranteed
    quota: 20GiB
    metadata_ttl: indefinite
    labels: {team: ml}
  - bucket: models
    prefix: scratch/
    cache: false
  - bucket: models
    prefix: scratch/keep/
    qos: burstable
    labels: {tier: two}
  - bucket: logs
    max_object_size: 64MiB
    metadata_ttl: 5m
  - bucket: logs
    prefix: tmp/
    pin: true
""")["rules"]


def test_longest_prefix_wins_and_fields_are_inherited():
    rules = RuleSet.from_config(RULES, metadata_ttl=30.0)
    whole = rules.match("models", "weights/a.bin")
    assert whole.qos is QoSClass.GUARANTEED and whole.quota == 20 * 1024**3 and whole.metadata_ttl is None
    assert dict(whole.labels) == {"team": "ml"} and whole.cache
    scratch = rules.match("models", "scratch/x")
    assert not scratch.cache and scratch.qos is QoSClass.GUARANTEED  # inherited
    assert scratch.quota_owner == ("models", "")  # and shares the bucket's quota
    keep = rules.match("models", "scratch/keep/y")
    assert keep.qos is QoSClass.BURSTABLE and keep.quota is None and keep.quota_owner is None
    assert not keep.cache and dict(keep.labels) == {"team": "ml", "tier": "two"}
    assert keep.metadata_ttl is None
    # a bucket's own rules come before "*" rules, even with a shorter prefix
    assert rules.match("models", "tmp/z").qos is QoSClass.GUARANTEED
    # "*" applies where no rule of the bucket matches
    other = rules.match("other", "tmp/z")
    assert other.qos is QoSClass.BEST_EFFORT and other.metadata_ttl == 30.0 and not other.prefetchable
    assert rules.match("other", "data/z") is rules.default
    assert rules.default.qos is QoSClass.BURSTABLE and rules.default.metadata_ttl == 30.0
    logs = rules.match("logs", "app/1")
    assert logs.caches(64 * 1024**2) and not logs.caches(64 * 1024**2 + 1) and logs.metadata_ttl == 300.0
    # logs/tmp/ inherits from logs (same bucket), and from "*" tmp/ (same prefix) only what logs lacks
    tmp = rules.match("logs", "tmp/1")
    assert tmp.pin and tmp.max_object_size == 64 * 1024**2 and tmp.qos is QoSClass.BURSTABLE


def test_prefix_map_matches_by_longest_prefix():
    m = PrefixMap([("b", "", 0), ("b", "a", 1), ("b", "ab", 2), ("b", "abc/", 3), ("*", "abcd", 4)])
    assert [m.match("b", k) for k in ("", "x", "a", "ab", "abc", "abc/", "abc/d")] == [0, 0, 1, 2, 2, 3, 3]
    assert m.match("c", "abcde") == 4 and m.match("c", "abc") is None
    assert len(m) == 5 and m.get("b", "ab") == 2


def test_no_rules_means_defaults_everywhere():
    rules = RuleSet.from_config(None)
    assert len(rules) == 0 and rules.match("any", "key") is rules.default
    assert RuleSet.from_settings(settings_for_tests()).default.metadata_ttl == 60.0


@pytest.mark.parametrize(("section", "where", "expected"), [
    ({"bucket": "b"}, "rules", "a list of rules"),
    (["b"], "rules[0]", "a mapping"),
    ([{"prefix": "x/"}], "rules[0].bucket", "a bucket name"),
    ([{"bucket": "a/b"}], "rules[0].bucket", "a bucket name (no / or spaces)"),
    ([{"bucket": "b", "qos": "Gold"}], "rules[0].qos", "Guaranteed, Burstable or BestEffort"),
    ([{"bucket": "b", "quota": "1GiB"}], "rules[0].quota", "no quota unless qos is Guaranteed"),
    ([{"bucket": "b", "qos": "Guaranteed", "quota": "lots"}], "rules[0].quota", "byte size"),
    ([{"bucket": "b", "metadata_ttl": "soon"}], "rules[0].metadata_ttl", "duration"),
    ([{"bucket": "b", "cache": "maybe"}], "rules[0].cache", "true or false"),
    ([{"bucket": "b", "max_object_size": 0}], "rules[0].max_object_size", "above 0"),
    ([{"bucket": "b", "labels": {"bad-name": "x"}}], "rules[0].labels", "label names"),
    ([{"bucket": "b", "labels": {"bucket": "x"}}], "rules[0].labels", "label names"),
    ([{"bucket": "b", "labels": ["x"]}], "rules[0].labels", "label names"),
    ([{"bucket": "b", "ttl": 5}], "rules[0].ttl", "one of the rule fields"),
    ([{"bucket": "b", "prefix": 3}], "rules[0].prefix", "a key prefix"),
    ([{"bucket": "b"}, {"bucket": "b", "prefix": ""}], "rules[1]", "not already used by rules[0]"),
])
def test_bad_rules_name_the_item_and_field(section, where, expected):
    with pytest.raises(ConfigError) as e:
        RuleSet.from_config(section)
    assert str(e.value).startswith(f"invalid {where}:")
    assert expected in str(e.value)


def test_rules_come_from_the_yaml_file(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text("metadata_ttl: 10\nrules:\n  - bucket: b\n    prefix: p/\n    qos: BestEffort\n")
    from sidecar.config import load

    rules = RuleSet.from_settings(load({"config": str(path)}, env={}))
    assert rules.match("b", "p/x").qos is QoSClass.BEST_EFFORT and rules.match("b", "p/x").metadata_ttl == 10.0


def test_ruleset_is_immutable():
    rules = RuleSet.from_config(RULES)
    with pytest.raises(AttributeError):
        rules.match("models", "a").qos = QoSClass.BEST_EFFORT  # type: ignore[misc]
    with pytest.raises(TypeError):
        rules.match("models", "a").labels["x"] = "y"  # type: ignore[index]


# --- QoSPolicy ---------------------------------------------------------------------------------

QOS_RULES = RuleSet.from_config([
    {"bucket": "be", "qos": "BestEffort"},
    {"bucket": "g", "qos": "Guaranteed", "quota": 4},
    {"bucket": "g2", "qos": "Guaranteed"},
    {"bucket": "pinned", "pin": True},
])


def fill(space: CacheSpace, keys, t0: float = 0.0) -> float:
    t = t0
    for key in keys:
        t += 1
        space.insert(key, 1, t)
    return t


def test_besteffort_goes_first_then_burstable_then_guaranteed():
    space = CacheSpace(9, QoSPolicy(QOS_RULES, LRUPolicy))
    t = fill(space, [("g", "1"), ("b", "1"), ("be", "1"), ("g", "2"), ("b", "2"), ("be", "2")])
    order = []
    while len(space):
        victim = space.policy.victim()
        order.append(victim)
        space.remove(victim)
    assert order == [("be", "1"), ("be", "2"), ("b", "1"), ("b", "2"), ("g", "1"), ("g", "2")]
    assert t > 0


def test_guaranteed_beyond_its_quota_is_evicted_before_burstable():
    space = CacheSpace(8, QoSPolicy(QOS_RULES, LRUPolicy))
    t = fill(space, [("b", "1"), ("b", "2")])
    t = fill(space, [("g", str(i)) for i in range(6)], t)  # quota 4: two over
    assert space.policy.usage()["Guaranteed"] == 6
    evicted = space.insert(("b", "3"), 1, t + 1) + space.insert(("b", "4"), 1, t + 2)
    assert evicted == [("g", "0"), ("g", "1")]  # back to its quota, oldest first
    evicted = space.insert(("b", "5"), 1, t + 3)
    assert evicted == [("b", "1")]  # within quota: Burstable goes first


def test_a_guaranteed_class_without_quota_keeps_everything_until_nothing_else_is_left():
    space = CacheSpace(4, QoSPolicy(QOS_RULES, LRUPolicy))
    t = fill(space, [("g2", "1"), ("g2", "2"), ("g2", "3")])
    for i in range(10):
        t += 1
        space.insert(("b", str(i)), 1, t)
        assert all(("g2", k) in space for k in "123")
    t += 1
    space.insert(("x", "big"), 2, t)
    assert ("g2", "1") not in space  # nothing else left to evict


def test_pinned_entries_are_never_victims():
    policy = QoSPolicy(QOS_RULES, lambda: LRUKPolicy(2))
    space = CacheSpace(4, policy)
    t = fill(space, [("pinned", "a"), ("data", "x/1"), ("data", "y/1")])
    assert policy.is_pinned(("pinned", "a"))
    assert policy.pin("data", "x/", now=t) == 1
    t = fill(space, [("data", "y/2"), ("data", "y/3"), ("data", "y/4")], t)
    assert ("data", "x/1") in space and ("pinned", "a") in space
    assert policy.pinned_bytes == 2
    t = fill(space, [("data", "x/2")], t)  # admitted under the pin
    assert policy.is_pinned(("data", "x/2"))
    with pytest.raises(NoRoom):
        space.insert(("data", "z"), 2, t + 1)
    assert policy.unpin("data", "x/", now=t + 1) == 2
    assert policy.pins() == []
    assert not policy.is_pinned(("data", "x/1")) and policy.is_pinned(("pinned", "a"))
    space.insert(("data", "z"), 2, t + 2)
    assert ("pinned", "a") in space and policy.pinned_bytes == 1


def test_reloaded_rules_move_entries_between_classes():
    policy = QoSPolicy(RuleSet(), LRUPolicy)
    space = CacheSpace(10, policy)
    fill(space, [("be", "1"), ("b", "1"), ("g", "1")])
    assert policy.usage() == {"Guaranteed": 0, "Burstable": 3, "BestEffort": 0, "pinned": 0}
    assert policy.set_rules(QOS_RULES, now=10.0) == 2
    assert policy.usage() == {"Guaranteed": 1, "Burstable": 1, "BestEffort": 1, "pinned": 0}
    assert policy.victim() == ("be", "1")
    assert policy.set_rules(RuleSet(), now=11.0) == 2
    assert policy.usage()["Burstable"] == 3 and policy.victim() == ("b", "1")  # moved ones count as new


def test_an_explicit_rule_on_insert_overrides_the_lookup():
    policy = QoSPolicy(QOS_RULES, LRUPolicy, locate=lambda key: None)  # keys say nothing
    space = CacheSpace(10, policy)
    space.insert("chunk-1", 1, 1.0)
    space.insert("chunk-2", 1, 2.0, rule=QOS_RULES.match("be", "x"))
    assert policy.victim() == "chunk-2"
    assert policy.usage()["BestEffort"] == 1


def test_qos_policy_from_settings_uses_the_configured_inner_policy():
    policy = QoSPolicy.from_settings(settings_for_tests(policy="lru-k", lru_k=3))
    policy.admit(("b", "k"), 1, 0.0)
    assert isinstance(policy._burstable.policy, LRUKPolicy) and policy._burstable.policy.k == 3


def test_object_of_reads_bucket_and_key():
    assert object_of(("b", "k", "etag", 3)) == ("b", "k")
    assert object_of(("vid", 3)) is None and object_of("x") is None


# --- hotness -----------------------------------------------------------------------------------

def test_hotness_decays_and_counts_a_burst_once():
    table = HotnessTable(lam=math.log(2) / 10.0, correlated_period=1.0)
    for i in range(8):  # eight chunks of one read
        table.touch("obj", 0.0 + i * 0.01)
    assert table.at("obj", 0.1) == pytest.approx(1.0, rel=1e-2)
    table.touch("obj", 10.0)
    assert table.at("obj", 10.0) == pytest.approx(1.5, rel=1e-3)
    assert table.at("obj", 20.0) == pytest.approx(0.75, rel=1e-3)
    assert table.at("never", 20.0) == 0.0


def test_hotness_table_is_bounded_and_forgets_the_coldest():
    table = HotnessTable(lam=0.001, correlated_period=0.0, limit=100)
    for _ in range(50):
        table.touch("hot", 0.0)
    for i in range(1000):
        table.touch(i, float(i))
    assert len(table) <= 100
    assert "hot" in table and 999 in table and 0 not in table
    assert [obj for obj, _ in table.hottest(2, 1000.0)] == ["hot", 999]


def test_reloading_drops_a_quota_group_and_applies_new_quotas():
    policy = QoSPolicy(QOS_RULES, LRUPolicy)
    space = CacheSpace(20, policy)
    t = fill(space, [("g", str(i)) for i in range(4)] + [("b", "1")])
    tighter = RuleSet.from_config([{"bucket": "g", "qos": "Guaranteed", "quota": 2}])
    assert policy.set_rules(tighter, now=t) == 0  # same group, smaller quota
    assert policy.victim() == ("g", "0")  # two over quota: before Burstable
    assert policy.set_rules(RuleSet(), now=t + 1) == 4
    assert policy._guaranteed == {} and policy.usage()["Burstable"] == 5


def test_forget_drops_the_inner_policys_history():
    policy = QoSPolicy(QOS_RULES, lambda: LRUKPolicy(2))
    policy.admit(("b", "dead"), 1, 0.0)
    policy.admit(("b", "gone"), 1, 0.0)
    policy.forget(("b", "dead"))
    policy.remove(("b", "gone"))
    assert ("b", "dead") not in policy and policy._burstable.policy.history(("b", "dead")) == ()
    assert policy._burstable.policy.history(("b", "gone")) != ()
