"""A Merkle tree over an object version's chunk CRC32Cs: one root that stands for every chunk, and
the indices where two trees differ found by descending only into subtrees whose hashes differ.

Leaves are the chunks in index order; a chunk not cached is its own leaf value (``None``), so a
partly cached version still has a well-defined root. Dependency-free (hashlib only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_MISSING = b"\x02"


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def leaf(crc: int | None) -> bytes:
    # Domain prefixes keep a leaf from ever equalling an inner node (second-preimage safety).
    return _h(_MISSING if crc is None else b"\x00" + crc.to_bytes(4, "big"))


class MerkleTree:
    """Levels of hashes, leaves first; ``root`` is the last level's only hash."""

    __slots__ = ("levels",)

    def __init__(self, crcs: Sequence[int | None]) -> None:
        level = [leaf(c) for c in crcs] or [_h(b"")]
        self.levels = [level]
        while len(level) > 1:
            # An odd node out is carried up unchanged, so appending a chunk touches one path.
            level = [_h(b"\x01" + level[i] + level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
            self.levels.append(level)

    @classmethod
    def of(cls, chunks: dict[int, int], count: int) -> "MerkleTree":
        """The tree of a version with ``count`` chunks, of which ``chunks`` (index -> CRC) are cached."""
        return cls([chunks.get(i) for i in range(count)])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def diff(self, other: "MerkleTree") -> list[int]:
        """Leaf indices whose values differ between two trees of the same size, in order."""
        if other.size != self.size:
            raise ValueError("trees of different sizes")
        out: list[int] = []
        stack = [(len(self.levels) - 1, 0)]
        while stack:
            depth, i = stack.pop()
            if self.levels[depth][i] == other.levels[depth][i]:
                continue
            if depth == 0:
                out.append(i)
                continue
            below = self.levels[depth - 1]
            for j in (2 * i + 1, 2 * i):  # right pushed first: leaves come out in order
                if j < len(below):
                    stack.append((depth - 1, j))
        return out
