"""Byte-budget accounting over an eviction policy: who is cached, how big, and what must leave."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .policy import EvictionPolicy


class NoRoom(Exception):
    """The budget cannot fit the entry: everything left is in flight or protected."""


class CacheSpace:
    """Entries with sizes under a byte budget; the policy picks victims.

    ``reserve`` holds bytes for entries being written so that concurrent fills cannot
    overshoot the budget; ``insert`` later converts a reservation into an entry.
    """

    def __init__(self, capacity: int, policy: EvictionPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self.sizes: dict[Hashable, int] = {}
        self.used = 0
        self.reserved = 0

    def __contains__(self, key: object) -> bool:
        return key in self.sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def hit(self, key: Hashable, now: float) -> bool:
        if key in self.sizes:
            self.policy.touch(key, now)
            return True
        return False

    def make_room(self, size: int) -> list[Hashable]:
        """Evict until ``size`` more bytes fit; return the evicted keys. Raises NoRoom."""
        if size > self.capacity:
            raise NoRoom(size)
        evicted: list[Hashable] = []
        while self.used + self.reserved + size > self.capacity:
            key = self.policy.victim()
            if key is None or key not in self.sizes:
                if key is not None:  # policy out of step with the space: drop it from the policy
                    self.policy.remove(key)
                    continue
                raise NoRoom(size)
            self.remove(key)
            evicted.append(key)
        return evicted

    def reserve(self, size: int, now: float | None = None) -> list[Hashable]:
        if now is not None:
            self._advance(now)
        evicted = self.make_room(size)
        self.reserved += size
        return evicted

    def release(self, size: int) -> None:
        self.reserved = max(0, self.reserved - size)

    def insert(self, key: Hashable, size: int, now: float, *, reserved: bool = False,
               **admit: Any) -> list[Hashable]:
        """Add an entry (replacing one with the same key). With ``reserved`` its bytes were
        already held by ``reserve``. Returns what was evicted to make room. Other keywords go
        to the policy's ``admit`` (e.g. ``rule=`` for ``QoSPolicy``)."""
        if key in self.sizes:
            self.remove(key)
        if reserved:
            self.release(size)
        self._advance(now)
        evicted = self.make_room(size)
        self.sizes[key] = size
        self.used += size
        self.policy.admit(key, size, now, **admit)
        return evicted

    def _advance(self, now: float) -> None:
        # Victims may depend on the time (QoSPolicy: a prefetch's credit lapses).
        advance = getattr(self.policy, "advance", None)
        if advance is not None:
            advance(now)

    def remove(self, key: Hashable) -> int:
        size = self.sizes.pop(key, None)
        if size is None:
            return 0
        self.used -= size
        self.policy.remove(key)
        return size

    def forget(self, key: Hashable) -> int:
        """Remove an entry that will never return (a dead version): the policy keeps no
        history of it."""
        size = self.sizes.pop(key, None)
        if size is None:
            return 0
        self.used -= size
        forget = getattr(self.policy, "forget", None)
        (forget or self.policy.remove)(key)
        return size
