"""The chunk file format (``v2``): names, the per-piece CRC32C trailer, the directory scan and
the checks of a chunk's bytes — the one place that knows how a cached chunk looks on disk.

Layout under ``<cache_dir>/v2/``::

    tmp/                       chunks being written (cleared at start)
    <aa>/<vid>.meta            JSON: bucket, key, ETag, size, headers, chunk size
    <aa>/<vid>.<index>.<crc>   the chunk's bytes, then its trailer

A chunk file is its ``length`` data bytes (at offset 0, so sendfile needs no arithmetic)
followed by a trailer: the CRC32C of every ``PIECE`` (64 KiB) of the data, little-endian u32
each, then a footer (magic ``SCK2``, piece size u32, data length u64). ``<crc>`` in the file
name is the CRC32C of the whole trailer: the index (file names) vouches for the trailer, the
trailer for each piece, so a read checks only the pieces it touches and still knows every byte
it sends. A truncated file has the wrong size; a flipped bit fails its piece or the trailer.

``v1`` (whole-chunk CRC32C in the name, no trailer) is recognised at start and its chunks are
dropped — never read as v2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from pathlib import Path

import crc32c as _crc32c

FORMAT = "v2"
OLD_FORMATS = ("v1",)
PIECE = 64 * 1024
MAGIC = b"SCK2"
_FOOTER = struct.Struct("<4sIQ")
CHECK_WINDOW = 1024 * 1024  # bytes read and checked at once when a large range needs a check


def crc32c(data, value: int = 0) -> int:
    return _crc32c.crc32c(data, value)


def piece_count(length: int) -> int:
    return (length + PIECE - 1) // PIECE


def trailer_size(length: int) -> int:
    return 4 * piece_count(length) + _FOOTER.size


def file_size(length: int) -> int:
    """The size of a chunk file holding ``length`` data bytes."""
    return length + trailer_size(length)


def pieces_mask(lo: int, hi: int) -> int:
    """Bit mask of the pieces data bytes ``lo``..``hi`` (inclusive) touch."""
    p0, p1 = lo // PIECE, hi // PIECE
    return ((1 << (p1 - p0 + 1)) - 1) << p0


def read_span(lo: int, hi: int, length: int) -> int:
    """Bytes a check of data bytes ``lo``..``hi`` reads: the whole pieces they touch."""
    return min((hi // PIECE + 1) * PIECE, length) - lo // PIECE * PIECE


def full_mask(length: int) -> int:
    return (1 << piece_count(length)) - 1


class PieceSums:
    """CRC32Cs of a chunk's pieces, computed as its bytes arrive in any sizes."""

    __slots__ = ("sums", "_crc", "_fill")

    def __init__(self) -> None:
        self.sums: list[int] = []
        self._crc = 0
        self._fill = 0  # bytes of the current piece seen

    def update(self, data) -> None:
        view = memoryview(data)
        while view:
            take = min(PIECE - self._fill, len(view))
            self._crc = crc32c(view[:take], self._crc)
            self._fill += take
            view = view[take:]
            if self._fill == PIECE:
                self.sums.append(self._crc)
                self._crc, self._fill = 0, 0

    def table(self) -> tuple[int, ...]:
        return tuple(self.sums) + ((self._crc,) if self._fill else ())

    def trailer(self, length: int) -> bytes:
        sums = self.table()
        return struct.pack(f"<{len(sums)}I", *sums) + _FOOTER.pack(MAGIC, PIECE, length)


def parse_trailer(raw: bytes, length: int, crc: int) -> tuple[int, ...] | None:
    """The piece CRCs of a trailer read from a chunk file, or None if it is not the trailer the
    index recorded (``crc``) for a chunk of ``length`` bytes."""
    if len(raw) != trailer_size(length) or crc32c(raw) != crc:
        return None
    magic, piece, n = _FOOTER.unpack_from(raw, len(raw) - _FOOTER.size)
    if magic != MAGIC or piece != PIECE or n != length:
        return None
    return struct.unpack_from(f"<{piece_count(length)}I", raw)


