"""The catalog's metadata lookups in flight (single-flight per key), with an upstream whose HEAD
answers when the test says: pure bookkeeping, no HTTP."""

from __future__ import annotations

import asyncio

from sidecar.catalog import Catalog
from sidecar.objects import ObjectMeta


class HeldHeads:
    """An upstream whose HEADs wait until ``answer`` is set; counts them."""

    def __init__(self) -> None:
        self.heads = 0
        self.answer = asyncio.Event()

    async def head(self, bucket: str, key: str, *, if_none_match: str | None = None) -> ObjectMeta:
        self.heads += 1
        await self.answer.wait()
        return ObjectMeta(bucket, key, '"e1"', 10, "", ())


def test_callers_share_one_head_and_one_giving_up_leaves_the_others_their_answer():
    async def lookups() -> None:
        upstream = HeldHeads()
        catalog = Catalog(upstream, ttl=lambda bucket, key: 60.0)  # type: ignore[arg-type]
        told = []
        catalog.on_resolved = lambda bucket, key, meta, previous: told.append((meta.etag, previous))
        callers = [asyncio.ensure_future(catalog.lookup("b", "k")) for _ in range(3)]
        await asyncio.sleep(0.01)
        callers[0].cancel()  # a client that left
        await asyncio.sleep(0.01)
        upstream.answer.set()
        got = await asyncio.gather(*callers[1:])
        assert [e.meta.etag for e in got] == ['"e1"', '"e1"'] and got[0] is got[1]
        assert callers[0].cancelled()
        assert upstream.heads == 1 and catalog.shared_lookups == 2
        assert told == [('"e1"', None)]  # a first lookup: no version known before

    asyncio.run(lookups())


def test_a_failed_head_reaches_every_caller():
    class Refusing(HeldHeads):
        async def head(self, bucket, key, *, if_none_match=None):
            self.heads += 1
            await self.answer.wait()
            raise ConnectionResetError("gone")

    async def lookups() -> None:
        upstream = Refusing()
        catalog = Catalog(upstream, ttl=lambda bucket, key: 60.0)  # type: ignore[arg-type]
        callers = [asyncio.ensure_future(catalog.lookup("b", "k")) for _ in range(2)]
        await asyncio.sleep(0.01)
        upstream.answer.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert [type(r) for r in results] == [ConnectionResetError, ConnectionResetError]
        assert upstream.heads == 1

    asyncio.run(lookups())
