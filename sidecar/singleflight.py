"""Duplicate call suppression: concurrent callers of the same key share one in-flight call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """``await group.do(key, fn)`` runs ``fn()`` once per key at a time; callers that arrive
    while it runs get the same result or exception. The call runs in its own task, so one
    caller being cancelled does not cancel it for the others."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[T]] = {}
        self.shared = 0  # callers that joined a call already in flight

    def in_flight(self, key: Hashable) -> bool:
        return key in self._calls

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        fut = self._calls.get(key)
        if fut is not None:
            self.shared += 1
            return await asyncio.shield(fut)
        task = asyncio.ensure_future(fn())
        self._calls[key] = task
        task.add_done_callback(lambda _t, key=key: self._forget(key, task))
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, task: asyncio.Future) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: callers may all have gone away
