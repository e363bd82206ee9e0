"""What a simulation is given besides its trace: cache rules from a YAML file, and cache sizes
written absolutely or as a share of the workload's unique bytes."""

from __future__ import annotations

from pathlib import Path

from ..cache.rules import RuleSet
from ..config import SIZE_FORM, ConfigError, parse_size, read_yaml


def load_rules(path: str | None) -> RuleSet:
    """Rules from a YAML file with a ``rules:`` section (a sidecar configuration file will do)."""
    if not path:
        return RuleSet()
    data = read_yaml(Path(path))
    return RuleSet.from_config(data.get("rules"))


def parse_capacity(text: str, unique_bytes: int) -> int:
    """An absolute size, or a percentage of the workload's unique bytes."""
    t = text.strip()
    try:
        if t.endswith("%"):
            share = float(t[:-1])
            if not 0 < share <= 100:
                raise ValueError(t)
            return max(1, int(unique_bytes * share / 100))
        return parse_size(t)
    except ValueError:
        raise ConfigError("size", t, SIZE_FORM + ", or a percentage of the unique bytes such as 5%") from None
