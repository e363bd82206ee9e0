"""The chunk store: verified chunks of object versions on local disk, under a byte budget.

Files are laid out as ``cache/chunkfile.py`` describes (``<cache_dir>/v2/``): ``vid`` is a hash
of (bucket, key, ETag, size, chunk size), so a version's chunks can never be mistaken for
another version's and keys never become paths. A chunk is written to ``tmp/`` and renamed into
place, so a crash leaves whole chunks or none. Each chunk carries a CRC32C per 64 KiB piece; a
read checks the pieces it touches unless the file is known unchanged since they were checked
(``chunk_verification``), so a torn or rotted file is a miss, never bytes on the wire. The index
is rebuilt from file names at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..objects import ObjectMeta
from . import chunkfile
from .chunkfile import FORMAT, PieceSums, crc32c, full_mask, pieces_mask
from .layout import ChunkLayout
from .policy import EvictionPolicy
from .ramtier import RamTier
from .space import CacheSpace, NoRoom

__all__ = ["FORMAT", "ChunkStore", "ChunkWriter", "VerifiedChunk", "Version", "crc32c", "version_id"]

ChunkKey = tuple[str, int]
Stamp = tuple[int, int, int, int]  # a file's identity: (inode, size, mtime_ns, ctime_ns)

# A file's identity only proves "unchanged" once the clock has moved past its ctime: file times
# are taken from a coarse clock, so a write within the same tick as the check could leave them
# equal (git's "racily clean" problem). A check this close to the file's ctime is not memoised.
RACY_NS = 50_000_000


def mkdir_private(path: Path) -> None:
    """A cache directory, 0700 whatever the umask (umask can only take bits away, and one
    that takes the owner's would make the directory unusable)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _memoisable(stamp: Stamp) -> bool:
    return time.time_ns() - stamp[3] > RACY_NS


def version_id(bucket: str, key: str, etag: str, size: int, chunk_size: int) -> str:
    h = hashlib.sha256()
    for part in (bucket, key, etag, str(size), str(chunk_size)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:40]


@dataclasses.dataclass(slots=True)
class Version:
    """A cached object version: its metadata and which chunks are on disk."""

    vid: str
    meta: ObjectMeta
    chunks: dict[int, int] = dataclasses.field(default_factory=dict)  # index -> crc32c
    meta_written: bool = False
    dropped: bool = False  # invalidated: nothing may be committed to it any more
    writers: int = 0  # chunks being written
    stored_at: float = 0.0  # wall time its metadata was written (restored versions)

    @property
    def cached_bytes(self) -> int:
        return sum(self.length(i) for i in self.chunks)

    def length(self, index: int) -> int:
        return ChunkLayout(self.chunk_size).length(index, self.meta.size)

    chunk_size: int = 0


@dataclasses.dataclass(slots=True)
class VerifiedChunk:
    """An open chunk: bytes in memory (``data``, always verified) or a file descriptor whose
    data bytes are at offsets 0..length-1. Pieces set in ``checked`` are known good (by a check
    in this process of a file with the same identity); ``covered`` says whether a range may be
    sent from the descriptor as is, and ``read_checked`` reads and checks a range (blocking,
    safe in a worker thread). Close it."""

    length: int
    data: bytes | memoryview | None = None
    fd: int = -1
    crc: int = 0  # of the trailer: what the index recorded
    checked: int = 0  # bit mask of pieces known good
    stamp: Stamp | None = None
    table: tuple[int, ...] | None = None  # piece CRCs, once read and matched against ``crc``

    @property
    def verified(self) -> bool:
        return self.data is not None or self.checked == full_mask(self.length)

    def covered(self, lo: int, hi: int) -> bool:
        want = pieces_mask(lo, hi)
        return self.checked & want == want

    def read_checked(self, lo: int, hi: int) -> memoryview | None:
        """Data bytes lo..hi read once and checked, or None if they are not as recorded (or
        the disk fails)."""
        try:
            if self.table is None:
                self.table = chunkfile.read_table(self.fd, self.length, self.crc)
                if self.table is None:
                    return None
            data = chunkfile.read_checked(self.fd, self.table, self.length, lo, hi)
        except (OSError, ValueError):
            return None
        if data is not None:
            self.checked |= pieces_mask(lo, hi)
        return data

    def verify(self) -> bool:
        """Check every byte of the file (and that it is exactly as long as recorded)."""
        if self.verified:
            return True
        try:
            if os.fstat(self.fd).st_size != chunkfile.file_size(self.length):
                return False
        except OSError:
            return False
        for lo in range(0, self.length, chunkfile.CHECK_WINDOW):
            if self.read_checked(lo, min(self.length, lo + chunkfile.CHECK_WINDOW) - 1) is None:
                return False
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ChunkWriter:
    """A chunk being written to a temp file; ``commit`` makes it visible atomically.

    The descriptor outlives commit and abort (readers may still be sending from it); whoever
    owns the writer calls ``close`` when the last reader is done."""

    __slots__ = ("version", "vid", "index", "length", "path", "fd", "written", "crc", "reserved", "closed", "sums")

    def __init__(self, version: Version, index: int, length: int, path: Path, fd: int, reserved: bool) -> None:
        self.version = version
        self.vid = version.vid
        self.index = index
        self.length = length
        self.path = path
        self.fd = fd
        self.written = 0
        self.crc = 0  # of the trailer, once ``seal`` wrote it
        self.reserved = reserved
        self.closed = False
        self.sums = PieceSums()

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
        """Append the piece table (the data is complete); its CRC32C names the file."""
        trailer = self.sums.trailer(self.length)
        view = memoryview(trailer)
        pos = self.length
        while view:
            n = os.pwrite(self.fd, view, pos)
            view, pos = view[n:], pos + n
        self.crc = crc32c(trailer)


    @property
    def complete(self) -> bool:
        return self.written == self.length

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class StoreStats:
    __slots__ = ("crc_failures", "evictions", "evicted_bytes", "write_errors", "read_errors", "rebuilt_chunks",
                 "ram_hits", "checked_bytes", "scrubbed_bytes", "scrub_failures", "scrub_passes")

    def __init__(self) -> None:
        self.crc_failures = 0
        self.evictions = 0
        self.evicted_bytes = 0
        self.write_errors = 0
        self.read_errors = 0
        self.rebuilt_chunks = 0
        self.ram_hits = 0
        self.checked_bytes = 0  # chunk bytes read back and checked to serve a read
        self.scrubbed_bytes = 0  # chunk bytes the background scrub read from the media and checked
        self.scrub_failures = 0
        self.scrub_passes = 0  # complete passes over the cache


class ChunkStore:
    """Chunks on disk plus the in-memory index, budget and small-chunk RAM cache."""

    def __init__(self, root: Path, *, chunk_size: int, capacity: int, policy: EvictionPolicy,
                 ram_chunk_max: int = 64 * 1024, ram_cache_size: int = 0,
                 verify_every_read: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[str, int, int], None] | None = None) -> None:
        self.root = Path(root) / FORMAT
        self.tmp = self.root / "tmp"
        self.chunk_size = chunk_size
        self.layout = ChunkLayout(chunk_size)
        self.space = CacheSpace(capacity, policy)
        self.versions: dict[str, Version] = {}
        self.clock = clock
        self.stats = StoreStats()
        self.on_evict = on_evict
        # Chunks a prefetch committed that no client has read yet -> their length. The first
        # read counts them useful (``take_prefetched``); leaving before that counts them wasted.
        self.prefetched: dict[ChunkKey, int] = {}
        self.on_prefetch_wasted: Callable[[int], None] | None = None
        # Seconds a prefetched chunk is protected from eviction by demand data while unread:
        # the predictor's horizon (the prefetch loop sets it from the model); 0: no protection.
        self.prefetch_credit = 300.0
        self.ram = RamTier(ram_cache_size, ram_chunk_max)  # verified small chunks, in front of the files
        self._vids: dict[tuple[str, str, str, int], str] = {}  # memo of version_id()
        # when-changed verification: each chunk file's identity at its last good check and the
        # pieces that check covered. Any write through the file system changes mtime/ctime (and
        # a replacement the inode); a match means the same bytes. every-read keeps no memo.
        self._verify_every_read = verify_every_read
        self._checked: dict[ChunkKey, tuple[Stamp, int]] = {}
        # piece tables read from chunk files and matched against the index's CRC
        self._tables: dict[ChunkKey, tuple[int, ...]] = {}
        self.dropped_formats: list[str] = []  # older cache formats deleted at start

    # --- paths ------------------------------------------------------------------------------

    def _chunk_path(self, vid: str, index: int, crc: int) -> Path:
        return chunkfile.chunk_path(self.root, vid, index, crc)

    def _meta_path(self, vid: str) -> Path:
        return chunkfile.meta_path(self.root, vid)

    def chunk_file(self, vid: str, index: int) -> Path | None:
        """Where a cached chunk's bytes are (``sidecar verify``), or None if it is not cached."""
        v = self.versions.get(vid)
        crc = v.chunks.get(index) if v is not None else None
        return None if crc is None else self._chunk_path(vid, index, crc)

    # --- start ------------------------------------------------------------------------------

    def open(self) -> list[Version]:
        """Create the layout and rebuild the index from disk. Returns the versions found."""
        for d in (self.root.parent, self.root, self.tmp):
            mkdir_private(d)
        self.dropped_formats = chunkfile.drop_old_formats(self.root.parent)
        for entry in os.scandir(self.tmp):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        found_files = chunkfile.scan(self.root)
        self._unlink_all(found_files.stray)
        chunk_files = found_files.chunks
        metas: dict[str, tuple[ObjectMeta, float]] = {}
        for vid, path in found_files.metas.items():
            loaded = self._load_meta(path)
            if loaded is None:
                self._unlink_all([path])
            else:
                metas[vid] = loaded
        # One version per (bucket, key): the most recently stored wins, older ones are dead.
        newest: dict[tuple[str, str], tuple[float, str]] = {}
        for vid, (meta, stored_at) in metas.items():
            k = (meta.bucket, meta.key)
            if k not in newest or newest[k][0] < stored_at:
                newest[k] = (stored_at, vid)
        live = {vid for _, vid in newest.values()}
        found: list[tuple[float, Version]] = []
        for vid, (meta, stored_at) in metas.items():
            files = chunk_files.pop(vid, [])
            if vid not in live or version_id(meta.bucket, meta.key, meta.etag, meta.size, self.chunk_size) != vid:
                self._unlink_all([p for _, _, p in files] + [str(self._meta_path(vid))])
                continue
            v = Version(vid, meta, meta_written=True, chunk_size=self.chunk_size, stored_at=stored_at)
            n = self.layout.count(meta.size)
            for index, crc, path in sorted(files):
                if index >= n or index in v.chunks:
                    self._unlink_all([path])
                    continue
                v.chunks[index] = crc
            self.versions[vid] = v
            found.append((stored_at, v))
        for files in chunk_files.values():  # chunks without metadata
            self._unlink_all([p for _, _, p in files])
        # Admit oldest first so the policy's recency order follows storage order.
        now = self.clock()
        for _, v in sorted(found, key=lambda t: t[0]):
            for index in sorted(v.chunks):
                try:
                    self._admit((v.vid, index), v.length(index), now)
                except NoRoom:
                    self._drop_chunk(v, index)
                    continue
                self.stats.rebuilt_chunks += 1
        return [v for _, v in found]

    def _load_meta(self, path: str) -> tuple[ObjectMeta, float] | None:
        try:
            with open(path, "rb") as f:
                d = json.loads(f.read())
            if d.get("chunk_size") != self.chunk_size:
                return None
            return ObjectMeta.from_json(d["meta"]), float(d.get("stored_at", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # --- versions ---------------------------------------------------------------------------

    def version_for(self, meta: ObjectMeta) -> Version:
        ident = (meta.bucket, meta.key, meta.etag, meta.size)
        vid = self._vids.get(ident)
        if vid is None:
            vid = version_id(meta.bucket, meta.key, meta.etag, meta.size, self.chunk_size)
            if len(self._vids) >= 65536:
                self._vids.clear()
            self._vids[ident] = vid
        v = self.versions.get(vid)
        if v is None:
            v = Version(vid, meta, chunk_size=self.chunk_size)
            self.versions[vid] = v
        return v

    def drop_version(self, vid: str) -> None:
        """Forget a version and delete its files (it was overwritten, deleted or purged)."""
        v = self.versions.pop(vid, None)
        if v is None:
            return
        v.dropped = True
        for index in list(v.chunks):
            self.space.forget((vid, index))
            self._forget_in_memory((vid, index))
            if self.prefetched:
                self._prefetch_left((vid, index))
        paths = [str(self._chunk_path(vid, i, crc)) for i, crc in v.chunks.items()]
        v.chunks.clear()
        self._unlink_all(paths + [str(self._meta_path(vid))])

    def _write_meta(self, v: Version) -> None:
        body = json.dumps({"meta": v.meta.to_json(), "chunk_size": self.chunk_size,
                           "stored_at": time.time()}).encode()
        self._atomic_write(self._meta_path(v.vid), body)
        v.meta_written = True

    def _atomic_write(self, path: Path, body: bytes) -> None:
        tmp = self.tmp / (secrets.token_hex(8) + ".meta")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly, whatever the umask
            os.write(fd, body)
        finally:
            os.close(fd)
        mkdir_private(path.parent)
        os.replace(tmp, path)

    # --- reads ------------------------------------------------------------------------------

    def has(self, vid: str, index: int) -> bool:
        v = self.versions.get(vid)
        return v is not None and index in v.chunks

    def open_verified(self, vid: str, index: int) -> VerifiedChunk | None:
        """The chunk, verified against its CRC32C, or None (a miss). Bad files are removed."""
        chunk = self.open_chunk(vid, index)
        if chunk is not None and not chunk.verify():
            self.discard(vid, index, chunk)
            return None
        if chunk is not None:
            self.note_verified(vid, index, chunk)
        return chunk

    def ram_chunk(self, vid: str, index: int) -> bytes | None:
        """The chunk's verified bytes if it is held in memory (a hit), else None."""
        key = (vid, index)
        data = self.ram.get(key)
        if data is not None:
            self.space.hit(key, self.clock())
            self.stats.ram_hits += 1
        return data

    def open_chunk(self, vid: str, index: int) -> VerifiedChunk | None:
        """The chunk, or None (a miss). Small chunks come back in memory and verified; larger
        ones as an open file whose ``checked`` pieces are known good (when-changed, identity
        unchanged): the caller sends a range from the file only if ``covered``, and otherwise
        sends what ``read_checked`` returns (``discard`` if that fails) — off the event loop if
        it likes, then ``note_verified``."""
        v = self.versions.get(vid)
        if v is None or index not in v.chunks:
            return None
        key = (vid, index)
        now = self.clock()
        data = self.ram.get(key)
        if data is not None:
            self.space.hit(key, now)
            self.stats.ram_hits += 1
            return VerifiedChunk(len(data), data=data)
        crc = v.chunks[index]
        length = v.length(index)
        try:
            fd = os.open(self._chunk_path(vid, index, crc), os.O_RDONLY)
        except OSError:
            self.stats.read_errors += 1
            self._drop_chunk(v, index)
            return None
        if self.ram.holds(length):
            try:
                raw = os.pread(fd, chunkfile.file_size(length) + 1, 0)
            except OSError:
                raw = b""
            finally:
                os.close(fd)
            self.stats.checked_bytes += length
            if not chunkfile.check_bytes(raw, length, crc):
                return self._corrupt(v, index)
            data = raw[:length]
            self.ram.put(key, data)
            self.space.hit(key, now)
            return VerifiedChunk(length, data=data)
        try:
            stamp = _stamp(os.fstat(fd))
        except OSError:
            os.close(fd)
            self.stats.read_errors += 1
            self._drop_chunk(v, index)
            return None
        if stamp[1] != chunkfile.file_size(length):  # truncated or extended: no piece can be trusted
            os.close(fd)
            return self._corrupt(v, index)
        self.space.hit(key, now)
        chunk = VerifiedChunk(length, fd=fd, crc=crc, stamp=stamp, table=self._tables.get(key))
        if not self._verify_every_read:
            known = self._checked.get(key)
            if known is not None and known[0] == stamp:
                chunk.checked = known[1]
        return chunk

    def note_verified(self, vid: str, index: int, chunk: VerifiedChunk) -> None:
        """Remember what a check found good: the piece table, and (when-changed) the pieces
        checked under the file's identity."""
        key = (vid, index)
        v = self.versions.get(vid)
        if v is None or v.chunks.get(index) != chunk.crc:
            return  # dropped or replaced meanwhile
        if chunk.table is not None:
            self._tables[key] = chunk.table
        if self._verify_every_read or chunk.stamp is None or not _memoisable(chunk.stamp):
            return
        known = self._checked.get(key)
        mask = chunk.checked | (known[1] if known is not None and known[0] == chunk.stamp else 0)
        self._checked[key] = (chunk.stamp, mask)

    def discard(self, vid: str, index: int, chunk: VerifiedChunk) -> None:
        """A chunk failed verification: count it, close it, and delete it."""
        chunk.close()
        v = self.versions.get(vid)
        if v is not None and index in v.chunks and v.chunks[index] == chunk.crc:
            self._corrupt(v, index)

    def drop_corrupt(self, vid: str, index: int) -> None:
        """A check (``sidecar verify``) found the chunk's bytes bad: count it and delete it."""
        v = self.versions.get(vid)
        if v is not None and index in v.chunks:
            self._corrupt(v, index)

    def _corrupt(self, v: Version, index: int) -> None:
        self.stats.crc_failures += 1
        self._drop_chunk(v, index)
        return None

    def _forget_in_memory(self, key: ChunkKey) -> None:
        """Drop what the process remembers of a chunk: its RAM copy, piece table and checks."""
        self._checked.pop(key, None)
        self._tables.pop(key, None)
        self.ram.drop(key)

    # --- writes -----------------------------------------------------------------------------

    def begin_write(self, v: Version, index: int, keep: bool = True) -> ChunkWriter:
        """Open a temp file for a chunk and reserve its bytes in the budget (evicting as needed).
        When nothing can be evicted, or ``keep`` is false (a do-not-cache rule), the writer
        still works — readers tail it — but its chunk is not kept.
        Raises OSError when the disk refuses the temp file."""
        length = v.length(index)
        evicted, reserved = [], False
        if keep:
            try:
                evicted = self.space.reserve(length, self.clock())
                reserved = True
            except NoRoom:
                pass
        self._evicted(evicted, "capacity")
        path = self.tmp / f"{v.vid}.{index}.{secrets.token_hex(6)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchmod(fd, 0o600)  # exactly, whatever the umask
        except OSError:
            if reserved:
                self.space.release(length)
            self.stats.write_errors += 1
            raise
        v.writers += 1
        return ChunkWriter(v, index, length, path, fd, reserved)

    def commit(self, w: ChunkWriter, prefetched: bool = False) -> bool:
        """Make a complete chunk visible under its final name. Returns whether it was kept.
        ``prefetched``: fetched ahead of demand, watched until a client reads it."""
        if w.closed:
            return False
        v = w.version
        if not (w.reserved and w.complete) or v.dropped:
            self.abort(w)
            return False
        # The version may have been forgotten while empty; it is live again.
        v = self.versions.setdefault(v.vid, v)
        try:
            w.seal()
            if not v.meta_written:
                self._write_meta(v)
            final = self._chunk_path(w.vid, w.index, w.crc)
            if not final.parent.is_dir():
                mkdir_private(final.parent)
            os.replace(w.path, final)
        except OSError:
            self.stats.write_errors += 1
            self.abort(w)
            return False
        w.closed = True
        w.version.writers -= 1
        old_crc = v.chunks.get(w.index)
        if old_crc is not None and old_crc != w.crc:
            self._unlink_all([str(self._chunk_path(w.vid, w.index, old_crc))])
        v.chunks[w.index] = w.crc
        self._note_written(w)
        now = self.clock()
        credit = {}
        if prefetched:
            self.prefetched[(w.vid, w.index)] = w.length
            # Protected from demand data until read or the predicted read's horizon (QoSPolicy).
            if self.prefetch_credit > 0 and getattr(self.space.policy, "is_credited", None) is not None:
                credit["credit_until"] = now + self.prefetch_credit
        evicted = self.space.insert((w.vid, w.index), w.length, now, reserved=True, **credit)
        self._evicted(evicted, "capacity")
        return True

    def _note_written(self, w: ChunkWriter) -> None:
        """The bytes just committed were checksummed as they were written: their pieces are
        known good while the file keeps its identity (unless the clock has not yet moved past
        its ctime, see RACY_NS)."""
        key = (w.vid, w.index)
        self._checked.pop(key, None)
        self._tables[key] = w.sums.table()
        if self._verify_every_read:
            return
        try:
            stamp = _stamp(os.fstat(w.fd))
        except OSError:
            return
        if _memoisable(stamp):
            self._checked[key] = (stamp, full_mask(w.length))

    def abort(self, w: ChunkWriter) -> None:
        if w.closed:
            return
        w.closed = True
        v = w.version
        v.writers -= 1
        if not v.chunks and not v.writers and self.versions.get(v.vid) is v:
            del self.versions[v.vid]  # an empty version nobody is filling
        if w.reserved:
            self.space.release(w.length)
        with contextlib.suppress(OSError):
            os.unlink(w.path)

    # --- eviction ---------------------------------------------------------------------------

    def _admit(self, key: ChunkKey, size: int, now: float) -> None:
        evicted = self.space.insert(key, size, now)
        self._evicted(evicted, "capacity")

    def _evicted(self, keys: list, reason: str) -> None:
        for vid, index in keys:
            v = self.versions.get(vid)
            if v is None:
                continue
            self.stats.evictions += 1
            self.stats.evicted_bytes += v.length(index)
            if self.on_evict is not None:
                self.on_evict(reason, 1, v.length(index))
            self._drop_chunk(v, index, in_space=False)

    def _drop_chunk(self, v: Version, index: int, in_space: bool = True) -> None:
        crc = v.chunks.pop(index, None)
        if self.prefetched:
            self._prefetch_left((v.vid, index))
        if in_space:
            self.space.remove((v.vid, index))
        self._forget_in_memory((v.vid, index))
        if crc is not None:
            self._unlink_all([str(self._chunk_path(v.vid, index, crc))])
        if not v.chunks:
            # Nothing left on disk for this version: forget it and its metadata file.
            if v.meta_written:
                self._unlink_all([str(self._meta_path(v.vid))])
                v.meta_written = False
            if not v.writers and self.versions.get(v.vid) is v:
                del self.versions[v.vid]

    def take_prefetched(self, vid: str, index: int) -> int:
        """A client read the chunk: its length if a prefetch brought it and this is the first
        read since (then it is no longer watched), else 0."""
        return self.prefetched.pop((vid, index), 0) if self.prefetched else 0

    def _prefetch_left(self, key: ChunkKey) -> None:
        n = self.prefetched.pop(key, 0)
        if n and self.on_prefetch_wasted is not None:
            self.on_prefetch_wasted(n)

    def _unlink_all(self, paths: list[str]) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError:
                self.stats.write_errors += 1

    # --- accounting -------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return self.space.used

    @property
    def entries(self) -> int:
        return len(self.space)

    def iter_versions(self) -> Iterator[Version]:
        return iter(list(self.versions.values()))

    def chunk_count(self, v: Version) -> int:
        return self.layout.count(v.meta.size)
