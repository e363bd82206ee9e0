"""The on-disk chunk file format (cache format ``v2``): names, piece checksums, and checks.

A chunk file holds the chunk's bytes, then a trailer::

    [chunk bytes: length][piece CRC32Cs: n x u32 LE][footer: b"SCc2", piece size, n, digest (u32 LE each)]

Each piece of ``PIECE_SIZE`` bytes (the last may be shorter) has its own CRC32C, so a read
checks only the pieces its range touches. The *digest* is the CRC32C of the piece table; it is
the chunk's identity in its file name (``<vid>.<index>.<digest>``), in the index and in the
Merkle tree, so a table that rotted is caught before any piece is trusted. Data offsets are
file offsets: ``sendfile(fd, offset)`` needs no translation.

The disk tier (``disk.py``, whose ``read_dir`` groups the files into versions for the store
and ``sidecar verify``) reads the directory through ``scan`` and checks files through this
module: the name format and the trailer exist once.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import crc32c as _crc32c

FORMAT = "v2"
OLD_FORMATS = ("v1",)  # dropped at start: v1 chunk files carry one CRC per chunk, no piece table
PIECE_SIZE = 64 * 1024
MAGIC = b"SCc2"
_FOOTER = struct.Struct("<4sIII")
FOOTER_SIZE = _FOOTER.size
_READ = 1024 * 1024  # bytes per pread when checking a whole file
_buffers = threading.local()


def crc32c(data, value: int = 0) -> int:
    return _crc32c.crc32c(data, value)


def piece_count(length: int, piece: int = PIECE_SIZE) -> int:
    return -(-length // piece)


def file_size(length: int, piece: int = PIECE_SIZE) -> int:
    """Bytes a chunk of ``length`` bytes occupies on disk, trailer included."""
    return length + 4 * piece_count(length, piece) + FOOTER_SIZE


class PieceSums:
    """Piece CRC32Cs computed as a chunk's bytes are written (one pass over the bytes)."""

    __slots__ = ("piece", "crcs", "cur", "filled")

    def __init__(self, piece: int = PIECE_SIZE) -> None:
        self.piece = piece
        self.crcs: list[int] = []
        self.cur = 0
        self.filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        piece = self.piece
        while view:
            part = view[:piece - self.filled]
            self.cur = crc32c(part, self.cur)
            self.filled += len(part)
            view = view[len(part):]
            if self.filled == piece:
                self.crcs.append(self.cur)
                self.cur = self.filled = 0

    def trailer(self) -> tuple[bytes, int]:
        """(the trailer to append after the chunk's bytes, the chunk's digest)."""
        crcs = self.crcs + ([self.cur] if self.filled else [])
        table = struct.pack(f"<{len(crcs)}I", *crcs)
        digest = crc32c(table)
        return table + _FOOTER.pack(MAGIC, self.piece, len(crcs), digest), digest


def parse_trailer(raw: bytes, length: int, digest: int) -> bytes | None:
    """The piece table from a trailer read at offset ``length``, or None if it is not exactly the
    trailer of a ``length``-byte chunk with this digest (wrong size, format, or rotted table)."""
    if len(raw) < FOOTER_SIZE:
        return None
    magic, piece, n, stored = _FOOTER.unpack_from(raw, len(raw) - FOOTER_SIZE)
    # The piece size is the format's: a footer that says otherwise is damaged, not another layout.
    if magic != MAGIC or piece != PIECE_SIZE or n != piece_count(length, piece) or len(raw) != 4 * n + FOOTER_SIZE:
        return None
    table = raw[:4 * n]
    if stored != digest or crc32c(table) != digest:
        return None
    return table


def read_table(fd: int, length: int, digest: int) -> tuple[bytes, int] | None:
    """(piece table, piece size) of an open chunk file, or None if the trailer is bad or the file
    is not exactly as long as the trailer says. Raises OSError on a read error."""
    raw = os.pread(fd, _trailer_probe(length), length)
    table = parse_trailer(raw, length, digest)
    if table is None:
        return None
    return table, _FOOTER.unpack_from(raw, len(raw) - FOOTER_SIZE)[1]


def _trailer_probe(length: int) -> int:
    # One byte more than the trailer at the default piece size: a longer file is caught by size.
    return 4 * piece_count(length) + FOOTER_SIZE + 1


