"""QoS-aware eviction: one policy per QoS class (and per Guaranteed quota), and pins.

``QoSPolicy`` implements the same interface as every policy, so ``CacheSpace``, the daemon and
the simulator run it unchanged. Inside, entries are grouped by the ``Rule`` of their object:

- BestEffort entries are the first victims;
- a Guaranteed group holding more than its quota gives up its own victims next, down to the
  quota (like a Kubernetes pod above its request);
- then Burstable entries;
- Guaranteed entries within their quota only when nothing else is left.

Within a group the group's own policy (LRU-K, LRU…) picks the victim. Pinned entries sit
outside every group's policy, so no policy can ever name them. Pins come from rules
(``pin: true``) and from ``pin(bucket, prefix)`` at run time.

Prefetched entries (``admit(..., credit_until=t)``) hold a credit: until ``t`` (the predicted
read's horizon) or their first read, they sit outside their group's policy, so demand data is
evicted before them. A prefetch is no reference: the first read is the entry's first reference
in the group's policy (LRU-K's retained history included). Once its credit lapses unread, the
guess was wrong and the entry is the first victim of all. Only when nothing but credited
entries is left does one go, the one whose credit runs longest (predicted to be read last).

Chunk keys are opaque here: ``locate(key)`` tells which (bucket, object key) a chunk belongs
to; it decides the rule and the pins of the object. Read hotness per object is not kept here:
the daemon keeps one table of it (``Operations.hotness``, fed once per client read).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from .policy import EvictionPolicy, LRUPolicy, make_policy
from .rules import PrefixMap, QoSClass, Rule, RuleSet

Locate = Callable[[Hashable], "tuple[str, str] | None"]


def object_of(key: Hashable) -> tuple[str, str] | None:
    """The default ``locate``: keys shaped ``(bucket, key, ...)`` or with ``.bucket`` and ``.key``."""
    if isinstance(key, tuple) and len(key) >= 2 and isinstance(key[0], str) and isinstance(key[1], str):
        return key[0], key[1]
    bucket, name = getattr(key, "bucket", None), getattr(key, "key", None)
    if isinstance(bucket, str) and isinstance(name, str):
        return bucket, name
    return None


class _Group:
    """Entries of one QoS class (one quota, for Guaranteed) under their own policy."""

    __slots__ = ("qos", "owner", "quota", "policy", "bytes")

    def __init__(self, qos: QoSClass, policy: EvictionPolicy, owner: tuple[str, str] | None = None,
                 quota: int | None = None) -> None:
        self.qos = qos
        self.owner = owner
        self.quota = quota
        self.policy = policy
        self.bytes = 0  # evictable bytes; pinned entries are not counted

    @property
    def over_quota(self) -> int:
        return self.bytes - self.quota if self.quota is not None else 0


class QoSPolicy:
    """Eviction by QoS class over one inner policy per class; see the module docstring."""

    name = "qos"

    def __init__(self, rules: RuleSet | None = None, class_policy: Callable[[], EvictionPolicy] = LRUPolicy, *,
                 locate: Locate = object_of) -> None:
        self.rules = rules or RuleSet()
        self._new_policy = class_policy
        self._locate = locate
        self._best_effort = _Group(QoSClass.BEST_EFFORT, class_policy())
        self._burstable = _Group(QoSClass.BURSTABLE, class_policy())
        self._guaranteed: dict[tuple[str, str], _Group] = {}
        self._where: dict[Hashable, _Group] = {}
        self._sizes: dict[Hashable, int] = {}
        self._pinned: set[Hashable] = set()
        self.pinned_bytes = 0
        self._pin_prefixes: set[tuple[str, str]] = set()
        self._pins: PrefixMap[bool] = PrefixMap()
        # Prefetched, unread entries -> end of their credit; heaps (lazy) by soonest and latest end.
        self._credit: dict[Hashable, float] = {}
        self._credit_soon: list[tuple[float, int, Hashable]] = []
        self._credit_late: list[tuple[float, int, Hashable]] = []
        self._credit_seq = 0
        self.credited_bytes = 0
        self.admitted_bytes = 0  # bytes admitted on demand (not credited), ever
        self._now = 0.0

    @classmethod
    def from_settings(cls, settings: Any, *, locate: Locate = object_of,
                      rules: RuleSet | None = None) -> "QoSPolicy":
        """The daemon's policy: its rules, and ``settings.policy`` (with ``lru_k``) per class."""
        options = {"k": settings.lru_k,
                   "correlated_period": settings.lru_k_correlated_period,
                   "retained_period": settings.lru_k_retained_period,
                   "probation": settings.lru_k_probation,
                   "admission": settings.lru_k_admission} \
            if settings.policy == "lru-k" else {}
        return cls(rules if rules is not None else RuleSet.from_settings(settings),
                   lambda: make_policy(settings.policy, **options), locate=locate)

    # --- the policy interface ----------------------------------------------------------------

    def admit(self, key: Hashable, size: int, now: float, *, rule: Rule | None = None,
              credit_until: float | None = None) -> None:
        """``rule``: the object's rule when the caller already looked it up (saves a lookup).
        ``credit_until``: a prefetched entry, protected until then or its first read."""
        if now > self._now:
            self._now = now
        if key in self._where:
            if credit_until is None:
                self.touch(key, now)
            return
        obj = self._locate(key)
        if rule is None:
            rule = self.rules.match(*obj) if obj is not None else self.rules.default
        self._sizes[key] = size
        pinned = self._pinned_by(rule, obj)
        if credit_until is not None and not pinned and credit_until > now:
            self._credit[key] = credit_until
            self.credited_bytes += size
            self._credit_seq += 1
            heapq.heappush(self._credit_soon, (credit_until, self._credit_seq, key))
            heapq.heappush(self._credit_late, (-credit_until, self._credit_seq, key))
            if len(self._credit_soon) > 2 * len(self._credit) + 64:
                # Entries read or evicted since leave stale heap items behind: rebuild from the live ones.
                live = [(t, self._credit_seq + i, k) for i, (k, t) in enumerate(self._credit.items(), 1)]
                self._credit_seq += len(live)
                self._credit_soon = sorted(live)
                self._credit_late = sorted((-t, i, k) for t, i, k in live)
            self._attach(key, self._group(rule), False, now)
            return  # a prefetch is no read: no reference
        self._attach(key, self._group(rule), pinned, now)
        self.admitted_bytes += size

    def touch(self, key: Hashable, now: float) -> None:
        group = self._where.get(key)
        if group is None:
            return
        if now > self._now:
            self._now = now
        if key in self._credit:
            # First read of a prefetched entry: from now on an ordinary one, this its first reference.
            self.credited_bytes -= self._sizes[key]
            del self._credit[key]
            group.policy.admit(key, self._sizes[key], now)
        elif key not in self._pinned:
            group.policy.touch(key, now)

    def victim(self) -> Hashable | None:
        credit = self._credit
        if credit:
            soon = self._credit_soon
            while soon and credit.get(soon[0][2]) != soon[0][0]:
                heapq.heappop(soon)  # read, removed or re-credited since
            if soon and soon[0][0] <= self._now:
                return soon[0][2]  # its credit lapsed unread: a wrong guess goes first
        group = self._victim_group()
        if group is not None:
            return group.policy.victim()
        late = self._credit_late
        while late and credit.get(late[0][2]) != -late[0][0]:
            heapq.heappop(late)
        return late[0][2] if late else None

    def advance(self, now: float) -> None:
        """Time moved on (``CacheSpace`` calls it before choosing victims): credits may lapse."""
        if now > self._now:
            self._now = now

    def is_credited(self, key: Hashable) -> bool:
        """Whether the entry is prefetched, unread, and still protected by its credit."""
        until = self._credit.get(key)
        return until is not None and until > self._now

    def remove(self, key: Hashable) -> None:
        if key in self._where:
            self._detach(key)
            del self._sizes[key]

    def forget(self, key: Hashable) -> None:
        """Remove a key that will never return (a dead version): no history is kept for it."""
        group = self._where.get(key)
        self.remove(key)
        forget = getattr(group.policy, "forget", None) if group is not None else None
        if forget is not None:
            forget(key)

    def boost(self, keys: Iterable[Hashable], weight: float) -> int:
        """Predictor-weighted retention: these entries' objects were scored likely to be read
        again, so their group's policy ranks them ``weight`` more worth keeping (``LRUKPolicy.boost``;
        policies without ``boost`` ignore it). Pinned and credited entries are outside every
        policy already. Returns how many entries were boosted."""
        if weight <= 0:
            return 0
        n = 0
        for key in keys:
            group = self._where.get(key)
            if group is None or key in self._pinned or key in self._credit:
                continue
            boost = getattr(group.policy, "boost", None)
            if boost is not None:
                boost(key, weight)
                n += 1
        return n

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    # --- pins, rules, figures --------------------------------------------------------------------

    def pin(self, bucket: str, prefix: str = "", now: float = 0.0) -> int:
        """Keep every chunk under bucket/prefix (``*`` for any bucket), cached now or later,
        out of eviction. Returns how many resident entries became pinned."""
        self._pin_prefixes.add((bucket, prefix))
        self._pins = PrefixMap((b, p, True) for b, p in self._pin_prefixes)
        return self._reclassify(now)

    def unpin(self, bucket: str, prefix: str = "", now: float = 0.0) -> int:
        """Undo ``pin(bucket, prefix)``; entries still covered by another pin or a ``pin: true``
        rule stay pinned. Returns how many entries became evictable again."""
        self._pin_prefixes.discard((bucket, prefix))
        self._pins = PrefixMap((b, p, True) for b, p in self._pin_prefixes)
        return self._reclassify(now)

    def pins(self) -> list[tuple[str, str]]:
        return sorted(self._pin_prefixes)

    def set_rules(self, rules: RuleSet, now: float) -> int:
        """Swap in a reloaded rule set; entries whose class, quota group or pin changed move
        (re-admitted at ``now`` in their new group). Returns how many moved."""
        self.rules = rules
        quotas = rules.quotas()
        for owner, group in self._guaranteed.items():
            group.quota = quotas.get(owner, group.quota)
        moved = self._reclassify(now)
        in_use = {id(g) for g in self._where.values()}
        for owner in [o for o, g in self._guaranteed.items() if o not in quotas and id(g) not in in_use]:
            del self._guaranteed[owner]
        return moved

    def is_pinned(self, key: Hashable) -> bool:
        return key in self._pinned

    def guaranteed_over_quota(self) -> bool:
        """Whether some Guaranteed group holds more than its quota (its bytes go before Burstable ones)."""
        return any(g.over_quota > 0 for g in self._guaranteed.values())

    def usage(self) -> dict[str, int]:
        """Evictable bytes per QoS class, and pinned bytes."""
        out = {c.value: 0 for c in QoSClass}
        for group in self._groups():
            out[group.qos.value] += group.bytes
        out["pinned"] = self.pinned_bytes
        return out

    # --- internals -----------------------------------------------------------------------------

    def _groups(self) -> list[_Group]:
        return [self._best_effort, self._burstable, *self._guaranteed.values()]

    def _group(self, rule: Rule) -> _Group:
        if rule.qos is QoSClass.BEST_EFFORT:
            return self._best_effort
        if rule.qos is QoSClass.BURSTABLE:
            return self._burstable
        owner = rule.quota_owner or (rule.bucket, rule.prefix)
        group = self._guaranteed.get(owner)
        if group is None:
            group = self._guaranteed[owner] = _Group(QoSClass.GUARANTEED, self._new_policy(), owner, rule.quota)
        return group

    def _pinned_by(self, rule: Rule, obj: tuple[str, str] | None) -> bool:
        return rule.pin or (obj is not None and len(self._pins) > 0 and self._pins.match(*obj) is not None)

    def _attach(self, key: Hashable, group: _Group, pinned: bool, now: float) -> None:
        size = self._sizes[key]
        self._where[key] = group
        if pinned:
            self._pinned.add(key)
            self.pinned_bytes += size
        else:
            if key not in self._credit:
                group.policy.admit(key, size, now)
            group.bytes += size

    def _detach(self, key: Hashable) -> None:
        group = self._where.pop(key)
        size = self._sizes[key]
        if self._credit.pop(key, None) is not None:
            self.credited_bytes -= size
            group.bytes -= size
        elif key in self._pinned:
            self._pinned.discard(key)
            self.pinned_bytes -= size
        else:
            group.policy.remove(key)
            group.bytes -= size

    def _reclassify(self, now: float) -> int:
        moved = 0
        for key, group in list(self._where.items()):
            obj = self._locate(key)
            rule = self.rules.match(*obj) if obj is not None else self.rules.default
            new_group, pinned = self._group(rule), self._pinned_by(rule, obj)
            if new_group is not group or pinned != (key in self._pinned):
                self._detach(key)
                self._attach(key, new_group, pinned, now)
                moved += 1
        return moved

    def _victim_group(self) -> _Group | None:
        if len(self._best_effort.policy):
            return self._best_effort
        over = [g for g in self._guaranteed.values() if g.over_quota > 0 and len(g.policy)]
        if over:
            return max(over, key=lambda g: g.over_quota)
        if len(self._burstable.policy):
            return self._burstable
        left = [g for g in self._guaranteed.values() if len(g.policy)]
        if left:
            # Nothing else is left: the group using most of its quota gives way first.
            return max(left, key=lambda g: (g.bytes / g.quota if g.quota else 0.0, g.bytes))
        return None
