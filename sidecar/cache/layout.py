"""How an object is cut into fixed-size chunks: the cache's unit of storage and of upstream fetch.

Every piece of chunk arithmetic (how many chunks, the bytes of one, the chunks a byte range
touches, the chunk-aligned window a cold read asks the upstream for) lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkLayout:
    """Chunks of ``size`` bytes; the last chunk of an object may be shorter."""

    size: int

    def count(self, object_size: int) -> int:
        """Chunks in an object of ``object_size`` bytes (none for an empty object)."""
        return (object_size + self.size - 1) // self.size

    def bounds(self, index: int, object_size: int) -> tuple[int, int]:
        """Inclusive byte span of chunk ``index`` of an object of ``object_size`` bytes."""
        start = index * self.size
        return start, min(start + self.size, object_size) - 1

    def length(self, index: int, object_size: int) -> int:
        """Bytes in chunk ``index`` of an object of ``object_size`` bytes."""
        start = index * self.size
        return min(start + self.size, object_size) - start

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Indexes of the first and last chunk that bytes ``start``..``end`` touch."""
        return start // self.size, end // self.size

    def window(self, start: int, end: int | None, max_chunks: int) -> tuple[int, int]:
        """The chunk-aligned bytes to fetch for a read of ``start``..``end`` (``end`` None: to the
        end of the object) when the object's size is not yet known: from the start of ``start``'s
        chunk to the end of ``end``'s, at most ``max_chunks`` chunks."""
        first = start // self.size * self.size
        last = first + max_chunks * self.size - 1
        if end is not None:
            last = min(last, (end // self.size + 1) * self.size - 1)
        return first, last


@functools.lru_cache(maxsize=16)
def layout_of(size: int) -> ChunkLayout:
    """The layout of ``size``-byte chunks, built once (it is frozen, so one is shared): a hit asks
    for a chunk's length, and building a frozen dataclass costs more than the arithmetic."""
    return ChunkLayout(size)
