"""The chunk store: verified chunks of object versions under a byte budget, in two tiers.

The store's index (``versions``, each with the ``chunks`` it has) is the one record of which
chunks are cached; the byte budget (``space.Budget``) and the eviction policy count and order
what it holds. The chunks themselves are kept by two implementations of one verified-chunk
protocol (``ramtier.VerifiedChunks``): the RAM tier (small chunks, in memory) in front of the
disk tier (``disk.py``: the files, their layout and what was checked of them). Both hand out
only verified bytes. The store enters the chunks a prefetch commits in the prefetch ledger
(``ledger.py``) and tells it when they leave; the reader and the prefetch loop ask the ledger.

``vid`` is a hash of (bucket, key, ETag, size, chunk size): a version's chunks can never be
mistaken for another version's, and keys never become paths. A chunk is written through the
disk tier's ``ChunkWriter`` (a temp file renamed into place: a crash leaves whole chunks or
none); the store reserves its bytes first and enters it in the index once placed. The index
is rebuilt from file names at start; a cache directory of an older format is deleted then,
never read.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..objects import ObjectMeta
from .chunkfile import version_id
from .disk import ChunkKey, ChunkWriter, Checked, DiskTier, VerifiedChunk, mkdir_private, read_dir, scrub_file
from .layout import ChunkLayout, layout_of
from .ledger import PrefetchedChunks
from .policy import EvictionPolicy
from .ramtier import RamTier
from .space import Budget, NoRoom

__all__ = ["BudgetedWrite", "ChunkKey", "ChunkStore", "ChunkWriter", "Checked", "StoreStats", "VerifiedChunk", "Version",
           "mkdir_private", "scrub_file", "version_id"]


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
        return layout_of(self.chunk_size).length(index, self.meta.size)

    chunk_size: int = 0


class BudgetedWrite(ChunkWriter):
    """A chunk write the store started (``begin_write``): the disk tier's writer, with the
    version it fills and whether the budget reserved its bytes (else it is not kept)."""

    __slots__ = ("version", "reserved")

    def __init__(self, version: Version, index: int, length: int, path: Path, fd: int, reserved: bool) -> None:
        super().__init__(version.vid, index, length, path, fd)
        self.version = version
        self.reserved = reserved


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
    """The index of cached chunks, their budget, the RAM tier in front of the disk tier; see
    the module docstring."""

    def __init__(self, root: Path, *, chunk_size: int, capacity: int, policy: EvictionPolicy,
                 ram_chunk_max: int = 64 * 1024, ram_cache_size: int = 0,
                 verify_every_read: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 on_evict: Callable[[str, int, int], None] | None = None,
                 prefetched: PrefetchedChunks | None = None) -> None:
        self.chunk_size = chunk_size
        self.layout = ChunkLayout(chunk_size)
        # The index (``versions``, each with its ``chunks``) is the one record of which chunks are
        # cached; the budget counts their bytes and asks the index their sizes.
        self.versions: dict[str, Version] = {}
        self.space = Budget(capacity, policy, self._cached_length)
        self.clock = clock
        self.stats = StoreStats()
        self.on_evict = on_evict
        # The prefetch ledger: the store enters what a prefetch commits and tells it what leaves.
        self.prefetched = prefetched if prefetched is not None else PrefetchedChunks()
        self.ram = RamTier(ram_cache_size, ram_chunk_max)  # verified small chunks, in front of the files
        self.disk = DiskTier(root, stats=self.stats, locate=self.locate, on_bad=self._bad,
                             verify_every_read=verify_every_read)
        self.root, self.tmp = self.disk.root, self.disk.tmp
        self._vids: dict[tuple[str, str, str, int], str] = {}  # memo of version_id()

    # --- the index, asked by the budget and the disk tier --------------------------------------

    def _cached_length(self, key: ChunkKey) -> int | None:
        v = self.versions.get(key[0])
        return v.length(key[1]) if v is not None and key[1] in v.chunks else None

    def locate(self, key: ChunkKey) -> tuple[int, int] | None:
        """(digest, length) of a cached chunk, or None."""
        v = self.versions.get(key[0])
        if v is None:
            return None
        digest = v.chunks.get(key[1])
        return None if digest is None else (digest, v.length(key[1]))

    def object_of(self, vid: str) -> tuple[str, str] | None:
        """(bucket, key) of a version in the index, or None: which object a chunk belongs to,
        for the rules and pins the policy applies per object."""
        v = self.versions.get(vid)
        return (v.meta.bucket, v.meta.key) if v is not None else None

    def holds(self, v: Version) -> bool:
        """Whether ``v`` is still the index's record of its version (not dropped or replaced
        since it was taken from ``iter_versions``)."""
        return self.versions.get(v.vid) is v

    def _bad(self, key: ChunkKey, digest: int, problem: str) -> None:
        """The disk tier found the chunk's file bad or missing: it leaves the cache."""
        v = self.versions.get(key[0])
        if v is not None and v.chunks.get(key[1]) == digest:
            self._drop_chunk(v, key[1])

    def chunk_file(self, vid: str, index: int) -> Path | None:
        """Where a cached chunk's bytes are (``sidecar verify``), or None if it is not cached."""
        v = self.versions.get(vid)
        crc = v.chunks.get(index) if v is not None else None
        return None if crc is None else self.disk.chunk_path(vid, index, crc)

    # --- start ------------------------------------------------------------------------------

    def open(self, current: Callable[[list[Version]], list[Version]] | None = None) -> list[Version]:
        """Create the layout and rebuild the index from disk. Returns the versions kept.
        ``current``: which of the intact versions found are current (the catalog's decision,
        ``catalog.current_on_disk``); the others' files are deleted. None keeps them all."""
        self.disk.prepare()
        on_disk, stray = read_dir(self.disk.root)
        self.disk.unlink(stray)
        intact: list[Version] = []
        for found in on_disk:
            if found.chunk_size != self.chunk_size:  # cut another way: never read
                self.disk.unlink(found.paths())
                continue
            v = Version(found.vid, found.meta, meta_written=True, chunk_size=self.chunk_size,
                        stored_at=found.stored_at)
            n = self.layout.count(found.meta.size)
            for index, (digest, path) in sorted(found.chunks.items()):
                if index >= n:
                    self.disk.unlink([path])
                    continue
                v.chunks[index] = digest
            intact.append(v)
        live = {id(v) for v in current(intact)} if current is not None else {id(v) for v in intact}
        found: list[tuple[float, Version]] = []
        for v in intact:
            if id(v) not in live:  # not current: dead since before the restart
                self.disk.unlink([str(self.disk.chunk_path(v.vid, i, crc)) for i, crc in v.chunks.items()]
                                 + [str(self.disk.meta_path(v.vid))])
                continue
            self.versions[v.vid] = v
            found.append((v.stored_at, v))
        # Admit oldest first so the policy's recency order follows storage order.
        now = self.clock()
        for _, v in sorted(found, key=lambda t: t[0]):
            for index in sorted(v.chunks):
                try:
                    self._admit((v.vid, index), v.length(index), now)
                except NoRoom as e:
                    self._evicted(e.evicted, "capacity")
                    self._drop_chunk(v, index, counted=False)
                    continue
                self.stats.rebuilt_chunks += 1
        return [v for _, v in found]

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

    def cached_version(self, meta: ObjectMeta) -> Version | None:
        """``meta``'s version if the index holds it (``version_for`` would create it)."""
        return self.versions.get(version_id(meta.bucket, meta.key, meta.etag, meta.size, self.chunk_size))

    def _learn_checksums(self, v: Version, meta: ObjectMeta) -> None:
        """Keep on disk the upstream's checksum answers learned since the version's metadata was
        written: after a restart they are replayed without asking again."""
        learned = v.meta.learned(meta)
        if learned is v.meta:
            return
        v.meta = learned
        if v.meta_written and not v.dropped:
            try:
                self.disk.write_meta(v.vid, v.meta, self.chunk_size)
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
                self.prefetched.left((vid, index))
        paths = [str(self.disk.chunk_path(vid, i, crc)) for i, crc in v.chunks.items()]
        v.chunks.clear()
        self.disk.unlink(paths + [str(self.disk.meta_path(vid))])

    # --- reads ------------------------------------------------------------------------------

    def has(self, vid: str, index: int) -> bool:
        v = self.versions.get(vid)
        return v is not None and index in v.chunks

    def open_verified(self, vid: str, index: int) -> VerifiedChunk | None:
        """The whole chunk in memory, checked (every piece), or None (a miss; a bad file is
        removed). Blocking: for tests and tools, not the event loop."""
        chunk = self.open_chunk(vid, index)
        if chunk is None or chunk.data is not None:
            return chunk
        try:
            view = chunk.check(0, chunk.length - 1)
            data = None if view is None else bytes(view)
        finally:
            chunk.close()
        return None if data is None else VerifiedChunk(len(data), data=data)

    def ram_chunk(self, vid: str, index: int, *, touch: bool = True) -> bytes | None:
        """The chunk's verified bytes if it is held in memory (a hit), else None. With ``touch``
        False the caller tells the policy of the read later (``touched``)."""
        key = (vid, index)
        data = self.ram.get(key)
        if data is not None:
            if touch:
                self.space.touch(key, self.clock())
            self.stats.ram_hits += 1
        return data

    def touched(self, keys) -> None:
        """Reads of the chunks ``keys`` (each once, in order), told to the policy together; a
        chunk evicted meanwhile is skipped."""
        now = self.clock()
        touch = self.space.touch
        for key in keys:
            touch(key, now)

    def open_chunk(self, vid: str, index: int, lo: int = 0, hi: int = -1) -> VerifiedChunk | None:
        """The chunk, opened to read bytes lo..hi (chunk offsets; -1: its end), or None (a miss).
        Small chunks come back in memory, checked: from the RAM tier, or read whole from the
        disk tier into it. Larger ones as an open file (``DiskTier.open``): ``verified`` when
        the pieces of lo..hi were checked since the file last changed, so the caller may
        sendfile them; otherwise the caller sends only what ``chunk.check(lo, hi)`` returns."""
        v = self.versions.get(vid)
        if v is None or index not in v.chunks:
            return None
        key = (vid, index)
        now = self.clock()
        data = self.ram.get(key)
        if data is not None:
            self.stats.ram_hits += 1
        else:
            length = v.length(index)
            if not self.ram.holds(length):
                chunk = self.disk.open(key, v.chunks[index], length, lo, hi)
                if chunk is not None:
                    self.space.touch(key, now)
                return chunk
            data = self.disk.read_whole(key, v.chunks[index], length)
            if data is None:
                return None
            self.ram.put(key, data)
        self.space.touch(key, now)
        return VerifiedChunk(len(data), data=data)

    def ready_fd(self, vid: str, index: int, lo: int, hi: int) -> int:
        """A cached chunk kept as a file, open to send bytes lo..hi unchecked (``DiskTier.ready_fd``:
        a lent descriptor, used at once and never closed), or -1 (``open_chunk`` answers). The
        policy is not told of the read: the caller does (``touched``)."""
        v = self.versions.get(vid)
        digest = v.chunks.get(index) if v is not None else None
        if digest is None:
            return -1
        fd = self.disk.ready_fd((vid, index), digest, lo, hi)
        if fd >= 0:
            self.stats.unchecked_bytes += hi - lo + 1
        return fd

    def forget_checked(self, vid: str, index: int) -> None:
        """Trust nothing checked about this chunk file: its next read checks its pieces."""
        self.disk.drop((vid, index))

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
        self.disk.drop(key)
        self.ram.drop(key)

    # --- writes -----------------------------------------------------------------------------

    def begin_write(self, v: Version, index: int, keep: bool = True) -> BudgetedWrite:
        """Reserve a chunk's bytes in the budget (evicting as needed) and start writing it to the
        disk tier.
        When nothing can be evicted, or ``keep`` is false (a do-not-cache rule), the writer
        still works — readers tail it — but its chunk is not kept.
        Raises OSError when the disk refuses the temp file."""
        length = v.length(index)
        evicted, reserved = [], False
        if keep:
            try:
                evicted = self.space.reserve(length, self.clock())
                reserved = True
            except NoRoom as e:
                evicted = e.evicted
        self._evicted(evicted, "capacity")
        try:
            path, fd = self.disk.temp_file(v.vid, index)
        except OSError:
            if reserved:
                self.space.release(length)
            self.stats.write_errors += 1
            raise
        v.writers += 1
        return BudgetedWrite(v, index, length, path, fd, reserved)

    def reserve_write(self, w: BudgetedWrite) -> None:
        """Reserve, now, the bytes of a write begun without (``keep`` false: a speculative read
        of a version not yet confirmed), evicting as needed; no room: it is not kept."""
        if w.reserved or w.closed:
            return
        evicted: list = []
        try:
            evicted = self.space.reserve(w.length, self.clock())
            w.reserved = True
        except NoRoom as e:
            evicted = e.evicted
        self._evicted(evicted, "capacity")

    def forget_if_empty(self, v: Version) -> None:
        """Forget a version nothing was kept or is being written of (a guess that proved wrong)."""
        if not v.chunks and not v.writers and self.versions.get(v.vid) is v:
            del self.versions[v.vid]

    def commit(self, w: BudgetedWrite, prefetched: bool = False) -> bool:
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
                self.disk.write_meta(v.vid, v.meta, self.chunk_size)
                v.meta_written = True
            self.disk.put(w)
        except OSError:
            self.stats.write_errors += 1
            self.abort(w)
            return False
        w.version.writers -= 1
        old_crc = v.chunks.get(w.index)
        if old_crc is not None:  # a refetch of a chunk already cached replaces it
            self.space.take((w.vid, w.index), w.length)
            if old_crc != w.crc:
                self.disk.unlink([str(self.disk.chunk_path(w.vid, w.index, old_crc))])
        v.chunks[w.index] = w.crc
        now = self.clock()
        credit = {}
        if prefetched:
            self.prefetched.add((w.vid, w.index), w.length, (v.meta.bucket, v.meta.key))
            # Protected from demand data until read or the predicted read's horizon (QoSPolicy).
            if self.prefetched.credit > 0 and getattr(self.space.policy, "is_credited", None) is not None:
                credit["credit_until"] = now + self.prefetched.credit
        evicted = self.space.add((w.vid, w.index), w.length, now, reserved=True, **credit)
        self._evicted(evicted, "capacity")
        return True

    def abort(self, w: BudgetedWrite) -> None:
        """End a write without keeping its chunk: its reservation and temp file go."""
        if w.closed:
            return
        self.disk.discard(w)
        v = w.version
        v.writers -= 1
        if not v.chunks and not v.writers and self.versions.get(v.vid) is v:
            del self.versions[v.vid]  # an empty version nobody is filling
        if w.reserved:
            self.space.release(w.length)

    # --- scrub ------------------------------------------------------------------------------

    def chunk_keys(self) -> list[ChunkKey]:
        """Every cached chunk, version by version in index order (the scrub's pass)."""
        return [(vid, i) for vid, v in self.versions.items() for i in v.chunks]

    def scrubbed(self, key: ChunkKey, digest: int, problem: str | None, checked: Checked | None) -> None:
        """The scrub read a chunk file (``scrub_file``): drop it if it was bad, else remember the
        check as if a read had made it."""
        v = self.versions.get(key[0])
        if v is None or v.chunks.get(key[1]) != digest:
            return  # replaced or gone meanwhile
        if problem is None:
            self.stats.scrubbed_bytes += v.length(key[1])
            if checked is not None:
                self.disk.remember(key, checked)
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
            self.prefetched.left((v.vid, index))
        if counted and crc is not None:
            self.space.take((v.vid, index), v.length(index))
        self._forget_in_memory((v.vid, index))
        if crc is not None:
            self.disk.unlink([str(self.disk.chunk_path(v.vid, index, crc))])
        if not v.chunks:
            # Nothing left on disk for this version: forget it and its metadata file.
            if v.meta_written:
                self.disk.unlink([str(self.disk.meta_path(v.vid))])
                v.meta_written = False
            if not v.writers and self.versions.get(v.vid) is v:
                del self.versions[v.vid]

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
    def object_count(self) -> int:
        """Object versions with at least one chunk cached or being written."""
        return len(self.versions)

    @property
    def capacity(self) -> int:
        return self.space.capacity

    @property
    def free_bytes(self) -> int:
        """Bytes neither used nor reserved for fills in flight."""
        return self.space.capacity - self.space.used - self.space.reserved


