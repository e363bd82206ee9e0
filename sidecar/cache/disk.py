"""The disk tier: chunk files under ``<cache_dir>/v2/``, handed out only as verified bytes.

Layout::

    tmp/                          chunks being written (cleared at start)
    <aa>/<vid>.meta               JSON: bucket, key, ETag, size, headers, chunk size
    <aa>/<vid>.<index>.<digest>   chunk bytes + piece CRC32C table (``chunkfile.py``)

It is the second implementation of the verified-chunk protocol (``ramtier.VerifiedChunks``:
``get``/``drop``), composed behind the RAM tier by the chunk store. It keeps no record of which
chunks exist: the store's index is that record, and ``locate`` asks it for a chunk's digest and
length. A chunk found bad is reported through ``on_bad`` so the index drops it.

It is written by streaming, not given chunks whole: a ``ChunkWriter`` appends bytes to a temp
file as they arrive (readers tail that file while it grows), then ``put`` seals it with its
piece table and renames it into place, so a crash leaves whole chunks or none; ``discard``
deletes an unfinished one. Which writes are kept, and their bytes, are the store's business.

Verification (docs/integrity.md): a read checks the 64 KiB pieces its range touches, unless
those pieces were checked since the file last changed (its inode, size, mtime and ctime are the
same as at that check) and strict mode (``verify_every_read``) is off; then the file's bytes
may be sent with sendfile from the page cache unchecked. An open chunk (``VerifiedChunk``)
settles its own checks when it is closed: good pieces are remembered, a bad chunk is dropped,
so no caller has to remember either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..objects import ObjectMeta
from . import chunkfile
from .chunkfile import FORMAT, OLD_FORMATS, PieceSums

ChunkKey = tuple[str, int]
Stamp = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns) of a chunk file


def mkdir_private(path: Path) -> None:
    """A cache directory, 0700 whatever the umask (umask can only take bits away, and one
    that takes the owner's would make the directory unusable)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclasses.dataclass(slots=True)
class Checked:
    """What is known good about one chunk file: its piece table, and which pieces were checked
    while the file had identity ``stamp``."""

    stamp: Stamp
    table: bytes
    piece: int
    mask: int = 0  # bit i: piece i checked under ``stamp``

    def covers(self, p0: int, p1: int) -> bool:
        want = ((1 << (p1 - p0 + 1)) - 1) << p0
        return self.mask & want == want


@dataclasses.dataclass(slots=True)
class VerifiedChunk:
    """An open chunk: bytes in memory (``data``, always verified), or a file descriptor.
    With ``verified`` True the descriptor's bytes for the range it was opened for may be sent
    as they are (sendfile); otherwise ``check(lo, hi)`` reads and checks the pieces that range
    touches and returns the very bytes checked (send those: the file is read once), or None
    when they are bad. ``check`` blocks and may run in a worker thread. Close it (on the event
    loop): that settles what the checks found with the disk tier."""

    length: int
    data: bytes | None = None
    fd: int = -1
    digest: int = 0
    verified: bool = True
    known: Checked | None = None  # the table (and checks) this file is read against
    key: ChunkKey | None = None
    tier: DiskTier | None = None  # told what the checks found, at close
    bad: bool = False  # a check failed
    passed: bool = False  # a check succeeded: ``known`` holds pieces this chunk checked
    checked: int = 0  # bytes checked and not yet counted

    def check(self, lo: int, hi: int) -> memoryview | None:
        """Bytes lo..hi (chunk offsets, inclusive), checked against their pieces' CRC32Cs; None
        if any of them is bad (or the file cannot be read: a bad chunk too)."""
        try:
            if self.known is None:
                st = os.fstat(self.fd)
                if st.st_size != chunkfile.file_size(self.length):
                    self.bad = True
                    return None
                found = chunkfile.read_table(self.fd, self.length, self.digest)
                if found is None:
                    self.bad = True
                    return None
                self.known = Checked(_stamp(st), found[0], found[1])
            k = self.known
            p0, p1 = lo // k.piece, hi // k.piece
            view = chunkfile.check_pieces(self.fd, k.table, k.piece, self.length, p0, p1)
        except (OSError, ValueError):
            view = None
        if view is None:
            self.bad = True
            return None
        k.mask |= ((1 << (p1 - p0 + 1)) - 1) << p0
        self.passed = True
        self.checked += hi - lo + 1
        base = p0 * k.piece
        return view[lo - base:hi - base + 1]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.bad or self.passed:  # something to settle (a chunk only sent needs nothing)
            tier, self.tier = self.tier, None
            if tier is not None:
                tier.settle(self)


class ChunkWriter:
    """A chunk being written to a temp file of the disk tier (``DiskTier.temp_file``); readers
    may read below ``written`` from ``fd`` while it grows. ``DiskTier.put`` places it under its
    final name, ``DiskTier.discard`` deletes it; either ends the write (``closed``).

    The descriptor outlives both (readers may still be sending from it); whoever owns the writer
    calls ``close`` when the last reader is done."""

    __slots__ = ("vid", "index", "length", "path", "fd", "written", "crc", "closed", "sums")

    def __init__(self, vid: str, index: int, length: int, path: Path, fd: int) -> None:
        self.vid = vid
        self.index = index
        self.length = length
        self.path = path
        self.fd = fd
        self.written = 0
        self.crc = 0  # the chunk's digest, known once ``seal`` appended the piece table
        self.sums = PieceSums()
        self.closed = False  # placed or discarded

    def write(self, data: bytes | memoryview) -> None:
        if self.written + len(data) > self.length:
            raise ValueError("chunk overflow")
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.sums.update(data)
        self.written += len(data)

    def seal(self) -> None:
        """Append the piece table after the chunk's bytes (readers tailing the file read below
        ``length`` only)."""
        trailer, self.crc = self.sums.trailer()
        view = memoryview(trailer)
        pos = self.length
        while view:
            n = os.pwrite(self.fd, view, pos)
            view, pos = view[n:], pos + n

    @property
    def complete(self) -> bool:
        return self.written == self.length

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class DiskTier:
    """Chunk files and what was checked of them; see the module docstring."""

    def __init__(self, root: Path, *, stats: Any,
                 locate: Callable[[ChunkKey], tuple[int, int] | None],
                 on_bad: Callable[[ChunkKey, int, str], None],
                 verify_every_read: bool = False) -> None:
        self.root = Path(root) / FORMAT
        self._root = str(self.root)
        self.tmp = self.root / "tmp"
        self.stats = stats  # counts crc_failures, read/write errors, checked/unchecked bytes
        self.locate = locate  # key -> (digest, length) from the index, or None: not cached
        self.on_bad = on_bad  # (key, digest, "crc" | "missing"): the index drops the chunk
        # The piece table and the pieces checked since each chunk file last changed (its identity:
        # any write through the file system changes mtime/ctime). Strict mode checks anyway.
        self.verify_every_read = verify_every_read
        self.checked: dict[ChunkKey, Checked] = {}
        # Chunk files kept open for the lean path's hits (``ready_fd``), least recently used first:
        # key -> (descriptor, digest). Each use compares the file's identity again.
        self._open: OrderedDict[ChunkKey, tuple[int, int]] = OrderedDict()

    # --- paths ------------------------------------------------------------------------------

    def _dir(self, vid: str) -> Path:
        return self.root / vid[:2]

    def chunk_path(self, vid: str, index: int, digest: int) -> Path:
        return Path(self.chunk_file(vid, index, digest))

    def chunk_file(self, vid: str, index: int, digest: int) -> str:
        """``chunk_path`` as a string, built without pathlib (every hit on a file opens one)."""
        return f"{self._root}/{vid[:2]}/{chunkfile.chunk_name(vid, index, digest)}"

    def meta_path(self, vid: str) -> Path:
        return self._dir(vid) / chunkfile.meta_name(vid)

    # --- start ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the layout, delete older formats and unfinished writes (then ``read_dir``)."""
        for d in (self.root.parent, self.root, self.tmp):
            mkdir_private(d)
        for old in OLD_FORMATS:  # another layout and trailer: never read, just deleted
            shutil.rmtree(self.root.parent / old, ignore_errors=True)
        for entry in os.scandir(self.tmp):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    # --- the verified-chunk protocol ---------------------------------------------------------

    def get(self, key: ChunkKey) -> bytes | None:
        """The whole chunk, every piece checked, or None (not cached, or bad: then dropped)."""
        where = self.locate(key)
        chunk = self.open(key, *where) if where is not None else None
        if chunk is None:
            return None
        try:
            view = chunk.check(0, chunk.length - 1)
            return None if view is None else bytes(view)
        finally:
            chunk.close()

    def drop(self, key: ChunkKey) -> None:
        """Forget what was checked of a chunk (the index deletes its file with ``unlink``)."""
        self.checked.pop(key, None)
        self._close_kept(key)

    def _close_kept(self, key: ChunkKey) -> None:
        kept = self._open.pop(key, None)
        if kept is not None:
            os.close(kept[0])

    def close_kept(self) -> None:
        """Close the chunk files kept open for hits (at shutdown)."""
        while self._open:
            os.close(self._open.popitem()[1][0])

    # --- reads ------------------------------------------------------------------------------

    def _open_file(self, key: ChunkKey, digest: int) -> int:
        """A cached chunk's file, open for reading; -1 if it cannot be opened (then dropped)."""
        try:
            return os.open(self.chunk_file(key[0], key[1], digest), os.O_RDONLY)
        except OSError:
            self.stats.read_errors += 1
            self.on_bad(key, digest, "missing")
            return -1

    def open(self, key: ChunkKey, digest: int, length: int, lo: int = 0, hi: int = -1) -> VerifiedChunk | None:
        """The file of a cached chunk (its ``digest`` and ``length`` from the index), opened to
        read bytes lo..hi (chunk offsets; -1: its end), or None (missing: then dropped).
        ``verified`` when the pieces of lo..hi were checked since the file last changed (and
        strict mode is off), so the caller may sendfile them; otherwise the caller sends only
        what ``check(lo, hi)`` returns."""
        fd = self._open_file(key, digest)
        if fd < 0:
            return None
        chunk = VerifiedChunk(length, fd=fd, digest=digest, verified=False, key=key, tier=self)
        known = self.checked.get(key)
        if known is not None:
            try:
                same = _stamp(os.fstat(fd)) == known.stamp
            except OSError:
                same = False
            if not same:  # changed since its last check: check again, from its trailer on
                self.drop(key)
            else:
                chunk.known = known
                if not self.verify_every_read:
                    last = length - 1 if hi < 0 else hi
                    chunk.verified = known.covers(lo // known.piece, last // known.piece)
        return chunk

    OPEN_MAX = 128  # chunk files kept open for hits

    def ready_fd(self, key: ChunkKey, digest: int, lo: int, hi: int) -> int:
        """The chunk's file, open, to send bytes lo..hi as they are (sendfile), when the pieces
        holding them were checked since the file last changed and strict mode is off; else -1
        and nothing is changed (``open`` then reads it, and counts or drops what it finds). The
        lean path's one-chunk hit: ``open`` without building a ``VerifiedChunk``.

        The descriptor is lent, not given: the last ``OPEN_MAX`` files used stay open (an open
        and a close cost a hit more than its own send), so use it before the event loop runs
        anything else and never close it (``os.dup`` it to keep it longer). Every use compares
        the file's identity (inode, size, mtime, ctime) with the one its pieces were checked
        under, as ``open`` does; the index's drop of a chunk, or a new file under its name,
        closes it."""
        if self.verify_every_read:
            return -1
        known = self.checked.get(key)
        if known is None or not known.covers(lo // known.piece, hi // known.piece):
            return -1
        kept = self._open.get(key)
        if kept is not None and kept[1] == digest:
            fd = kept[0]
            self._open.move_to_end(key)
        else:
            if kept is not None:
                self._close_kept(key)
            try:
                fd = os.open(self.chunk_file(key[0], key[1], digest), os.O_RDONLY)
            except OSError:
                return -1
            self._open[key] = (fd, digest)
            if len(self._open) > self.OPEN_MAX:
                os.close(self._open.popitem(last=False)[1][0])
        try:
            same = _stamp(os.fstat(fd)) == known.stamp
        except OSError:
            same = False
        if not same:
            self._close_kept(key)
            return -1
        return fd

    def read_whole(self, key: ChunkKey, digest: int, length: int) -> bytes | None:
        """A small cached chunk's bytes, read in one call and checked whole; None if its file is
        missing or bad (then dropped)."""
        fd = self._open_file(key, digest)
        if fd < 0:
            return None
        try:
            image = os.pread(fd, chunkfile.file_size(length) + 1, 0)
        except OSError:
            image = b""
        finally:
            os.close(fd)
        if not chunkfile.check_image(image, length, digest):
            self.stats.crc_failures += 1
            self.on_bad(key, digest, "crc")
            return None
        self.stats.checked_bytes += length
        return image[:length]

    def settle(self, chunk: VerifiedChunk) -> None:
        """What an open chunk's checks found: a bad chunk is dropped; good pieces are
        remembered (while the chunk is still the one cached) and their bytes counted. A chunk
        sent unchecked (sendfile) remembers nothing: what was known may have been forgotten
        meanwhile because the send failed."""
        key = chunk.key
        if key is None:
            return
        if chunk.bad:
            chunk.bad = False
            where = self.locate(key)
            if where is not None and where[0] == chunk.digest:  # not replaced meanwhile
                self.stats.crc_failures += 1
                self.on_bad(key, chunk.digest, "crc")
            return
        self.stats.checked_bytes += chunk.checked
        chunk.checked = 0
        if chunk.passed and chunk.known is not None and self.locate(key) is not None:
            self.checked.setdefault(key, chunk.known)

    def remember(self, key: ChunkKey, checked: Checked) -> None:
        """A whole-file check (the scrub) found the chunk good."""
        self.checked[key] = checked

    # --- writes -----------------------------------------------------------------------------

    def temp_file(self, vid: str, index: int) -> tuple[Path, int]:
        """A new private temp file for a chunk being written: (path, descriptor)."""
        path = self.tmp / f"{vid}.{index}.{secrets.token_hex(6)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly, whatever the umask
        except OSError:
            os.close(fd)
            raise
        return path, fd

    def put(self, w: ChunkWriter) -> int:
        """Seal a complete chunk and rename it to its final name (atomic: whole or absent);
        returns its digest. Raises OSError (the write is not ended: ``discard`` it)."""
        w.seal()
        final = self.chunk_path(w.vid, w.index, w.crc)
        if not final.parent.is_dir():
            mkdir_private(final.parent)
        os.replace(w.path, final)
        self._close_kept((w.vid, w.index))  # a file kept open for hits is no longer this chunk's
        w.closed = True
        # Readers still sending from the writer's descriptor keep it: reopened read-only in place
        # (same number), so a placed chunk is never held open for writing (a file system can then
        # be remounted read-only under a reader).
        with contextlib.suppress(OSError):
            ro = os.open(final, os.O_RDONLY)
            try:
                os.dup2(ro, w.fd, inheritable=False)
            finally:
                os.close(ro)
        return w.crc

    def discard(self, w: ChunkWriter) -> None:
        """End a write that is not to be kept: its temp file goes (its descriptor stays open)."""
        if w.closed:
            return
        w.closed = True
        with contextlib.suppress(OSError):
            os.unlink(w.path)

    def write_meta(self, vid: str, meta: ObjectMeta, chunk_size: int) -> None:
        body = json.dumps({"meta": meta.to_json(), "chunk_size": chunk_size, "stored_at": time.time()}).encode()
        tmp = self.tmp / (secrets.token_hex(8) + ".meta")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly, whatever the umask
            os.write(fd, body)
        finally:
            os.close(fd)
        path = self.meta_path(vid)
        mkdir_private(path.parent)
        os.replace(tmp, path)

    def unlink(self, paths: list[str]) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError:
                self.stats.write_errors += 1


@dataclasses.dataclass(slots=True)
class VersionFiles:
    """One version's files found in a cache directory: its metadata file and what it says, and
    its chunk files."""

    vid: str
    meta_path: str
    meta: ObjectMeta
    chunk_size: int
    stored_at: float  # wall time its metadata was written
    chunks: dict[int, tuple[int, str]]  # index -> (digest, path)

    def paths(self) -> list[str]:
        return [p for _, p in self.chunks.values()] + [self.meta_path]


def _load_meta(path: str) -> tuple[ObjectMeta, int, float] | None:
    """(metadata, chunk size, stored at) from a version's metadata file; None if unreadable."""
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read())
        cs = d["chunk_size"]
        if not isinstance(cs, int) or cs <= 0:
            return None
        return ObjectMeta.from_json(d["meta"]), cs, float(d.get("stored_at", 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_dir(root: Path) -> tuple[list[VersionFiles], list[str]]:
    """The versions in a cache directory (``<cache_dir>/v2``), read by the store at start and by
    ``sidecar verify``; and the files that belong to none, to be deleted: names of neither
    kind, metadata that cannot be read or does not hash to its own name, chunk files without
    such metadata, and a second file of one chunk (the first by digest is kept). Blocking."""
    metas: dict[str, tuple[str, ObjectMeta, int, float]] = {}
    chunks: dict[str, dict[int, tuple[int, str]]] = {}
    stray: list[str] = []
    for kind, vid, index, digest, path in sorted(chunkfile.scan(root)):
        if kind == "meta":
            loaded = _load_meta(path)
            if loaded is not None:
                meta, cs, stored_at = loaded
                if chunkfile.version_id(meta.bucket, meta.key, meta.etag, meta.size, cs) == vid:
                    metas[vid] = (path, meta, cs, stored_at)
                    continue
        elif kind == "chunk":
            files = chunks.setdefault(vid, {})
            if index not in files:
                files[index] = (digest, path)
                continue
        stray.append(path)
    found = [VersionFiles(vid, path, meta, cs, stored_at, chunks.pop(vid, {}))
             for vid, (path, meta, cs, stored_at) in metas.items()]
    for files in chunks.values():
        stray.extend(p for _, p in files.values())
    return found, stray


def scrub_file(path: Path, length: int, digest: int) -> tuple[str | None, Checked | None]:
    """Read a whole chunk file from the media and check it: (problem or None, the good check).
    Blocking (run it in a worker thread). Its clean pages are dropped from the page cache
    first, so the bytes checked are the bytes on the device, not a cached copy of them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "missing", None
    except OSError:
        return "io-error", None
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        st = os.fstat(fd)
        problem = chunkfile.check_file(fd, length, digest)
        if problem is not None:
            return problem, None
        found = chunkfile.read_table(fd, length, digest)
        if found is None:
            return "crc", None
        table, piece = found
        return None, Checked(_stamp(st), table, piece, (1 << (len(table) // 4)) - 1)
    except OSError:
        return "io-error", None
    finally:
        os.close(fd)
