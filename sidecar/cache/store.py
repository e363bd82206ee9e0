"""The chunk store: verified chunks of object versions on local disk, under a byte budget.

Layout under ``<cache_dir>/v2/``::

    tmp/                          chunks being written (cleared at start)
    <aa>/<vid>.meta               JSON: bucket, key, ETag, size, headers, chunk size
    <aa>/<vid>.<index>.<digest>   chunk bytes + piece CRC32C table (``chunkfile.py``)

``vid`` is a hash of (bucket, key, ETag, size, chunk size): a version's chunks can never be
mistaken for another version's, and keys never become paths. A chunk is written to ``tmp/``
and renamed into place, so a crash leaves whole chunks or none. The index is rebuilt from file
names at start; a cache directory of an older format is deleted then, never read.

Verification (docs/integrity.md): a read checks the 64 KiB pieces its range touches, unless
those pieces were checked since the file last changed (its inode, size, mtime and ctime are the
same as at that check) and strict mode (``verify_every_read``) is off; then the file's bytes
may be sent with sendfile from the page cache unchecked. ``scrub_next`` re-reads chunk files
past the page cache at a bounded rate to find media corruption the identity cannot show.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..objects import ObjectMeta
from . import chunkfile
from .chunkfile import FORMAT, OLD_FORMATS, PieceSums
from .layout import ChunkLayout
from .policy import EvictionPolicy
from .ramtier import RamTier
from .space import Budget, NoRoom

ChunkKey = tuple[str, int]
Stamp = tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns) of a chunk file


def mkdir_private(path: Path) -> None:
    """A cache directory, 0700 whatever the umask (umask can only take bits away, and one
    that takes the owner's would make the directory unusable)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
    chunks: dict[int, int] = dataclasses.field(default_factory=dict)  # index -> digest of its piece table
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
    touches and returns the very bytes checked (send those: the file is read once). ``check``
    blocks and may run in a worker thread. Close it."""

    length: int
    data: bytes | None = None
    fd: int = -1
    digest: int = 0
    verified: bool = True
    known: Checked | None = None  # the table (and checks) this file is read against

    def check(self, lo: int, hi: int) -> memoryview | None:
        """Bytes lo..hi (chunk offsets, inclusive), checked against their pieces' CRC32Cs; None
        if any of them is bad (or the file cannot be read: a bad chunk too)."""
        try:
            if self.known is None:
                st = os.fstat(self.fd)
                if st.st_size != chunkfile.file_size(self.length):
                    return None
                found = chunkfile.read_table(self.fd, self.length, self.digest)
                if found is None:
                    return None
                self.known = Checked(_stamp(st), found[0], found[1])
            k = self.known
            p0, p1 = lo // k.piece, hi // k.piece
            view = chunkfile.check_pieces(self.fd, k.table, k.piece, self.length, p0, p1)
        except (OSError, ValueError):
            return None
        if view is None:
            return None
        k.mask |= ((1 << (p1 - p0 + 1)) - 1) << p0
        base = p0 * k.piece
        return view[lo - base:hi - base + 1]

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
        self.crc = 0  # the chunk's digest, known once ``seal`` appended the piece table
        self.sums = PieceSums()
        self.reserved = reserved
        self.closed = False

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


class StoreStats:
    __slots__ = ("crc_failures", "evictions", "evicted_bytes", "write_errors", "read_errors", "rebuilt_chunks",
                 "ram_hits", "checked_bytes", "unchecked_bytes", "scrubbed_bytes", "scrub_pass_seconds")

    def __init__(self) -> None:
        self.crc_failures = 0
        self.evictions = 0
        self.evicted_bytes = 0
        self.write_errors = 0
        self.read_errors = 0
        self.rebuilt_chunks = 0
        self.ram_hits = 0
        self.checked_bytes = 0  # read from disk and checked against piece CRCs to serve a read
        self.unchecked_bytes = 0  # handed out for sendfile: checked since the file last changed
        self.scrubbed_bytes = 0
        self.scrub_pass_seconds = 0.0  # how long the last whole pass of the scrub took


class ChunkStore:
    """Chunks on disk plus the in-memory index, budget and small-chunk RAM cache."""

    def __init__(self, root: Path, *, chunk_size: int, capacity: int, policy: EvictionPolicy,
                 ram_chunk_max: int = 64 * 1024, ram_cache_size: int = 0,
                 verify_every_read: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[str, int, int], None] | None = None) -> None:
        self.root = Path(root) / FORMAT
        self.tmp = self.root / "tmp"
        self.chunk_size = chunk_size
        self.layout = ChunkLayout(chunk_size)
        # The index (``versions``, each with its ``chunks``) is the one record of which chunks are
        # cached; the budget counts their bytes and asks the index their sizes.
        self.versions: dict[str, Version] = {}
        self.space = Budget(capacity, policy, self._cached_length)
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
        # The piece table and the pieces checked since each chunk file last changed (its identity:
        # any write through the file system changes mtime/ctime). Strict mode checks anyway.
        self._verify_every_read = verify_every_read
        self._checked: dict[ChunkKey, Checked] = {}
        self._scrub_order: list[ChunkKey] = []  # the chunks the scrub's current pass has left
        self._scrub_started = 0.0
        self.scrub_passes = 0  # passes the scrub has begun

    # --- paths ------------------------------------------------------------------------------

    def _dir(self, vid: str) -> Path:
        return self.root / vid[:2]

    def _chunk_path(self, vid: str, index: int, crc: int) -> Path:
        return self._dir(vid) / chunkfile.chunk_name(vid, index, crc)

    def _meta_path(self, vid: str) -> Path:
        return self._dir(vid) / chunkfile.meta_name(vid)

    def _cached_length(self, key: ChunkKey) -> int | None:
        v = self.versions.get(key[0])
        return v.length(key[1]) if v is not None and key[1] in v.chunks else None

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
        for old in OLD_FORMATS:  # another layout and trailer: never read, just deleted
            shutil.rmtree(self.root.parent / old, ignore_errors=True)
        for entry in os.scandir(self.tmp):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        metas: dict[str, tuple[ObjectMeta, float]] = {}
        chunk_files: dict[str, list[tuple[int, int, str]]] = {}
        for kind, vid, index, digest, path in chunkfile.scan(self.root):
            if kind == "meta":
                loaded = self._load_meta(path)
                if loaded is not None:
                    metas[vid] = loaded
                    continue
            elif kind == "chunk":
                chunk_files.setdefault(vid, []).append((index, digest, path))
                continue
            with contextlib.suppress(OSError):
                os.unlink(path)
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
                    self._drop_chunk(v, index, counted=False)
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
        elif v.meta is not meta:
            self._learn_checksums(v, meta)
        return v

    def _learn_checksums(self, v: Version, meta: ObjectMeta) -> None:
        """Keep on disk the upstream's checksum answers learned since the version's metadata was
        written: after a restart they are replayed without asking again."""
        learned = v.meta.learned(meta)
        if learned is v.meta:
            return
        v.meta = learned
        if v.meta_written and not v.dropped:
            try:
                self._write_meta(v)
            except OSError:
                self.stats.write_errors += 1

    def drop_version(self, vid: str) -> None:
        """Forget a version and delete its files (it was overwritten, deleted or purged)."""
        v = self.versions.pop(vid, None)
        if v is None:
            return
        v.dropped = True
        for index in list(v.chunks):
            self.space.take((vid, index), v.length(index), dead=True)
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
        """The whole chunk, checked (strict: every piece), or None (a miss). Bad files are removed.
        Blocking: for tests and tools, not the event loop."""
        chunk = self.open_chunk(vid, index)
        if chunk is None or chunk.data is not None:
            return chunk
        view = chunk.check(0, chunk.length - 1)
        if view is None:
            self.discard(vid, index, chunk)
            return None
        self.note_verified(vid, index, chunk)
        chunk.data = bytes(view)
        return chunk

    def ram_chunk(self, vid: str, index: int) -> bytes | None:
        """The chunk's verified bytes if it is held in memory (a hit), else None."""
        key = (vid, index)
        data = self.ram.get(key)
        if data is not None:
            self.space.touch(key, self.clock())
            self.stats.ram_hits += 1
        return data

    def open_chunk(self, vid: str, index: int, lo: int = 0, hi: int = -1) -> VerifiedChunk | None:
        """The chunk, opened to read bytes lo..hi (chunk offsets; -1: its end), or None (a miss).
        Small chunks come back in memory, checked. Larger ones as an open file: ``verified`` when
        the pieces of lo..hi were checked since the file last changed (and strict mode is off),
        so the caller may sendfile them; otherwise the caller must send only what
        ``chunk.check(lo, hi)`` returns (and ``discard`` the chunk if that is None)."""
        v = self.versions.get(vid)
        if v is None or index not in v.chunks:
            return None
        key = (vid, index)
        now = self.clock()
        data = self.ram.get(key)
        if data is not None:
            self.space.touch(key, now)
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
                image = os.pread(fd, chunkfile.file_size(length) + 1, 0)
            except OSError:
                image = b""
            finally:
                os.close(fd)
            if not chunkfile.check_image(image, length, crc):
                return self._corrupt(v, index)
            data = image[:length]
            self.stats.checked_bytes += length
            self.ram.put(key, data)
            self.space.touch(key, now)
            return VerifiedChunk(length, data=data)
        self.space.touch(key, now)
        chunk = VerifiedChunk(length, fd=fd, digest=crc, verified=False)
        known = self._checked.get(key)
        if known is not None:
            try:
                same = _stamp(os.fstat(fd)) == known.stamp
            except OSError:
                same = False
            if not same:  # changed since its last check: check again, from its trailer on
                del self._checked[key]
            else:
                chunk.known = known
                if not self._verify_every_read:
                    last = length - 1 if hi < 0 else hi
                    chunk.verified = known.covers(lo // known.piece, last // known.piece)
        return chunk

    def note_verified(self, vid: str, index: int, chunk: VerifiedChunk, nbytes: int = 0) -> None:
        """Remember a good check: the file's identity, piece table and the pieces checked."""
        self.stats.checked_bytes += nbytes
        if chunk.known is not None and self.has(vid, index):
            self._checked.setdefault((vid, index), chunk.known)

    def forget_checked(self, vid: str, index: int) -> None:
        """Trust nothing checked about this chunk file: its next read checks its pieces."""
        self._checked.pop((vid, index), None)

    def discard(self, vid: str, index: int, chunk: VerifiedChunk) -> None:
        """A chunk failed verification: count it, close it, and delete it."""
        chunk.close()
        v = self.versions.get(vid)
        if v is not None and index in v.chunks and v.chunks[index] == chunk.digest:
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
        """Drop what the process remembers of a chunk: its RAM copy and its checked pieces."""
        self._checked.pop(key, None)
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
            if not v.meta_written:
                self._write_meta(v)
            w.seal()
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
        if old_crc is not None:  # a refetch of a chunk already cached replaces it
            self.space.take((w.vid, w.index), w.length)
            if old_crc != w.crc:
                self._unlink_all([str(self._chunk_path(w.vid, w.index, old_crc))])
        v.chunks[w.index] = w.crc
        now = self.clock()
        credit = {}
        if prefetched:
            self.prefetched[(w.vid, w.index)] = w.length
            # Protected from demand data until read or the predicted read's horizon (QoSPolicy).
            if self.prefetch_credit > 0 and getattr(self.space.policy, "is_credited", None) is not None:
                credit["credit_until"] = now + self.prefetch_credit
        evicted = self.space.add((w.vid, w.index), w.length, now, reserved=True, **credit)
        self._evicted(evicted, "capacity")
        return True

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

    # --- scrub ------------------------------------------------------------------------------

    def scrub_next(self) -> tuple[ChunkKey, Path, int, int] | None:
        """The next chunk file the scrub should read — (key, path, length, digest) — in passes over
        the whole cache; None when the cache is empty. A pass's duration is kept in stats."""
        while True:
            if not self._scrub_order:
                now = self.clock()
                if self._scrub_started:
                    self.stats.scrub_pass_seconds = now - self._scrub_started
                self._scrub_order = [(vid, i) for vid, v in self.versions.items() for i in v.chunks]
                self._scrub_order.reverse()
                self._scrub_started = now if self._scrub_order else 0.0
                self.scrub_passes += bool(self._scrub_order)
                if not self._scrub_order:
                    return None
            vid, index = self._scrub_order.pop()
            v = self.versions.get(vid)
            if v is not None and index in v.chunks:
                crc = v.chunks[index]
                return (vid, index), self._chunk_path(vid, index, crc), v.length(index), crc

    def scrubbed(self, key: ChunkKey, digest: int, problem: str | None, checked: Checked | None) -> None:
        """The scrub read a chunk file (``scrub_file``): drop it if it was bad, else remember the
        check as if a read had made it."""
        v = self.versions.get(key[0])
        if v is None or v.chunks.get(key[1]) != digest:
            return  # replaced or gone meanwhile
        if problem is None:
            self.stats.scrubbed_bytes += v.length(key[1])
            if checked is not None:
                self._checked[key] = checked
        elif problem == "missing":
            self.stats.read_errors += 1
            self._drop_chunk(v, key[1])
        else:
            self._corrupt(v, key[1])

    # --- eviction ---------------------------------------------------------------------------

    def _admit(self, key: ChunkKey, size: int, now: float) -> None:
        evicted = self.space.add(key, size, now)
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
            self._drop_chunk(v, index, counted=False)

    def _drop_chunk(self, v: Version, index: int, counted: bool = True) -> None:
        """Forget a chunk and delete its file. ``counted``: its bytes are still in the budget
        (not when the budget evicted it, or never counted it)."""
        crc = v.chunks.pop(index, None)
        if self.prefetched:
            self._prefetch_left((v.vid, index))
        if counted and crc is not None:
            self.space.take((v.vid, index), v.length(index))
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

    @property
    def capacity(self) -> int:
        return self.space.capacity

    @property
    def free_bytes(self) -> int:
        """Bytes neither used nor reserved for fills in flight."""
        return self.space.capacity - self.space.used - self.space.reserved

    def unread_prefetched(self) -> set[tuple[str, str]]:
        """(bucket, key) of the objects holding prefetched chunks no client has read yet."""
        out = set()
        for vid, _ in self.prefetched:
            v = self.versions.get(vid)
            if v is not None:
                out.add((v.meta.bucket, v.meta.key))
        return out

    def chunk_count(self, v: Version) -> int:
        return self.layout.count(v.meta.size)


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
