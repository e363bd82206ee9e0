"""An upstream wrapper that bounds how long a client waits on a failing upstream.

* Idempotent reads (HEAD, the opening of a ranged GET) are retried with jittered exponential
  backoff, all within one deadline (``answer_within``, 2 s by default): when the upstream is
  unreachable, a client gets S3's ``503 ServiceUnavailable`` by then, not after stacked
  connect timeouts.
* A circuit breaker counts consecutive failures; once open, calls fail at once (no network)
  until a cool-down passes, then one probe call is let through — success closes the breaker,
  failure doubles the cool-down (up to a cap). Recovery needs no operator.
* Pass-through requests (writes among them) are never retried; they fail fast while the
  breaker is open.

Throttling (``503 SlowDown``) is retried like a failure but does not open the breaker: the
upstream is alive, just busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ..errors import NotModified, S3Error, UpstreamUnavailable, client_fault
from ..objects import ObjectMeta
from .base import ByteStream, ForwardRequest, ForwardResponse, OpenedObject, PartInfo, Upstream

T = TypeVar("T")


class CircuitBreaker:
    """Closed → (``threshold`` consecutive failures) → open for ``cooldown`` → half-open: one
    probe; success closes, failure re-opens with the cool-down doubled (up to ``max_cooldown``)."""

    def __init__(self, threshold: int = 5, cooldown: float = 1.0, max_cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.failures = 0
        self.cooldown = cooldown
        self.open_until: float | None = None
        self.probing = False
        self.opened = 0  # times the breaker opened, for metrics

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if self.clock() < self.open_until else "half-open"

    def allow(self) -> bool:
        if self.open_until is None:
            return True
        if self.clock() < self.open_until or self.probing:
            return False
        self.probing = True  # half-open: this caller is the probe
        return True

    def success(self) -> None:
        self.failures = 0
        self.open_until = None
        self.probing = False
        self.cooldown = self.base_cooldown

    def failure(self) -> None:
        self.failures += 1
        if self.probing:
            self.probing = False
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self.open_until = self.clock() + self.cooldown
        elif self.open_until is None and self.failures >= self.threshold:
            self.open_until = self.clock() + self.cooldown
            self.opened += 1


def _throttled(e: BaseException) -> bool:
    return isinstance(e, S3Error) and e.code == "SlowDown"


class ResilientUpstream:
    def __init__(self, inner: Upstream, *, answer_within: float = 2.0, retries: int = 3,
                 breaker: CircuitBreaker | None = None, backoff: float = 0.05) -> None:
        self.inner = inner
        self.name = inner.name
        self.answer_within = answer_within
        self.retries = retries
        self.breaker = breaker or CircuitBreaker()
        self.backoff = backoff

    async def start(self) -> None:
        if hasattr(self.inner, "start"):
            await self.inner.start()  # type: ignore[attr-defined]

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent upstream call with retries inside the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.answer_within
        attempt = 0
        while True:
            if not self.breaker.allow():
                raise UpstreamUnavailable("The upstream is failing; try again shortly.")
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError()
                result = await asyncio.wait_for(fn(), remaining)
            except (UpstreamUnavailable, asyncio.TimeoutError, S3Error) as e:
                if isinstance(e, S3Error) and not isinstance(e, UpstreamUnavailable) and not _throttled(e):
                    self.breaker.success()  # a real answer: the upstream is up
                    raise
                if not _throttled(e):
                    self.breaker.failure()
                else:
                    self.breaker.probing = False
                pause = self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
                attempt += 1
                if attempt > self.retries or loop.time() + pause >= deadline:
                    if isinstance(e, asyncio.TimeoutError):
                        raise UpstreamUnavailable(
                            f"The upstream did not answer within {self.answer_within:g} s.") from None
                    raise
                await asyncio.sleep(pause)
                continue
            except NotModified:
                self.breaker.success()
                raise
            self.breaker.success()
            return result

    async def head(self, bucket: str, key: str, *, if_none_match: str | None = None) -> ObjectMeta:
        return await self._call(lambda: self.inner.head(bucket, key, if_none_match=if_none_match))

    async def head_part(self, bucket: str, key: str, part_number: int, etag: str) -> PartInfo:
        return await self._call(lambda: self.inner.head_part(bucket, key, part_number, etag))

    async def open_object(self, bucket: str, key: str, *, start: int | None, end: int | None,
                          checksum_mode: bool, if_match: str | None = None) -> OpenedObject:
        return await self._call(lambda: self.inner.open_object(  # type: ignore[attr-defined]
            bucket, key, start=start, end=end, checksum_mode=checksum_mode, if_match=if_match))

    @contextlib.asynccontextmanager
    async def get_range(self, bucket: str, key: str, start: int, end: int, *,
                        if_match: str) -> AsyncIterator[ByteStream]:
        holder: list = []

        async def enter() -> ByteStream:
            cm = self.inner.get_range(bucket, key, start, end, if_match=if_match)
            body = await cm.__aenter__()
            holder.append(cm)
            return body

        body = await self._call(enter)
        cm = holder[-1]
        try:
            yield body
        except BaseException as e:
            await cm.__aexit__(type(e), e, e.__traceback__)
            raise
        else:
            await cm.__aexit__(None, None, None)

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        if not self.breaker.allow():
            raise UpstreamUnavailable("The upstream is failing; try again shortly.")
        try:
            resp = await self.inner.forward(request)
        except UpstreamUnavailable as e:
            if client_fault(e) is None:  # a client's broken or abandoned body says nothing of the upstream
                self.breaker.failure()
            raise
        self.breaker.success()
        return resp

    async def close(self) -> None:
        await self.inner.close()
