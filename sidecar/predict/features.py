"""Per-object features for the access predictor, kept incrementally as reads arrive."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from sortedcontainers import SortedList

from ..cache.hotness import half_life_to_lambda
from .accesslog import Access

ObjectId = tuple[str, str]                 # (bucket, key)

# The model's input schema, in column order. Times are seconds; NEVER stands for "no such event".
FEATURES: tuple[str, ...] = (
    "hotness",           # decayed hotness sum exp(-lambda (now - t_i)) over reads, half-life from the tracker
    "reads_1m",          # reads decayed with a 1 min time constant (~ reads in the last minute)
    "reads_10m",         # same, 10 min
    "reads_1h",          # same, 1 h
    "reads_total",       # reads since the tracker first saw the object
    "since_last",        # seconds since the last access to the object
    "gap_mean",          # mean time between reads (Welford); NEVER with fewer than 2 reads
    "gap_std",           # standard deviation of that; -1 with fewer than 3 reads
    "until_due",         # last read + gap_mean - now: < 0 when overdue; NEVER with fewer than 2 reads
    "period_err",        # distance of (now - last read) / gap_mean to the nearest whole number, 0..0.5; 1 if unknown
    "size_log2",         # log2(object size + 1)
    "cached_fraction",   # share of the object's bytes in the cache (from the caller)
    "pred_since",        # seconds since the lexically preceding key under the same prefix was read
    "pred_after",        # that read's time minus this object's last access (> 0: a scan has passed by)
    "pred2_since",       # seconds since the key two places before was read
    "succ_since",        # seconds since the next key was read
    "prefix_since",      # seconds since any key under the same prefix was read
    "prefix_reads_10m",  # reads under the prefix, decayed with a 10 min time constant
    "band",              # hotness relative to the EWMA hot/cold boundary B: (h - B) / (delta B), clipped to +-4
    "ahead",             # keys between the reader's latest new read in this prefix and this key (1: next); 0 if not ahead
    "reader_rate",       # new objects read per second under the prefix (EWMA of the gaps); 0 if unknown
    "eta",               # ahead / reader_rate: seconds until the reader gets here at its pace; NEVER if unknown
)
NEVER = 1.0e7
_FAR_PAST = -1.0e12
_WINDOWS = (60.0, 600.0, 3600.0)
_FIELDS_F = ("last", "rt", "hot", "c1", "c10", "c60", "gap_mean", "gap_m2", "size", "cached", "ahead")
_RATE_ALPHA = 0.3  # EWMA weight of the newest gap between new reads under a prefix
_SEQ_SLACK = 16  # a new read at most this many keys after the last one counts as reading in order
_SEQ_MIN = 0.5  # a prefix read in order less often than this has no reader to look ahead of
_FIELDS_I = ("n", "pref", "pred", "succ")


def prefix_of(key: str) -> str:
    """The "directory" of a key: shards of one dataset share it."""
    return key.rpartition("/")[0]


class FeatureTracker:
    """Feature state per object in parallel numpy arrays (one slot per object), so that
    ``matrix`` computes every column for 100k objects with a few vector operations.

    Hotness and the window counts are decayed counters (``DecayedCounter``'s H(t_last),
    laid out as arrays): each stores its value at the object's last read and decays it on
    the next read or when read out. Accesses of one object less than ``correlated_period``
    after its previous access are parts of the same read (8 MiB parts of a shard): they
    update the last access time but count as no new read. Keys under one prefix are kept in
    a ``SortedList`` with predecessor/successor links between slots, so neighbour signals
    are array look-ups too. At ``limit`` objects the coldest quarter is forgotten.
    Slot 0 and prefix 0 are "nothing": a missing neighbour reads as never seen.
    """

    def __init__(self, *, half_life: float = 600.0, limit: int = 200_000,
                 correlated_period: float = 1.0, recent_window: float = 7200.0,
                 neighbour_window: float = 600.0, neighbours: int = 2,
                 boundary_alpha: float = 0.005, boundary_delta: float = 0.2) -> None:
        if half_life <= 0 or limit < 2:
            raise ValueError("the feature tracker needs half_life > 0 and limit >= 2")
        self.lam = half_life_to_lambda(half_life)
        self.limit = limit
        self.correlated_period = correlated_period
        self.recent_window = recent_window
        self.neighbour_window = neighbour_window
        self.neighbours = neighbours
        self.boundary_alpha = boundary_alpha
        self.boundary_delta = boundary_delta
        self.boundary = 0.0          # EWMA of hotness over reads: the hot/cold boundary
        from .planner import PrefetchLedger  # noqa: PLC0415
        self.ledger = PrefetchLedger()  # what became of the prefetches planned from this tracker's view
        self._slot: dict[ObjectId, int] = {}
        self._epoch = 0              # bumped whenever an object gets or loses a slot
        self._cand_list: list[ObjectId] | None = None
        self._cand_slots = np.zeros(0, dtype=np.int64)
        self._cand_epoch = -1
        self._keys: list[ObjectId | None] = [None]
        self._free: list[int] = []
        self._cap = 0
        self._grow(1024)
        # Prefix table: id 0 is "no prefix".
        self._prefix_id: dict[tuple[str, str], int] = {}
        self._prefix_keys: list[SortedList | None] = [None]
        self._prefix_free: list[int] = []
        self._p_last = np.full(64, _FAR_PAST)
        self._p_rt = np.zeros(64)
        self._p_c10 = np.zeros(64)
        self._p_gap = np.zeros(64)  # EWMA of the gaps between new reads under the prefix (0: unknown)
        self._p_front = np.zeros(64, dtype=np.int64)  # slot of the prefix's latest new read (the reader's progress)
        self._p_seq = np.ones(64)  # EWMA of "a new read lands just after the last one" (1: in key order)
        self._marked = np.zeros(0, dtype=np.int64)  # slots ``look_ahead`` marked last
        self.cold: list[ObjectId] = []  # keys ahead of readers without a rate yet, never read (``look_ahead``)

    # --- state --------------------------------------------------------------------------

    def _grow(self, cap: int) -> None:
        old = self._cap
        for name in _FIELDS_F:
            a = np.zeros(cap)
            if old:
                a[:old] = getattr(self, "_" + name)
            setattr(self, "_" + name, a)
        for name in _FIELDS_I:
            a = np.zeros(cap, dtype=np.int64)
            if old:
                a[:old] = getattr(self, "_" + name)
            setattr(self, "_" + name, a)
        self._last[old:] = _FAR_PAST
        self._keys.extend([None] * (cap - max(old, 1)))
        self._cap = cap

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, obj: ObjectId) -> bool:
        return obj in self._slot

    def know(self, bucket: str, key: str, size: int | None = None) -> None:
        """Make an object known without a read (e.g. from a listing), so it can be a
        neighbour candidate before its first read."""
        obj = (bucket, key)
        s = self._slot.get(obj)
        if s is None:
            s = self._add(obj)
        if size is not None:
            self._size[s] = size

    def _add(self, obj: ObjectId) -> int:
        if len(self._slot) >= self.limit:
            self._forget_coldest()
        if self._free:
            s = self._free.pop()
        else:
            s = len(self._slot) + 1
            if s >= self._cap:
                self._grow(max(self._cap * 2, s + 1))
        self._slot[obj] = s
        self._epoch += 1
        self._keys[s] = obj
        bucket, key = obj
        pk = (bucket, prefix_of(key))
        pid = self._prefix_id.get(pk)
        if pid is None:
            pid = self._new_prefix(pk)
        self._pref[s] = pid
        keys = self._prefix_keys[pid]
        keys.add(key)
        i = keys.index(key)
        ps = self._slot[(bucket, keys[i - 1])] if i > 0 else 0
        ss = self._slot[(bucket, keys[i + 1])] if i + 1 < len(keys) else 0
        self._pred[s], self._succ[s] = ps, ss
        if ps:
            self._succ[ps] = s
        if ss:
            self._pred[ss] = s
        return s

    def _new_prefix(self, pk: tuple[str, str]) -> int:
        if self._prefix_free:
            pid = self._prefix_free.pop()
        else:
            pid = len(self._prefix_keys)
            self._prefix_keys.append(None)
            if pid >= len(self._p_last):
                n = len(self._p_last) * 2
                self._p_last = np.concatenate([self._p_last, np.full(n - len(self._p_last), _FAR_PAST)])
                self._p_rt = np.concatenate([self._p_rt, np.zeros(n - len(self._p_rt))])
                self._p_c10 = np.concatenate([self._p_c10, np.zeros(n - len(self._p_c10))])
                self._p_gap = np.concatenate([self._p_gap, np.zeros(n - len(self._p_gap))])
                self._p_front = np.concatenate([self._p_front, np.zeros(n - len(self._p_front), dtype=np.int64)])
                self._p_seq = np.concatenate([self._p_seq, np.ones(n - len(self._p_seq))])
        self._prefix_id[pk] = pid
        self._prefix_keys[pid] = SortedList()
        self._p_last[pid], self._p_rt[pid], self._p_c10[pid] = _FAR_PAST, 0.0, 0.0
        self._p_gap[pid], self._p_front[pid], self._p_seq[pid] = 0.0, 0, 1.0
        return pid

    def forget(self, obj: ObjectId) -> None:
        s = self._unlink(obj)
        if s:
            self._clear(np.array([s]))

    def _unlink(self, obj: ObjectId) -> int:
        """Drop ``obj`` from the maps and the neighbour chain; its slot's arrays are cleared by
        the caller (one vector operation per field for a whole batch). Returns the slot, or 0."""
        s = self._slot.pop(obj, None)
        if s is None:
            return 0
        self._epoch += 1
        ps, ss = int(self._pred[s]), int(self._succ[s])
        if ps:
            self._succ[ps] = ss
        if ss:
            self._pred[ss] = ps
        pid = int(self._pref[s])
        if self._p_front[pid] == s:
            self._p_front[pid] = 0
        keys = self._prefix_keys[pid]
        keys.remove(obj[1])
        if not keys:
            del self._prefix_id[(obj[0], prefix_of(obj[1]))]
            self._prefix_keys[pid] = None
            self._prefix_free.append(pid)
        self._keys[s] = None
        self._free.append(s)
        return s

    def _clear(self, slots: np.ndarray) -> None:
        for name in _FIELDS_F:
            getattr(self, "_" + name)[slots] = 0.0
        for name in _FIELDS_I:
            getattr(self, "_" + name)[slots] = 0
        self._last[slots] = _FAR_PAST

    def _forget_coldest(self) -> None:
        # Amortised: one sort per limit/4 new objects. "Now" is the newest access seen.
        slots = np.fromiter(self._slot.values(), dtype=np.int64, count=len(self._slot))
        now = float(self._last[slots].max())
        heat = self._hot[slots] * np.exp(-self.lam * np.maximum(0.0, now - self._rt[slots]))
        # Among equally cold objects, forget the least recently accessed first.
        order = np.lexsort((self._last[slots], heat))
        gone = slots[order[: max(1, len(slots) // 4)]]
        keys = self._keys
        for s in gone.tolist():
            self._unlink(keys[s])
        self._clear(gone)

    # --- updates ------------------------------------------------------------------------

    def observe(self, access: Access) -> None:
        """Account one access (amortised O(1); O(log n) the first time an object is seen)."""
        obj = (access.bucket, access.key)
        s = self._slot.get(obj)
        if s is None:
            s = self._add(obj)
        t = access.t
        self._size[s] = access.size
        n = int(self._n[s])
        last = float(self._last[s])
        pid = int(self._pref[s])
        if n == 0 or t - last > self.correlated_period:
            rt = float(self._rt[s])
            dt = max(0.0, t - rt)
            if n:
                # Welford's running mean and M2 of the gaps between reads.
                gaps = n
                gap = dt
                delta = gap - self._gap_mean[s]
                mean = self._gap_mean[s] + delta / gaps
                self._gap_mean[s] = mean
                self._gap_m2[s] += delta * (gap - mean)
            hot = self._hot[s] * math.exp(-self.lam * dt) + 1.0
            self._hot[s] = hot
            self._c1[s] = self._c1[s] * math.exp(-dt / _WINDOWS[0]) + 1.0
            self._c10[s] = self._c10[s] * math.exp(-dt / _WINDOWS[1]) + 1.0
            self._c60[s] = self._c60[s] * math.exp(-dt / _WINDOWS[2]) + 1.0
            self._rt[s] = max(rt, t)
            self._n[s] = n + 1
            pdt = max(0.0, t - self._p_rt[pid])
            if self._p_rt[pid] > 0 and pdt < self.neighbour_window:
                g = self._p_gap[pid]
                self._p_gap[pid] = pdt if g <= 0 else g + _RATE_ALPHA * (pdt - g)
            if t >= self._p_rt[pid]:
                front = int(self._p_front[pid])
                if front and front != s:
                    # In key order: just after the last new read (a few keys of slack for
                    # parallel loader workers); random reads under the prefix are not.
                    keys = self._prefix_keys[pid]
                    d = keys.index(access.key) - keys.index(self._keys[front][1])
                    seq = self._p_seq[pid]
                    self._p_seq[pid] = seq + _RATE_ALPHA * ((0 < d <= _SEQ_SLACK) - seq)
                self._p_front[pid] = s
            self._p_c10[pid] = self._p_c10[pid] * math.exp(-pdt / _WINDOWS[1]) + 1.0
            self._p_rt[pid] = max(self._p_rt[pid], t)
            if self.boundary == 0.0:
                self.boundary = hot
            else:
                self.boundary += self.boundary_alpha * (hot - self.boundary)
        if t > last:
            self._last[s] = t
        if t > self._p_last[pid]:
            self._p_last[pid] = t

    # --- read-outs ----------------------------------------------------------------------

    def size(self, obj: ObjectId) -> int | None:
        s = self._slot.get(obj)
        if s is None or self._size[s] <= 0:
            return None
        return int(self._size[s])

    def hotness(self, obj: ObjectId, now: float) -> float:
        s = self._slot.get(obj)
        if s is None:
            return 0.0
        return float(self._hot[s] * math.exp(-self.lam * max(0.0, now - self._rt[s])))

    def ahead(self, obj: ObjectId) -> int:
        """How far ahead of its prefix's reader ``look_ahead`` last marked ``obj`` (0: not ahead)."""
        s = self._slot.get(obj)
        return int(self._ahead[s]) if s is not None else 0

    def last_access(self, obj: ObjectId) -> float | None:
        s = self._slot.get(obj)
        if s is None or self._last[s] <= _FAR_PAST:
            return None
        return float(self._last[s])

    def candidates(self, now: float, limit: int = 100_000, *,
                   max_cached: float | None = None) -> list[ObjectId]:
        """Objects accessed within ``recent_window`` plus the next ``neighbours`` keys (same
        prefix, lexical order) of those accessed within ``neighbour_window``; most recently
        accessed first, at most ``limit``. With ``max_cached``, objects whose fraction given
        to ``set_cached_fraction`` is at least that (1.0: wholly cached) are left out."""
        n = len(self._slot) + len(self._free) + 1
        last = self._last[:n]
        recent = np.flatnonzero(last >= now - self.recent_window)
        fresh = recent[last[recent] >= now - self.neighbour_window]
        extra = []
        nxt = fresh
        for _ in range(self.neighbours):
            nxt = self._succ[nxt]
            nxt = nxt[nxt > 0]
            extra.append(nxt)
        pick = np.zeros(n, dtype=bool)
        pick[recent] = True
        for e in extra:
            pick[e] = True
        marked = self._marked[self._marked < n]
        pick[marked[self._ahead[marked] > 0]] = True
        sel = np.flatnonzero(pick)
        if max_cached is not None:
            sel = sel[self._cached[sel] < max_cached]
        # Neighbours that have never been read come after every object that has.
        order = np.argsort(-last[sel], kind="stable")
        sel = sel[order[:limit]]
        keys = self._keys
        out = [keys[s] for s in sel.tolist()]
        self._cand_list, self._cand_slots, self._cand_epoch = out, sel, self._epoch
        return out

    def look_ahead(self, known, now: float, interval: float, *, max_ahead: int = 256,
                   min_ahead: int = 2, small_set: int = 16) -> int:
        """Make the keys ahead of each active reader candidates: for every prefix with a new read
        within ``neighbour_window``, the next keys ``known`` (a ``KnownKeys``) has after the
        prefix's latest new read, as many as the reader gets through in two intervals at its
        rate (at least ``min_ahead``, at most ``max_ahead``), each marked with how far ahead
        it is (the ``ahead`` feature). A reader without a rate yet (one new read so far: a
        first epoch's first shard, a model load's first file) gets ``min_ahead`` keys, or the
        rest of its prefix when that holds at most ``small_set`` keys; those keys are listed in
        ``cold`` (the loop plans them without waiting for a rate). Returns how many keys were marked."""
        self._ahead[self._marked[self._marked < self._cap]] = 0.0
        live = np.flatnonzero(self._p_last >= now - self.neighbour_window)
        marked: list[int] = []
        cold: list[ObjectId] = []
        for pid in live.tolist():
            front = int(self._p_front[pid])
            obj = self._keys[front] if front else None
            if obj is None:
                continue
            if self._p_seq[pid] < _SEQ_MIN:
                continue  # random reads: nothing is "ahead" of them
            gap = float(self._p_gap[pid])
            if gap > 0:
                want = math.ceil(2.0 * interval / gap) + min_ahead
            else:
                want = max_ahead if known.count(obj[0], obj[1]) <= small_set else min_ahead
            want = min(max_ahead, want)
            for k, (key, size) in enumerate(known.after(obj[0], obj[1], want), 1):
                s = self._slot.get((obj[0], key))
                if s is None:
                    s = self._add((obj[0], key))
                if size >= 0 and self._size[s] <= 0:
                    self._size[s] = size
                self._ahead[s] = k
                marked.append(s)
                if gap <= 0 and self._n[s] == 0:
                    cold.append((obj[0], key))
        self._marked = np.array(marked, dtype=np.int64)
        self.cold = cold
        return len(marked)

    def slots(self, objs: Sequence[ObjectId]) -> np.ndarray:
        """Slot of each object (0: not tracked). The list ``candidates`` returned last, left
        unmodified, maps without a look-up per object while no object has been added or
        forgotten since (a changed length or ends also fall back to look-ups)."""
        c = self._cand_slots
        if (objs is self._cand_list and self._cand_epoch == self._epoch and len(objs) == len(c)
                and (not objs or (objs[0] is self._keys[c[0]] and objs[-1] is self._keys[c[-1]]))):
            return c
        return np.array(list(map(self._slot.get, objs, itertools.repeat(0, len(objs)))), dtype=np.int64)

    def set_cached_fraction(self, obj: ObjectId, fraction: float) -> None:
        """Record the share of ``obj``'s bytes now in the cache (for ``matrix(..., None)``):
        pushing changes as the cache commits and evicts costs O(1) each, where a callback
        costs a Python call per candidate on every run."""
        s = self._slot.get(obj)
        if s is not None:
            self._cached[s] = fraction

    def matrix(self, objs: Sequence[ObjectId], now: float,
               cached_fraction: Callable[[ObjectId], float] | Sequence[float] | np.ndarray | None,
               ) -> np.ndarray:
        """float32 features, shape (len(objs), len(FEATURES)); unknown objects read as never seen.

        ``cached_fraction``: a function of the object, or the values in ``objs``' order, or
        None for the values last given to ``set_cached_fraction`` (0 if never given)."""
        m = len(objs)
        X = np.empty((m, len(FEATURES)), dtype=np.float32)
        if m == 0:
            return X
        s = self.slots(objs)
        last = self._last
        n = self._n[s]
        rt = self._rt[s]
        dt = np.maximum(0.0, now - rt)
        hot = self._hot[s] * np.exp(-self.lam * dt)
        X[:, 0] = hot
        X[:, 1] = self._c1[s] * np.exp(-dt / _WINDOWS[0])
        X[:, 2] = self._c10[s] * np.exp(-dt / _WINDOWS[1])
        X[:, 3] = self._c60[s] * np.exp(-dt / _WINDOWS[2])
        X[:, 4] = n
        my_last = last[s]
        X[:, 5] = np.minimum(NEVER, now - my_last)
        gaps = n - 1
        mean = self._gap_mean[s]
        has_gap = gaps >= 1
        X[:, 6] = np.where(has_gap, mean, NEVER)
        with np.errstate(divide="ignore", invalid="ignore"):
            std = np.sqrt(np.maximum(0.0, self._gap_m2[s]) / np.maximum(gaps - 1, 1))
            X[:, 7] = np.where(gaps >= 2, std, -1.0)
            X[:, 8] = np.where(has_gap, mean - dt, NEVER)
            r = dt / np.where(mean > 0, mean, np.inf)
            X[:, 9] = np.where(has_gap & (mean > 0), np.abs(r - np.round(r)), 1.0)
        X[:, 10] = np.log2(self._size[s] + 1.0)
        if cached_fraction is None:
            X[:, 11] = self._cached[s]
        elif callable(cached_fraction):
            X[:, 11] = list(map(cached_fraction, objs))
        else:
            X[:, 11] = np.asarray(cached_fraction, dtype=np.float64).reshape(m)
        pred = self._pred[s]
        pred_last = last[pred]
        X[:, 12] = np.minimum(NEVER, now - pred_last)
        X[:, 13] = np.where((pred > 0) & (pred_last > _FAR_PAST) & (my_last > _FAR_PAST),
                            np.clip(pred_last - my_last, -NEVER, NEVER),
                            np.where((pred > 0) & (pred_last > _FAR_PAST), NEVER, -NEVER))
        X[:, 14] = np.minimum(NEVER, now - last[self._pred[pred]])
        X[:, 15] = np.minimum(NEVER, now - last[self._succ[s]])
        pid = self._pref[s]
        X[:, 16] = np.minimum(NEVER, now - self._p_last[pid])
        X[:, 17] = self._p_c10[pid] * np.exp(-np.maximum(0.0, now - self._p_rt[pid]) / _WINDOWS[1])
        ahead = self._ahead[s]
        X[:, 19] = ahead
        gap = self._p_gap[pid]
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(gap > 0, 1.0 / np.where(gap > 0, gap, 1.0), 0.0)
            X[:, 21] = np.where((ahead > 0) & (rate > 0), np.minimum(NEVER, ahead / np.where(rate > 0, rate, 1.0)),
                                NEVER)
        X[:, 20] = rate
        b = self.boundary
        if b > 0:
            X[:, 18] = np.clip((hot - b) / (self.boundary_delta * b), -4.0, 4.0)
        else:
            X[:, 18] = 0.0
        return X
