"""Cache rules per bucket and key prefix: metadata TTL, QoS class, do-not-cache, size limit, pin, labels.

The ``rules:`` section of the YAML file is a list; each item names a bucket (``*`` for any) and
optionally a key prefix::

    rules:
      - bucket: "*"
        prefix: tmp/
        qos: BestEffort          # Guaranteed | Burstable (the default) | BestEffort
      - bucket: ml-models
        qos: Guaranteed
        quota: 20GiB             # Guaranteed bytes kept whatever else is read (optional)
        metadata_ttl: indefinite
        labels: {team: ml}
      - bucket: ml-models
        prefix: scratch/
        cache: false             # never cached, always read through
      - bucket: logs
        max_object_size: 64MiB   # larger objects are read through
        pin: false               # true: cached chunks are never evicted

Which rule applies to (bucket, key): the one with the longest prefix of the key among the rules
naming the bucket; only if none of those matches, the longest among the ``*`` rules; if none,
the defaults. A rule inherits every field it does not set from the rule that would apply to its
own prefix if it were absent (same bucket, shorter prefix; then ``*``; then the defaults), so
``bucket: b, prefix: p/, qos: BestEffort`` keeps the TTL and labels set for the whole bucket.
A Guaranteed quota belongs to the rule that sets it; rules inheriting the class share it.

A ``RuleSet`` is immutable: a reload builds a new one and the daemon swaps the reference.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from ..config import DURATION_FORM, SIZE_FORM, ConfigError, parse_bool, parse_size, parse_ttl


class QoSClass(enum.Enum):
    """Eviction precedence, named after Kubernetes' pod QoS classes."""

    GUARANTEED = "Guaranteed"  # evicted only after everything else (beyond its quota: before Burstable)
    BURSTABLE = "Burstable"  # ordinary entries
    BEST_EFFORT = "BestEffort"  # evicted first, never prefetched

    @classmethod
    def parse(cls, text: Any) -> "QoSClass":
        t = str(text).strip().replace("-", "").replace("_", "").lower()
        for c in cls:
            if c.value.lower() == t:
                return c
        raise ValueError(text)


@dataclasses.dataclass(frozen=True)
class Rule:
    """The effective settings for the keys under ``bucket``/``prefix`` (inheritance resolved)."""

    bucket: str = "*"
    prefix: str = ""
    qos: QoSClass = QoSClass.BURSTABLE
    quota: int | None = None  # Guaranteed bytes; None: all of it
    # The rule whose quota (or, without one, whose Guaranteed class) this rule shares.
    quota_owner: tuple[str, str] | None = None
    metadata_ttl: float | None = 60.0  # seconds; None: trusted until invalidated
    cache: bool = True
    max_object_size: int | None = None
    pin: bool = False
    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    index: int | None = None  # position in the YAML list; None for the defaults

    def caches(self, object_size: int) -> bool:
        """Whether an object of this size may be cached at all."""
        return self.cache and (self.max_object_size is None or object_size <= self.max_object_size)

    @property
    def prefetchable(self) -> bool:
        return self.cache and self.qos is not QoSClass.BEST_EFFORT

    @property
    def where(self) -> str:
        return f"rules[{self.index}]" if self.index is not None else "defaults"


V = TypeVar("V")


