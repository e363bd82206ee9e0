"""The object reader: turns "bytes a..b of object version V" into verified chunk reads.

What a caller gets: ``Segment``s, each either bytes in memory that were checked (or came from
the upstream) or an open file descriptor + offset + length that is safe to sendfile as it is.
Entry points: ``read`` (any range), ``read_opened`` (a cold GET whose answer is already open),
``read_small`` (a range inside one chunk held in RAM: bytes or None, no coroutine). A cached
chunk's range is handed out as a descriptor only when its 64 KiB pieces were checked since the
file last changed (docs/integrity.md); otherwise the touched pieces are read, checked, and that
very buffer is the segment, so no byte is read from the file twice. Missing chunks are filled by *spans*: one ranged upstream GET over a run of consecutive
missing chunks, written chunk by chunk to temp files and committed. A fill is shared: every
reader that wants a chunk being filled tails the same temp file as bytes land, so one upstream
fetch serves any number of clients, a slow client never slows the fill, and no body bytes are
held in Python memory beyond the piece being written.

There is exactly one code path that fetches a chunk from upstream and commits it:
``Reader._run_span``. Demand reads, readahead and prefetch all go through it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from .cache.layout import ChunkLayout
from .cache.ledger import PrefetchedChunks
from .cache import chunkfile
from .cache.store import BudgetedWrite, ChunkStore, VerifiedChunk, Version
from .cache.tier import BlockRejected
from .errors import ObjectChanged, S3Error, UpstreamUnavailable
from .objects import ObjectMeta
from .telemetry import Metrics, get_logger
from .upstream.base import OpenedObject, Upstream

if TYPE_CHECKING:
    from .cache.tier import SharedTier

log = get_logger("sidecar.reader")

PIECE = 256 * 1024  # bytes read from the upstream stream at a time (background fills: the gate's unit)
# A demand fill takes what the stream holds, up to this: while the loop is busy, data piles up
# and one pass handles it all, and each pass costs about the same Python whatever its size (at
# 256 KiB a fill cost 0.8-0.9 CPU-s/GiB of user time, nginx proxy_cache's under 0.1;
# docs/operations.md, "Cold fills").
DEMAND_PIECE = 1024 * 1024
MAX_SPAN_CHUNKS = 64  # one upstream request covers at most this many chunks
LOOKAHEAD_CHUNKS = 2  # start the next span this many chunks before the current one runs out
NOW_CHUNKS = 16  # a read of at most this many chunks, all ready, is answered at once (read_now)
RESUME_ATTEMPTS = 2  # a span whose upstream body breaks is resumed from where it stopped
CHECK_BATCH = 1024 * 1024  # a disk read that needs checking is read and checked this much at a time
CHECK_ON_LOOP = 256 * 1024  # checks of fewer bytes run on the event loop (a thread hop costs more)
SPECULATIVE_CHUNKS = 8  # tier blocks read ahead of a revalidation at most (Reader.speculate)
SPECULATION_WAIT = 30.0  # seconds a speculation waits for its lookup's verdict before it is dropped
CLAIM_WAIT = 30.0  # seconds fills started for a read about to come are held for it (Reader._claim)
# Fills held at most for reads about to come (each may keep a temp file open): past it, the oldest
# claims go (their reads, if they still come, fetch what is not kept again).
CLAIMED_FILLS = 256


class Priority(enum.IntEnum):
    """Who wants a chunk. Only DEMAND (a client is waiting) bypasses the bandwidth gate."""

    DEMAND = 0
    READAHEAD = 1  # the next chunks of a sequential read
    PREFETCH = 2  # the predictor's guess: held by a prefetch credit until read
    # Background fetches an operator asked for (warm jobs, verify's repairs). Gated like a
    # prefetch and counted under its purpose, but not the predictor's guess: no prefetch credit,
    # and not in the predictor's prefetched/useful bytes.
    WARM = 3


DEMAND, READAHEAD, PREFETCH, WARM = Priority  # short names for this module


class DiskFault(Exception):
    """The cache disk failed while a chunk was being written."""


class FillEndedShort(Exception):
    """A chunk fill ended before the bytes a reader was waiting for: the reader fetches them
    directly instead."""


class _Guess:
    """A first read's guess (Reader.guess): the tier's record of the version last seen and the
    lookup's verdict, each once in."""

    __slots__ = ("hint", "hinted", "verdict", "answered", "span")

    def __init__(self, span: Callable[[ObjectMeta], tuple[int, int] | None]) -> None:
        self.span = span  # the bytes the read wants of a version; None: none to read from the tier
        self.hint: ObjectMeta | None = None
        self.hinted = False
        self.verdict: ObjectMeta | None = None
        self.answered = False


def _hold_in(holder: dict[int, ChunkFill], fill: ChunkFill) -> None:
    """Hold ``fill`` (``attach``) in ``holder``, under its index, letting go of the fill held there
    before, if another."""
    old = holder.get(fill.index)
    if old is fill:
        return
    fill.attach()
    holder[fill.index] = fill
    if old is not None:
        old.detach()


