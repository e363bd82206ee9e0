"""The RAM tier: verified chunk bytes held in the sidecar's own memory, under a byte budget.

Only bytes that were checked (or that the sidecar wrote itself) are put here, and they are
never checked again: memory is the sidecar's own, like ZFS's ARC. It is one implementation of
the small verified-chunk protocol below; the disk tier (``disk.py``) is the other, and the chunk
store composes this one in front of it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Protocol


class VerifiedChunks(Protocol):
    """A cache that only hands out verified chunk bytes: ``get`` returns them or None (a miss),
    ``drop`` forgets a chunk."""

    def get(self, key: Hashable) -> bytes | None: ...

    def drop(self, key: Hashable) -> None: ...


class VerifiedChunkCache(VerifiedChunks, Protocol):
    """One that is also given chunks whole: ``put`` offers bytes already verified. The RAM tier
    is; the disk tier is written by streaming (``ChunkWriter``), so that readers can send a
    chunk's first bytes while the rest is still arriving."""

    def put(self, key: Hashable, data: bytes) -> None: ...


class RamTier:
    """Chunks up to ``chunk_max`` bytes, least recently used evicted past ``capacity`` bytes."""

    __slots__ = ("capacity", "chunk_max", "used", "_chunks")

    def __init__(self, capacity: int, chunk_max: int) -> None:
        self.capacity = capacity
        self.chunk_max = chunk_max if capacity > 0 else 0
        self.used = 0
        self._chunks: OrderedDict[Hashable, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._chunks)

    def holds(self, length: int) -> bool:
        """Whether a chunk of ``length`` bytes would be kept here."""
        return length <= self.chunk_max

    def get(self, key: Hashable) -> bytes | None:
        data = self._chunks.get(key)
        if data is not None:
            self._chunks.move_to_end(key)
        return data

    def put(self, key: Hashable, data: bytes) -> None:
        if not self.chunk_max or len(data) > self.chunk_max:
            return
        self.drop(key)
        self._chunks[key] = data
        self.used += len(data)
        while self.used > self.capacity and self._chunks:
            _, dropped = self._chunks.popitem(last=False)
            self.used -= len(dropped)

    def drop(self, key: Hashable) -> None:
        old = self._chunks.pop(key, None)
        if old is not None:
            self.used -= len(old)