class PrefixMap(Generic[V]):
    """Longest-prefix lookup of (bucket, key), with ``*`` standing for any bucket.

    Per bucket, one dict per prefix length present: a lookup costs one slice and one dict
    probe per distinct prefix length, longest first, however many rules there are."""

    ANY = "*"

    def __init__(self, items: Iterable[tuple[str, str, V]] = ()) -> None:
        self._by_bucket: dict[str, dict[str, V]] = {}
        self._lengths: dict[str, list[int]] = {}
        for bucket, prefix, value in items:
            self._by_bucket.setdefault(bucket, {})[prefix] = value
        for bucket, prefixes in self._by_bucket.items():
            self._lengths[bucket] = sorted({len(p) for p in prefixes}, reverse=True)

    def match(self, bucket: str, key: str) -> V | None:
        found = self._longest(bucket, key)
        return found if found is not None else self._longest(self.ANY, key)

    def _longest(self, bucket: str, key: str) -> V | None:
        prefixes = self._by_bucket.get(bucket)
        if prefixes is None:
            return None
        n = len(key)
        for length in self._lengths[bucket]:
            if length <= n:
                value = prefixes.get(key[:length])
                if value is not None:
                    return value
        return None

    def get(self, bucket: str, prefix: str) -> V | None:
        return self._by_bucket.get(bucket, {}).get(prefix)

    def items(self) -> Iterator[tuple[str, str, V]]:
        for bucket, prefixes in self._by_bucket.items():
            for prefix, value in prefixes.items():
                yield bucket, prefix, value

    def __len__(self) -> int:
        return sum(len(p) for p in self._by_bucket.values())


_FIELDS = ("bucket", "prefix", "qos", "quota", "metadata_ttl", "cache", "max_object_size", "pin", "labels")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Label names the metrics already use for themselves.
_RESERVED_LABELS = frozenset({"bucket", "le", "quantile", "reason", "result", "qos", "job", "instance"})
# Bucket names as any upstream may have them (S3's are stricter); "*" stands for any.
_BUCKET = re.compile(r"^(\*|[^/\s*]{1,255})$")


class RuleSet:
    """An immutable table of rules; ``match`` gives the effective ``Rule`` for (bucket, key)."""

    def __init__(self, rules: Iterable[Rule] = (), default: Rule | None = None) -> None:
        self.default = default or Rule()
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._map: PrefixMap[Rule] = PrefixMap((r.bucket, r.prefix, r) for r in self.rules)

    @classmethod
    def from_config(cls, section: Any, *, metadata_ttl: float | None = 60.0) -> "RuleSet":
        """Build from the YAML ``rules:`` section (a list, or None). ``metadata_ttl`` is the
        global default. Raises ``ConfigError`` naming the first bad item and field."""
        default = Rule(metadata_ttl=metadata_ttl)
        if section is None:
            return cls((), default)
        if not isinstance(section, list):
            raise ConfigError("rules", section, "a list of rules, each a mapping with at least a bucket")
        declared: list[tuple[int, dict[str, Any]]] = []
        seen: dict[tuple[str, str], int] = {}
        for i, item in enumerate(section):
            fields = _parse_item(i, item)
            where = (fields["bucket"], fields.get("prefix", ""))
            if where in seen:
                raise ConfigError(f"rules[{i}]", item, f"a bucket and prefix not already used by rules[{seen[where]}]")
            seen[where] = i
            declared.append((i, fields))
        # Resolve inheritance from the least specific rules up: "*" before buckets, short before long.
        order = sorted(declared, key=lambda d: (d[1]["bucket"] != PrefixMap.ANY, len(d[1].get("prefix", ""))))
        resolved: dict[tuple[str, str], Rule] = {}
        for i, fields in order:
            bucket, prefix = fields["bucket"], fields.get("prefix", "")
            parent = _parent(resolved, bucket, prefix) or default
            changes: dict[str, Any] = {k: v for k, v in fields.items() if k != "labels"}
            changes.update(bucket=bucket, prefix=prefix, index=i)
            changes["labels"] = MappingProxyType({**parent.labels, **fields.get("labels", {})})
            qos = fields.get("qos", parent.qos)
            if "quota" in fields or (qos is QoSClass.GUARANTEED and parent.qos is not QoSClass.GUARANTEED):
                # A new quota group; otherwise a Guaranteed rule shares its parent's.
                changes["quota_owner"] = (bucket, prefix)
                changes.setdefault("quota", None)
            if qos is not QoSClass.GUARANTEED:
                if "quota" in fields:
                    raise ConfigError(f"rules[{i}].quota", section[i].get("quota"),
                                      "no quota unless qos is Guaranteed")
                changes["quota"], changes["quota_owner"] = None, None
            resolved[(bucket, prefix)] = dataclasses.replace(parent, **changes)
        return cls(sorted(resolved.values(), key=lambda r: r.index or 0), default)

    @classmethod
    def from_settings(cls, settings: Any) -> "RuleSet":
        """The rules of a ``Settings`` (its YAML ``rules:`` section and global metadata TTL)."""
        return cls.from_config(settings.extra.get("rules"), metadata_ttl=settings.metadata_ttl)

    def match(self, bucket: str, key: str) -> Rule:
        rule = self._map.match(bucket, key)
        return rule if rule is not None else self.default

    def quotas(self) -> dict[tuple[str, str], int | None]:
        """Guaranteed quota groups: owner (bucket, prefix) -> quota bytes (None: no limit)."""
        return {r.quota_owner: r.quota for r in self.rules if r.quota_owner is not None and
                r.quota_owner == (r.bucket, r.prefix)}

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


