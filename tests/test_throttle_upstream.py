"""The local upstream's throttle (``file:///dir?latency=…&bandwidth=…&connection_bandwidth=…``):
one byte rate shared by every request, a rate of each request's own, or both. Pacing is checked
on a virtual clock (the release times it books), not by timing real transfers."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.config import local_upstream_options
from sidecar.upstream import throttle

MiB = 1024 * 1024
PIECE = 256 * 1024


class _Body:
    """An upstream body of ``n`` bytes, read in pieces."""

    def __init__(self, n: int) -> None:
        self.left = n

    async def read(self, n: int) -> bytes:
        k = min(n, self.left)
        self.left -= k
        return b"x" * k


def _finish_times(monkeypatch, streams: int, nbytes: int, **rates: float) -> list[float]:
    """When each of ``streams`` bodies started together has passed its last byte: the clock
    stands still at 0, so each piece's sleep is the release time the throttle booked for it."""
    monkeypatch.setattr(throttle.time, "monotonic", lambda: 0.0)
    up = throttle.ThrottledUpstream(_Inner(), **rates)
    done: list[float] = []

    async def one() -> None:
        last = [0.0]

        async def booked(d: float) -> None:
            last[0] = max(last[0], d)

        monkeypatch.setattr(throttle.asyncio, "sleep", booked)
        body = throttle._PacedBody(_Body(nbytes), up.pacer, up.connection_bandwidth)
        while await body.read(PIECE):
            pass
        done.append(last[0])

    async def scenario() -> None:
        for _ in range(streams):
            await one()

    asyncio.run(scenario())
    return done


class _Inner:
    name = "inner"


def test_a_shared_rate_is_split_between_requests(monkeypatch):
    done = _finish_times(monkeypatch, 4, 4 * MiB, bandwidth=64 * MiB)
    # 16 MiB through one 64 MiB/s link: the last request ends after 0.25 s, not 1/16 s.
    assert max(done) == pytest.approx(16 / 64)


def test_a_rate_per_connection_scales_with_requests(monkeypatch):
    done = _finish_times(monkeypatch, 4, 4 * MiB, connection_bandwidth=64 * MiB)
    # Each request at its own 64 MiB/s: four side by side end together, as one alone would.
    assert max(done) == pytest.approx(4 / 64)


def test_both_limits_apply(monkeypatch):
    done = _finish_times(monkeypatch, 4, 4 * MiB, bandwidth=128 * MiB, connection_bandwidth=64 * MiB)
    assert max(done) == pytest.approx(16 / 128)  # the link is the narrower here
    done = _finish_times(monkeypatch, 1, 4 * MiB, bandwidth=128 * MiB, connection_bandwidth=64 * MiB)
    assert max(done) == pytest.approx(4 / 64)  # and the connection for one request alone


def test_a_connection_makes_up_for_time_its_reader_spent_elsewhere(monkeypatch):
    """Bytes keep arriving into a connection's receive buffer while its reader is busy: after a
    pause, up to the buffer's worth is there at once; a shared link banks nothing."""
    now = [0.0]
    monkeypatch.setattr(throttle.time, "monotonic", lambda: now[0])
    own = throttle._Pacer(64 * MiB, throttle.RECEIVE_BUFFER)
    shared = throttle._Pacer(64 * MiB)
    now[0] = 1.0  # the reader comes back a second after the connection opened
    assert own.reserve(PIECE, now[0]) < now[0], "a buffered piece is there already"
    for _ in range(3):  # the rest of the 1 MiB buffer: 4 pieces in all
        own.reserve(PIECE, now[0])
    assert own.reserve(PIECE, now[0]) > now[0], "no more than the buffer"
    assert shared.reserve(PIECE, now[0]) == pytest.approx(now[0] + PIECE / (64 * MiB))


def test_the_options_parse_and_unknown_ones_are_refused():
    assert local_upstream_options("latency=30ms&connection_bandwidth=64MiB") == \
        {"latency": 0.03, "connection_bandwidth": 64.0 * MiB}
    assert local_upstream_options("bandwidth=1GiB") == {"bandwidth": 1024.0 * MiB}
    with pytest.raises(ValueError):
        local_upstream_options("per_connection=64MiB")
