"""Decayed hotness H(t) = sum_i exp(-lambda * (t - t_i)), kept in O(1) per access."""

from __future__ import annotations

import heapq
import math


class DecayedCounter:
    """One object's hotness. Storing (H at the last access, time of that access) is enough:
    H(t) = H(t_last) * exp(-lambda * (t - t_last)), and an access adds 1."""

    __slots__ = ("value", "last")

    def __init__(self) -> None:
        self.value = 0.0
        self.last = 0.0

    def at(self, now: float, lam: float) -> float:
        if self.value == 0.0:
            return 0.0
        return self.value * math.exp(-lam * max(0.0, now - self.last))

    def touch(self, now: float, lam: float, weight: float = 1.0) -> float:
        self.value = self.at(now, lam) + weight
        self.last = max(self.last, now)
        return self.value


def half_life_to_lambda(half_life_s: float) -> float:
    """The decay rate whose weight halves every ``half_life_s`` seconds."""
    return math.log(2.0) / half_life_s


class HotnessTable:
    """Decayed hotness per object, bounded in size (the daemon's one table: ``Operations.hotness``).

    Touches of one object closer together than ``correlated_period`` count once: a read of a
    large object touches each of its chunks, and that is one read, not one per chunk. When
    the table outgrows ``limit`` objects, the coldest half is forgotten (amortised O(log n)
    per touch); a forgotten object reads as 0, which is what it had decayed towards anyway.
    """

    def __init__(self, lam: float, *, correlated_period: float = 1.0, limit: int = 1_000_000) -> None:
        if lam < 0 or correlated_period < 0 or limit < 1:
            raise ValueError("hotness needs lam >= 0, correlated_period >= 0 and limit >= 1")
        self.lam = lam
        self.correlated_period = correlated_period
        self.limit = limit
        self._counters: dict[object, DecayedCounter] = {}

    def touch(self, obj: object, now: float, reads: int = 1) -> float:
        """``reads`` reads of ``obj`` at ``now`` (within the correlated period of its last
        one: none)."""
        c = self._counters.get(obj)
        if c is None:
            if len(self._counters) >= self.limit:
                self._forget_coldest(now)
            c = self._counters[obj] = DecayedCounter()
        elif now - c.last < self.correlated_period:
            return c.at(now, self.lam)
        return c.touch(now, self.lam, 1 if self.correlated_period else reads)

    def at(self, obj: object, now: float) -> float:
        c = self._counters.get(obj)
        return c.at(now, self.lam) if c is not None else 0.0

    def hottest(self, n: int, now: float) -> list[tuple[object, float]]:
        """The ``n`` hottest objects with their hotness, hottest first."""
        return heapq.nlargest(n, ((o, c.at(now, self.lam)) for o, c in self._counters.items()),
                              key=lambda oc: oc[1])

    def forget(self, obj: object) -> None:
        self._counters.pop(obj, None)

    def __len__(self) -> int:
        return len(self._counters)

    def __contains__(self, obj: object) -> bool:
        return obj in self._counters

    def _forget_coldest(self, now: float) -> None:
        by_heat = sorted(self._counters.items(), key=lambda oc: oc[1].at(now, self.lam))
        for obj, _ in by_heat[: max(1, len(by_heat) // 2)]:
            del self._counters[obj]
