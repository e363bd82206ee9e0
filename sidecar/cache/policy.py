"""Eviction policies: each decides which entry leaves next, nothing more.

A policy sees entry keys and sizes, never files. ``CacheSpace`` (space.py) enforces the byte
budget by asking the policy for victims; the daemon and the simulator run the same objects.
``LRUKPolicy`` is in lruk.py; ``QoSPolicy`` (qos.py) composes one policy per QoS class.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol


class EvictionPolicy(Protocol):
    """The interface every policy implements."""

    name: str

    def admit(self, key: Hashable, size: int, now: float) -> None:
        """A new entry of ``size`` bytes entered the cache at ``now`` (its first reference)."""

    def touch(self, key: Hashable, now: float) -> None:
        """A cached entry was referenced again."""

    def victim(self) -> Hashable | None:
        """The entry to evict next (not removed until ``remove``), or None when empty."""

    def remove(self, key: Hashable) -> None:
        """The entry left the cache (evicted, invalidated or purged). Unknown keys are ignored."""

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...


class LRUPolicy:
    """Least recently used."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable, size: int, now: float) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Hashable, now: float) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def victim(self) -> Hashable | None:
        return next(iter(self._order), None)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order


def make_policy(name: str, **options: object) -> EvictionPolicy:
    """Build a policy by its configuration name. ``lru-k`` takes ``k`` and the keywords of
    ``LRUKPolicy`` (``correlated_period``, ``retained_period``, ``history_size``), and
    ``probation``: a share of the bytes above 0 puts ``ProbationLRUK``'s FIFO in front;
    ``admission``: ``adaptive`` (and no ``probation``) builds ``AdmitLRUK``, ``hold`` the same
    with its held part, ``off`` plain LRU-K."""
    if name == "lru":
        return LRUPolicy()
    if name == "lru-k":
        from .lruk import AdmitLRUK, LRUKPolicy, ProbationLRUK  # noqa: PLC0415  (provided by the LRU-K module)

        probation = float(options.pop("probation", 0.0) or 0.0)  # type: ignore[arg-type]
        admission = str(options.pop("admission", "off") or "off")
        if probation > 0:
            return ProbationLRUK(probation=probation, **options)  # type: ignore[arg-type]
        if admission in ("adaptive", "hold"):
            return AdmitLRUK(**options, hold=admission == "hold")  # type: ignore[arg-type]
        if admission != "off":
            raise ValueError(f"unknown LRU-K admission {admission!r} (off, adaptive or hold)")
        return LRUKPolicy(**options)  # type: ignore[arg-type]
    raise ValueError(f"unknown eviction policy {name!r}")
