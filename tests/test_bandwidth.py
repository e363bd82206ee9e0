"""The adaptive token bucket (sidecar/bandwidth.py) on a fake clock: bounds, shares, AIMD, fairness."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.bandwidth import TokenBucket

MB = 1_000_000


class FakeTime:
    """Virtual time: ``sleep`` parks the caller until ``run_until`` moves the clock past its wake-up."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, d: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(d, 0.0), next(self._seq), fut))
        await fut

    @staticmethod
    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def run_until(self, t_end: float) -> None:
        while True:
            await self.settle()
            if not self._timers or self._timers[0][0] > t_end:
                self.now = max(self.now, t_end)
                await self.settle()
                return
            t, _, fut = heapq.heappop(self._timers)
            self.now = max(self.now, t)
            if not fut.done():
                fut.set_result(None)


def bucket(ft: FakeTime, cap: float = 10 * MB, **kw) -> TokenBucket:
    return TokenBucket(cap, clock=ft.clock, sleep=ft.sleep, **kw)


def run(coro):
    return asyncio.run(coro)


# --- bounds: a property over random sequences -------------------------------------------------

OPS = st.lists(st.one_of(
    st.tuples(st.just("observe"), st.floats(0.001, 2.0), st.booleans(), st.booleans()),
    st.tuples(st.just("observe_ok"), st.floats(0.01, 0.05)),
    st.tuples(st.just("demand"), st.integers(1, 30 * MB)),
    st.tuples(st.just("acquire"), st.integers(1, 4 * MB)),
    st.tuples(st.just("advance"), st.floats(0.0, 5.0)),
), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, cap=st.sampled_from([1 * MB, 10 * MB, 100 * MB]), floor_share=st.floats(0.01, 1.0))
def test_rate_stays_within_floor_and_cap_and_background_within_the_cap(ops, cap, floor_share):
    async def scenario() -> None:
        ft = FakeTime()
        b = bucket(ft, cap, floor=cap * floor_share)
        start_tokens = b.tokens
        background = demand = 0
        for op in ops:
            if op[0] == "observe":
                b.observe(op[1], error=op[2], throttled=op[3])
            elif op[0] == "observe_ok":
                b.observe(op[1])
            elif op[0] == "demand":
                b.spend_demand(op[1])
                demand += op[1]
            elif op[0] == "acquire":
                task = asyncio.ensure_future(b.acquire(op[1]))
                while not task.done():  # the fake clock moves only as far as the waiter needs
                    await ft.run_until(ft._timers[0][0] if ft._timers else ft.now)
                await task
                background += op[1]
            else:
                await ft.run_until(ft.now + op[1])
            assert b.floor <= b.rate <= cap
            assert math.isclose(b.floor, cap * floor_share) or b.floor == cap
            capacity = b.burst * b.rate
            # Debt: at most one burst from demand, or one request larger than a burst.
            debt = max(b.burst * cap, max((o[1] for o in ops if o[0] == "acquire"), default=0))
            assert -debt - 1e-6 <= b.tokens <= capacity + 1e-6
            # Everything that went through (less forgiven demand) was covered by the refill.
            assert background + demand - b.forgiven <= start_tokens + cap * ft.now + debt + 1e-6 * cap
    run(scenario())


# --- shares over a long window ----------------------------------------------------------------

@pytest.mark.parametrize("demand_rate", [0.0, 0.3, 0.7])
def test_background_gets_what_demand_leaves_of_the_cap(demand_rate):
    cap, window = 10 * MB, 200.0

    async def scenario() -> tuple[int, int]:
        ft = FakeTime()
        b = bucket(ft, cap)
        got = {"bg": 0, "demand": 0}
        rnd = random.Random(1)

        async def background() -> None:
            while True:
                await b.acquire(256 * 1024)
                got["bg"] += 256 * 1024

        async def demand() -> None:
            while demand_rate:
                n = rnd.randint(64 * 1024, MB)  # random reads, mean rate demand_rate * cap
                await ft.sleep(rnd.expovariate(demand_rate * cap / n))
                b.spend_demand(n)
                got["demand"] += n

        tasks = [asyncio.ensure_future(background()), asyncio.ensure_future(background()),
                 asyncio.ensure_future(demand())]
        await ft.run_until(window)
        for t in tasks:
            t.cancel()
        await ft.settle()
        return got["bg"], got["demand"], b.forgiven

    bg, dem, forgiven = run(scenario())
    left = cap * window - dem
    assert abs(bg - left) <= 0.05 * left, (bg, left, dem)
    assert forgiven <= 0.01 * dem, "only a rare demand burst beyond one burst of debt goes uncharged"
    # A full burst at the start and at most one burst of debt at the end.
    assert bg + dem - forgiven <= cap * window + 2 * cap * 1.0 + 256 * 1024, "never more than the cap"


