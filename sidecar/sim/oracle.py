"""Offline-optimal reference policies (Belady's MIN), for the simulator only: they need the future.

Both implement the policy interface plus ``foresee(key, next_use, now_index)``, which the replay
loop calls before each reference with the index of the key's next use (-1: never), and
``admits(size, space)``, asked before caching the foreseen key: MIN caches a missed item only
if it is used again before the entry it would displace.

- ``BeladyPolicy``: evict the entry used again furthest in the future. Optimal when all
  entries have the same size (the OLTP trace, fixed-size chunks of large objects).
- ``BeladySizePolicy``: with varying sizes the optimum is NP-hard; like libCacheSim's
  size-aware Belady, evict among a random sample the entry with the largest
  size × distance to its next use (bytes-time it would occupy).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Hashable

NEVER = math.inf


class BeladyPolicy:
    name = "belady"

    def __init__(self) -> None:
        self._next: dict[Hashable, float] = {}  # resident key -> index of its next use
        self._heap: list[tuple[float, int, Hashable]] = []  # (-next use, tiebreak, key), lazy
        self._seq = itertools.count()
        self._upcoming: tuple[Hashable, float] | None = None

    def foresee(self, key: Hashable, next_use: int, now_index: int) -> None:
        self._upcoming = (key, NEVER if next_use < 0 else float(next_use))

    def _reference(self, key: Hashable) -> None:
        upcoming = self._upcoming
        if upcoming is None or upcoming[0] != key:
            raise RuntimeError("Belady needs foresee(key, ...) before each reference")
        self._next[key] = upcoming[1]
        heapq.heappush(self._heap, (-upcoming[1], next(self._seq), key))
        if len(self._heap) > 2 * len(self._next) + 64:
            self._heap = [(-n, next(self._seq), k) for k, n in self._next.items()]
            heapq.heapify(self._heap)

    def admits(self, size: int, space) -> bool:
        if space.used + space.reserved + size <= space.capacity:
            return True
        victim = self.victim()
        return victim is None or self._upcoming[1] < self._next[victim]

    def admit(self, key: Hashable, size: int, now: float) -> None:
        self._reference(key)

    def touch(self, key: Hashable, now: float) -> None:
        if key in self._next:
            self._reference(key)

    def victim(self) -> Hashable | None:
        heap = self._heap
        while heap:
            negative_next, _, key = heap[0]
            if self._next.get(key) == -negative_next:
                return key
            heapq.heappop(heap)
        return None

    def remove(self, key: Hashable) -> None:
        self._next.pop(key, None)

    def __len__(self) -> int:
        return len(self._next)

    def __contains__(self, key: object) -> bool:
        return key in self._next


class BeladySizePolicy:
    name = "belady-size"

    def __init__(self, samples: int = 64, seed: int = 0) -> None:
        self.samples = samples
        self._rng = random.Random(seed)
        self._keys: list[Hashable] = []  # resident keys, for sampling
        self._pos: dict[Hashable, int] = {}
        self._next: dict[Hashable, float] = {}
        self._size: dict[Hashable, int] = {}
        self._never: dict[Hashable, None] = {}  # resident keys not used again: evicted first
        self._upcoming: tuple[Hashable, float] | None = None
        self._now = 0

    def foresee(self, key: Hashable, next_use: int, now_index: int) -> None:
        self._upcoming = (key, NEVER if next_use < 0 else float(next_use))
        self._now = now_index

    def _reference(self, key: Hashable) -> None:
        upcoming = self._upcoming
        if upcoming is None or upcoming[0] != key:
            raise RuntimeError("Belady needs foresee(key, ...) before each reference")
        self._next[key] = upcoming[1]
        if upcoming[1] == NEVER:
            self._never[key] = None

    def admits(self, size: int, space) -> bool:
        if space.used + space.reserved + size <= space.capacity:
            return True
        victim = self.victim()
        if victim is None:
            return True
        return (self._upcoming[1] - self._now) * size < (self._next[victim] - self._now) * self._size[victim]

    def admit(self, key: Hashable, size: int, now: float) -> None:
        self._pos[key] = len(self._keys)
        self._keys.append(key)
        self._size[key] = size
        self._reference(key)

    def touch(self, key: Hashable, now: float) -> None:
        if key in self._pos:
            self._reference(key)

    def victim(self) -> Hashable | None:
        if self._never:
            return next(iter(self._never))
        keys = self._keys
        if not keys:
            return None
        sample = keys if len(keys) <= self.samples else [keys[self._rng.randrange(len(keys))]
                                                         for _ in range(self.samples)]
        now = self._now
        return max(sample, key=lambda k: (self._next[k] - now) * self._size[k])

    def remove(self, key: Hashable) -> None:
        pos = self._pos.pop(key, None)
        if pos is None:
            return
        last = self._keys.pop()
        if last != key:
            self._keys[pos] = last
            self._pos[last] = pos
        del self._next[key], self._size[key]
        self._never.pop(key, None)

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, key: object) -> bool:
        return key in self._pos