def _parent(resolved: Mapping[tuple[str, str], Rule], bucket: str, prefix: str) -> Rule | None:
    """The rule that would apply to keys under ``bucket``/``prefix`` without the rule itself."""
    for b in ((bucket, PrefixMap.ANY) if bucket != PrefixMap.ANY else (PrefixMap.ANY,)):
        # Same bucket: strictly shorter prefixes; "*" (for a bucket rule): up to the same prefix.
        top = len(prefix) - 1 if b == bucket else len(prefix)
        for n in range(top, -1, -1):
            rule = resolved.get((b, prefix[:n]))
            if rule is not None:
                return rule
    return None


def _parse_item(i: int, item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ConfigError(f"rules[{i}]", item, "a mapping such as {bucket: my-bucket, prefix: tmp/, qos: BestEffort}")
    item = {str(k).replace("-", "_"): v for k, v in item.items()}
    for name in item:
        if name not in _FIELDS:
            raise ConfigError(f"rules[{i}].{name}", item[name], "one of the rule fields: " + ", ".join(_FIELDS))
    if "bucket" not in item:
        raise ConfigError(f"rules[{i}].bucket", None, "a bucket name, or * for every bucket")
    out: dict[str, Any] = {}

    def field(name: str, parse: Any, accepted: str) -> None:
        if name in item:
            try:
                out[name] = parse(item[name])
            except (ValueError, TypeError):
                raise ConfigError(f"rules[{i}].{name}", item[name], accepted) from None

    field("bucket", _bucket, "a bucket name (no / or spaces), or * for every bucket")
    field("prefix", _prefix, "a key prefix (a string; empty for the whole bucket)")
    field("qos", QoSClass.parse, "Guaranteed, Burstable or BestEffort")
    field("quota", _positive_size, SIZE_FORM + ", above 0")
    field("metadata_ttl", parse_ttl, DURATION_FORM + ", or indefinite")
    field("cache", parse_bool, "true or false")
    field("max_object_size", _positive_size, SIZE_FORM + ", above 0")
    field("pin", parse_bool, "true or false")
    field("labels", _labels, "a mapping of label names (letters, digits, _; not " +
          ", ".join(sorted(_RESERVED_LABELS)) + ") to strings")
    return out


def _bucket(text: Any) -> str:
    if not isinstance(text, str) or not _BUCKET.match(text):
        raise ValueError(text)
    return text


def _prefix(text: Any) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(text)
    return text


def _positive_size(text: Any) -> int:
    n = parse_size(text)
    if n <= 0:
        raise ValueError(text)
    return n


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(value)
    out = {}
    for name, v in value.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name in _RESERVED_LABELS \
                or name.startswith("__") or isinstance(v, (Mapping, list)) or v is None:
            raise ValueError(value)
        out[name] = str(v) if not isinstance(v, bool) else str(v).lower()
    return out