def piece_crc(table: bytes, i: int) -> int:
    return int.from_bytes(table[4 * i:4 * i + 4], "little")


def check_pieces(fd: int, table: bytes, piece: int, length: int, p0: int, p1: int) -> memoryview | None:
    """Read pieces p0..p1 (inclusive) of an open chunk file and check each against the table.
    Returns their bytes (starting at offset ``p0 * piece``), or None on any mismatch or short read.
    Raises OSError on a read error."""
    start = p0 * piece
    want = min(length, (p1 + 1) * piece) - start
    buf = bytearray(want)
    view = memoryview(buf)
    got = 0
    while got < want:
        n = os.preadv(fd, [view[got:]], start + got)
        if n <= 0:
            return None
        got += n
    for i in range(p0, p1 + 1):
        a = i * piece - start
        if crc32c(view[a:a + piece]) != piece_crc(table, i):
            return None
    return view


def check_file(fd: int, length: int, digest: int) -> str | None:
    """Check a whole open chunk file: None if good, else what is wrong (``size``, ``crc``).
    Reads with pread into a reused per-thread buffer, never mmap: a page that fails to read (EIO)
    raises SIGBUS under mmap, which Python cannot turn into an error; pread raises OSError, which
    callers report as ``io-error``."""
    st = os.fstat(fd)
    probe = os.pread(fd, _trailer_probe(length), length) if st.st_size >= length else b""
    if st.st_size < length + FOOTER_SIZE or len(probe) < FOOTER_SIZE:
        return "size"
    magic, piece, n, _ = _FOOTER.unpack_from(probe, len(probe) - FOOTER_SIZE)
    if magic != MAGIC or piece <= 0 or st.st_size != file_size(length, piece):
        return "size"
    table = parse_trailer(probe, length, digest)
    if table is None:
        return "crc"
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < max(_READ, piece):
        buf = _buffers.buf = bytearray(max(_READ, piece))
    view = memoryview(buf)
    per = max(1, len(buf) // piece)  # whole pieces per read
    i = 0
    while i < n:
        j = min(n, i + per)
        start = i * piece
        want = min(length, j * piece) - start
        got = os.preadv(fd, [view[:want]], start)
        if got != want:
            return "size"
        for k in range(i, j):
            a = (k - i) * piece
            if crc32c(view[a:min(a + piece, want)]) != piece_crc(table, k):
                return "crc"
        i = j
    return None


def check_image(image: bytes, length: int, digest: int) -> bool:
    """Whether a whole chunk file read into memory (bytes + trailer) is good."""
    if len(image) < length + FOOTER_SIZE:
        return False
    table = parse_trailer(image[length:], length, digest)
    if table is None:
        return False
    piece = _FOOTER.unpack_from(image, len(image) - FOOTER_SIZE)[1]
    view = memoryview(image)
    for i in range(len(table) // 4):
        if crc32c(view[i * piece:min(length, (i + 1) * piece)]) != piece_crc(table, i):
            return False
    return True


# --- names -------------------------------------------------------------------------------------


def version_id(bucket: str, key: str, etag: str, size: int, chunk_size: int) -> str:
    """The ``vid`` in a version's file names: a hash of (bucket, key, ETag, size, chunk size), so a
    version's chunks can never be mistaken for another version's, and keys never become paths."""
    h = hashlib.sha256()
    for part in (bucket, key, etag, str(size), str(chunk_size)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:40]


def chunk_name(vid: str, index: int, digest: int) -> str:
    return f"{vid}.{index}.{digest:08x}"


def meta_name(vid: str) -> str:
    return f"{vid}.meta"


def scan(root: Path) -> Iterator[tuple[str, str, int, int, str]]:
    """Every file in the shard directories under ``root``: (kind, vid, index, digest, path) with
    kind ``meta``, ``chunk`` or ``stray`` (a name that is neither; index and digest are 0)."""
    for shard in os.scandir(root):
        if not shard.is_dir() or len(shard.name) != 2:
            continue
        for entry in os.scandir(shard.path):
            parts = entry.name.split(".")
            if len(parts) == 2 and parts[1] == "meta":
                yield "meta", parts[0], 0, 0, entry.path
                continue
            if len(parts) == 3:
                try:
                    yield "chunk", parts[0], int(parts[1]), int(parts[2], 16), entry.path
                    continue
                except ValueError:
                    pass
            yield "stray", "", 0, 0, entry.path
