"""LRU-K eviction (O'Neil, O'Neil & Weikum, SIGMOD 1993): evict the entry whose K-th most recent
reference lies furthest in the past.

Terms as in the paper:

- ``HIST(p, i)``: the time of the i-th most recent *uncorrelated* reference to ``p``.
- correlated reference period: a reference less than ``correlated_period`` seconds after the
  previous one belongs to the same burst (a client reading one chunk in several ranges, a retry)
  and does not count as a new reference. When a new burst starts, the history is shifted by the
  length of the previous burst, so distances run from the end of one burst to the next.
- backward K-distance: now − ``HIST(p, K)``; infinite while ``p`` has fewer than K references.
  Those entries go first, the one referenced longest ago first (the paper's subsidiary policy).
  Entries inside a correlated burst are not eligible while a burst-free one exists.
- retained information: the history of an evicted key is kept (at most ``retained_period``
  seconds and at most ``history_size`` keys) so that a key that returns keeps its past instead
  of starting over as a one-reference stranger. Without it (``history_size=0``, libCacheSim's
  LRU-K) a key evicted before its K-th reference can only ever gain a K-distance by being
  re-read while still cached. By default as many keys as are resident keep history: on the
  cloudPhysics trace 1x beats 0.25x, 0.5x and 2x, and an unbounded history is worse than
  none at 20 % (stale histories outrank every newcomer).

Ordering uses a logical clock (one tick per reference) rather than ``now``: trace times are
coarse (many references share a second, some traces have none) and the paper's "time" is the
reference count anyway. ``now`` (seconds) only measures the correlated and retained periods.

Layout, for speed and memory: each resident entry owns a slot in flat ``array``s (its history,
last reference seq and time). Its place in the eviction order is one integer, ``rank << 32 |
slot``, the value of ``_entries[key]``; the slot bits make it unique and lead back to the key.
The order itself is a binary heap of those integers with lazy deletion: a reference pushes the
entry's new value and leaves the old one behind, stale; ``victim`` discards stale values it
meets at the top, and the heap is rebuilt from ``_entries`` when stale values outnumber live
ones. Measured (bench/policy_bench.py, 1M entries) against a ``SortedList`` of exactly the
live values: moving an entry costs one C ``heappush`` (~0.1 µs) instead of ``remove`` + ``add``
(~2.6 µs): ~360k touches/s against ~180k for the SortedList version (at 200k entries); the price is at
most one stale integer (~45 bytes) per entry: 124 bytes per entry after admission, ~175 at worst.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable

_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1
# Entries with a full history rank above every entry with fewer than K references.
_FULL = 1 << 62
# Bounds of an adaptive probation share: the FIFO never vanishes nor takes the whole cache.
_ADAPT_MIN, _ADAPT_MAX = 0.01, 0.9
# AdmitLRUK's state byte of an entry on probation, or held (otherwise: its count of second chances).
_ON_PROBATION = 255
_HELD = 254
# AdmitLRUK's held part leaves probation at least this share of the resident bytes.
_HOLD_PROBATION = 0.05
# A held entry unread for this many times the longest wait that ended in a hit is given up.
_HOLD_REACH = 1.25
# Entries examined for one not inside a correlated burst before settling for the oldest.
_ELIGIBLE_SCAN = 32


class LRUKPolicy:
    """LRU-K with correlated-reference period and retained history of evicted keys."""

    name = "lru-k"

    def __init__(self, k: int = 2, *, correlated_period: float = 0.0, retained_period: float | None = 3600.0,
                 history_size: int | None = None) -> None:
        """``history_size`` bounds how many evicted keys keep their history; None keeps as
        many as there are resident entries (the paper's advice is a retained period; the count
        bound keeps memory at most twice the resident index). 0 forgets at once."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"K of LRU-K must be a positive integer, not {k!r}")
        if correlated_period < 0:
            raise ValueError(f"correlated_period must be >= 0, not {correlated_period!r}")
        if retained_period is not None and retained_period < 0:
            raise ValueError(f"retained_period must be >= 0 or None, not {retained_period!r}")
        if history_size is not None and history_size < 0:
            raise ValueError(f"history_size must be >= 0 or None, not {history_size!r}")
        self.k = k
        self.correlated_period = float(correlated_period)
        self.retained_period = retained_period
        self.history_size = history_size
        self._entries: dict[Hashable, int] = {}  # key -> order value (rank << 32 | slot)
        self._heap: list[int] = []  # live and stale order values, a min-heap
        self._keys: list[Hashable | None] = []  # slot -> key
        self._free: list[int] = []
        self._hist = array("q")  # slot * k + i -> seq of HIST(p, i + 1); 0 = no such reference
        self._last_seq = array("q")
        self._last_time = array("d")
        # evicted key -> packed (evicted at, last time, last seq, *HIST seqs), oldest eviction first
        self._retained: OrderedDict[Hashable, bytes] = OrderedDict()
        self._packed = struct.Struct(f"<dd{k + 1}q")
        self._clock = 0
        self._now = 0.0

    # --- the policy interface ----------------------------------------------------------------

    def admit(self, key: Hashable, size: int, now: float) -> None:
        if key in self._entries:
            self.touch(key, now)
            return
        slot = self._new_slot(key)
        self._restore(key, slot, now)
        value = self._reference(slot, now) << _SLOT_BITS | slot
        self._entries[key] = value
        self._push(value)
        self._expire(now)

    def _restore(self, key: Hashable, slot: int, now: float) -> tuple[bool, list[int]]:
        """Give a newly admitted key's slot the history retained of it, if any and recent
        enough (else an empty one): (whether it was restored, the retained record's fields
        after the history, a subclass's own; empty when nothing was retained)."""
        k = self.k
        hist: list[int] | tuple[int, ...] = (0,) * k
        restored, extra = False, []
        past = self._retained.pop(key, None) if self._retained else None
        if past is not None:
            evicted_at, last_time, last_seq, *kept = self._packed.unpack(past)
            extra = kept[k:]
            if self.retained_period is None or now - evicted_at <= self.retained_period:
                hist = kept[:k]
                self._last_time[slot] = last_time
                self._last_seq[slot] = last_seq
                restored = True
        base = slot * k
        self._hist[base:base + k] = array("q", hist)
        return restored, extra

    def _new_slot(self, key: Hashable) -> int:
        """A slot for a key entering the index: a freed one, or a new one at the end of the
        per-slot arrays (which subclasses with arrays of their own extend)."""
        if self._free:
            slot = self._free.pop()
            self._keys[slot] = key
            return slot
        slot = len(self._keys)
        if slot > _SLOT_MASK:
            raise OverflowError("LRU-K index is full")
        self._keys.append(key)
        self._hist.extend(itertools.repeat(0, self.k))
        self._last_seq.append(0)
        self._last_time.append(0.0)
        return slot

    def touch(self, key: Hashable, now: float) -> None:
        value = self._entries.get(key)
        if value is None:
            return
        rank = self._reference(value & _SLOT_MASK, now)
        new = rank << _SLOT_BITS | (value & _SLOT_MASK)
        if new != value:
            self._entries[key] = new
            self._push(new)

    def victim(self) -> Hashable | None:
        heap, entries, keys = self._heap, self._entries, self._keys
        skipped: list[int] = []
        found = None
        while heap:
            value = heap[0]
            key = keys[value & _SLOT_MASK]
            if key is None or entries.get(key) != value:
                heapq.heappop(heap)  # stale: the entry moved on or left
                continue
            if found is None:
                found = key
            if self.correlated_period <= 0 or len(skipped) >= _ELIGIBLE_SCAN:
                break
            # The paper never evicts a page inside a correlated burst if it can help it.
            if self._now - self._last_time[value & _SLOT_MASK] >= self.correlated_period:
                found = key
                break
            skipped.append(heapq.heappop(heap))
        for value in skipped:
            heapq.heappush(heap, value)
        return found

    def remove(self, key: Hashable) -> None:
        value = self._entries.pop(key, None)
        if value is None:
            return
        slot = value & _SLOT_MASK
        self._keys[slot] = None
        self._free.append(slot)
        limit = len(self._entries) + 1 if self.history_size is None else self.history_size
        if limit > 0:
            base = slot * self.k
            self._retained[key] = self._packed.pack(self._now, self._last_time[slot], self._last_seq[slot],
                                                    *self._hist[base:base + self.k])
            while len(self._retained) > limit:
                self._retained.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        """Drop a key and its retained history (it will never come back, e.g. a dead version)."""
        self.remove(key)
        self._retained.pop(key, None)

    def boost(self, key: Hashable, weight: float) -> None:
        """Rank a resident entry as if its backward K-distance were ``1 + weight`` times shorter
        (the predictor is confident its object will be read again). Computed from the entry's
        history, so a repeated boost does not compound; the entry's next reference ranks it by
        its history alone again. Entries with fewer than K references stay below every entry with
        a full history; among them, the distance to the last reference shrinks the same way.
        One heap push: O(log n). ``weight`` 0 (or an unknown key) changes nothing."""
        value = self._entries.get(key)
        if value is None or weight <= 0:
            return
        slot = value & _SLOT_MASK
        clock = self._clock
        oldest = self._hist[slot * self.k + self.k - 1]
        seen = oldest if oldest else self._last_seq[slot]
        boosted = clock - int((clock - seen) / (1.0 + weight))
        rank = (_FULL + boosted) if oldest else boosted
        new = rank << _SLOT_BITS | slot
        if new > value:
            self._entries[key] = new
            self._push(new)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # --- inspection, for tests, the simulator and the daemon's stats ---------------------------

    @property
    def retained(self) -> int:
        """How many evicted keys still have their history."""
        return len(self._retained)

    def history(self, key: Hashable) -> tuple[int, ...]:
        """Logical times (reference counts) of the key's last K uncorrelated references, newest
        first; 0 where there is none. Works for resident and retained keys, () for strangers."""
        value = self._entries.get(key)
        if value is not None:
            base = (value & _SLOT_MASK) * self.k
            return tuple(self._hist[base:base + self.k])
        past = self._retained.get(key)
        return tuple(self._packed.unpack(past)[3:]) if past is not None else ()

    def order(self) -> list[Hashable]:
        """Resident keys, next victim first (ignoring the correlated-period exemption)."""
        return [self._keys[v & _SLOT_MASK] for v in sorted(self._entries.values())]

    # --- internals -------------------------------------------------------------------------------

    def _reference(self, slot: int, now: float) -> int:
        """Record a reference at ``now`` and return the slot's new rank."""
        self._clock += 1
        seq = self._clock
        if now > self._now:
            self._now = now
        k = self.k
        base = slot * k
        hist = self._hist
        last_seq = self._last_seq[slot]
        if hist[base] and now - self._last_time[slot] < self.correlated_period:
            # Same burst: it moves LAST, not the history.
            self._last_seq[slot] = seq
            self._last_time[slot] = now
        else:
            if hist[base]:
                burst = last_seq - hist[base]
                for i in range(k - 1, 0, -1):
                    prev = hist[base + i - 1]
                    hist[base + i] = prev + burst if prev else 0
            hist[base] = seq
            self._last_seq[slot] = seq
            self._last_time[slot] = now
        oldest = hist[base + k - 1]
        return _FULL + oldest if oldest else self._last_seq[slot]

    def _push(self, value: int) -> None:
        heap = self._heap
        heapq.heappush(heap, value)
        if len(heap) > 2 * len(self._entries) + 64:
            heap[:] = self._entries.values()
            heapq.heapify(heap)

    def _expire(self, now: float) -> None:
        if self.retained_period is None:
            return
        retained = self._retained
        horizon = now - self.retained_period
        while retained:
            key = next(iter(retained))
            if self._packed.unpack_from(retained[key])[0] >= horizon:
                break
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Forget the oldest retained history."""
        self._retained.popitem(last=False)


class ProbationLRUK:
    """LRU-K behind a probationary FIFO with a ghost list (S3-FIFO's admission, Yang et al.,
    SOSP 2023): a new entry first lands in a small FIFO holding ``probation`` of the resident
    bytes. Reaching the FIFO's head, an entry referenced again while there moves on to the LRU-K
    main queue; one that was not leaves, and only its key is remembered in the ghost list. An entry
    whose key is on the ghost list when it comes back goes straight to the main queue. One-hit
    wonders and scans so pass through the FIFO without displacing what LRU-K ranks high, and the
    main queue keeps LRU-K's strength (the K-th reference decides) and its retained history.

    The ghost list holds at most as many keys as the main queue holds entries (S3-FIFO's choice).
    """

    name = "lru-k-probation"

    def __init__(self, k: int = 2, *, probation: float = 0.1, correlated_period: float = 0.0,
                 retained_period: float | None = 3600.0, history_size: int | None = None,
                 adaptive: bool = False) -> None:
        """``adaptive``: ``probation`` is only the starting share; it moves as ARC's split does
        (Megiddo & Modha, FAST 2003): a ghost-list hit (probation let a reused key go too soon)
        grows it, a returning key whose history LRU-K retained (the main queue let it go too
        soon) shrinks it, each by the key's share of the bytes, scaled by the ratio of the two
        lists' lengths. Such a returning key then goes straight to the main queue, as ARC's do."""
        if not 0 < probation < 1:
            raise ValueError(f"probation must be a share of the bytes between 0 and 1, not {probation!r}")
        self.probation = float(probation)
        self.adaptive = adaptive
        self.main = LRUKPolicy(k, correlated_period=correlated_period, retained_period=retained_period,
                               history_size=history_size)
        self.k = k
        # probationary entries, oldest first: key -> slot in flat arrays of (size, admitted at,
        # later reference or -1.0); a tuple and two floats an entry would cost ~110 bytes more
        self._fifo: OrderedDict[Hashable, int] = OrderedDict()
        self._f_size = array("q")
        self._f_first = array("d")
        self._f_again = array("d")
        self._f_free: list[int] = []
        self._fifo_bytes = 0
        # sizes of main-queue entries by their LRU-K slot: 8 bytes an entry instead of a dict's ~70
        self._slot_size = array("q")
        self._main_bytes = 0
        self._ghost: OrderedDict[Hashable, float] = OrderedDict()  # key -> when admitted
        self._now = 0.0

    def admit(self, key: Hashable, size: int, now: float) -> None:
        if now > self._now:
            self._now = now
        if key in self._fifo or key in self.main._entries:
            self.touch(key, now)
            return
        if self._ghost:
            first = self._ghost.pop(key, None)
            if first is not None:
                if self.adaptive:
                    self._adapt(size, len(self.main._retained) / (len(self._ghost) + 1))
                # back after leaving probation unread: its earlier reference counts, as LRU-K's
                # retained history would have it
                self._to_main(key, size, first, now)
                return
        if self.adaptive and key in self.main._retained:
            self._adapt(-size, len(self._ghost) / len(self.main._retained))
            self._to_main(key, size, now, -1.0)
            return
        if self._f_free:
            slot = self._f_free.pop()
            self._f_size[slot], self._f_first[slot], self._f_again[slot] = size, now, -1.0
        else:
            slot = len(self._f_size)
            self._f_size.append(size)
            self._f_first.append(now)
            self._f_again.append(-1.0)
        self._fifo[key] = slot
        self._fifo_bytes += size

    def touch(self, key: Hashable, now: float) -> None:
        if now > self._now:
            self._now = now
        if key in self.main._entries:
            self.main.touch(key, now)
            return
        slot = self._fifo.get(key)
        if slot is not None:
            self._f_again[slot] = now

    def victim(self) -> Hashable | None:
        fifo = self._fifo
        while fifo:
            if self.main._entries and self._fifo_bytes <= self.probation * (self._fifo_bytes + self._main_bytes):
                break
            key = next(iter(fifo))
            slot = fifo[key]
            size, first, again = self._f_size[slot], self._f_first[slot], self._f_again[slot]
            if again < 0:
                return key  # read once while on probation: it goes
            del fifo[key]
            self._f_free.append(slot)
            self._fifo_bytes -= size
            self._to_main(key, size, first, again)
        return self.main.victim() if self.main._entries else None

    def remove(self, key: Hashable) -> None:
        slot = self._fifo.pop(key, None)
        if slot is not None:
            self._f_free.append(slot)
            self._fifo_bytes -= self._f_size[slot]
            ghost = self._ghost
            ghost[key] = self._f_first[slot]
            while len(ghost) > max(len(self.main._entries), 1):
                ghost.popitem(last=False)
            return
        value = self.main._entries.get(key)
        if value is not None:
            self._main_bytes -= self._slot_size[value & _SLOT_MASK]
            self.main.remove(key)

    def forget(self, key: Hashable) -> None:
        self.remove(key)
        self._ghost.pop(key, None)
        self.main.forget(key)

    def boost(self, key: Hashable, weight: float) -> None:
        """``LRUKPolicy.boost`` for main-queue entries; an entry on probation has no K-distance
        yet and is left to the FIFO (a read, not a prediction, earns it the main queue)."""
        self.main.boost(key, weight)

    def _adapt(self, size: int, ratio: float) -> None:
        total = self._fifo_bytes + self._main_bytes
        if total > 0:
            step = size / total * max(1.0, ratio)
            self.probation = min(_ADAPT_MAX, max(_ADAPT_MIN, self.probation + step))

    def _to_main(self, key: Hashable, size: int, first: float, again: float = -1.0) -> None:
        self._main_bytes += size
        self.main.admit(key, size, first)
        slot = self.main._entries[key] & _SLOT_MASK
        if slot >= len(self._slot_size):
            self._slot_size.extend(itertools.repeat(0, slot + 1 - len(self._slot_size)))
        self._slot_size[slot] = size
        if again >= 0:
            # the reference it earned on probation counts too (unless within a correlated burst)
            self.main.touch(key, again)

    def __len__(self) -> int:
        return len(self._fifo) + len(self.main)

    def __contains__(self, key: object) -> bool:
        return key in self._fifo or key in self.main._entries

    @property
    def retained(self) -> int:
        return self.main.retained

    def history(self, key: Hashable) -> tuple[int, ...]:
        return self.main.history(key)


class AdmitLRUK(LRUKPolicy):
    """LRU-K whose newcomers pass an adaptive probationary queue, its size set as ARC sets its
    split (Megiddo & Modha, FAST 2003), its ghost list LRU-K's retained history itself, and
    whose main part gives frequently read entries second chances (S3-FIFO's main queue).

    - A key with no history (a stranger) enters *probation*, a FIFO. Any later reference
      (correlated or not) moves it to the *main* part, ranked by LRU-K. A key that comes back
      while LRU-K still retains its history skips probation: its past references count (the
      paper's retained information) and it goes straight to main.
    - ``victim``: the probation's oldest entry while probation holds more than its target share
      of the resident bytes (or main is empty); otherwise main's LRU-K victim.
    - The share moves on returns, each a sign that one part let a reused key go too soon: a key
      that left probation raises it, a key that left main lowers it, by the key's share of the
      resident bytes, within ``[0, max_share]``. Only returns of keys evicted within the last
      ``window`` of the resident bytes evicted from their part count: both parts are judged on
      the same margin, what a slightly larger part would have kept (ARC's lists have that
      length by construction; the retained history is much longer, and counting every return
      from it grew probation on cloudPhysics, where it does not pay). Each retained history
      carries the part it left and that part's eviction byte count then: 9 bytes a key.
    - Second chances: main counts an entry's references (correlated ones too) up to
      ``chances``; a main victim with a count left is spared instead, its count lowered by one
      and ranked as if referenced now (until its next reference ranks it by its history again).
      Where references fold into one correlated burst (a trace with coarse times, a client
      reading a chunk in many ranges) LRU-K's history cannot tell a chunk read ten times from
      one read once; the count still can.
    - The held part (``hold``, the daemon's default ``lru_k_admission: hold``): probation's
      oldest entry, due to leave, is *held* instead while probation, main and the held part
      leave probation at least 5 % of the bytes. When room is needed and probation is within
      its share, the held part gives it before main does: its oldest entry if that has waited
      (logical time since its last reference) longer than 1.25 times ``reach``, the longest
      wait of a held entry that was then read, otherwise its newest. A held entry read again
      moves to main. Without it, a cyclic read larger than the cache (training epochs; LIRS's
      loop) makes every LRU-family policy miss every read, probation being a FIFO; giving room
      newest first keeps a fixed part of the loop instead, as Belady's choice does, and once
      held entries are read a cycle later, ``reach`` is that period, so entries held longer
      (cold-start reads never read again, as on cloudPhysics) go oldest first. Measured
      (docs/policy.md): periodic .991/.954/.904/.805 byte miss at 1/5/10/20 % against 1/1/1/.835
      without it, cloudPhysics .970/.913/.839/.719 against .974/.925/.857/.773. The factor 1.25
      was chosen on those traces (1.0 misses the loop at 1-5 %, 1.5 loses at cloudPhysics 20 %).

    With a share of 0 and no second chances it makes exactly LRU-K's choices (strangers go
    first, oldest first; a returning key is admitted on its history; a test checks it). On
    cloudPhysics the share stays near 0 and it equals LRU-2; on OLTP (whose references all
    fold: the trace has one timestamp) it grows to 10-15 % and, with the second chances, beats
    S3-FIFO at every size (docs/policy.md).

    Layout: LRU-K's, plus per slot its size (8 bytes) and one state byte (on probation, or the
    main count); the FIFO is a flat array of (admission time, slot) with lazy deletion (8 bytes
    an entry, stale ones dropped as the head passes them or when they outnumber live ones); the
    held part another such array, taken from either end.
    """

    name = "lru-k-admit"

    def __init__(self, k: int = 2, *, correlated_period: float = 0.0, retained_period: float | None = 3600.0,
                 history_size: int | None = None, target: float = 0.0, max_share: float = 0.5,
                 window: float = 0.1, chances: int = 3, fresh_returns: bool = False, ghost: float = 1.0,
                 fill_main: bool = False, hold: bool = False) -> None:
        """``target``: the starting probation share of the resident bytes; ``max_share``: its
        bound (0 keeps it at 0); ``window``: see the class; ``chances``: main's second chances
        per entry (0: none, at most 100); ``fresh_returns``: a returning key with K references
        ranks as if referenced K times just now (False: by its history, as LRU-K); ``ghost``: with
        ``history_size`` None, this many times the resident entries keep their history. The last
        two trade one workload for another (docs/policy.md): fresh returns with 1.5x history
        gain .008-.02 on cloudPhysics and lose up to .34 on the mixed workload, whose returning
        keys are mostly epochs' shards that would then push out its Zipf-hot objects.
        ``fill_main``: until the first victim is asked for (the cache is not full yet) strangers
        go to main, as libCacheSim's S3-FIFO fills its main queue; it keeps a frozen part of a
        cyclic scan larger than the cache (the periodic workload: .9050 against 1.0 at 10 %),
        but on cloudPhysics the cold start's one-hit wonders then sit in main (.9505 against
        .9254 at 5 %).
        ``hold``: the *held* part (see the class)."""
        super().__init__(k, correlated_period=correlated_period, retained_period=retained_period,
                         history_size=history_size)
        if not 0 <= max_share < 1:
            raise ValueError(f"max_share must be from 0 to below 1, not {max_share!r}")
        if not 0 <= target <= max_share:
            raise ValueError(f"target must be from 0 to max_share, not {target!r}")
        if not 0 <= window <= 1:
            raise ValueError(f"window must be from 0 to 1, not {window!r}")
        if not isinstance(chances, int) or not 0 <= chances <= 100:
            raise ValueError(f"chances must be an integer from 0 to 100, not {chances!r}")
        if not 0 <= ghost <= 16:
            raise ValueError(f"ghost must be from 0 to 16, not {ghost!r}")
        self.fresh_returns = bool(fresh_returns)
        self.fill_main = bool(fill_main)
        self.ghost = float(ghost)
        self.max_share = float(max_share)
        self.share = float(target)  # probation's target, a share of the resident bytes
        self.window = float(window)
        self.chances = chances
        # LRU-K's record + bytes evicted from its part before it + which part it left
        self._packed = struct.Struct(f"<dd{k + 1}qqB")
        self._evicted = [0, 0]  # bytes evicted from main [0] / probation [1]
        self._left = [0, 0]  # retained keys that left main [0] / probation [1]
        self._size = array("q")  # slot -> bytes
        self._state = bytearray()  # slot -> _ON_PROBATION, or main's reference count
        # probationary entries as (admitted at, in logical time) << 32 | slot, oldest first; some
        # stale (an entry on probation has had no other reference, so its last one dates it)
        self._fifo = array("q")
        self._head = 0
        self.probation_count = 0
        self.probation_bytes = 0
        self.main_bytes = 0
        self._filling = True  # no victim asked for yet: the cache is not full
        self.hold = bool(hold)
        self.held_bytes = 0
        self.held_count = 0
        self._held = array("q")  # held entries as last seq << 32 | slot, oldest held first; some stale
        self._held_head = 0
        # the longest wait (logical time since its last reference) of a held entry read again;
        # None until one is
        self.reach: int | None = None

    # --- the policy interface ----------------------------------------------------------------

    def _new_slot(self, key: Hashable) -> int:
        fresh = not self._free
        slot = super()._new_slot(key)
        if fresh:
            self._size.append(0)
            self._state.append(0)
        return slot

    def admit(self, key: Hashable, size: int, now: float) -> None:
        if key in self._entries:
            self.touch(key, now)
            return
        slot = self._new_slot(key)
        self._size[slot] = size
        returning, extra = self._restore(key, slot, now)
        if extra:  # (where it was evicted from, that part's eviction count then)
            mark, left_probation = extra
            self._left[left_probation] -= 1
            if returning:
                resident = self.probation_bytes + self.main_bytes + self.held_bytes + size
                if self._evicted[left_probation] - mark <= self.window * resident:
                    step = size / resident if left_probation else -size / resident
                    self.share = min(self.max_share, max(0.0, self.share + step))
        value = self._reference(slot, now) << _SLOT_BITS | slot
        self._entries[key] = value
        if returning or (self._filling and self.fill_main):
            self._state[slot] = 0
            self.main_bytes += size
            if self.fresh_returns and value >= _FULL << _SLOT_BITS:
                # ranked as if its K-distance ended now (S3-FIFO puts a ghost hit at the back of
                # its main queue): a history from before its eviction is stale and would make it
                # the next victim
                value = (_FULL + self._clock) << _SLOT_BITS | slot
                self._entries[key] = value
            self._push(value)
        else:
            self._state[slot] = _ON_PROBATION
            self.probation_bytes += size
            self.probation_count += 1
            fifo = self._fifo
            fifo.append(self._last_seq[slot] << _SLOT_BITS | slot)
            if len(fifo) - self._head > 2 * self.probation_count + 64:
                self._compact()
        self._expire(now)

    def touch(self, key: Hashable, now: float) -> None:
        value = self._entries.get(key)
        if value is None:
            return
        slot = value & _SLOT_MASK
        last_seq = self._last_seq[slot]
        rank = self._reference(slot, now)
        new = rank << _SLOT_BITS | slot
        states = self._state
        state = states[slot]
        if state >= _HELD:  # read again: on to main (its FIFO value goes stale)
            states[slot] = 0
            size = self._size[slot]
            if state == _HELD:
                # how long a held entry may wait and still be read: a cyclic read's period
                wait = self._clock - last_seq
                if self.reach is None or wait > self.reach:
                    self.reach = wait
                self.held_bytes -= size
                self.held_count -= 1
            else:
                self.probation_bytes -= size
                self.probation_count -= 1
            self.main_bytes += size
            self._entries[key] = new
            self._push(new)
            return
        if state < self.chances:
            states[slot] = state + 1
        if new != value:
            self._entries[key] = new
            self._push(new)

    def victim(self) -> Hashable | None:
        self._filling = False
        resident = self.probation_bytes + self.main_bytes + self.held_bytes
        while self.probation_count and (self.probation_bytes > self.share * resident
                                        or (self.main_bytes <= 0 and not self.held_count)):
            oldest = self._oldest()
            if not self.hold or oldest is None:
                return oldest
            slot = self._entries[oldest] & _SLOT_MASK
            size = self._size[slot]
            if self.held_bytes + size > (1.0 - self.share - _HOLD_PROBATION) * resident:
                return oldest
            # held instead of evicted: a cyclic read larger than the cache keeps this part
            self._state[slot] = _HELD
            self.probation_bytes -= size
            self.probation_count -= 1
            self.held_bytes += size
            self.held_count += 1
            self._held.append(self._last_seq[slot] << _SLOT_BITS | slot)
            if len(self._held) - self._held_head > 2 * self.held_count + 64:
                self._held = array("q", (v for v in self._held[self._held_head:] if self._live_held(v)))
                self._held_head = 0
        if self.held_count:
            found = self._held_victim()
            if found is not None:
                return found
        found = super().victim() if self.main_bytes > 0 else None
        if self.chances:
            state, entries = self._state, self._entries
            while found is not None:
                value = entries[found]
                slot = value & _SLOT_MASK
                if not state[slot]:
                    break
                # read since it entered main or was last spared: spared, behind every entry
                # referenced so far (a tick of its own), until its next reference
                state[slot] -= 1
                self._clock += 1
                new = ((_FULL if value >= _FULL << _SLOT_BITS else 0) + self._clock) << _SLOT_BITS | slot
                entries[found] = new
                self._push(new)
                found = super().victim()
        if found is None and self.held_count:
            found = self._oldest_held()
        return found if found is not None else self._oldest()

    def remove(self, key: Hashable) -> None:
        value = self._entries.pop(key, None)
        if value is None:
            return
        slot = value & _SLOT_MASK
        size = self._size[slot]
        state = self._state[slot]
        left_probation = state >= _HELD  # a held entry left from probation's end of the cache
        if state == _HELD:
            self.held_bytes -= size
            self.held_count -= 1
        elif left_probation:
            self.probation_bytes -= size
            self.probation_count -= 1
        else:
            self.main_bytes -= size
        self._state[slot] = 0
        self._keys[slot] = None
        self._free.append(slot)
        limit = int(self.ghost * (len(self._entries) + 1)) if self.history_size is None else self.history_size
        if limit > 0:
            base = slot * self.k
            self._retained[key] = self._packed.pack(self._now, self._last_time[slot], self._last_seq[slot],
                                                    *self._hist[base:base + self.k], self._evicted[left_probation],
                                                    left_probation)
            self._left[left_probation] += 1
            while len(self._retained) > limit:
                self._drop_oldest()
        self._evicted[left_probation] += size

    def forget(self, key: Hashable) -> None:
        self.remove(key)
        past = self._retained.pop(key, None)
        if past is not None:
            self._left[past[-1]] -= 1

    def boost(self, key: Hashable, weight: float) -> None:
        """``LRUKPolicy.boost`` for main entries; one on probation has no rank to raise yet (a
        read, not a prediction, moves it on)."""
        value = self._entries.get(key)
        if value is not None and self._state[value & _SLOT_MASK] < _HELD:
            super().boost(key, weight)

    # --- inspection ------------------------------------------------------------------------------

    @property
    def target(self) -> float:
        """Probation's target in bytes."""
        return self.share * (self.probation_bytes + self.main_bytes + self.held_bytes)

    def on_probation(self, key: Hashable) -> bool:
        value = self._entries.get(key)
        return value is not None and self._state[value & _SLOT_MASK] == _ON_PROBATION

    def held(self, key: Hashable) -> bool:
        value = self._entries.get(key)
        return value is not None and self._state[value & _SLOT_MASK] == _HELD

    def left_probation(self, key: Hashable) -> bool | None:
        """For a retained key: whether it left from probation (None: not retained)."""
        past = self._retained.get(key)
        return None if past is None else bool(past[-1])

    def history(self, key: Hashable) -> tuple[int, ...]:
        if key in self._entries:
            return super().history(key)
        past = self._retained.get(key)
        return tuple(self._packed.unpack(past)[3:3 + self.k]) if past is not None else ()

    def order(self) -> list[Hashable]:
        """Resident keys: probation oldest first, then the held part oldest first, then main by
        LRU-K rank (ignoring the shares, second chances and the correlated-period exemption)."""
        probation = [self._keys[v & _SLOT_MASK] for v in self._fifo[self._head:] if self._live(v)]
        held = [self._keys[v & _SLOT_MASK] for v in self._held[self._held_head:] if self._live_held(v)]
        main = sorted(v for v in self._entries.values() if self._state[v & _SLOT_MASK] < _HELD)
        return [*probation, *held, *(self._keys[v & _SLOT_MASK] for v in main)]

    # --- internals -------------------------------------------------------------------------------

    def _live(self, item: int) -> bool:
        slot = item & _SLOT_MASK
        return (self._keys[slot] is not None and self._state[slot] == _ON_PROBATION
                and self._last_seq[slot] == item >> _SLOT_BITS)

    def _oldest(self) -> Hashable | None:
        """The probation's oldest entry; stale values at the head are dropped."""
        self._fifo, self._head, value = _first_live(self._fifo, self._head, self._live)
        return None if value is None else self._keys[value & _SLOT_MASK]

    def _live_held(self, item: int) -> bool:
        slot = item & _SLOT_MASK
        return (self._keys[slot] is not None and self._state[slot] == _HELD
                and self._last_seq[slot] == item >> _SLOT_BITS)

    def _held_victim(self) -> Hashable | None:
        """The held part gives room before main does: its oldest entry if that has waited
        longer than ``_HOLD_REACH`` times ``reach``, otherwise (and while no held entry was
        read again) its newest, so that a cyclic read larger than the cache keeps a fixed part."""
        oldest = self._oldest_held()
        if oldest is None:
            return None
        if self.reach is not None and \
                self._clock - self._last_seq[self._entries[oldest] & _SLOT_MASK] > _HOLD_REACH * self.reach:
            return oldest
        held = self._held
        while not self._live_held(held[-1]):  # the head is live, so this stops
            held.pop()
        return self._keys[held[-1] & _SLOT_MASK]

    def _oldest_held(self) -> Hashable | None:
        """The held part's oldest entry; stale values at the head are dropped."""
        self._held, self._held_head, value = _first_live(self._held, self._held_head, self._live_held)
        return None if value is None else self._keys[value & _SLOT_MASK]

    def _compact(self) -> None:
        self._fifo = array("q", (v for v in self._fifo[self._head:] if self._live(v)))
        self._head = 0

    def _drop_oldest(self) -> None:
        _, past = self._retained.popitem(last=False)
        self._left[past[-1]] -= 1

    def _push(self, value: int) -> None:
        heap = self._heap
        heapq.heappush(heap, value)
        if len(heap) > 2 * (len(self._entries) - self.probation_count - self.held_count) + 64:
            state = self._state
            heap[:] = [v for v in self._entries.values() if state[v & _SLOT_MASK] < _HELD]
            heapq.heapify(heap)


def _first_live(queue: array, head: int, live: Callable[[int], bool]) -> tuple[array, int, int | None]:
    """The first value at or after ``head`` of an array used as a queue that ``live`` accepts:
    (the queue, its new head, the value or None when none is). Stale values before it are
    skipped, and cut off once they are over half of a long queue."""
    while head < len(queue):
        if live(queue[head]):
            break
        head += 1
    else:
        return array("q"), 0, None
    if head > 4096 and head > len(queue) // 2:
        del queue[:head]
        head = 0
    return queue, head, queue[head]
