"""The prefetch planner: which scored objects to fetch ahead of demand, within the cache's room.

Pure: it sees candidates (an object, its size, how much of it is cached, the predicted
probability of a read within the horizon, its hotness and its cache rule) and a ``Room`` (free
bytes plus the bytes it may displace), and returns a ``PrefetchPlan``. The daemon's loop
(loop.py) and the simulator (sim/prefetch.py) build both from their own state and run this same
function.

Expected benefit of fetching an object's missing bytes m with read probability p is p × m bytes
not fetched on demand later; per byte fetched that is p. So candidates go in order of p, ties to
the hotter. A plan never makes room by displacing Guaranteed data, pinned data, or data hotter
than what the prefetch brings: ``Room`` lists only what may be displaced, coldest first, and an
item may only use displaceable bytes colder than itself.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Hashable, Iterable, Sequence

from ..cache.rules import Rule

ObjectId = tuple[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """An object the predictor scored."""

    obj: Hashable
    size: int  # the object's size in bytes
    cached_fraction: float  # share of its bytes already cached (0..1)
    probability: float  # predicted P(read within the horizon)
    hotness: float  # decayed read count, on the same scale as ``Room``'s
    rule: Rule  # its cache rule (do-not-cache, max size, QoS class)
    eta: float = float("inf")  # seconds until the reader of its prefix gets to it (inf: not ahead of one)
    probe: bool = False  # planned to test a prefix where prefetch has not paid (PrefetchLedger)

    @property
    def missing(self) -> int:
        """Bytes a prefetch would fetch."""
        return max(0, round(self.size * (1.0 - min(1.0, max(0.0, self.cached_fraction)))))

    @property
    def worth(self) -> float:
        """How hot the prefetched bytes are taken to be when they displace cached data: the
        hotness it has, or, for an object never read (the next shard), its chance of a read
        soon, counted as that share of one read made now. An object ahead of a reader (a
        finite ``eta``) will have that read on top of the hotness it has: a shard of the
        last epoch outranks the shards this epoch has just read, which a cyclic reader needs
        last."""
        if self.eta < float("inf"):
            return self.hotness + self.probability
        return max(self.hotness, self.probability)


@dataclasses.dataclass(frozen=True, slots=True)
class Room:
    """What a prefetch may occupy: ``free`` bytes, plus cached bytes it may displace, as
    (hotness, bytes) pairs sorted coldest first. Guaranteed and pinned data are never listed."""

    free: int
    displaceable: tuple[tuple[float, int], ...] = ()

    @classmethod
    def build(cls, free: int, entries: Iterable[tuple[float, int]]) -> "Room":
        return cls(max(0, free), tuple(sorted((h, n) for h, n in entries if n > 0)))

    @property
    def total(self) -> int:
        return self.free + sum(n for _, n in self.displaceable)


@dataclasses.dataclass(frozen=True, slots=True)
class PlanItem:
    obj: Hashable
    nbytes: int  # missing bytes to fetch
    probability: float
    hotness: float
    eta: float = float("inf")  # when the reader will want it: the plan is fetched soonest first
    probe: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class PrefetchPlan:
    """The objects to prefetch, best benefit per byte first."""

    items: tuple[PlanItem, ...]
    considered: int  # candidates seen
    eligible: int  # above the threshold, prefetchable, with bytes missing
    skipped_room: int  # eligible but no room left for them

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.items)

    def objects(self) -> set[Hashable]:
        return {i.obj for i in self.items}


def eligible(c: Candidate, threshold: float) -> bool:
    """Whether a candidate may be prefetched at all, whatever the room."""
    return (c.probability >= threshold and c.rule.prefetchable and c.rule.caches(c.size)
            and c.missing > 0)


def plan(candidates: Sequence[Candidate], room: Room, *, threshold: float = 0.7,
         max_bytes: int | None = None, max_items: int | None = None) -> PrefetchPlan:
    """Choose what to prefetch; see the module docstring. ``max_bytes``: at most this many
    bytes in one plan; ``max_items``: at most this many objects."""
    chosen = sorted((c for c in candidates if eligible(c, threshold)),
                    key=lambda c: (-c.probability, -c.hotness, c.missing))
    # Cumulative displaceable bytes, coldest first, and their hotness, for "colder than x".
    heat = [h for h, _ in room.displaceable]
    cumulative: list[int] = []
    acc = 0
    for _, n in room.displaceable:
        acc += n
        cumulative.append(acc)
    free = room.free
    displaced = 0  # bytes taken from the cold end of ``displaceable``
    budget = max_bytes if max_bytes is not None else float("inf")
    items: list[PlanItem] = []
    skipped = 0
    for c in chosen:
        if max_items is not None and len(items) >= max_items:
            skipped += 1
            continue
        need = c.missing
        if need > budget:
            skipped += 1
            continue
        colder = bisect.bisect_left(heat, c.worth)  # entries strictly colder than the item
        may_displace = max(0, (cumulative[colder - 1] if colder else 0) - displaced)
        if need > free + may_displace:
            skipped += 1
            continue
        from_free = min(free, need)
        free -= from_free
        displaced += need - from_free
        budget -= need
        items.append(PlanItem(c.obj, need, c.probability, c.hotness, c.eta, c.probe))
    return PrefetchPlan(tuple(items), len(candidates), len(chosen), skipped)


class PrefetchLedger:
    """What became of past prefetches, per prefix: a prefetch keeps quiet where it has not paid.

    Each planned object is recorded with its bytes and the time it was planned; it is settled
    as *read* once the object is accessed after that, as *wasted* once a ``horizon`` passes
    without a read. Per prefix (bucket and "directory") the read share of settled bytes is
    kept, decayed with ``half_life``; a prefix with too little history borrows the global share
    (``prior`` objects' worth). A prefix whose share is below ``target`` is quiet: its candidates
    are dropped, but for one probe object at a time in the whole cache, so a prefix whose reads
    change can earn its prefetch back. On reads where prediction has little to say (Zipf-like
    popularity) this keeps prefetch at a trickle; a dataset read in order keeps a share near 1
    and is untouched."""

    def __init__(self, *, target: float = 0.6, half_life: float = 1800.0, prior: float = 4.0) -> None:
        self.target = target
        self.half_life = half_life
        self.prior = prior
        self._open: dict[Hashable, tuple[float, int, Hashable]] = {}  # obj -> (planned at, bytes, group)
        self._groups: dict[Hashable, list[float]] = {}  # group -> [read bytes, wasted bytes, objects, t]
        self._total = [0.0, 0.0, 0.0, 0.0]
        self._probe: Hashable | None = None  # the one quiet-group object planned as a probe

    def _decayed(self, g: list[float], now: float) -> list[float]:
        f = 0.5 ** (max(0.0, now - g[3]) / self.half_life)
        g[0] *= f
        g[1] *= f
        g[2] *= f
        g[3] = now
        return g

    def settle(self, now: float, last_access, horizon: float) -> None:
        """Settle open entries: read (``last_access(obj)`` after planning) or wasted (horizon gone)."""
        done = []
        for obj, (t, n, group) in self._open.items():
            last = last_access(obj)
            if last is not None and last > t:
                read = True
            elif now - t > horizon:
                read = False
            else:
                continue
            done.append(obj)
            for g in (self._groups.setdefault(group, [0.0, 0.0, 0.0, now]), self._total):
                self._decayed(g, now)
                g[0 if read else 1] += n
                g[2] += 1
        for obj in done:
            del self._open[obj]
            if obj == self._probe:
                self._probe = None

    def share(self, group: Hashable, now: float) -> float:
        """Read share of the group's settled prefetch bytes, shrunk toward the global share."""
        tot = self._decayed(self._total, now)
        settled = tot[0] + tot[1]
        glob = tot[0] / settled if settled > 0 else 1.0
        mean = settled / tot[2] if tot[2] > 0 else 0.0
        g = self._groups.get(group)
        if g is not None:
            self._decayed(g, now)
        read, wasted = (g[0], g[1]) if g is not None else (0.0, 0.0)
        weight = self.prior * mean
        if read + wasted + weight <= 0:
            return 1.0
        return (read + glob * weight) / (read + wasted + weight)

    def admit(self, cands: Sequence[Candidate], now: float, group_of) -> list[Candidate]:
        """The candidates of groups that are not quiet, plus at most one probe from a quiet one."""
        out = []
        verdict: dict[Hashable, bool] = {}
        probe_free = self._probe is None
        for c in cands:
            g = group_of(c.obj)
            ok = verdict.get(g)
            if ok is None:
                ok = verdict[g] = self.share(g, now) >= self.target
            if ok:
                out.append(c)
            elif probe_free and c.obj not in self._open:
                out.append(dataclasses.replace(c, probe=True))
                probe_free = False
        return out

    def record(self, items: Iterable[PlanItem], now: float, group_of) -> None:
        for i in items:
            if i.obj not in self._open:
                self._open[i.obj] = (now, i.nbytes, group_of(i.obj))
                if i.probe:
                    self._probe = i.obj

    def state(self) -> dict:
        t = self._total
        settled = t[0] + t[1]
        return {"open": len(self._open), "read_share": t[0] / settled if settled else None,
                "quiet_probe": self._probe is not None}