def test_demand_never_waits_and_its_debt_delays_background():
    async def scenario() -> None:
        ft = FakeTime()
        b = bucket(ft, 10 * MB)
        assert not asyncio.iscoroutinefunction(b.spend_demand)
        b.spend_demand(25 * MB)  # a full burst and more than a burst of debt: taken at once
        assert b.tokens == pytest.approx(-10 * MB) and b.forgiven == 25 * MB - 20 * MB
        task = asyncio.ensure_future(b.acquire(MB))
        await ft.run_until(1.0)
        assert not task.done(), "background waits out the debt"
        await ft.run_until(1.05)
        await ft.run_until(1.15)
        assert task.done()  # (10 MB of debt + 1 MB) / 10 MB/s = 1.1 s
    run(scenario())


# --- fairness and cancellation ----------------------------------------------------------------

def test_acquire_is_first_come_first_served():
    async def scenario() -> list[str]:
        ft = FakeTime()
        b = bucket(ft, 10 * MB)
        b.spend_demand(int(b.tokens))  # empty
        order: list[str] = []

        async def take(name: str, n: int) -> None:
            await b.acquire(n)
            order.append(name)

        big = asyncio.ensure_future(take("big", 5 * MB))
        await ft.settle()
        small = asyncio.ensure_future(take("small", 1000))  # would fit long before big does
        await ft.run_until(0.3)
        assert order == []
        await ft.run_until(1.0)
        await asyncio.gather(big, small)
        return order

    assert run(scenario()) == ["big", "small"]


def test_a_cancelled_acquire_takes_nothing():
    async def scenario() -> None:
        ft = FakeTime()
        b = bucket(ft, 10 * MB)
        b.spend_demand(int(b.tokens))
        waiting = asyncio.ensure_future(b.acquire(8 * MB))
        behind = asyncio.ensure_future(b.acquire(2 * MB))
        await ft.run_until(0.5)
        assert b.tokens == pytest.approx(5 * MB)
        waiting.cancel()
        await ft.settle()
        assert waiting.cancelled()
        await ft.run_until(0.5)
        assert behind.done(), "the next waiter is served from what the cancelled one left"
        assert b.tokens == pytest.approx(3 * MB)
        # A waiter cancelled after it reached the head of the queue leaves no hole either.
        b.spend_demand(int(b.tokens))
        first = asyncio.ensure_future(b.acquire(MB))
        second = asyncio.ensure_future(b.acquire(MB))
        await ft.settle()
        first.cancel()
        await ft.run_until(0.62)
        assert second.done() and b.tokens == pytest.approx(0.2 * MB, abs=1)
    run(scenario())


# --- AIMD -------------------------------------------------------------------------------------

def test_additive_increase_while_healthy_multiplicative_decrease_on_error_and_throttle():
    async def scenario() -> None:
        ft = FakeTime()
        cap = 10 * MB
        b = bucket(ft, cap, floor=MB)
        assert b.rate == cap and b.increase == cap / 10
        b.observe(0.02)
        b.observe(error=True)
        assert b.rate == cap / 2
        await ft.run_until(0.5)
        b.observe(error=True)  # within the cooldown: one congestion event, one cut
        assert b.rate == cap / 2
        b.observe(0.02)
        await ft.run_until(2.5)
        assert b.rate == pytest.approx(cap / 2 + 2.0 * cap / 10), "grows linearly with healthy time"
        b.observe(throttled=True)
        assert b.rate == pytest.approx((cap / 2 + 2.0 * cap / 10) / 2)
        for i in range(10):
            await ft.run_until(3.5 + 1.1 * i)
            b.observe(throttled=True)
        assert b.rate == MB, "never below the floor"
        b.observe(0.02)
        await ft.run_until(ft.now + 60)
        assert b.rate == cap, "never above the cap"
    run(scenario())