def read_table(fd: int, length: int, crc: int) -> tuple[int, ...] | None:
    """The verified piece table of an open chunk file, or None (wrong size or trailer).
    OSError when the disk fails."""
    size = trailer_size(length)
    raw = os.pread(fd, size + 1, length)
    return parse_trailer(raw, length, crc) if len(raw) == size else None


def read_checked(fd: int, table: tuple[int, ...], length: int, lo: int, hi: int) -> memoryview | None:
    """Data bytes ``lo``..``hi`` read once (with pread, never mmap: an unreadable page would be
    SIGBUS) and checked piece by piece against ``table``; None if any piece is short or differs.
    OSError when the disk fails."""
    p0, p1 = lo // PIECE, hi // PIECE
    start, end = p0 * PIECE, min((p1 + 1) * PIECE, length)
    buf = bytearray(end - start)
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [view[got:]], start + got)
        if n <= 0:
            return None
        got += n
    for p in range(p0, p1 + 1):
        a = p * PIECE - start
        if crc32c(view[a:a + PIECE]) != table[p]:
            return None
    return view[lo - start:hi - start + 1]


def check_fd(fd: int, length: int, crc: int) -> str | None:
    """Check a whole chunk file: None if every byte is as recorded, else ``size`` or ``crc``.
    OSError when the disk fails."""
    if os.fstat(fd).st_size != file_size(length):
        return "size"
    table = read_table(fd, length, crc)
    if table is None:
        return "crc"
    for lo in range(0, length, CHECK_WINDOW):
        if read_checked(fd, table, length, lo, min(length, lo + CHECK_WINDOW) - 1) is None:
            return "crc"
    return None


def check_bytes(raw: bytes, length: int, crc: int) -> bool:
    """Whether a whole chunk file's contents (data and trailer) are as recorded."""
    if len(raw) != file_size(length):
        return False
    table = parse_trailer(raw[length:], length, crc)
    if table is None:
        return False
    view = memoryview(raw)
    return all(crc32c(view[p * PIECE:min((p + 1) * PIECE, length)]) == table[p] for p in range(len(table)))


# --- names and the directory scan ---------------------------------------------------------------


def shard(root: Path, vid: str) -> Path:
    return root / vid[:2]


def chunk_path(root: Path, vid: str, index: int, crc: int) -> Path:
    return root / vid[:2] / f"{vid}.{index}.{crc:08x}"


def meta_path(root: Path, vid: str) -> Path:
    return root / vid[:2] / f"{vid}.meta"


class Scan:
    """What a cache directory holds by name: metadata files, chunk files, and stray files."""

    def __init__(self) -> None:
        self.metas: dict[str, str] = {}  # vid -> path
        self.chunks: dict[str, list[tuple[int, int, str]]] = {}  # vid -> (index, crc, path)
        self.stray: list[str] = []


def scan(root: Path) -> Scan:
    out = Scan()
    for d in sorted(os.scandir(root), key=lambda e: e.name):
        if not d.is_dir() or len(d.name) != 2 or d.name == "tmp":
            continue
        for entry in sorted(os.scandir(d.path), key=lambda e: e.name):
            parts = entry.name.split(".")
            if len(parts) == 2 and parts[1] == "meta":
                out.metas[parts[0]] = entry.path
            elif len(parts) == 3:
                try:
                    out.chunks.setdefault(parts[0], []).append((int(parts[1]), int(parts[2], 16), entry.path))
                except ValueError:
                    out.stray.append(entry.path)
            else:
                out.stray.append(entry.path)
    return out


def drop_old_formats(cache_dir: Path) -> list[str]:
    """Delete caches in older formats under ``cache_dir`` (their files are never read as this
    format's). Returns the formats dropped."""
    dropped = []
    for old in OLD_FORMATS:
        path = Path(cache_dir) / old
        if path.is_dir():
            with contextlib.suppress(OSError):
                shutil.rmtree(path)
            dropped.append(old)
    return dropped
