"""The replay loop: a trace's requests through a real ``CacheSpace`` and policy, on simulated time.

A request becomes cache items first (``Workload``): the whole object, or with a chunk size the
chunks its byte range covers, as the daemon caches them. ``Replay.run`` then feeds the items to
``CacheSpace.hit``/``insert`` (the daemon's ``Budget`` and eviction, with its own table of
items where the daemon has its chunk index) and counts misses:

- object miss ratio: requests that missed at least one item / requests;
- byte miss ratio: requested bytes that lay in missed items / requested bytes;
- item miss ratio: missed items / items (chunks, with a chunk size).

Hooks see every request and a tick every ``tick`` simulated seconds (the predictor's period),
so a prefetcher can watch the requests and, on its ticks, cache items through
``Replay.prefetch`` (counted apart as prefetched bytes) without touching this loop. Oracle policies (Belady) are told each item's next use through ``foresee``
and decide admission through ``admits``: an item not read again, or read again later than
what it would displace, is not cached.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..cache.layout import ChunkLayout
from ..cache.policy import EvictionPolicy
from ..cache.space import CacheSpace, NoRoom
from .trace import Trace, next_accesses, unique_bytes


class ReplayHook(Protocol):
    """Something that watches a replay (a prefetcher, a recorder)."""

    def request(self, replay: "Replay", index: int, missed: bool) -> None:
        """Request ``index`` of the trace was served; ``missed``: some of it came from upstream."""

    def tick(self, replay: "Replay", now: float) -> None:
        """Simulated time reached ``now`` (every ``tick`` seconds of trace time)."""


@dataclasses.dataclass
class Workload:
    """A trace cut into cache items. Request ``r`` is items ``first[r]`` to ``first[r + 1]``;
    ``first`` is None when every request is exactly one item (the fast path)."""

    trace: Trace
    chunk_size: int | None
    keys: list
    sizes: list[int]  # bytes an item occupies in the cache
    wanted: list[int]  # bytes of the request that fall in the item
    first: list[int] | None
    _next: list[int] | None = None

    @classmethod
    def build(cls, trace: Trace, chunk_size: int | None = None) -> "Workload":
        ranged = trace.offsets is not None
        if not chunk_size:
            wanted = trace.sizes if not ranged else [
                size - off if length is None else length
                for size, off, length in zip(trace.sizes, trace.offsets, trace.lengths)]
            return cls(trace, None, trace.keys, trace.sizes, wanted, None)
        keys: list = []
        sizes: list[int] = []
        wanted: list[int] = []
        first = [0]
        offsets = trace.offsets or [0] * len(trace)
        lengths = trace.lengths or [None] * len(trace)
        layout = ChunkLayout(chunk_size)
        for key, size, off, length in zip(trace.keys, trace.sizes, offsets, lengths):
            end = size if length is None else off + length
            if end > off:
                first_chunk, last_chunk = layout.span(off, end - 1)
                for index in range(first_chunk, last_chunk + 1):
                    start, last = layout.bounds(index, size)
                    keys.append((key, index))
                    sizes.append(last - start + 1)
                    wanted.append(min(last + 1, end) - max(start, off))
            first.append(len(keys))
        return cls(trace, chunk_size, keys, sizes, wanted, first)

    @property
    def next_access(self) -> list[int]:
        """Per item, the index of the next item with the same key (-1: never)."""
        if self._next is None:
            self._next = next_accesses(self.keys)
        return self._next

    def unique_bytes(self) -> int:
        """Bytes of the distinct items (chunks, or whole objects), each at its largest size."""
        return unique_bytes(self.keys, self.sizes)

    def __len__(self) -> int:
        return len(self.trace)


@dataclasses.dataclass
class ReplayResult:
    """Counts of one replay; the ratios are what the table prints."""

    policy: str
    capacity: int
    requests: int = 0
    request_misses: int = 0
    items: int = 0
    item_misses: int = 0
    wanted_bytes: int = 0
    missed_bytes: int = 0
    prefetched_items: int = 0  # inserted by hooks through Replay.prefetch
    prefetched_bytes: int = 0
    seconds: float = 0.0

    @property
    def object_miss_ratio(self) -> float:
        return self.request_misses / self.requests if self.requests else 0.0

    @property
    def byte_miss_ratio(self) -> float:
        return self.missed_bytes / self.wanted_bytes if self.wanted_bytes else 0.0

    @property
    def item_miss_ratio(self) -> float:
        return self.item_misses / self.items if self.items else 0.0


class Replay:
    """One run of a workload through one policy at one capacity."""

    def __init__(self, workload: Workload, capacity: int, policy: EvictionPolicy, *,
                 hooks: Sequence[ReplayHook] = (), tick: float = 30.0, label: str | None = None) -> None:
        self.workload = workload
        self.space = CacheSpace(capacity, policy)
        self.hooks = list(hooks)
        self.tick = tick
        self.result = ReplayResult(label or policy.name, capacity)

    def prefetch(self, key, size: int, now: float, credit_until: float | None = None) -> bool:
        """Cache an item ahead of demand (a prefetching hook's way in); False if it was cached
        already or cannot fit. Its bytes count as upstream traffic in the result.
        ``credit_until``: protected from demand data until then or its first read (QoSPolicy)."""
        space = self.space
        if key in space or size > space.capacity:
            return False
        try:
            if credit_until is not None:
                space.insert(key, size, now, credit_until=credit_until)
            else:
                space.insert(key, size, now)
        except NoRoom:
            return False
        self.result.prefetched_items += 1
        self.result.prefetched_bytes += size
        return True

    def run(self, progress: Callable[[int], None] | None = None, every: int = 16384) -> ReplayResult:
        """Replay every request; ``progress(n)`` is called with the requests done since last."""
        w, res, space = self.workload, self.result, self.space
        times, keys, sizes, wanted, first = w.trace.times, w.keys, w.sizes, w.wanted, w.first
        capacity = space.capacity
        oracle = getattr(space.policy, "foresee", None)
        upcoming = w.next_access if oracle is not None else None
        admits = getattr(space.policy, "admits", None)
        hooks, tick = self.hooks, self.tick
        next_tick = times[0] + tick if times else 0.0
        hit, insert = space.hit, space.insert
        request_misses = item_misses = missed_bytes = 0
        started = time.perf_counter()
        n = len(times)
        for r in range(n):
            now = times[r]
            if hooks:
                while now >= next_tick:
                    for hook in hooks:
                        hook.tick(self, next_tick)
                    next_tick += tick
            missed = False
            for j in ((r,) if first is None else range(first[r], first[r + 1])):
                key = keys[j]
                if oracle is not None:
                    oracle(key, upcoming[j], j)
                if hit(key, now):
                    continue
                missed = True
                item_misses += 1
                missed_bytes += wanted[j]
                size = sizes[j]
                if size > capacity:
                    continue
                if oracle is not None and (upcoming[j] < 0 or not admits(size, space)):
                    continue  # an oracle knows it is not read again before what it would evict
                try:
                    insert(key, size, now)
                except NoRoom:
                    pass
            if missed:
                request_misses += 1
            if hooks:
                for hook in hooks:
                    hook.request(self, r, missed)
            if progress is not None and r % every == every - 1:
                progress(every)
        if progress is not None and n % every:
            progress(n % every)
        res.requests = n
        res.items = len(keys)
        res.request_misses, res.item_misses, res.missed_bytes = request_misses, item_misses, missed_bytes
        res.wanted_bytes = sum(wanted)
        res.seconds = time.perf_counter() - started
        return res