def test_latency_inflation_cuts_the_rate_and_a_lasting_change_becomes_the_baseline():
    async def scenario() -> None:
        ft = FakeTime()
        cap = 10 * MB
        b = bucket(ft, cap, tolerance=0.5)
        for _ in range(20):
            b.observe(0.020)
        assert b.rate == cap and b.baseline == pytest.approx(0.020)
        b.observe(0.028)  # EMA 21.6 ms: within 1.5x
        assert b.healthy and b.rate == cap
        samples = 0
        while b.healthy:
            b.observe(0.100)
            samples += 1
        assert samples <= 3, "the EMA notices a 5x inflation within a few answers"
        assert b.rate == cap / 2 and b.ema > 1.5 * b.baseline
        await ft.run_until(ft.now + 0.5)
        b.observe(0.100)
        assert b.rate == cap / 2, "still inflated: no growth, and no second cut within the cooldown"
        await ft.run_until(ft.now + 0.6)
        b.observe(0.100)
        assert b.rate == cap / 4
        # The upstream is slower for good: the baseline ages up and growth resumes.
        t = ft.now
        while ft.now < t + 2000 and not b.healthy:
            await ft.run_until(ft.now + 5)
            b.observe(0.100)
        assert b.healthy and b.baseline > 0.05
    run(scenario())


