"""The prefetch ledger: chunks a prefetch brought into the cache that no client has read yet.

The chunk store enters a prefetched chunk when it commits it and takes it out, counted wasted,
when the chunk leaves the cache unread; the reader takes it out, counted useful, at its first
read; the prefetch loop asks which objects still hold unread prefetched chunks and sets how long
they are protected from eviction by demand data (``credit``, the predictor's horizon).
"""

from __future__ import annotations

from collections.abc import Callable

ChunkKey = tuple[str, int]  # (version id, chunk index)
ObjectKey = tuple[str, str]  # (bucket, key)


class PrefetchedChunks(dict[ChunkKey, tuple[int, ObjectKey]]):
    """Unread prefetched chunk -> (its length, its object). A mapping itself, so that a hit asks
    "is anything unread?" with the dict's own truth test, no method call."""

    __slots__ = ("credit", "on_wasted")

    def __init__(self, *, credit: float = 300.0, on_wasted: Callable[[int], None] | None = None) -> None:
        super().__init__()
        # Seconds a prefetched chunk is protected from eviction by demand data while unread
        # (the prefetch loop sets it from the model); 0: no protection.
        self.credit = credit
        self.on_wasted = on_wasted  # told the bytes of a prefetched chunk that left unread

    def add(self, key: ChunkKey, length: int, obj: ObjectKey) -> None:
        """A prefetch committed the chunk: watch it until a client reads it or it leaves."""
        self[key] = (length, obj)

    def take(self, vid: str, index: int) -> int:
        """A client read the chunk: its length if a prefetch brought it and this is the first
        read since (then it is no longer watched), else 0."""
        entry = self.pop((vid, index), None)
        return 0 if entry is None else entry[0]

    def left(self, key: ChunkKey) -> None:
        """The chunk left the cache (evicted, dropped): if it was still unread, it was wasted."""
        entry = self.pop(key, None)
        if entry is not None and self.on_wasted is not None:
            self.on_wasted(entry[0])

    def objects(self) -> set[ObjectKey]:
        """(bucket, key) of the objects holding prefetched chunks no client has read yet."""
        return {obj for _, obj in self.values()}
