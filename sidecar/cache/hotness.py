"""Decayed hotness H(t) = sum_i exp(-lambda * (t - t_i)), kept in O(1) per access."""

from __future__ import annotations

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
