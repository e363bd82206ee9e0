"""Adaptive byte token bucket: background fetches wait for upstream bandwidth, demand spends it.

Tokens are bytes. They refill at ``rate`` bytes per second, up to ``burst`` seconds of it.
Background fetches (prefetch, readahead, warm) ``await acquire(n)`` before each piece they
read; demand reads never wait but ``spend_demand(n)`` takes their bytes out of the same
tokens, which may go negative: that debt is what background must wait out, so background only
gets what demand leaves of the rate.

The rate follows the upstream (AIMD). ``observe()`` feeds upstream latencies (an EMA is kept
against a baseline: the lowest EMA seen, slowly aging up), errors and throttling. While the
EMA stays within ``(1 + tolerance)`` times the baseline and nothing failed, the rate grows by
``increase`` bytes/s every second up to the cap; on latency inflation, an error or a SlowDown
it is multiplied by ``decrease`` (at most once per ``cooldown``), never below the floor.
Inflation smaller than ``latency_slack`` seconds is ignored: it is scheduling noise, not a queue.

Demand in flight goes first. Where background and demand share one link (a pod's NIC, a narrow
path), a background piece read while demand bytes are arriving delays them even when the
tokens allow it. For ``demand_hold`` seconds after demand bytes, background is therefore held to
the floor rate (its own small allowance, ``hold_burst`` seconds of the floor); the tokens it did
not take meanwhile stay in the bucket (up to one burst) and are taken once demand pauses, so
over any window longer than the gaps between demand reads background still gets what demand
leaves of the rate, and never less than the floor while demand lasts.

The hold is for demand that fills the link: it is renewed only while demand bytes arrive at
``hold_share`` (half) of the rate or more, measured over the current run of demand bytes (from
its first piece; a pause of ``demand_hold`` ends a run). Slower demand leaves most of the rate
unused, and background taking the rest keeps the whole within the rate, which a link carrying
the rate carries without a queue: a store that serves each connection at its own rate (S3:
roughly 50–100 MB/s a connection) under a cap several times that. A model load's next files
then come in alongside the one being read instead of at the floor. The first piece of a run
always holds (its rate is not known yet).

With ``cap == 0`` (no fixed cap) background is not limited at all until the upstream fails
or throttles (latency alone is too weak a sign without a known budget); then the rate is set
to ``decrease`` times the throughput measured through the bucket and adapts from there, and
the bucket goes back to unlimited once the rate has grown past twice the throughput that was
cut. Demand never waits in either mode.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable

MAX_SLEEP = 0.25  # a waiter re-checks at least this often: the rate may have grown meanwhile
WINDOW = 1.0  # seconds over which the throughput through the bucket is measured


class _Waiter:
    __slots__ = ("turn",)

    def __init__(self, turn: asyncio.Future) -> None:
        self.turn = turn  # resolved when this waiter reaches the head of the queue


class TokenBucket:
    """Byte token bucket whose refill rate adapts to the upstream (AIMD on latency EMA)."""

    def __init__(self, cap: float, *, floor: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, tolerance: float = 0.5,
                 burst: float = 1.0, debt: float | None = None, increase: float | None = None, decrease: float = 0.5,
                 ema_alpha: float = 0.2, baseline_aging: float = 300.0, cooldown: float = 1.0,
                 latency_slack: float = 0.005, demand_hold: float = 0.05, hold_burst: float = 0.05,
                 hold_share: float = 0.5,
                 on_decrease: Callable[[str], None] | None = None) -> None:
        self.clock = clock
        self.sleep = sleep
        self.tolerance = tolerance
        self.burst = burst
        # Seconds of the rate demand may owe (background waits it out); one burst unless given.
        # The daemon keeps the burst small (background never spends a saved-up second at once,
        # so any second holds about the rate) and the debt at one second.
        self.debt = burst if debt is None else debt
        self.decrease = decrease
        self.ema_alpha = ema_alpha
        self.baseline_aging = baseline_aging  # seconds for the baseline to close ~63 % of a gap upwards
        self.cooldown = cooldown
        self.latency_slack = latency_slack  # seconds of inflation too small to mean congestion (scheduling noise)
        self.on_decrease = on_decrease
        self.demand_hold = demand_hold  # seconds after a demand byte during which background gets only the floor
        self.hold_burst = hold_burst  # seconds of the floor that background may take at once while held
        self.hold_share = hold_share  # demand arriving at this share of the rate or more holds background
        self._demand_until = -math.inf  # demand counts as in flight (background held) until then
        # The run of demand bytes arriving now (no pause of demand_hold): its start, its last
        # piece, and its bytes after the first piece (the first piece's own time is not known).
        self._run_start = self._run_last = -math.inf
        self._run_bytes = 0
        self._held = 0.0  # background's allowance while demand is in flight, bytes (refills at the floor)
        self._increase = increase
        self.ema: float | None = None  # latency EMA of the series observed last, seconds
        self.baseline: float | None = None
        self._series: dict[str, list[float]] = {}  # kind -> [ema, baseline, last sample time]
        self.healthy = True  # the last verdict: the rate grows while this holds
        self.forgiven = 0  # demand bytes beyond the debt bound, never charged to background
        self._now = clock()
        self._last_decrease = -math.inf
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._win_start, self._win_bytes = self._now, 0
        self._prev_start, self._prev_bytes = self._now, 0
        self._rate = 0.0
        self._tokens = 0.0
        self.configure(cap, floor=floor)
        self._tokens = self._capacity()

    # --- settings ----------------------------------------------------------------------------

    def configure(self, cap: float, *, floor: float | None = None, tolerance: float | None = None) -> None:
        """Change the cap (0: none), floor and latency tolerance; the rate is kept within the new bounds."""
        first = not hasattr(self, "cap")
        if not first:
            self._refill()
        changed = first or self.cap != float(cap)
        self.cap = float(cap)
        if floor is None:
            floor = self.cap * 0.05 if self.cap > 0 else 1024 * 1024
        floor = max(float(floor), 1.0)
        self.floor = min(floor, self.cap) if self.cap > 0 else floor
        if tolerance is not None:
            self.tolerance = tolerance
        if self.cap > 0:
            self._ceiling = self.cap
            self._rate = self.cap if self._rate in (0.0, math.inf) else min(max(self._rate, self.floor), self.cap)
        elif changed:
            self._ceiling = math.inf
            self._rate = math.inf
        elif self.limited:  # backing off without a cap: the new floor applies
            self._rate = max(self._rate, self.floor)
        self._tokens = min(self._tokens, self._capacity())
        self._held = min(self._held, self._held_capacity())
        self._wake_head()

    @property
    def increase(self) -> float:
        """Additive step, bytes/s gained per second of health: by default a tenth of the ceiling
        (the cap, or without one the throughput that was last cut)."""
        if self._increase is not None:
            return self._increase
        return max(self._ceiling if self.cap > 0 else self._ceiling / 2, self.floor) / 10

    # --- state -------------------------------------------------------------------------------

    @property
    def limited(self) -> bool:
        self._refill()
        return self._rate != math.inf

    @property
    def rate(self) -> float:
        """Current refill rate, bytes/s (``inf``: not limited)."""
        self._refill()
        return self._rate

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def _capacity(self) -> float:
        return self.burst * self._rate

    def _held_capacity(self) -> float:
        return self.hold_burst * self.floor

    @property
    def demand_in_flight(self) -> bool:
        """Whether background is held: demand bytes arriving at ``hold_share`` of the rate or more
        came within the last ``demand_hold`` seconds."""
        self._refill()
        return self._now < self._demand_until

    def _refill(self) -> None:
        now = self.clock()
        dt = now - self._now
        if dt <= 0:
            return
        self._now = now
        self._held = min(self._held + self.floor * dt, self._held_capacity())
        if self._rate == math.inf:
            return
        r0 = self._rate
        if self.healthy and r0 < self._ceiling:
            # The rate grows linearly while healthy: tokens are its exact integral over dt.
            inc = self.increase
            t_full = (self._ceiling - r0) / inc
            if t_full >= dt:
                self._rate = r0 + inc * dt
                area = (r0 + self._rate) / 2 * dt
            else:
                self._rate = self._ceiling
                area = (r0 + self._ceiling) / 2 * t_full + self._ceiling * (dt - t_full)
            if self.cap <= 0 and self._rate >= self._ceiling:
                # No cap, and grown past twice what congested: no limit again.
                self._rate = self._ceiling = math.inf
                self._tokens = math.inf
                self._wake_head()
                return
        else:
            area = r0 * dt
        self._tokens = min(self._tokens + area, self._capacity())

    def _count(self, n: int) -> None:
        now = self._now
        if now - self._win_start >= WINDOW:
            self._prev_start, self._prev_bytes = self._win_start, self._win_bytes
            self._win_start, self._win_bytes = now, 0
        self._win_bytes += n

    def throughput(self) -> float:
        """Bytes/s through the bucket (demand and background) over the last one or two windows."""
        span = self._now - self._prev_start
        return (self._prev_bytes + self._win_bytes) / span if span > 0 else 0.0

    # --- spending ----------------------------------------------------------------------------

    def spend_demand(self, n: int) -> None:
        """Demand bytes: taken at once, never waited for. Debt is bounded by ``debt`` seconds of the rate. While
        limited, background is held to the floor for ``demand_hold`` seconds after them, if demand
        is arriving at ``hold_share`` of the rate or more."""
        if n <= 0:
            return
        self._refill()
        self._count(n)
        if not self.limited:
            return
        now = self._now
        if now - self._run_last >= self.demand_hold:
            self._run_start, self._run_bytes = now, 0  # demand had paused: a new run
        else:
            self._run_bytes += n
        self._run_last = now
        span = now - self._run_start
        if span <= 0 or self._run_bytes >= self.hold_share * self._rate * span:
            self._demand_until = now + self.demand_hold
        t = self._tokens - n
        low = -self.debt * self._rate
        if t < low:
            self.forgiven += int(low - t)
            t = low
        self._tokens = t

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` background bytes may be fetched, first come first served. A request
        larger than one burst waits for a full burst and leaves the rest as debt. Cancelled
        while waiting, it takes nothing."""
        if n <= 0:
            return
        self._refill()
        if not self._waiters and self._take(n):
            return
        w = _Waiter(asyncio.get_running_loop().create_future())
        self._waiters.append(w)
        if len(self._waiters) == 1:
            w.turn.set_result(None)
        try:
            await w.turn
            while True:
                self._refill()
                if self._take(n):
                    return
                await self.sleep(min(MAX_SLEEP, max(self._wait_for(n), 0.001)))
        finally:
            was_head = bool(self._waiters) and self._waiters[0] is w
            try:
                self._waiters.remove(w)
            except ValueError:
                pass
            if was_head:
                self._wake_head()

    def _take(self, n: int) -> bool:
        if not self.limited:
            self._count(n)
            return True
        if self._tokens < min(n, self._capacity()):
            return False
        held = self._now < self._demand_until
        if held:
            if self._held < min(n, self._held_capacity()):
                return False
            self._held -= n  # (may go negative: a piece larger than the allowance is paid off at the floor)
        self._tokens -= n
        self._count(n)
        return True

    def _wait_for(self, n: int) -> float:
        """Seconds until ``_take(n)`` may succeed, at the current rate and floor."""
        wait = (min(n, self._capacity()) - self._tokens) / max(self._rate, 1e-9)
        if self._now < self._demand_until:
            # Held: the end of the hold, or the floor's allowance, whichever comes first.
            allowance = (min(n, self._held_capacity()) - self._held) / max(self.floor, 1e-9)
            wait = max(wait, min(self._demand_until - self._now, allowance))
        return wait

    def _wake_head(self) -> None:
        if self._waiters and not self._waiters[0].turn.done():
            self._waiters[0].turn.set_result(None)

    # --- adapting ----------------------------------------------------------------------------

    def observe(self, latency: float | None = None, *, error: bool = False, throttled: bool = False,
                kind: str = "") -> None:
        """One upstream answer: its time to response headers, or that it failed or was throttled.
        Latencies of different ``kind`` (say HEAD and GET) keep their own EMA and baseline."""
        self._refill()
        now = self._now
        reason = "throttled" if throttled else "error" if error else None
        if latency is not None and latency >= 0:
            series = self._series.get(kind)
            if series is None:
                series = self._series[kind] = [latency, latency, now]
            ema, baseline, at = series
            ema += self.ema_alpha * (latency - ema)
            if ema < baseline:
                baseline = ema
            else:  # the baseline creeps up, so a lasting change of the upstream becomes normal
                baseline += (ema - baseline) * (1.0 - math.exp(-(now - at) / self.baseline_aging))
            series[:] = ema, baseline, now
            self.ema, self.baseline = ema, baseline
            # Without a cap and not yet limited, latency alone does not engage the limit: with no
            # known budget a slower answer is too weak a sign to cut from unlimited.
            if reason is None and ema > (1.0 + self.tolerance) * baseline + self.latency_slack \
                    and self._rate != math.inf:
                reason = "latency"
        self.healthy = reason is None
        if reason is not None:
            self._back_off(reason, now)

    def _back_off(self, reason: str, now: float) -> None:
        if now - self._last_decrease < self.cooldown:
            return
        self._last_decrease = now
        if not self.limited:
            # No cap: cut from what actually flows; grow back to unlimited past twice that.
            measured = self.throughput()
            self._ceiling = 2 * max(measured, self.floor)
            self._rate = max(self.floor, self.decrease * measured)
            self._tokens = 0.0
        else:
            self._rate = max(self.floor, self._rate * self.decrease)
            self._tokens = min(self._tokens, self._capacity())
        if self.on_decrease is not None:
            self.on_decrease(reason)
