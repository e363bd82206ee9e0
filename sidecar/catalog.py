"""The catalog: which version of each object is current, as far as the cache knows.

Maps (bucket, key) to the upstream's metadata (ETag, size, headers) with the time it was
learned. Fresh entries (younger than the metadata TTL) answer without the upstream; stale
ones are revalidated with a conditional HEAD (If-None-Match: <ETag>). Writes through the
sidecar invalidate at once, and a lookup that was in flight when the write happened is
never installed, so a read after a write never sees the old version.

The catalog is the one owner of which version is current. When it learns that a version is
dead (overwritten, deleted, or found replaced upstream in the middle of a read) it retires it
through ``on_obsolete``, which drops that version's chunks from the store; nobody else decides
that a cached version is obsolete. At start too: of the versions the store finds on disk,
``current_on_disk`` says which are current (the store deletes the rest), and ``restore``
seeds the catalog with them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .errors import NotModified, ObjectChanged, S3Error, UpstreamUnavailable
from .objects import ObjectMeta
from .upstream.base import OpenedObject, PartInfo, Upstream

ObjectKey = tuple[str, str]


@dataclasses.dataclass(slots=True)
class Entry:
    meta: ObjectMeta
    learned_at: float  # monotonic time of the last upstream confirmation; -inf when restored from disk
    confirmed: float = dataclasses.field(default_factory=time.time)  # wall time of that confirmation
    parts: dict[int, PartInfo] = dataclasses.field(default_factory=dict)
    stale: bool = False  # served past its TTL because the upstream could not be reached


class StoredVersion(Protocol):
    """A version the store found on disk at start: its metadata, and when it was stored."""

    meta: ObjectMeta
    stored_at: float  # wall time


V = TypeVar("V", bound=StoredVersion)


def current_on_disk(found: list[V]) -> list[V]:
    """Of the versions found on disk at start, the current one of each object: the one stored
    last (a version is stored when its first chunk is kept, so a later one replaced it). The
    catalog ``restore``s them, to be revalidated with the upstream at first use."""
    newest: dict[ObjectKey, V] = {}
    for v in found:
        k = (v.meta.bucket, v.meta.key)
        if k not in newest or newest[k].stored_at < v.stored_at:
            newest[k] = v
    return list(newest.values())


class _Lookup:
    """A metadata lookup in flight, and the callers waiting for its answer."""

    __slots__ = ("task", "poisoned", "waiters")

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.poisoned = False
        self.waiters: list[asyncio.Future] = []

    async def answer(self) -> Entry:
        """This lookup's entry once it is in. Each caller waits on a future of its own, set in
        the very step the answer comes in (``tell``): a caller that gives up cancels only its
        own, and the answer reaches it one turn of the event loop sooner than through the
        lookup's task (a shielded task's result takes two more turns, each of which may run
        other reads' work first)."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def tell(self, entry: Entry | None = None, error: BaseException | None = None) -> None:
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if w.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                w.cancel()
            elif error is not None:
                w.set_exception(error)
            else:
                w.set_result(entry)