class ChunkFill:
    """A chunk being fetched. Readers ``attach`` and take its bytes with ``segment_at``: the
    piece that just arrived from memory (a reader keeping up never touches the file), older
    bytes from the temp file via ``fd``."""

    __slots__ = ("key", "version", "index", "length", "writer", "written", "done", "error", "refs",
                 "_waiters", "kept", "priority", "readahead", "recent", "recent_start", "keep", "gate_wait",
                 "tier_upto", "carried", "pending")

    def __init__(self, version: Version, index: int, length: int, priority: int) -> None:
        self.key = (version.vid, index)
        self.version = version
        self.index = index
        self.length = length
        self.writer: BudgetedWrite | None = None
        self.written = 0  # bytes in the temp file
        self.recent: bytes = b""  # the latest piece received, possibly not yet in the file
        self.recent_start = 0
        self.done = False
        self.kept = False
        self.error: BaseException | None = None
        self.refs = 0
        self._waiters: list[asyncio.Future] = []
        self.priority = priority
        self.readahead = False  # counted in Reader.readahead_in_flight until it ends
        self.keep = True  # false: streamed to its readers but not kept (a do-not-cache rule)
        self.gate_wait: asyncio.Future | None = None  # the gate being awaited; a promotion cancels it
        self.tier_upto = 0  # the first bytes, up to here, came from the shared tier (the rest: upstream)
        # Chunk 0 of a version whose whole-object GET checksum headers are not known yet: those
        # headers, once its tier block or the upstream GET filling it tells them (None: neither
        # does). See Reader.carried_checksums.
        self.carried: asyncio.Future | None = None
        # A speculative fill (Reader.speculate): whether the upstream confirmed its version, once
        # known. Nothing of it is committed before; no reader can ask for it before either (a
        # reader has resolved the version first).
        self.pending: asyncio.Future | None = None

    @property
    def fd(self) -> int:
        assert self.writer is not None
        return self.writer.fd

    @property
    def ended_open(self) -> bool:
        """Ended whole, its bytes still in its file because a reader holds it (``attach``)."""
        return self.done and self.error is None and self.writer is not None and self.writer.fd >= 0

    @property
    def ended_unkept(self) -> bool:
        """Ended whole without its chunk being kept (a do-not-cache rule, no room), its bytes
        still in its unlinked temp file because a reader holds it (``attach``): that reader takes
        them from there, and must not fetch them again."""
        return self.ended_open and not self.kept

    def attach(self) -> None:
        self.refs += 1

    def detach(self) -> None:
        self.refs -= 1
        if self.refs == 0 and self.done and self.writer is not None:
            self.writer.close()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def received(self, piece: bytes, start: int) -> None:
        """A piece arrived (bytes ``start``.. of the chunk); it may still be on its way to disk."""
        self.recent, self.recent_start = piece, start
        self._wake()

    def progressed(self, n: int) -> None:
        self.written += n
        self._wake()

    def settle_carried(self, checksums: tuple[tuple[str, str], ...] | None = None) -> None:
        if self.carried is not None and not self.carried.done():
            self.carried.set_result(checksums)

    def finish(self, kept: bool) -> None:
        self.settle_carried()
        self.done = True
        self.kept = kept
        self.recent = b""
        self._wake()
        if self.refs == 0 and self.writer is not None:
            self.writer.close()

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self.settle_carried()
        self.error = error
        self.done = True
        self.recent = b""
        self._wake()
        if self.refs == 0 and self.writer is not None:
            self.writer.close()

    def segment_at(self, pos: int, hi: int) -> "Segment | None":
        """Bytes from ``pos`` (up to ``hi``) available now, or None: wait for more."""
        if self.error is not None:
            raise self.error
        r0 = self.recent_start
        if r0 <= pos < r0 + len(self.recent):
            end = min(hi, r0 + len(self.recent) - 1)
            return Segment(end - pos + 1, data=memoryview(self.recent)[pos - r0:end - r0 + 1], from_cache=False)
        if pos < self.written:
            end = min(hi, self.written - 1)
            return Segment(end - pos + 1, fd=self.fd, offset=pos, from_cache=False)
        if self.done:
            raise FillEndedShort()
        return None

    async def changed(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut


@dataclasses.dataclass(slots=True)
class Segment:
    """A piece of the response body: ``data`` (bytes in memory, already checked or straight from
    the upstream), or ``length`` bytes of the open file ``fd`` from ``offset`` that may be sent
    with sendfile unchecked. The descriptor is valid until the next segment is asked for."""

    length: int
    data: bytes | memoryview | None = None
    fd: int = -1
    offset: int = 0
    from_cache: bool = True
    chunk: tuple[str, int] | None = None  # (version, index) of a cached file sent unchecked


@dataclasses.dataclass(slots=True)
class ReadStats:
    hit_bytes: int = 0  # from the local cache
    miss_bytes: int = 0  # fetched from the upstream for (or while) this read
    tier_bytes: int = 0  # fetched from the shared tier for (or while) this read
    joined: int = 0
    label: str = ""  # the cache rule's metrics label
    prefetched: int = 0  # bytes of chunks a prefetch brought, read for the first time

    def fetched(self, tier_upto: int, lo: int, n: int) -> None:
        """``n`` bytes from offset ``lo`` of a chunk fetched for this read, whose first
        ``tier_upto`` bytes came from the shared tier (negative ``n``: take them back)."""
        a, b = (lo, lo + n) if n >= 0 else (lo + n, lo)
        tier = max(0, min(b, tier_upto) - a)
        if n < 0:
            tier = -tier
        self.tier_bytes += tier
        self.miss_bytes += n - tier

    @property
    def outcome(self) -> str:
        """hit: all from the local cache; tier: all from the shared tier; miss: none from the
        local cache, some from the upstream; partial: the rest."""
        if not self.miss_bytes and not self.tier_bytes:
            return "hit"
        if self.hit_bytes:
            return "partial"
        return "tier" if not self.miss_bytes else "miss"


class Fetch:
    """Chunks ``first``..``last`` of a version on their way into the cache (``Reader.fetch``).
    ``started`` are the fills this fetch began (``Reader.cancel`` stops them); chunks another
    caller was already fetching are waited for too. ``await`` it: it returns itself, with
    ``errors`` holding the chunks whose fill failed."""

    def __init__(self, reader: "Reader", version: Version, first: int, last: int, started: list[ChunkFill]) -> None:
        self.reader = reader
        self.version = version
        self.first = first
        self.last = last
        self.started = started
        self.errors: dict[int, BaseException] = {}

    def __await__(self):
        return self._settle().__await__()

    async def _settle(self) -> "Fetch":
        mine = {f.index: f for f in self.started}
        for index in range(self.first, self.last + 1):
            fill = mine.get(index) or self.reader.fills.get((self.version.vid, index))
            while fill is not None and not fill.done:
                await fill.changed()
            if fill is not None and fill.error is not None:
                self.errors[index] = fill.error
        return self

    def cached(self, index: int) -> bool:
        return self.reader.store.has(self.version.vid, index)

    @property
    def object_changed(self) -> bool:
        """Whether the upstream's object is no longer the version being fetched."""
        return any(isinstance(e, ObjectChanged) or (isinstance(e, S3Error) and e.code == "PreconditionFailed")
                   for e in self.errors.values())


class Reader:
    def __init__(self, store: ChunkStore, upstream: Upstream, metrics: Metrics, *,
                 readahead_chunks: int = 4, readahead_max_bytes: int = 256 * 1024 * 1024,
                 on_object_changed: Callable[[ObjectMeta], None] | None = None,
                 gate: Callable[[int], Awaitable[None]] | None = None,
                 spend_demand: Callable[[int], None] | None = None,
                 executor: concurrent.futures.Executor | None = None,
                 prefetched: PrefetchedChunks | None = None) -> None:
        self.store = store
        # The prefetch ledger (the store's unless given): a hit takes a prefetched chunk's credit.
        self.prefetched = prefetched if prefetched is not None else store.prefetched
        self.upstream = upstream
        self.metrics = metrics
        self.chunk_size = store.chunk_size
        self.layout = ChunkLayout(store.chunk_size)
        self.fills: dict[tuple[str, int], ChunkFill] = {}
        self.readahead_chunks = readahead_chunks
        self.readahead_max_bytes = readahead_max_bytes
        self.readahead_in_flight = 0
        self.on_object_changed = on_object_changed
        # gate(nbytes) is awaited before background spans read a piece (the token bucket)
        self.gate = gate
        # spend_demand(nbytes) counts demand bytes against the same budget; it never waits
        self.spend_demand = spend_demand
        self.executor = executor  # verifies large chunks off the event loop
        self._sequential: OrderedDict[str, int] = OrderedDict()  # vid -> next chunk expected
        self._tasks: set[asyncio.Task] = set()
        self._ensured: dict[tuple[str, int], asyncio.Task] = {}  # chunk -> span task ``ensure`` started
        # version -> claims, oldest first: fills held for the reads about to come, a claim each
        # (``_claim``)
        self._claims: OrderedDict[str, list[dict[int, ChunkFill]]] = OrderedDict()
        self._claimed = 0  # fills held in ``_claims``
        self.tier: SharedTier | None = None  # the shared tier, asked before the upstream (cache/tier.py)
        # (bucket, key) -> (version, verdict, fills, source) of a speculation awaiting its lookup's verdict
        self._speculating: dict[tuple[str, str], tuple[Version, asyncio.Future, list[ChunkFill], str]] = {}
        # (bucket, key) -> _Guess: a first read's record of the version last seen, asked of the tier
        # while the lookup's HEAD is out (``guess``)
        self._guessing: dict[tuple[str, str], _Guess] = {}
        # Whether the blocks of a version are kept in the shared tier (not when a rule keeps its
        # object out of the cache): only then is its version recorded there (``resolved``).
        self.tier_keeps: Callable[[ObjectMeta], bool] = lambda meta: True

    # --- public -------------------------------------------------------------------------

    def read(self, meta: ObjectMeta, start: int, end: int, stats: ReadStats | None = None, *,
             keep: bool = True, tier: bool = True) -> AsyncIterator[Segment]:
        """Segments covering bytes start..end (inclusive) of ``meta``'s version, in order.
        ``keep=False``: bytes fetched for this read are not kept in the cache. ``tier=False``:
        chunks this read fetches skip the shared tier (a version the upstream did not confirm
        within its metadata TTL, served stale-if-error: the tier is only for versions this pod
        resolved), and nothing is read ahead."""
        version = self.store.version_for(meta)
        if end >= start and keep and tier:
            self._note_sequential(version, start, end)
        mine = self._take_claim(version.vid)
        return self._segments(version, start, end, stats if stats is not None else ReadStats(), mine, keep=keep,
                              tier=tier, claimed=mine is not None)

    def read_small(self, meta: ObjectMeta, start: int, end: int, stats: ReadStats) -> bytes | memoryview | None:
        """Bytes start..end when they lie in one chunk held in memory (the common small hit),
        without the machinery of ``read``; None otherwise."""
        cs = self.chunk_size
        index = start // cs
        if end // cs != index:
            return None
        return self.read_ram(self.store.version_for(meta).vid, index, start - index * cs, end - index * cs, stats)

    def read_now(self, meta: ObjectMeta, start: int, end: int, stats: ReadStats, *,
                 keep: bool = True) -> list[tuple[Segment, VerifiedChunk]] | None:
        """A read that needs no waiting: bytes start..end lie in at most ``NOW_CHUNKS`` cached
        chunks, each in memory or in pieces of its file checked since the file last changed.
        Their segments in order, each with its chunk to close once the segment is sent; None:
        ``read`` answers it (too many chunks, one not cached, or pieces still to check)."""
        cs = self.chunk_size
        first, last = start // cs, end // cs
        if end < start or last - first >= NOW_CHUNKS:
            return None
        version = self.store.version_for(meta)
        vid = version.vid
        got = []
        for index in range(first, last + 1):
            c0 = index * cs
            lo, hi = max(start, c0) - c0, min(end, c0 + cs - 1) - c0
            chunk = self.store.open_chunk(vid, index, lo, hi)
            segment = self._ready_segment(vid, index, chunk, lo, hi) if chunk is not None else None
            if segment is None:
                if chunk is not None:
                    chunk.close()
                for _, opened in got:
                    opened.close()
                return None
            got.append((segment, chunk))
        if keep:
            self._note_sequential(version, start, end)
        for i, (segment, _) in enumerate(got):
            self._hit(vid, first + i, segment.length, stats)
        return got

    def ready_fd(self, vid: str, index: int, lo: int, hi: int, stats: ReadStats, *, keep: bool = True) -> int:
        """The file of cached chunk ``index`` of version ``vid``, open to send its
        bytes lo..hi with sendfile, counted as a hit (``read_now`` for one chunk, without its
        segments); -1 when they need a check or are not cached (``read_now`` answers). The
        descriptor is lent (``DiskTier.ready_fd``): used at once, never closed. The caller
        tells the store of the read (``ChunkStore.touched``)."""
        fd = self.store.ready_fd(vid, index, lo, hi)
        if fd < 0:
            return -1
        if keep:
            c0 = index * self.chunk_size
            self._note_sequential(self.store.versions[vid], c0 + lo, c0 + hi)  # (its chunk is cached)
        self._hit(vid, index, hi - lo + 1, stats)
        return fd

    def _ready_segment(self, vid: str, index: int, chunk: VerifiedChunk, lo: int, hi: int, *,
                       from_cache: bool = True) -> Segment | None:
        """Bytes lo..hi of an open cached chunk that need no check: in memory, or pieces of its
        file checked since it last changed (sent from the page cache); None: pieces to check."""
        if chunk.data is not None:
            return Segment(hi - lo + 1, data=memoryview(chunk.data)[lo:hi + 1], from_cache=from_cache)
        if chunk.verified:
            self.store.stats.unchecked_bytes += hi - lo + 1
            return Segment(hi - lo + 1, fd=chunk.fd, offset=lo, from_cache=from_cache, chunk=(vid, index))
        return None

    def _hit(self, vid: str, index: int, nbytes: int, stats: ReadStats) -> None:
        """``nbytes`` of a read served from a cached chunk: a hit, and the first read of a
        prefetched chunk counted as such."""
        stats.hit_bytes += nbytes
        if self.prefetched:
            n = self.prefetched.take(vid, index)
            if n:
                stats.prefetched += n
                self.metrics.prefetch_useful_bytes.inc(n)

    def read_ram(self, vid: str, index: int, lo: int, hi: int, stats: ReadStats, *,
                 touch: bool = True) -> bytes | memoryview | None:
        """Bytes lo..hi (offsets in the chunk) of a chunk held in memory, counted as a hit; None
        when it is not in memory. ``touch`` False: the caller tells the store of the read later
        (``ChunkStore.touched``)."""
        data = self.store.ram_chunk(vid, index, touch=touch)
        if data is None:
            return None
        self._hit(vid, index, hi - lo + 1, stats)
        return data if lo == 0 and hi + 1 == len(data) else memoryview(data)[lo:hi + 1]

    def cold_window(self, start: int, end: int | None) -> tuple[int, int]:
        """The bytes a cold GET of ``start``..``end`` (``end`` None: to the end) asks the upstream
        for before the object's size is known: whole chunks, at most one span's worth."""
        return self.layout.window(start, end, MAX_SPAN_CHUNKS)

    def read_opened(self, meta: ObjectMeta, start: int, end: int, stats: ReadStats,
                    opened: OpenedObject, *, keep: bool = True) -> AsyncIterator[Segment]:
        """Like ``read``, with a cold GET's answer already open (``opened.first`` chunk-aligned):
        its bytes fill the chunks it covers, so the read costs one upstream request in all.
        Takes ownership of ``opened``."""
        version = self.store.version_for(meta)
        cs = self.chunk_size
        first = opened.first // cs
        last = min(opened.last // cs, first + MAX_SPAN_CHUNKS - 1)
        fills = self._register_span(version, first, last, DEMAND, keep)
        self._launch(self._run_span(version, fills, opened) if fills else opened.close())
        if end >= start and keep:
            self._note_sequential(version, start, end)
        return self._segments(version, start, end, stats, {f.index: f for f in fills}, keep=keep)

    def fetch(self, meta: ObjectMeta, first: int, last: int, priority: Priority) -> "Fetch":
        """Bring chunks first..last of a version into the cache in the background; ``await`` the
        result to wait until each has been committed or has failed, whoever fetches it."""
        version = self.store.version_for(meta)
        return Fetch(self, version, max(0, first), min(last, self.layout.count(meta.size) - 1),
                     self.ensure(meta, first, last, priority))

    def unreadable(self, segment: Segment) -> None:
        """Sending ``segment`` from its file failed (EIO under sendfile): its chunk's pieces are
        checked again by the next read, which drops and refetches it if the error persists."""
        if segment.chunk is not None:
            self.store.forget_checked(*segment.chunk)

    def ensure(self, meta: ObjectMeta, first: int, last: int, priority: Priority = PREFETCH) -> list[ChunkFill]:
        """Start fetching chunks first..last of a version that are neither cached nor in flight,
        in the background. Returns the fills started (``cancel`` stops them)."""
        version = self.store.version_for(meta)
        n = self.layout.count(meta.size)
        started: list[ChunkFill] = []
        i = max(0, first)
        last = min(last, n - 1)
        while i <= last:
            if self.store.has(version.vid, i) or (version.vid, i) in self.fills:
                i += 1
                continue
            fills = self._register_span(version, i, last, priority)
            task = self._launch(self._run_span(version, fills))
            keys = [f.key for f in fills]
            for k in keys:
                self._ensured[k] = task
            task.add_done_callback(lambda t, keys=keys: self._ensured_done(t, keys))
            started.extend(fills)
            i = fills[-1].index + 1
        return started

    def cancel(self, fills: list[ChunkFill]) -> int:
        """Stop the upstream fetches of fills ``ensure`` started, span by span, except spans a
        client has joined (promoted to demand: they go on). Returns how many spans stopped."""
        spans: dict[asyncio.Task, list[ChunkFill]] = {}
        for f in fills:
            task = self._ensured.get(f.key)
            if task is not None and not task.done():
                spans.setdefault(task, []).append(f)
        stopped = 0
        for task, span in spans.items():
            if any(f.priority == DEMAND or f.refs for f in span if not f.done):
                continue
            task.cancel()
            stopped += 1
        return stopped

    def _ensured_done(self, task: asyncio.Task, keys: list) -> None:
        for k in keys:
            if self._ensured.get(k) is task:
                del self._ensured[k]

    async def close(self, grace: float = 0.0) -> None:
        """Stop fetching: fetches in flight get ``grace`` seconds to finish and commit."""
        if grace > 0 and self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t

    # --- spans --------------------------------------------------------------------------

    def _start_span(self, version: Version, first: int, last: int, priority: int,
                    keep: bool = True, held: dict[int, ChunkFill] | None = None, tier: bool = True) -> list[ChunkFill]:
        """Register fills for the run of missing chunks from ``first`` (at most to ``last``) and
        start one upstream GET for them. ``held``: a reader's fills, whose ended unkept chunks
        are not missing (``ChunkFill.ended_unkept``)."""
        fills = self._register_span(version, first, last, priority, keep, held)
        if fills:
            self._launch(self._run_span(version, fills, tier_asked=not tier))
        return fills

    def _register_span(self, version: Version, first: int, last: int, priority: int,
                       keep: bool = True, held: dict[int, ChunkFill] | None = None) -> list[ChunkFill]:
        fills: list[ChunkFill] = []
        i = first
        while i <= last and len(fills) < MAX_SPAN_CHUNKS:
            if not self._missing(version, i, held):
                break
            c0, c1 = self.layout.bounds(i, version.meta.size)
            fill = ChunkFill(version, i, c1 - c0 + 1, priority)
            fill.keep = keep
            if i == 0 and version.meta.get_checksums is None:
                fill.carried = asyncio.get_running_loop().create_future()
            self.fills[fill.key] = fill
            fills.append(fill)
            i += 1
        return fills

    def _missing(self, version: Version, index: int, held: dict[int, ChunkFill] | None = None) -> bool:
        """Whether a chunk is neither cached, nor being fetched, nor held by the reader asking."""
        if self.store.has(version.vid, index) or (version.vid, index) in self.fills:
            return False
        fill = held.get(index) if held else None
        return fill is None or not fill.ended_unkept

    def _launch(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_span(self, version: Version, fills: list[ChunkFill], opened: OpenedObject | None = None,
                        tier_asked: bool = False) -> None:
        if self.tier is not None and opened is None and not tier_asked:
            return await self._run_span_via_tier(version, fills)
        meta = version.meta
        purpose = ("demand", "readahead", "prefetch")[min(fills[0].priority, 2)]
        pending = list(fills)
        attempt = 0
        try:
            while pending:
                start = self.layout.bounds(pending[0].index, meta.size)[0] + pending[0].written
                end = self.layout.bounds(pending[-1].index, meta.size)[1]
                if opened is None:
                    # Before the upstream request: a disk that refuses the temp file (read-only,
                    # full) makes the readers fetch directly, and this request would be wasted.
                    self._open_writer(pending[0])
                try:
                    if opened is not None and opened.first == start:
                        body_cm = contextlib.nullcontext(opened.body)
                    else:
                        if opened is not None:  # a cold GET's answer broke off: resume by range
                            await opened.close()
                            opened = None
                        if start == 0 and end == meta.size - 1 and version.meta.get_checksums is None:
                            opened = await self._open_whole(version)
                            body_cm = contextlib.nullcontext(opened.body)
                        else:
                            body_cm = self.upstream.get_range(meta.bucket, meta.key, start, end, if_match=meta.etag)
                    if pending[0].index == 0:
                        # Nothing else of this span will tell the GET's checksum headers: whoever
                        # waits for them asks the upstream now (Catalog.with_checksums).
                        pending[0].settle_carried()
                    async with body_cm as body:
                        while pending:
                            fill = pending[0]
                            await self._fill_chunk(fill, body, purpose)
                            pending.pop(0)
                            attempt = 0
                except S3Error as err:
                    if err.code == "PreconditionFailed":
                        if self.on_object_changed is not None:
                            self.on_object_changed(meta)
                        raise ObjectChanged() from None
                    if isinstance(err, UpstreamUnavailable) and attempt < RESUME_ATTEMPTS:
                        attempt += 1
                        self.metrics.upstream_errors.labels("resumed").inc()
                        if opened is not None and opened.first == start:
                            # broke off before the first piece: the answer is spent, resume anew
                            await opened.close()
                            opened = None
                        await asyncio.sleep(random.uniform(0.05, 0.2) * attempt)
                        continue
                    raise
        except BaseException as err:  # noqa: BLE001 - every failure must reach the waiters
            for fill in pending:
                self._abandon(fill, err if isinstance(err, Exception) else UpstreamUnavailable())
            if not isinstance(err, (S3Error, ObjectChanged, DiskFault, asyncio.CancelledError)):
                log.error("span_failed", bucket=meta.bucket, error=repr(err))
            if isinstance(err, asyncio.CancelledError):
                raise
        finally:
            if opened is not None:
                await opened.close()

    async def _open_whole(self, version: Version) -> OpenedObject:
        """A fill of a whole version whose whole-object GET checksum headers are not known yet: a
        GET of the whole object, pinned to its ETag, in checksum mode, instead of the ranged GET;
        its answer's headers are those checksums, learned at no extra request (kept with the
        version, so block 0 carries them to the shared tier, and told to whoever waits in
        ``carried_checksums``)."""
        meta = version.meta
        opened = await self.upstream.open_object(meta.bucket, meta.key, start=None, end=None, checksum_mode=True,
                                                 if_match=meta.etag)
        if not opened.meta.same_version(meta) or opened.first != 0:
            await opened.close()  # an upstream that ignored If-Match: another version's answer
            raise S3Error("PreconditionFailed", Condition="If-Match")
        learned = self.store.version_for(meta.learned(opened.meta)).meta
        fill = self.fills.get((version.vid, 0))
        if fill is not None:
            fill.settle_carried(learned.get_checksums)
        return opened

    async def _gated(self, fill: ChunkFill, nbytes: int) -> bool:
        """Wait for the bandwidth gate if the fill is background work; whether it still is (a
        demand reader joining it cancels the wait, ``_promote``: demand never waits)."""
        background = fill.priority != DEMAND
        if self.gate is not None and background:
            waiter = fill.gate_wait = asyncio.ensure_future(self.gate(nbytes))
            try:
                await asyncio.wait((waiter,))
            finally:
                fill.gate_wait = None
                waiter.cancel()
            background = not waiter.cancelled()
        return background

    async def _fill_chunk(self, fill: ChunkFill, body, purpose: str) -> None:
        """Receive one chunk's bytes into its temp file and commit it."""
        store = self.store
        writer = self._open_writer(fill)
        received = fill.written
        # the counter's children, looked up once a chunk rather than once a piece
        demand_bytes = self.metrics.upstream_bytes.labels("demand")
        background_bytes = self.metrics.upstream_bytes.labels(purpose)
        while received < fill.length:
            want = min(DEMAND_PIECE if fill.priority == DEMAND else PIECE, fill.length - received)
            # demand never waits for the gate (no coroutine a piece for it either)
            background = fill.priority != DEMAND and await self._gated(fill, want)
            try:
                piece = await body.read(want)
            except S3Error:
                raise
            except (asyncio.TimeoutError, OSError, ConnectionError) as e:
                raise UpstreamUnavailable(f"upstream body interrupted: {e}") from e
            if not piece:
                raise UpstreamUnavailable("upstream body ended early")
            fill.received(piece, received)
            received += len(piece)
            # Promoted (a client joined): the rest is demand's, in the counter as in the bucket.
            (background_bytes if background else demand_bytes).inc(len(piece))
            if self.spend_demand is not None and not background:
                self.spend_demand(len(piece))
            try:
                # Written on the loop: a page-cache write costs less than a hop to a thread.
                writer.write(piece)
            except OSError as e:
                self.metrics.disk_errors.labels("write").inc()
                store.stats.write_errors += 1  # summarised in the log as cache_disk_errors
                raise DiskFault(str(e)) from e
            fill.progressed(len(piece))
            if fill.refs and received < fill.length:  # (the last piece: commit first)
                # A ready read does not yield: let attached readers send this piece from memory
                # before the next one replaces it.
                await asyncio.sleep(0)
        prefetched = fill.priority == PREFETCH  # not promoted: no client was waiting for it
        self._reserve_confirmed(fill, writer)
        kept = store.commit(writer, prefetched=prefetched)
        if kept and prefetched:
            self.metrics.prefetch_bytes.inc(fill.length)
        if kept and self.tier is not None:
            self._offer_to_tier(fill)
        self._ended(fill)
        fill.finish(kept)

    # --- the shared tier: local → tier → upstream ------------------------------------------

    async def _run_span_via_tier(self, version: Version, fills: list[ChunkFill]) -> None:
        """Ask the shared tier for every chunk of a span (one request per block, at most
        at once, in order: cache/tier.py), commit the verified hits as they stream in, then
        fetch each remaining run of missing bytes with one upstream GET."""
        try:
            await asyncio.gather(*(self._fill_from_tier(f) for f in fills), return_exceptions=True)
        except BaseException:  # cancelled: nobody will fill these
            for f in fills:
                if not f.done:
                    self._abandon(f, UpstreamUnavailable())
            raise
        pending = fills[0].pending
        if pending is not None and not await asyncio.shield(pending):
            return  # not confirmed: dropped (``resolved``); the upstream is not asked either
        runs: list[list[ChunkFill]] = []
        for f in fills:
            if f.done:
                continue
            # A block found corrupt part way keeps its verified head: a run resumes inside its
            # first chunk only, so such a chunk starts a run of its own.
            if runs and runs[-1][-1].index == f.index - 1 and not f.written:
                runs[-1].append(f)
            else:
                runs.append([f])
        try:
            for run in runs:
                await self._run_span(version, run, tier_asked=True)
                failed = next((f.error for f in run if f.error is not None), None)
                if failed is not None:  # the upstream refused (changed object, outage): so will the rest
                    for f in (f for r in runs for f in r):
                        if not f.done:
                            self._abandon(f, failed if isinstance(failed, Exception) else UpstreamUnavailable())
                    return
        finally:
            for f in (f for r in runs for f in r):
                if not f.done:
                    self._abandon(f, UpstreamUnavailable())

    async def _fill_from_tier(self, fill: ChunkFill) -> None:
        """Fill one chunk from its tier block, piece by verified piece, and commit it. A miss
        leaves the fill untouched; a block found wrong part way leaves the verified head in the
        temp file: either way the upstream fills the rest."""
        assert self.tier is not None
        if fill.priority != DEMAND:
            # Prefetch, readahead: the whole block under the bandwidth bucket, before the tier is
            # asked (its read deadline is for the transfer; a demand reader joining ends the wait).
            await self._gated(fill, fill.length)
            if fill.done:
                return
        try:
            await self._fill_chunk_from_tier(fill)
        finally:
            if fill.pending is not None and fill.pending.done() and not fill.pending.result():
                # read on a guess the upstream did not confirm: wasted
                self.metrics.tier_speculative_dropped_bytes.inc(fill.tier_upto)

    async def _fill_chunk_from_tier(self, fill: ChunkFill) -> None:
        assert self.tier is not None
        block = await self.tier.open(fill.version.meta, fill.index, fill.length, background=fill.priority != DEMAND)
        if block is None:
            return  # (chunk 0: the upstream GET filling it may tell the GET's checksums instead)
        fill.settle_carried(block.checksums)
        learned = block.checksums is not None and fill.version.meta.get_checksums is None
        if learned and fill.pending is None:
            self._keep_get_checksums(fill.version, block.checksums)
        if fill.done:
            await block.close()
            return
        try:
            writer = self._open_writer(fill)
        except DiskFault:
            await block.close()
            return  # the upstream span meets the same disk and sends its readers straight upstream
        pieces = block.pieces()
        try:
            async for piece in pieces:
                if fill.done:
                    return
                fill.tier_upto += len(piece)  # before readers can see the bytes
                fill.received(piece, fill.written)
                # Written on the loop, like an upstream piece: a page-cache write costs less than
                # a hop to a thread.
                writer.write(piece)
                fill.progressed(len(piece))
                if fill.refs:
                    await asyncio.sleep(0)  # let attached readers send this piece from memory
        except BlockRejected:
            return  # counted by the tier
        except OSError as e:
            self.metrics.disk_errors.labels("write").inc()
            self.store.stats.write_errors += 1
            self._abandon(fill, DiskFault(str(e)))
            return
        finally:
            await pieces.aclose()
        if fill.pending is not None:
            if not await asyncio.shield(fill.pending) or fill.done:
                return  # not confirmed: dropped by ``resolved``
            if learned:
                self._keep_get_checksums(fill.version, block.checksums)
            self._reserve_confirmed(fill, writer)
        kept = self.store.commit(writer, prefetched=fill.priority == PREFETCH)
        if kept and fill.priority == PREFETCH:
            self.metrics.prefetch_bytes.inc(fill.length)
        self._ended(fill)
        fill.finish(kept)

    def _reserve_confirmed(self, fill: ChunkFill, writer: BudgetedWrite) -> None:
        """A speculative fill's version is confirmed: its chunk reserves its room now (evicting
        as needed), as any fill's did when it began."""
        if fill.pending is not None and fill.keep:
            self.store.reserve_write(writer)

    def _keep_get_checksums(self, version: Version, checksums: tuple[tuple[str, str], ...]) -> None:
        """GET checksum headers a tier block told, kept with the version (and on disk with its
        metadata): a whole GET read later, once chunk 0 is local, needs no upstream request."""
        self.store.version_for(dataclasses.replace(version.meta, get_checksums=checksums))

    async def learned_checksums(self, meta: ObjectMeta) -> tuple[tuple[str, str], ...] | None:
        """The checksum headers of a whole-object GET of this version, if a fill of it (or its
        block 0 in the shared tier) told them; None: not known here."""
        version = self.store.cached_version(meta)
        return version.meta.get_checksums if version is not None else None

    async def carried_checksums(self, meta: ObjectMeta, *, keep: bool = True) -> tuple[tuple[str, str], ...] | None:
        """The checksum headers of a whole-object GET of this version, as the fill of its first
        chunk learns them: from block 0 in the shared tier (bound to the version this pod resolved
        against the upstream, and verified like its bytes), else from the upstream GET of the
        whole object that fills it (``_open_whole``). None: chunk 0 is local without them, or
        neither tells them (a block that does not carry them, a ranged fill). Starts the demand
        read of the whole object (the ``read`` that follows, with the same ``keep``, takes it
        over as its own, ``_claim``), or joins another read's fill of it (for an object that is not
        kept, holding it for the read that follows), so the answer costs no extra request, also
        for an object that is not kept."""
        if meta.size <= 0:
            return None
        version = self.store.version_for(meta)
        if version.meta.get_checksums is not None:  # learned by an earlier fill
            return version.meta.get_checksums
        if self.store.has(version.vid, 0):
            return None
        fill = self.fills.get((version.vid, 0))
        if fill is None:
            # Bytes not kept (a do-not-cache rule) are not asked of the tier: it never has them.
            fills = self._start_span(version, 0, self.layout.count(meta.size) - 1, DEMAND, keep, tier=keep)
            if not fills:
                return None
            fill = fills[0]
            self._claim(version, fills)
        else:
            if not keep:
                # Another read's fill, not kept: held for this read too (with the rest of its run
                # in flight), so its bytes stay in its temp file however soon it ends, and the
                # headers its answer tells serve this read as well: no request of its own.
                self._claim(version, self._in_flight(version.vid), another_read=True)
            if fill.priority != DEMAND:
                self._promote(fill)
        if fill.carried is None:
            return None
        return await asyncio.shield(fill.carried)

    def _in_flight(self, vid: str) -> list[ChunkFill]:
        """The fills of version ``vid`` in flight from chunk 0 on, up to the first chunk that is not."""
        fills = []
        while (fill := self.fills.get((vid, len(fills)))) is not None:
            fills.append(fill)
        return fills

    def speculate(self, meta: ObjectMeta, start: int, end: int, source: str = "expired") -> None:
        """A read of bytes start..end of an object is about to resolve its version (a HEAD): start
        reading the tier blocks of the version guessed, ``meta`` (``source``: "expired", the
        version this pod knew; "hint", the tier's record of the version last seen, ``guess``), so
        the transfer overlaps the HEAD instead of following it. The blocks are read and verified
        into temp files that reserve no room in the cache yet, and are released (committed, or
        handed to a reader as its own) only when the lookup confirms exactly this version
        (``resolved``); any other verdict drops them, counted. The authorization rule holds: no
        tier byte of a version this pod has not resolved against the upstream goes anywhere."""
        k = (meta.bucket, meta.key)
        if self.tier is None or k in self._speculating or end < start or meta.size <= 0:
            return
        version = self.store.version_for(meta)
        first = start // self.chunk_size
        last = min(end // self.chunk_size, first + SPECULATIVE_CHUNKS - 1)
        if not self._missing(version, first):
            return
        fills = self._register_span(version, first, last, DEMAND)
        verdict = asyncio.get_running_loop().create_future()
        for f in fills:
            f.pending = verdict
        self._speculating[k] = (version, verdict, fills, source)
        asyncio.get_running_loop().call_later(SPECULATION_WAIT, self._unanswered, k, verdict)
        self._launch(self._run_span(version, fills))

    def guess(self, bucket: str, key: str, span: Callable[[ObjectMeta], tuple[int, int] | None]) -> None:
        """A first read of an object this pod has no version of is about to resolve it (a HEAD):
        ask the tier meanwhile for the record of the version last seen, and if it comes before
        the verdict, speculate on that version (bytes ``span(meta)``, None: none worth it). The
        pod's verdict, if another than the record's (or there was none), is recorded in turn
        for the next pods (``resolved``)."""
        k = (bucket, key)
        if self.tier is None or k in self._guessing or k in self._speculating:
            return
        g = self._guessing[k] = _Guess(span)
        asyncio.get_running_loop().call_later(SPECULATION_WAIT, self._guess_unanswered, k, g)
        self._launch(self._guess(k, g))

    async def _guess(self, k: tuple[str, str], g: "_Guess") -> None:
        assert self.tier is not None
        # The lookup's HEAD, started just after this task, goes out first: it gates every byte of
        # the read, the record only what is read meanwhile (building a request costs ~1 ms).
        await asyncio.sleep(0)
        try:
            g.hint = await self.tier.hint(*k)
        finally:
            g.hinted = True
        if g.answered:  # the HEAD came first: nothing to overlap; record what it said
            self.metrics.tier_hints.labels("late").inc()
            self._guessed(k, g)
            return
        if g.hint is not None:
            selected = g.span(g.hint)
            if selected is not None:
                self.speculate(g.hint, *selected, source="hint")

    def _guessed(self, k: tuple[str, str], g: "_Guess") -> None:
        """Both the record and the verdict are in: the pod's own version goes to the tier when the
        record did not name it (and the object is one whose blocks are kept there)."""
        if self._guessing.get(k) is g:
            del self._guessing[k]
        if g.verdict is None or self.tier is None or (g.hint is not None and g.hint.same_version(g.verdict)):
            return
        if g.span(g.verdict) is not None:
            self.tier.offer_hint(g.verdict)

    def _guess_unanswered(self, k: tuple[str, str], g: "_Guess") -> None:
        if self._guessing.get(k) is g:
            del self._guessing[k]

    def resolved(self, bucket: str, key: str, meta: ObjectMeta | None, previous: ObjectMeta | None = None) -> None:
        """The catalog's verdict on (bucket, key): the version the upstream confirmed, or None;
        ``previous``: the version it knew before (an expired entry), if any. A speculation on
        the confirmed version is released, as the fills of the read that follows; on any other,
        dropped before that read can see it. A revalidation that found a new version records it
        in the tier, as a first read does (``guess``): the next pods' guess is that version, not
        the one this pod knew."""
        k = (bucket, key)
        g = self._guessing.get(k)
        if g is not None and not g.answered:
            g.answered, g.verdict = True, meta
            if g.hinted:
                self._guessed(k, g)
        elif previous is not None and meta is not None and not meta.same_version(previous) \
                and self.tier is not None and self.tier_keeps(meta):
            self.tier.offer_hint(meta)
        spec = self._speculating.pop(k, None)
        if spec is None:
            return
        version, verdict, fills, source = spec
        ok = meta is not None and meta.same_version(version.meta)
        verdict.set_result(ok)
        self.metrics.tier_speculations.labels(source, "confirmed" if ok else "dropped").inc()
        if ok:
            # A guess from a record knew only the ETag and size: the version's chunks are kept
            # under the metadata the upstream gave (headers, dates), as any other fill's.
            if version.meta is not meta:
                version.meta = meta.learned(version.meta)
            self._claim(version, [f for f in fills if not f.done])
            return
        for f in fills:
            if not f.done:
                self._abandon(f, UpstreamUnavailable("speculative tier read of a version not confirmed"))
        self.store.forget_if_empty(version)

    def _claim(self, version: Version, fills: list[ChunkFill], *, another_read: bool = False) -> None:
        """Hand fills to the read of ``version`` about to come (``read`` takes them as its own),
        each held until then: a chunk that is not kept (a do-not-cache rule, no room) keeps its
        bytes in its temp file for that read, however soon its fill ends, and is not fetched
        twice. Released if no read came within ``CLAIM_WAIT``, or sooner, oldest first, when
        more than ``CLAIMED_FILLS`` are held. Fills claimed for one read join its claim;
        ``another_read``: for one more read (fills another read is already waiting for), a claim
        of its own, taken by the reads in the order they claimed."""
        if not fills:
            return
        claims = self._claims.setdefault(version.vid, [])
        if another_read or not claims:
            claims.append({})
            asyncio.get_running_loop().call_later(CLAIM_WAIT, self._unclaimed, version.vid, claims[-1])
        claim = claims[-1]
        held = len(claim)
        for f in fills:
            _hold_in(claim, f)
        self._claimed += len(claim) - held
        # reads that never came (errors before the read): the oldest claims go first
        while self._claims and (len(self._claims) > 1024 or self._claimed > CLAIMED_FILLS):
            vid = next(iter(self._claims))
            self._release_claim(vid, self._claims[vid][0])

    def _take_claim(self, vid: str) -> dict[int, ChunkFill] | None:
        """The oldest claim on ``vid``'s fills, for the read that comes (``_claim``)."""
        claims = self._claims.get(vid)
        if not claims:
            return None
        claim = claims.pop(0)
        if not claims:
            del self._claims[vid]
        self._claimed -= len(claim)
        return claim

    def _unclaimed(self, vid: str, claim: dict[int, ChunkFill]) -> None:
        claims = self._claims.get(vid)
        if claims is not None and any(c is claim for c in claims):  # (else: taken by its read)
            self._release_claim(vid, claim)

    def _release_claim(self, vid: str, claim: dict[int, ChunkFill]) -> None:
        """Let go of a claim no read took."""
        claims = self._claims[vid]
        claims[:] = [c for c in claims if c is not claim]
        if not claims:
            del self._claims[vid]
        self._claimed -= len(claim)
        for f in claim.values():
            f.detach()

    def _unanswered(self, k: tuple[str, str], verdict: asyncio.Future) -> None:
        """No verdict came for a speculation (no lookup followed it): it is dropped."""
        spec = self._speculating.get(k)
        if spec is not None and spec[1] is verdict:
            self.resolved(*k, None)

    def _offer_to_tier(self, fill: ChunkFill) -> None:
        """A chunk fetched from the upstream is committed: queue it for the tier, to be read back
        from its file (and checked against its piece table) when a writer gets to it."""
        assert self.tier is not None
        path = self.store.chunk_file(fill.version.vid, fill.index)
        digest = fill.version.chunks.get(fill.index)
        if path is None or digest is None:
            return
        length = fill.length

        def load() -> bytes | None:
            try:
                image = path.read_bytes()
            except OSError:
                return None  # evicted meanwhile
            return image[:length] if chunkfile.check_image(image, length, digest) else None

        self.tier.offer(fill.version.meta, fill.index, load)

    def _open_writer(self, fill: ChunkFill) -> BudgetedWrite:
        if fill.writer is None:
            # A speculative fill reserves no room (evicts nothing) before its version is confirmed
            # (``_reserve_confirmed``): a wrong guess costs the cache nothing.
            unconfirmed = fill.pending is not None and not (fill.pending.done() and fill.pending.result())
            try:
                fill.writer = self.store.begin_write(fill.version, fill.index, keep=fill.keep and not unconfirmed)
            except OSError as e:
                self.metrics.disk_errors.labels("create").inc()
                raise DiskFault(str(e)) from e
        return fill.writer

    def _abandon(self, fill: ChunkFill, err: Exception) -> None:
        self._ended(fill)
        if fill.writer is not None:
            self.store.abort(fill.writer)
        fill.fail(err)

    def _ended(self, fill: ChunkFill) -> None:
        if self.fills.get(fill.key) is fill:
            del self.fills[fill.key]
        if fill.readahead:
            fill.readahead = False
            self.readahead_in_flight -= fill.length

    # --- readers ------------------------------------------------------------------------

    async def _segments(self, version: Version, start: int, end: int, stats: ReadStats,
                        mine: dict[int, ChunkFill] | None = None, *, keep: bool = True,
                        tier: bool = True, claimed: bool = False) -> AsyncIterator[Segment]:
        """``claimed``: ``mine`` are fills handed over by ``_claim``, held for this read until it
        holds them itself."""
        handed = list(mine.values()) if claimed and mine else []
        if end < start:
            for f in handed:
                f.detach()
            return
        cs = self.chunk_size
        size = version.meta.size
        first, last = start // cs, end // cs
        pos = start
        # The fills this read started, each held (attached) until the read has passed its chunk: a
        # chunk that is not kept (a do-not-cache rule, or no room) is gone from the store and the
        # fills once its fill ends, possibly long before a slow client gets to it; held, its bytes
        # stay in the unlinked temp file, and are not fetched twice.
        mine = {} if mine is None else mine
        held: dict[int, ChunkFill] = {}
        self._hold(held, mine, mine.values())
        for f in handed:  # now held by this read
            f.detach()
        try:
            for index in range(first, last + 1):
                passed = held.pop(index - 1, None)
                if passed is not None:
                    passed.detach()
                c0, c1 = self.layout.bounds(index, size)
                lo, hi = max(start, c0) - c0, min(end, c1) - c0  # offsets within the chunk, inclusive
                if self._missing(version, index, held):
                    self._hold(held, mine, self._start_span(version, index, last, DEMAND, keep, held, tier))
                self._hold(held, mine, self._look_ahead(version, index, last, keep, held, tier))
                # A chunk this read fetched and still holds is sent from its fill's file, as it was
                # written (each piece checked on its way in), like a chunk it tails: not read back
                # from the cache and checked again because its fill happened to end first (except
                # in strict mode, where nothing kept is sent from a file unchecked).
                own = held.get(index)
                if own is not None and not (own.ended_open and (not own.kept or not self.store.disk.verify_every_read)):
                    own = None
                chunk = None if own is not None else self.store.open_chunk(version.vid, index, lo, hi)
                if chunk is not None:
                    # A chunk this read fetched may be committed before the read reaches it: it
                    # is served from disk but its bytes still came from the upstream for this read.
                    fetched = index in mine
                    # Counted as handed out: a caller that needs only this segment closes the
                    # generator at the yield, and nothing after it runs.
                    if fetched:
                        stats.fetched(mine[index].tier_upto, lo, hi - lo + 1)
                    else:
                        self._hit(version.vid, index, hi - lo + 1, stats)
                    whole = True
                    try:
                        ready = self._ready_segment(version.vid, index, chunk, lo, hi, from_cache=not fetched)
                        if ready is not None:
                            yield ready
                        else:
                            # Read and check the pieces lo..hi touches, a batch at a time (memory stays
                            # bounded), and send the very bytes checked: the file is read once.
                            while lo <= hi:
                                b1 = min(hi, (lo // CHECK_BATCH + 1) * CHECK_BATCH - 1)
                                data = await self._check(chunk, lo, b1)
                                if data is None:  # closing the chunk (below) drops it
                                    whole = False
                                    break
                                yield Segment(b1 - lo + 1, data=data, from_cache=not fetched)
                                lo = b1 + 1
                    finally:
                        chunk.close()
                    if whole:
                        pos = c0 + hi + 1
                        continue
                    # Bad pieces: the chunk was dropped, and the rest of the range comes from a refetch.
                    pos = c0 + lo
                    if fetched:
                        stats.fetched(mine[index].tier_upto, hi + 1, -(hi - lo + 1))
                    else:
                        stats.hit_bytes -= hi - lo + 1
                fill = self.fills.get((version.vid, index))
                if fill is None and own is not None:
                    fill = own  # fetched for this read: its bytes are in its file
                elif fill is None:  # the cached copy failed verification (and was dropped): refetch
                    self._hold(held, mine, self._start_span(version, index, last, DEMAND, keep, held, tier))
                    fill = mine[index]
                elif index not in mine:
                    stats.joined += 1
                    self.metrics.coalesced.labels("chunk").inc()
                if fill.priority != DEMAND:
                    self._promote(fill)
                try:
                    at = lo
                    async for seg in self._tail(fill, lo, hi):
                        stats.fetched(fill.tier_upto, at, seg.length)
                        at += seg.length
                        pos += seg.length  # per segment: a fault mid-chunk resumes after what was sent
                        yield seg
                except (DiskFault, FillEndedShort):
                    # The cache disk failed under this chunk: serve the rest straight from upstream.
                    async for seg in self._direct(version.meta, pos, end, stats):
                        yield seg
                    return
        finally:
            for f in held.values():
                f.detach()

    @staticmethod
    def _hold(held: dict[int, ChunkFill], mine: dict[int, ChunkFill], fills) -> None:
        """Enter fills a read started in ``mine``, and hold each (``_segments``)."""
        for f in list(fills):
            mine[f.index] = f
            _hold_in(held, f)

    async def _check(self, chunk: VerifiedChunk, lo: int, hi: int) -> memoryview | None:
        """``chunk.check(lo, hi)``; off the event loop when it is more than a few pieces."""
        if self.executor is not None and hi - lo >= CHECK_ON_LOOP:
            return await asyncio.get_running_loop().run_in_executor(self.executor, chunk.check, lo, hi)
        return chunk.check(lo, hi)

    async def _tail(self, fill: ChunkFill, lo: int, hi: int) -> AsyncIterator[Segment]:
        """Bytes lo..hi of a chunk being filled, as they arrive."""
        fill.attach()
        try:
            pos = lo
            while pos <= hi:
                seg = fill.segment_at(pos, hi)
                if seg is None:
                    await fill.changed()
                    continue
                yield seg
                pos += seg.length
        finally:
            fill.detach()

    async def _direct(self, meta: ObjectMeta, start: int, end: int, stats: ReadStats) -> AsyncIterator[Segment]:
        """Bytes straight from the upstream, bypassing the cache (its disk is failing)."""
        if end < start:
            return
        async with self.upstream.get_range(meta.bucket, meta.key, start, end, if_match=meta.etag) as body:
            remaining = end - start + 1
            while remaining:
                piece = await body.read(min(PIECE, remaining))
                if not piece:
                    raise UpstreamUnavailable("upstream body ended early")
                remaining -= len(piece)
                stats.miss_bytes += len(piece)
                self.metrics.upstream_bytes.labels("direct").inc(len(piece))
                if self.spend_demand is not None:
                    self.spend_demand(len(piece))
                yield Segment(len(piece), data=piece, from_cache=False)

    def _promote(self, fill: ChunkFill) -> None:
        """A demand reader joined a background fill: the rest of its span stops waiting on the gate."""
        for f in self.fills.values():
            if f.version is fill.version and f.index >= fill.index:
                f.priority = DEMAND
                if f.gate_wait is not None:
                    f.gate_wait.cancel()

    def _look_ahead(self, version: Version, index: int, last: int, keep: bool = True,
                    held: dict[int, ChunkFill] | None = None, tier: bool = True) -> list[ChunkFill]:
        """Keep the next chunks of this request in flight so a span boundary costs no stall."""
        for j in range(index + 1, min(index + LOOKAHEAD_CHUNKS, last) + 1):
            if self._missing(version, j, held):
                return self._start_span(version, j, last, DEMAND, keep, held, tier)
        return []

    # --- sequential readahead -------------------------------------------------------------

    def _note_sequential(self, version: Version, start: int, end: int) -> None:
        cs = self.chunk_size
        first, last = start // cs, end // cs
        expected = self._sequential.pop(version.vid, None)
        self._sequential[version.vid] = last + 1 if (end + 1) % cs == 0 else last
        while len(self._sequential) > 4096:
            self._sequential.popitem(last=False)
        if self.readahead_chunks <= 0 or expected is None or not (expected - 1 <= first <= expected):
            return
        n = self.layout.count(version.meta.size)
        ahead_first, ahead_last = last + 1, min(n - 1, last + self.readahead_chunks)
        if ahead_first > ahead_last:
            return
        if self.readahead_in_flight >= self.readahead_max_bytes:
            return
        fills = self.ensure(version.meta, ahead_first, ahead_last, READAHEAD)
        for f in fills:
            f.readahead = True
            self.readahead_in_flight += f.length
            self.metrics.readahead_bytes.inc(f.length)

