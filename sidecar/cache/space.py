"""Byte-budget accounting over an eviction policy: how many bytes are cached, and what must leave.

``Budget`` counts bytes and asks its owner which entries exist and how big they are: the chunk
store's index is the one record of which chunks are cached (the policy keeps only its order).
``CacheSpace`` is a budget that keeps its own table of entries, for callers that have no other
record (the simulator).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from .policy import EvictionPolicy


class NoRoom(Exception):
    """The budget cannot fit the entry: everything left is in flight or protected. ``evicted``:
    the entries evicted before it gave up (already uncounted: their owner must drop them)."""

    def __init__(self, size: int, evicted: list[Hashable] | None = None) -> None:
        super().__init__(size)
        self.evicted = evicted or []


class Budget:
    """Bytes of entries under a capacity; the policy picks victims, ``size_of`` (the owner's
    record) says whether an entry is cached and how big it is (None: not cached).

    ``reserve`` holds bytes for entries being written so that concurrent fills cannot
    overshoot the budget; ``add`` later converts a reservation into an entry. The owner calls
    ``add``/``take`` as its record gains and loses entries, and drops from its record
    every key ``make_room`` returns (those bytes are already uncounted).
    """

    def __init__(self, capacity: int, policy: EvictionPolicy, size_of: Callable[[Hashable], int | None]) -> None:
        self.capacity = capacity
        self.policy = policy
        self.size_of = size_of
        self.used = 0
        self.reserved = 0
        self.count = 0  # entries counted

    def __contains__(self, key: object) -> bool:
        return self.size_of(key) is not None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.count

    def touch(self, key: Hashable, now: float) -> None:
        """A cached entry was read (the owner knows it is cached)."""
        self.policy.touch(key, now)

    def make_room(self, size: int) -> list[Hashable]:
        """Evict until ``size`` more bytes fit; return the evicted keys. Raises NoRoom."""
        if size > self.capacity:
            raise NoRoom(size)
        evicted: list[Hashable] = []
        while self.used + self.reserved + size > self.capacity:
            key = self.policy.victim()
            if key is None:
                raise NoRoom(size, evicted)
            n = self.size_of(key)
            self.policy.remove(key)
            if n is None:  # policy out of step with the owner's record: drop it from the policy
                continue
            self.used -= n
            self.count -= 1
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

    def add(self, key: Hashable, size: int, now: float, *, reserved: bool = False, **admit: Any) -> list[Hashable]:
        """Count a new entry. With ``reserved`` its bytes were already held by ``reserve``.
        Returns what was evicted to make room. Other keywords go to the policy's ``admit``
        (e.g. ``rule=`` for ``QoSPolicy``)."""
        if reserved:
            self.release(size)
        self._advance(now)
        evicted = self.make_room(size)
        self.used += size
        self.count += 1
        self.policy.admit(key, size, now, **admit)
        return evicted

    def _advance(self, now: float) -> None:
        # Victims may depend on the time (QoSPolicy: a prefetch's credit lapses).
        advance = getattr(self.policy, "advance", None)
        if advance is not None:
            advance(now)

    def take(self, key: Hashable, size: int, *, dead: bool = False) -> None:
        """An entry of ``size`` bytes left the owner's record (dropped, replaced). ``dead``: it
        will never return (its version is dead), so the policy keeps no history of it."""
        self.used -= size
        self.count -= 1
        forget = getattr(self.policy, "forget", None) if dead else None
        (forget or self.policy.remove)(key)


class CacheSpace(Budget):
    """A budget with its own table of entries and their sizes."""

    def __init__(self, capacity: int, policy: EvictionPolicy) -> None:
        self.sizes: dict[Hashable, int] = {}
        super().__init__(capacity, policy, self.sizes.get)

    def hit(self, key: Hashable, now: float) -> bool:
        if key in self.sizes:
            self.policy.touch(key, now)
            return True
        return False

    def make_room(self, size: int) -> list[Hashable]:
        try:
            evicted = super().make_room(size)
        except NoRoom as e:
            for key in e.evicted:
                del self.sizes[key]
            raise
        for key in evicted:
            del self.sizes[key]
        return evicted

    def insert(self, key: Hashable, size: int, now: float, *, reserved: bool = False,
               **admit: Any) -> list[Hashable]:
        """Add an entry (replacing one with the same key); see ``Budget.add``."""
        if key in self.sizes:
            self.remove(key)
        evicted = self.add(key, size, now, reserved=reserved, **admit)
        self.sizes[key] = size
        return evicted

    def remove(self, key: Hashable) -> int:
        size = self.sizes.pop(key, None)
        if size is None:
            return 0
        self.take(key, size)
        return size

    def forget(self, key: Hashable) -> int:
        """Remove an entry that will never return: the policy keeps no history of it."""
        size = self.sizes.pop(key, None)
        if size is None:
            return 0
        self.take(key, size, dead=True)
        return size