class Catalog:
    def __init__(self, upstream: Upstream, *, ttl: Callable[[str, str], float | None],
                 max_entries: int = 200_000, clock: Callable[[], float] = time.monotonic,
                 stale_if_error: float | None = 3600.0,
                 on_obsolete: Callable[[ObjectMeta], None] | None = None,
                 on_learned: Callable[[ObjectMeta], None] | None = None,
                 on_cold_read: Callable[[ObjectMeta], None] | None = None) -> None:
        self.upstream = upstream
        self.ttl = ttl  # seconds for (bucket, key); None = indefinite
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[ObjectKey, Entry] = OrderedDict()
        self._lookups: dict[ObjectKey, _Lookup] = {}
        self.on_obsolete = on_obsolete  # retire a version known to be replaced or deleted upstream
        # an upstream HEAD named a key (client HEADs and the lookups before a read): the prefetch
        # loop's known-key catalogue hears of it; O(1), no I/O
        self.on_learned = on_learned
        # on_resolved(bucket, key, meta or None, previous or None): told, inside each metadata
        # lookup and before its answer is handed out, which version the upstream confirmed (None:
        # no version confirmed: a failure, a stale-if-error answer, a write meanwhile), and the
        # version the catalog knew before (None: a first lookup). The reader's speculative tier
        # reads of an expired entry's version (Reader.speculate) wait for it.
        self.on_resolved: Callable[[str, str, ObjectMeta | None, ObjectMeta | None], None] | None = None
        # a read of a key the catalog did not know has begun (``open_cold``: its GET answered,
        # its bytes not yet sent): the prefetch loop hears of a reader at its first read's start
        self.on_cold_read = on_cold_read
        # how old (seconds since the upstream last confirmed it) metadata may be and still be
        # served while the upstream cannot be reached; None: no limit
        self.stale_if_error = stale_if_error
        self.stale_served = 0
        self.shared_lookups = 0
        self.revalidations = 0

    def restore(self, meta: ObjectMeta, confirmed: float = 0.0) -> None:
        """Seed an entry from disk at start: known, but to be revalidated on first use.
        ``confirmed``: when it was stored (wall time), for stale-if-error's limit."""
        self._put((meta.bucket, meta.key), Entry(meta, float("-inf"), confirmed=confirmed))

    def _put(self, k: ObjectKey, entry: Entry) -> None:
        self.entries[k] = entry
        self.entries.move_to_end(k)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def peek(self, bucket: str, key: str) -> Entry | None:
        return self.entries.get((bucket, key))

    def fresh(self, bucket: str, key: str) -> Entry | None:
        """The entry if ``lookup`` would answer it without the upstream, else None; never waits."""
        k = (bucket, key)
        e = self.entries.get(k)
        if e is None or not self._fresh(k, e):
            return None
        self.entries.move_to_end(k)
        return e

    def fresh_until(self, entry: Entry) -> float:
        """The clock time until which ``entry`` stays fresh under the current TTLs (unless it is
        confirmed again); -inf for an entry restored from disk."""
        if entry.learned_at == float("-inf"):
            return float("-inf")
        ttl = self.ttl(entry.meta.bucket, entry.meta.key)
        return entry.learned_at + ttl if ttl is not None else float("inf")

    def still_fresh(self, entry: Entry, until: float) -> bool:
        """Whether ``entry`` is still its object's entry and ``until`` (its ``fresh_until``,
        taken under the current TTLs) has not come: ``fresh``'s answer for a caller that keeps
        the entry, without looking up the TTL again."""
        k = (entry.meta.bucket, entry.meta.key)
        if self.entries.get(k) is not entry or self.clock() >= until:
            return False
        self.entries.move_to_end(k)
        return True

    def _fresh(self, k: ObjectKey, e: Entry) -> bool:
        ttl = self.ttl(*k)
        if e.learned_at == float("-inf"):
            return False
        return ttl is None or self.clock() - e.learned_at < ttl

    async def lookup(self, bucket: str, key: str) -> Entry:
        """The current version's entry. Raises S3Error (NoSuchKey...) or UpstreamUnavailable."""
        k = (bucket, key)
        e = self.entries.get(k)
        if e is not None and self._fresh(k, e):
            self.entries.move_to_end(k)
            return e
        call = self._lookups.get(k)
        if call is None:
            call = _Lookup()
            self._lookups[k] = call
            call.task = asyncio.ensure_future(self._fetch_and_tell(k, e, call))
            call.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        else:
            self.shared_lookups += 1
        return await call.answer()

    async def _fetch_and_tell(self, k: ObjectKey, old: Entry | None, call: _Lookup) -> Entry:
        try:
            entry = await self._fetch(k, old, call)
        except BaseException as e:
            call.tell(error=e)
            raise
        call.tell(entry)
        return entry

    async def _fetch(self, k: ObjectKey, old: Entry | None, call: _Lookup) -> Entry:
        confirmed: ObjectMeta | None = None  # the version the upstream confirmed, for on_resolved
        try:
            try:
                if old is not None:
                    self.revalidations += 1
                meta = await self.upstream.head(k[0], k[1], if_none_match=old.meta.etag if old else None)
            except NotModified:
                assert old is not None
                if not call.poisoned:
                    confirmed = old.meta
                if not call.poisoned and self.entries.get(k) is old:
                    old.learned_at = self.clock()
                    old.confirmed = time.time()
                    old.stale = False
                return old
            except UpstreamUnavailable:
                if old is not None and not call.poisoned and (
                        self.stale_if_error is None or time.time() - old.confirmed <= self.stale_if_error):
                    old.stale = True  # stale-if-error: the cached version is the best answer
                    self.stale_served += 1
                    return old
                raise
            except S3Error as err:
                if err.status == 404 and not call.poisoned:
                    gone = self._drop(k)
                    if gone is not None:
                        self._retire(gone.meta)
                raise
            entry = Entry(meta, self.clock())
            if self.on_learned is not None:
                self.on_learned(meta)
            if call.poisoned:
                return entry
            confirmed = meta
            current = self.entries.get(k)
            if current is not None and current.meta.same_version(meta):
                # headers may have changed (tagging, metadata copy); the checksum answers of the
                # same bytes did not
                current.meta = meta.learned(current.meta)
                current.learned_at = entry.learned_at
                current.confirmed = entry.confirmed
                current.stale = False
                return current
            self._put(k, entry)
            if current is not None:
                self._retire(current.meta)
            return entry
        finally:
            if self._lookups.get(k) is call:
                del self._lookups[k]
            if self.on_resolved is not None:
                self.on_resolved(k[0], k[1], confirmed, old.meta if old is not None else None)

    async def open_cold(self, bucket: str, key: str, *, start: int | None, end: int | None,
                        checksum_mode: bool) -> tuple[Entry, OpenedObject] | None:
        """For an object the catalog does not know: GET it and learn its metadata from the same
        answer. Concurrent lookups of the key wait for that answer instead of sending a HEAD.
        Returns None when the key is known or already being looked up (use ``lookup``); the
        caller owns the returned ``OpenedObject`` and must close it."""
        k = (bucket, key)
        if k in self.entries or k in self._lookups:
            return None
        call = _Lookup()
        self._lookups[k] = call
        try:
            opened = await self.upstream.open_object(bucket, key, start=start, end=end, checksum_mode=checksum_mode)
        except BaseException as e:
            if self._lookups.get(k) is call:
                del self._lookups[k]
            call.tell(error=e if isinstance(e, Exception) else UpstreamUnavailable())
            raise
        if self._lookups.get(k) is call:
            del self._lookups[k]
        entry = Entry(opened.meta, self.clock())
        if not call.poisoned:
            self._put(k, entry)
        call.tell(entry)
        if self.on_cold_read is not None:
            self.on_cold_read(entry.meta)
        return entry, opened

    async def fetched_whole(self, entry: Entry,
                            learned: Callable[[ObjectMeta], Awaitable[tuple | None]]) -> Entry:
        """After a background fetch of a whole object (a warm job, a prefetch): the entry knows the
        upstream GET's checksums, since clients read in checksum mode (boto3's default) and a
        whole-object answer replays them, so the client's read is a plain hit, not a wait on one
        more upstream request. ``learned`` (Reader.learned_checksums) tells them when the fetch
        learned them itself (its GET of the whole object, or block 0 from the shared tier); only
        otherwise (a fetch in ranged spans, chunks already cached) is the upstream asked.
        Raises ObjectChanged if the upstream has another version by then."""
        return await self.with_checksums(entry, "GET", carried=learned)

    async def with_checksums(self, entry: Entry, kind: str, *,
                             carried: Callable[[ObjectMeta], Awaitable[tuple | None]] | None = None) -> Entry:
        """The entry knowing the checksum headers the upstream gives ``kind`` ("GET" or "HEAD")
        of whole-object request in checksum mode, asking the upstream that same kind of request
        when it does not know them yet (metadata learned from a ranged GET, from the other kind,
        or stored by an older version). Upstreams answer the kinds differently: one is never
        derived from the other. Raises ObjectChanged if the answer is of another version.
        ``carried``: where a GET's answer may already be known for this very version (the shared
        tier's block 0, Reader.carried_checksums), asked before the upstream."""
        if entry.meta.checksums_for(kind) is not None:
            return entry
        if kind == "GET" and carried is not None:
            sums = await carried(entry.meta)
            if sums is not None:
                entry.meta = dataclasses.replace(entry.meta, get_checksums=sums)
                return entry
        bucket, key = entry.meta.bucket, entry.meta.key
        try:
            if kind == "HEAD":
                meta = await self.upstream.head(bucket, key)
            else:
                # Only the answer's headers are wanted: the body is not read, the connection dropped.
                opened = await self.upstream.open_object(bucket, key, start=None, end=None, checksum_mode=True)
                await opened.close()
                meta = opened.meta
        except UpstreamUnavailable:
            # Cached data is still served while the upstream is out of reach, without checksums
            # (a client then has none to check), never with another kind's.
            return entry
        if not meta.same_version(entry.meta):
            self.version_changed(entry.meta)
            raise ObjectChanged()
        learned = entry.meta.learned(meta)
        if learned.checksums_for(kind) is None:  # an upstream that cannot say: it said nothing
            learned = dataclasses.replace(learned, **{f"{kind.lower()}_checksums": ()})
        entry.meta = learned
        return entry

    async def part(self, entry: Entry, number: int) -> PartInfo:
        """Where part ``number`` of a multipart object lies. A part the upstream cannot
        describe as S3 does (status other than 206) is reported, not raised."""
        info = entry.parts.get(number)
        if info is None:
            try:
                info = await self.upstream.head_part(entry.meta.bucket, entry.meta.key, number, entry.meta.etag)
            except UpstreamUnavailable:
                return PartInfo(number, 0, -1, 0, ())
            if info.status == 206 and info.etag == entry.meta.etag:
                entry.parts[number] = info
        return info

    def invalidate(self, bucket: str, key: str, *, retire: bool = False) -> Entry | None:
        """Forget the object's current version; lookups in flight are not installed.
        ``retire``: its data changed (overwritten, deleted), so the version is dead: its cached
        chunks go too. Without it (a metadata change, a purge) they may serve the same version
        again once a lookup confirms its ETag."""
        k = (bucket, key)
        call = self._lookups.pop(k, None)
        if call is not None:
            call.poisoned = True
        gone = self._drop(k)
        if retire and gone is not None:
            self._retire(gone.meta)
        return gone

    def invalidate_bucket(self, bucket: str, *, retire: bool = False) -> list[Entry]:
        for k, call in list(self._lookups.items()):
            if k[0] == bucket:
                call.poisoned = True
                del self._lookups[k]
        dropped = []
        for k in [k for k in self.entries if k[0] == bucket]:
            e = self._drop(k)
            if e is not None:
                dropped.append(e)
                if retire:
                    self._retire(e.meta)
        return dropped

    def version_changed(self, meta: ObjectMeta) -> None:
        """The upstream no longer has ``meta``'s version (a conditional request on its ETag
        failed, or it answered another version): forget it if it is still the current one, and
        retire it. A newer version already learned stays current."""
        current = self.entries.get((meta.bucket, meta.key))
        if current is None or current.meta.same_version(meta):
            self.invalidate(meta.bucket, meta.key)
        self._retire(meta)

    def settle(self, meta: ObjectMeta) -> None:
        """A read that fetched bytes of ``meta``'s version finished. If the catalog no longer
        points at that version (a write through the sidecar replaced or deleted the object
        meanwhile), the chunks the read kept are retired: after a restart with the upstream out
        of reach, stale-if-error would otherwise serve a version known to be dead."""
        current = self.entries.get((meta.bucket, meta.key))
        if current is None or not current.meta.same_version(meta):
            self._retire(meta)

    def _retire(self, meta: ObjectMeta) -> None:
        if self.on_obsolete is not None:
            self.on_obsolete(meta)

    def _drop(self, k: ObjectKey) -> Entry | None:
        return self.entries.pop(k, None)