def test_without_a_cap_background_is_unlimited_until_the_upstream_pushes_back():
    async def scenario() -> None:
        ft = FakeTime()
        b = bucket(ft, 0, floor=MB)
        assert not b.limited and b.rate == math.inf
        await b.acquire(10**12)  # no wait at all
        b.observe(0.02)
        for _ in range(10):
            b.observe(0.5)
        assert not b.limited, "latency alone does not engage a limit without a cap"
        for _ in range(40):
            b.observe(0.02)
        await ft.run_until(2.0)
        for _ in range(100):
            await ft.run_until(ft.now + 0.02)
            b.spend_demand(MB // 2)  # 25 MB/s of demand
        b.observe(0.02)
        b.observe(throttled=True)
        assert b.limited and b.rate == pytest.approx(0.5 * 25 * MB, rel=0.05)
        b.spend_demand(100 * MB)  # demand still never waits
        task = asyncio.ensure_future(b.acquire(MB))
        await ft.run_until(ft.now + 0.5)
        assert not task.done(), "background now waits on the cut rate"
        b.observe(0.02)
        await ft.run_until(ft.now + 30)
        assert task.done()
        assert not b.limited, "grown past twice the throughput that was cut: unlimited again"
    run(scenario())


def test_configure_moves_the_bounds():
    ft = FakeTime()
    b = bucket(ft, 10 * MB)
    b.configure(4 * MB)
    assert b.rate == 4 * MB and b.floor == pytest.approx(0.2 * MB) and b.tokens <= 4 * MB
    b.configure(0)
    assert not b.limited
    b.configure(8 * MB, floor=20 * MB)
    assert b.rate == 8 * MB and b.floor == 8 * MB, "a floor above the cap is the cap"


def test_inflation_within_the_slack_is_noise_not_congestion():
    ft = FakeTime()
    b = bucket(ft, 10 * MB, tolerance=0.5, latency_slack=0.005)
    for _ in range(20):
        b.observe(0.001)
    for _ in range(20):
        b.observe(0.0045)  # 4.5x a 1 ms baseline, but 3.5 ms: a busy event loop, not a queue
    assert b.healthy and b.rate == 10 * MB
    for _ in range(5):
        b.observe(0.050)
    assert not b.healthy and b.rate == 5 * MB


# --- demand in flight goes first --------------------------------------------------------------

async def _background_beside_demand(ft, b, piece: int, every_10ms: int) -> tuple[dict, list]:
    """Three background fetchers taking ``piece`` at a time while demand spends ``every_10ms``
    bytes every 10 ms, steadily in flight, for 1 s of fake time: the bytes each got, and the
    tasks (the fetchers still running)."""
    got = {"bg": 0, "demand": 0}

    async def background() -> None:
        while True:
            await b.acquire(piece)
            got["bg"] += piece

    async def demand() -> None:
        while ft.now < 1.0 - 1e-9:
            b.spend_demand(every_10ms)
            got["demand"] += every_10ms
            await ft.sleep(0.01)

    tasks = [asyncio.ensure_future(background()) for _ in range(3)] + [asyncio.ensure_future(demand())]
    await ft.run_until(1.0)
    return got, tasks


@pytest.mark.parametrize("hold", [0.05, 0.0])
def test_demand_in_flight_holds_background_to_the_floor_and_the_share_comes_back_after(hold):
    cap, floor, piece = 10 * MB, 1 * MB, 256 * 1024

    async def scenario() -> tuple[int, int, int]:
        ft = FakeTime()
        b = bucket(ft, cap, floor=floor, demand_hold=hold)
        b.spend_demand(int(b.tokens))  # empty: what background gets from here on is refill only
        got, tasks = await _background_beside_demand(ft, b, piece, 64_000)  # demand at 6.4 MB/s
        during = got["bg"]
        assert b.demand_in_flight == (hold > 0)
        await ft.run_until(1.5)
        for t in tasks:
            t.cancel()
        await ft.settle()
        return during, got["bg"], got["demand"]

    during, total, dem = run(scenario())
    left = cap * 1.5 - dem  # what demand left of the cap over the whole window
    if hold:
        # Held to the floor while demand is in flight, but never starved below it.
        assert floor * 1.0 - 2 * piece <= during <= floor * 1.0 + 2 * piece
    else:
        assert during >= (cap - 6.4 * MB) * 1.0 - 2 * piece, "no hold: background takes what is left at once"
    # Either way the tokens not taken during the hold are taken afterwards: the share is kept.
    assert left - 2 * piece <= total <= left + piece


def test_demand_leaving_most_of_the_rate_does_not_hold_background():
    """Demand at a quarter of the rate (one connection of a store that serves each connection at
    its own rate, under a cap several times that): after the first piece's hold, background
    takes what demand leaves at once, and the whole stays within the rate."""
    cap, floor, piece = 10 * MB, 1 * MB, 256 * 1024

    async def scenario() -> tuple[int, int, bool]:
        ft = FakeTime()
        b = bucket(ft, cap, floor=floor, demand_hold=0.05)
        b.spend_demand(int(b.tokens))  # empty: what background gets from here on is refill only
        got, tasks = await _background_beside_demand(ft, b, piece, 25_000)  # demand at 2.5 MB/s
        held = b.demand_in_flight
        for t in tasks:
            t.cancel()
        await ft.settle()
        return got["bg"], got["demand"], held

    during, dem, held = run(scenario())
    assert not held
    # All the rate demand left but the first piece's hold (50 ms at the floor) and a piece of slack.
    assert during >= (cap - 2.5 * MB) * 0.95 - 2 * piece, during
    assert during + dem <= cap * 1.0 + piece, "within the rate"


def test_a_held_waiter_wakes_when_demand_pauses():
    async def scenario() -> None:
        ft = FakeTime()
        b = bucket(ft, 10 * MB, floor=1000, demand_hold=0.05)  # a floor too low to matter here
        b.spend_demand(1000)  # tokens to spare, but demand is in flight
        assert b.demand_in_flight
        task = asyncio.ensure_future(b.acquire(256 * 1024))
        await ft.run_until(0.049)
        assert not task.done()
        await ft.run_until(0.051)
        assert task.done() and not b.demand_in_flight
        # Taken at the end of the hold, from a full burst (plus 1 ms of refill since).
        assert b.tokens == pytest.approx(10 * MB - 256 * 1024 + 10 * MB * 0.001, abs=1000)
    run(scenario())
