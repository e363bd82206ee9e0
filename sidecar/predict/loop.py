"""The daemon's prefetch loop: every ``prefetch_interval``, score candidates, plan, and prefetch.

Reads reach the loop through ``on_read`` (the S3 face's hook, via ``Operations``): each becomes
an ``Access`` recorded in the ``AccessLog`` ring (training data, flushed to
``<cache_dir>/access-log/`` by the loop) and queued for the ``FeatureTracker``. The tracker is
only ever touched from the loop's one worker thread, so the request path pays one append and
features, candidates, the feature matrix and the onnxruntime call never block the event loop.

Each run: drain the queued reads into the tracker, take candidates, score them with the
``Predictor``, build ``Candidate``s and the cache's ``Room`` and ``plan`` (planner.py). On the
event loop again, objects of the previous plan that are not in the new one are cancelled
(their fetches stopped unless a client has joined them), and the new plan's objects are
prefetched through ``Reader.fetch(meta, first, last, Priority.PREFETCH)``, the one fetch-and-commit
path, at low priority and under the reader's gate (the token bucket).

A model that cannot be loaded (missing file, schema mismatch) disables prefetch with one log
line; the sidecar serves on.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import time
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..cache.rules import QoSClass, RuleSet
from ..errors import ObjectChanged, S3Error, UpstreamUnavailable
from ..reader import ChunkFill, Priority, ReadStats
from ..telemetry import get_logger
from .accesslog import Access, AccessLog, read_log
from .known import KnownKeys, listing_tap, prefix_of
from .planner import Candidate, PrefetchPlan, Room, plan



class PrefetchStore(Protocol):
    """What the loop asks of the chunk store."""

    chunk_size: int
    capacity: int
    free_bytes: int

    def iter_versions(self) -> Iterable[Any]: ...


class UnreadPrefetches(Protocol):
    """What the loop asks of the prefetch ledger (``cache/ledger.py``)."""

    credit: float

    def objects(self) -> set[tuple[str, str]]: ...


class PrefetchPolicy(Protocol):
    """What the loop asks of the eviction policy."""

    admitted_bytes: int
    credited_bytes: int

    def guaranteed_over_quota(self) -> bool: ...
    def is_pinned(self, key: Any) -> bool: ...
    def boost(self, keys: Iterable[Any], weight: float) -> int: ...


class PrefetchHost(Protocol):
    """The parts of the daemon the loop uses (``Sidecar`` has them): settings, metrics, the
    cache rules, the store, prefetch ledger and policy above, the catalog (``lookup``,
    ``fetched_whole``), the reader (``ensure``, ``cancel``, ``learned_checksums``) and the token
    bucket (``rate``)."""

    settings: Any
    metrics: Any
    rules: RuleSet
    store: PrefetchStore
    prefetched: UnreadPrefetches
    policy: PrefetchPolicy
    catalog: Any
    reader: Any
    bandwidth: Any


log = get_logger("sidecar.prefetch")

ACCESS_LOG_DIR = "access-log"
LISTINGS_MAX = 64  # listing bodies waiting for the worker; beyond, the oldest are dropped
REPLAY_MAX = 65_536  # reads of earlier runs replayed into the tracker and the catalogue at start
PENDING_MAX = 262_144  # reads queued for the tracker between runs; beyond, the oldest are dropped
CONCURRENT_OBJECTS = 4  # objects being prefetched at once; the rest of a plan waits its turn
LOOKUP_TIMEOUT = 10.0
READERS_MAX = 4096  # prefixes remembered as read, for "a reader's first read under a prefix"
EARLY_RUN_GAP = 0.5  # seconds: a new reader runs the loop early at most this often


@dataclasses.dataclass
class RunReport:
    """What one run did (also the ``predictor_run`` log line)."""

    candidates: int = 0
    eligible: int = 0
    chosen: int = 0
    nbytes: int = 0
    cancelled: int = 0
    inference_s: float = 0.0
    duration_s: float = 0.0
    cpu_s: float = 0.0
    retained: int = 0  # cached chunks given retention weight after the run
    outyielded: int = 0  # candidates over the threshold left out: the cache earns more without them
    # objects scored at least the retention threshold -> probability (predictor-weighted retention)
    confident: dict = dataclasses.field(default_factory=dict, repr=False)


class PrefetchLoop:
    """The predictor loop of one ``Sidecar``; ``start``/``stop`` with it."""

    def __init__(self, sc: PrefetchHost, *, model_path: Path | None = None) -> None:
        self.sc = sc
        s = sc.settings
        self.enabled = bool(s.prefetch)
        self.model_path = model_path if model_path is not None else s.model
        self.predictor: Any = None
        self.disabled_reason: str | None = None if self.enabled else "prefetch=false"
        self.access_log: Any = None
        self.features: Any = None
        self.known = KnownKeys(max_keys=s.prefetch_known_keys)
        self._listings: deque = deque(maxlen=LISTINGS_MAX)
        self._learned: deque = deque(maxlen=PENDING_MAX)  # (bucket, key, size, etag) from upstream HEADs
        if self.enabled:
            try:
                from .features import FeatureTracker  # noqa: PLC0415

                self.access_log = AccessLog(Path(s.cache_dir) / ACCESS_LOG_DIR)
                self.features = FeatureTracker(half_life=s.hotness_half_life)
            except (ImportError, OSError) as e:
                self.enabled = False
                self.access_log = None
                self.disabled_reason = f"{type(e).__name__}: {e}"
        self.last: RunReport | None = None
        self.runs = 0
        # One worker: the tracker and the model are used by one thread only, in order.
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-predict")
        self._pending: deque = deque(maxlen=PENDING_MAX)
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._plan: PrefetchPlan | None = None
        self._queue: list = []  # plan items not yet issued, best first
        self._active: dict[Hashable, list[ChunkFill]] = {}  # object -> fills its prefetch started
        self._issuer: asyncio.Task | None = None
        self._expected: dict[Hashable, float] = {}  # planned object -> its probability, until read
        self._admitted: int | None = None  # the policy's demand-admitted bytes at the last snapshot
        self._readers: collections.OrderedDict = collections.OrderedDict()  # prefixes read lately
        self._run_now = False  # a wake-up that asks for a run (a new reader), not a new interval
        self._early_at = -math.inf
        self._snap_at: float | None = None  # monotonic time of the last snapshot (demand rate)
        self._demand_hits = 0  # bytes served from the cache since, not counting prefetched chunks' first reads

    # --- the request path ----------------------------------------------------------------

    def on_read(self, bucket: str, key: str, meta: Any, rng: Any, stats: ReadStats) -> None:
        """After every object read: O(1), no I/O."""
        if self.access_log is None:
            return
        size = meta.size
        start, end = (rng.start, rng.end) if rng is not None else (0, size - 1)
        if stats.prefetched:
            outcome = "prefetched"
        elif stats.miss_bytes == 0 and stats.tier_bytes == 0:
            outcome = "hit"  # a shared tier fill is a miss of this pod's cache
        elif stats.hit_bytes == 0:
            outcome = "miss"
        else:
            outcome = "partial"
        access = Access(time.time(), bucket, key, start, end, size, outcome)
        self._demand_hits += max(0, stats.hit_bytes - stats.prefetched)
        self.access_log.record(access)
        self._pending.append(access)
        self._note_reader(bucket, key, access.t)

    def on_hits(self, reads: list[tuple]) -> None:
        """After reads the lean path answered from the cache, recorded together (``S3Face.on_hits``):
        what ``on_read`` does for each, with one lock for the lot."""
        if self.access_log is None:
            return
        accesses = []
        demand = 0
        last = None
        for bucket, key, meta, rng, nbytes, prefetched, t in reads:
            start, end = (rng.start, rng.end) if rng is not None else (0, meta.size - 1)
            accesses.append(Access(t, bucket, key, start, end, meta.size, "prefetched" if prefetched else "hit"))
            demand += nbytes - prefetched if nbytes > prefetched else 0
            pk = (bucket, key)
            if pk != last:  # a run of reads of one object asks about its prefix once
                last = pk
                self._note_reader(bucket, key, t)
        self._demand_hits += demand
        self.access_log.record_many(accesses)
        self._pending.extend(accesses)

    def _note_reader(self, bucket: str, key: str, t: float) -> None:
        """A reader's first read under a prefix: plan now, not up to an interval later (a model
        load is over in a few seconds). At most one early run per EARLY_RUN_GAP."""
        pk = (bucket, prefix_of(key))
        seen = self._readers
        if pk in seen:
            seen.move_to_end(pk)
        else:
            seen[pk] = None
            if len(seen) > READERS_MAX:
                seen.popitem(last=False)
            if self._task is not None and t - self._early_at >= EARLY_RUN_GAP:
                self._early_at = t
                self._run_now = True
                self._wake.set()

    def listing_tap(self, method: str, bucket: str | None, key: str | None, query: Any, status: int) -> Any:
        """The face's hook for pass-through responses: a sink for a ListObjects body, or None."""
        if self.access_log is None:
            return None
        return listing_tap(self._on_listing, method, bucket, key, query, status)

    def _on_listing(self, bucket: str, body: bytes) -> None:
        self._listings.append((bucket, body))  # parsed in the worker thread, not here

    def on_learned(self, meta: Any) -> None:
        """The catalog's hook after an upstream HEAD (a client's HEAD, or the lookup before a read):
        the key, its size and ETag join the known-key catalogue at the next run. O(1), no I/O."""
        if self.access_log is not None:
            self._learned.append((meta.bucket, meta.key, meta.size, meta.etag))

    def on_cold_read(self, meta: Any) -> None:
        """The catalog's hook when a read of a key it did not know begins (its upstream GET has
        answered, no byte is sent yet): the key joins the known-key catalogue, and the first read
        under a prefix reaches the tracker now rather than after its last byte — a model load's
        first file takes about as long as its other files need to come in alongside it. The
        read's own ``on_read`` follows; within the tracker's ``correlated_period`` (1 s) it is
        the same read to it (a first read lasting longer counts twice). O(1), no I/O."""
        if self.access_log is None:
            return
        bucket, key = meta.bucket, meta.key
        self._learned.append((bucket, key, meta.size, meta.etag))
        if (bucket, prefix_of(key)) not in self._readers:
            t = time.time()
            self._pending.append(Access(t, bucket, key, 0, max(0, meta.size - 1), meta.size, "miss"))
            self._note_reader(bucket, key, t)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            if self.disabled_reason == "prefetch=false":
                log.info("prefetch_disabled", reason="prefetch=false")
            else:
                log.error("prefetch_disabled", reason="the predictor could not start", error=self.disabled_reason)
            return
        # The model loads in the background: onnxruntime's import must not delay serving.
        self._task = asyncio.ensure_future(self._run_forever())

    def _replay(self) -> int:
        """In the worker: the reads of earlier runs (the access log survives restarts) make their
        keys known and give the tracker their history (periods, prefixes, readers' rates)."""
        if self.access_log is None or self.access_log.directory is None:
            return 0
        recent: deque = deque(maxlen=REPLAY_MAX)
        try:
            recent.extend(read_log(self.access_log.directory))
        except (OSError, ValueError) as e:
            log.warning("access_log_not_replayed", error=repr(e))
        for a in recent:
            self.known.add(a.bucket, a.key, a.size)
            self.features.observe(a)
        return len(recent)

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await loop.run_in_executor(self._worker, self._replay)
        m = self.sc.metrics
        m.known_keys.set_function(lambda: len(self.known))
        m.known_keys_bytes.set_function(self.known.nbytes)
        try:
            self.predictor = await loop.run_in_executor(self._worker, self._load_model)
        except Exception as e:  # noqa: BLE001 - any model problem disables prefetch, never the sidecar
            self.disabled_reason = f"{type(e).__name__}: {e}"
            self.sc.metrics.prefetch_runs.labels("disabled").inc()
            log.error("prefetch_disabled", reason="the predictor model could not be loaded",
                      model=str(self.model_path) if self.model_path else "shipped", error=str(e),
                      error_type=type(e).__name__,
                      detail="the sidecar serves without prefetch; fix or retrain the model and restart")
        else:
            # Prefetched chunks are protected from demand data for as long as the model predicts.
            self.sc.prefetched.credit = float(getattr(self.predictor, "horizon", None) or 300.0)
            log.info("prefetch_started", model=str(self.model_path) if self.model_path else "shipped",
                     interval_s=self.sc.settings.prefetch_interval,
                     threshold=self.sc.settings.prefetch_threshold)

    def _load_model(self) -> Any:
        from .model import Predictor  # noqa: PLC0415  (onnxruntime loads only when prefetch is on)

        return Predictor.load(self.model_path)

    async def stop(self) -> None:
        for t in (self._task, self._issuer):
            if t is not None:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
        self._task = self._issuer = None
        self._cancel(set(self._active))
        if self.access_log is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._worker, self.access_log.close)
        self._worker.shutdown(wait=True)

    def interval_changed(self) -> None:
        """A reload changed ``prefetch_interval``: the wait in progress restarts with it."""
        self._wake.set()

    async def _run_forever(self) -> None:
        await self._load()
        while True:
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, self.sc.settings.prefetch_interval))
                if not self._run_now:
                    continue  # woken by a reload: wait the new interval
            self._run_now = False
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - one bad run must not end the loop
                self.sc.metrics.prefetch_runs.labels("error").inc()
                log.error("predictor_run_failed", error=repr(e))

    # --- one run -------------------------------------------------------------------------------

    async def run_once(self) -> RunReport:
        """Flush the access log, score and plan (in the worker thread), then issue the plan."""
        t0, c0 = time.perf_counter(), time.thread_time()
        loop = asyncio.get_running_loop()
        snapshot = self._snapshot()
        on_loop = time.thread_time() - c0  # the event loop's own share (other tasks run during the await)
        report: RunReport
        new_plan: PrefetchPlan | None
        new_plan, report = await loop.run_in_executor(self._worker, self._score_and_plan, snapshot)
        if new_plan is None:
            return report  # no model: the run only kept the access log (training data) flowing
        c1 = time.thread_time()
        report.cancelled = self._adopt(new_plan)
        report.retained = self._retain(report.confident)
        report.duration_s = time.perf_counter() - t0
        report.cpu_s += on_loop + time.thread_time() - c1
        m = self.sc.metrics
        m.prefetch_runs.labels("ok").inc()
        m.prefetch_run_duration.observe(report.duration_s)
        self.runs += 1
        self.last = report
        log.info("predictor_run", candidates=report.candidates, eligible=report.eligible, chosen=report.chosen,
                 bytes=report.nbytes, cancelled=report.cancelled, retained=report.retained,
                 inference_ms=round(report.inference_s * 1e3, 2), duration_ms=round(report.duration_s * 1e3, 2))
        return report

    def _snapshot(self) -> dict[str, Any]:
        """What the worker needs from the cache, read on the event loop (which owns it)."""
        sc = self.sc
        store, policy = sc.store, sc.policy
        cs = store.chunk_size
        cached: dict[tuple[str, str], float] = {}
        displaceable: list[tuple[tuple[str, str], int]] = []
        # Guaranteed groups over their quota are evicted before Burstable data: while any is,
        # making room would take Guaranteed bytes, so only BestEffort data may be displaced.
        burstable_ok = not policy.guaranteed_over_quota()
        for v in store.iter_versions():
            if not v.chunks or v.meta.size <= 0:
                continue
            obj = (v.meta.bucket, v.meta.key)
            nbytes = min(v.meta.size, len(v.chunks) * cs)
            cached[obj] = max(cached.get(obj, 0.0), nbytes / v.meta.size)
            rule = sc.rules.match(*obj)
            if rule.qos is QoSClass.GUARANTEED or (rule.qos is QoSClass.BURSTABLE and not burstable_ok):
                continue
            if rule.pin or policy.is_pinned((v.vid, next(iter(v.chunks)))):
                continue
            displaceable.append((obj, nbytes))
        s = sc.settings
        admitted = policy.admitted_bytes
        demand_recent = admitted - (self._admitted if self._admitted is not None else admitted)
        self._admitted = admitted
        max_bytes = prefetch_budget(store.capacity, policy.credited_bytes, demand_recent, s.prefetch_max_bytes)
        now_m = time.monotonic()
        since = now_m - self._snap_at if self._snap_at is not None else s.prefetch_interval
        self._snap_at = now_m
        hits, self._demand_hits = self._demand_hits, 0
        earned = demand_yield(hits, since, store.capacity)
        # No more than the bucket lets through in two intervals: a longer plan would only queue.
        rate = sc.bandwidth.rate
        if 0 < rate < float("inf"):
            max_bytes = min(max_bytes, int(2 * rate * max(s.prefetch_interval, 1.0)))
        # Objects still holding prefetched chunks no client has read yet.
        unread = sc.prefetched.objects()
        self._expected = {o: p for o, p in self._expected.items() if o in unread or o in self._active}
        return {"now": time.time(), "cached": cached, "displaceable": displaceable,
                "expected": dict(self._expected),
                "free": store.free_bytes, "rules": sc.rules,
                "threshold": s.prefetch_threshold, "max_bytes": max_bytes, "interval": s.prefetch_interval,
                "limit": s.prefetch_candidates, "demand_yield": earned,
                "retain_threshold": s.lru_k_retention_threshold if s.lru_k_retention_weight > 0 else None}

    def _score_and_plan(self, snap: dict[str, Any]) -> tuple[PrefetchPlan | None, RunReport]:
        """In the worker thread: everything numeric."""
        c0 = time.thread_time()
        report = RunReport()
        tracker = self.features
        pending = self._pending
        known = self.known
        listings = self._listings
        while listings:
            known.add_listing(*listings.popleft())
        learned = self._learned
        while learned:
            known.add(*learned.popleft())
        while pending:
            a = pending.popleft()
            known.add(a.bucket, a.key, a.size)
            tracker.observe(a)
        if self.access_log is not None:
            try:
                self.access_log.flush()
            except OSError as e:
                log.warning("access_log_not_written", error=repr(e))
        if self.predictor is None:
            report.cpu_s = time.thread_time() - c0
            return None, report
        chosen, scored = choose(tracker, self.predictor, snap["now"], snap["cached"], snap["free"],
                                snap["displaceable"], snap["rules"], threshold=snap["threshold"],
                                max_bytes=snap["max_bytes"], limit=snap["limit"], expected=snap["expected"],
                                known=known, interval=snap["interval"],
                                horizon=float(getattr(self.predictor, "horizon", None) or 300.0),
                                retain_threshold=snap.get("retain_threshold"), demand_yield=snap["demand_yield"])
        scored.cpu_s = time.thread_time() - c0
        m = self.sc.metrics
        m.prefetch_candidates.inc(scored.candidates)
        if scored.candidates:
            m.prefetch_inference.observe(scored.inference_s)
        return chosen, scored

    # --- predictor-weighted retention -----------------------------------------------------------

    def _retain(self, confident: Mapping[Hashable, float]) -> int:
        """On the event loop: the cached chunks of objects the run scored at least
        ``lru_k_retention_threshold`` get ``lru_k_retention_weight`` in eviction (``QoSPolicy.boost``)."""
        weight = self.sc.settings.lru_k_retention_weight
        if not confident or weight <= 0:
            return 0
        keys = [(v.vid, i) for v in self.sc.store.iter_versions()
                if v.chunks and (v.meta.bucket, v.meta.key) in confident for i in v.chunks]
        return self.sc.policy.boost(keys, weight)

    # --- issuing and cancelling ----------------------------------------------------------------

    def _adopt(self, new: PrefetchPlan) -> int:
        """Replace the plan: cancel what the new one dropped, queue what it adds."""
        keep = new.objects()
        dropped = {o for o in self._active if o not in keep}
        cancelled = self._cancel(dropped)
        # Queued but never issued items of the old plan simply leave the queue.
        self._plan = new
        # Fetched in the order the reader will want them: soonest first (then the likeliest).
        self._queue = sorted((i for i in new.items if i.obj not in self._active),
                             key=lambda i: (i.eta, -i.probability))
        for i in new.items:
            self._expected[i.obj] = i.probability
        self.sc.metrics.prefetch_objects.inc(len(new.items))
        if self._queue and (self._issuer is None or self._issuer.done()):
            self._issuer = asyncio.ensure_future(self._issue())
        return cancelled

    def _cancel(self, objs: set) -> int:
        """Stop the prefetch of these objects; fills a client joined (promoted to demand) go on."""
        n = 0
        reader = self.sc.reader
        for obj in objs:
            fills = self._active.pop(obj, [])
            if reader.cancel(fills):
                n += 1
                self.sc.metrics.prefetch_fetches.labels("cancelled").inc()
        return n

    async def _issue(self) -> None:
        sem = asyncio.Semaphore(CONCURRENT_OBJECTS)
        running: set[asyncio.Task] = set()
        try:
            while self._queue:
                await sem.acquire()
                if not self._queue:
                    sem.release()
                    break
                item = self._queue.pop(0)
                t = asyncio.ensure_future(self._prefetch(item.obj))
                running.add(t)
                t.add_done_callback(lambda t: (running.discard(t), sem.release()))
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        finally:
            for t in running:
                t.cancel()

    async def _prefetch(self, obj: tuple[str, str]) -> None:
        sc, m = self.sc, self.sc.metrics
        bucket, key = obj
        rule = sc.rules.match(bucket, key)
        if not rule.prefetchable:
            return
        try:
            entry = await asyncio.wait_for(sc.catalog.lookup(bucket, key), LOOKUP_TIMEOUT)
        except (S3Error, UpstreamUnavailable, asyncio.TimeoutError):
            m.prefetch_fetches.labels("failed").inc()
            return
        meta = entry.meta
        if not rule.caches(meta.size) or meta.size <= 0:
            return
        reader = sc.reader
        fetch = reader.fetch(meta, 0, reader.layout.count(meta.size) - 1, Priority.PREFETCH)
        fills = fetch.started
        if not fills:
            return
        self._active[obj] = fills
        m.prefetch_fetches.labels("issued").inc()
        try:
            await fetch
        finally:
            cancelled = self._active.get(obj) is not fills  # _cancel took it (and counted it)
            if not cancelled:
                del self._active[obj]
        if all(f.error is None for f in fills):
            try:
                await asyncio.wait_for(sc.catalog.fetched_whole(entry, reader.learned_checksums), LOOKUP_TIMEOUT)
            except (S3Error, ObjectChanged, asyncio.TimeoutError):
                pass  # a client's read asks again
            m.prefetch_fetches.labels("completed").inc()
        elif not cancelled:
            m.prefetch_fetches.labels("failed").inc()

    # --- state for /stats ----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        last = dataclasses.asdict(self.last) if self.last is not None else None
        if last is not None:
            last.pop("confident", None)
        return {"enabled": self.enabled and self.predictor is not None, "disabled_reason": self.disabled_reason,
                "runs": self.runs, "last_run": last, "in_flight_objects": len(self._active),
                "queued_objects": len(self._queue),
                "planned_bytes": self._plan.nbytes if self._plan is not None else 0}


def prefetch_budget(capacity: int, credited: int, demand_recent: int, max_bytes: int | None) -> int:
    """Bytes one run may plan: what the cache holds beside the prefetched chunks still unread
    (credited, protected from demand) and room for the demand data that will arrive before the
    next run, taken to be as much as arrived since the last (``demand_recent``). Beyond that a
    prefetch would only push out another one not yet read."""
    room = max(0, capacity - credited - demand_recent)
    return room if max_bytes is None else min(max_bytes, room)


def _group(obj: tuple[str, str]) -> tuple[str, str]:
    return obj[0], prefix_of(obj[1])


def demand_yield(hit_bytes: int, seconds: float, capacity: int) -> float:
    """Hit bytes per second per cached byte the cache earned on demand alone over ``seconds``."""
    if seconds <= 0 or capacity <= 0:
        return 0.0
    return hit_bytes / seconds / capacity


def expected_wait(row: Any, horizon: float) -> float:
    """Seconds until a candidate's read is expected, from its feature row: its reader's ETA when
    it lies ahead of one; when it is due by a regular period (gap spread under a quarter of the
    mean), the time until due; else its mean gap (irregular re-reads, e.g. Zipf popularity); the
    horizon when it has no history."""
    from .features import FEATURES, NEVER  # noqa: PLC0415

    f = FEATURES.index
    eta, mean, std, due = (float(row[f(n)]) for n in ("eta", "gap_mean", "gap_std", "until_due"))
    if eta < NEVER:
        return eta
    if mean >= NEVER:
        return horizon
    if 0 <= std <= 0.25 * mean:
        return max(0.0, due)
    return mean


def choose(tracker: Any, predictor: Any, now: float, cached: Mapping[Hashable, float], free: int,
           displaceable: Iterable[tuple[Hashable, int]], rules: RuleSet, *, threshold: float,
           max_bytes: int | None, limit: int,
           expected: Mapping[Hashable, float] | None = None, known: Any = None,
           interval: float = 30.0, horizon: float = 300.0,
           retain_threshold: float | None = None, demand_yield: float = 0.0) -> tuple[PrefetchPlan, RunReport]:
    """Candidates from the tracker, scored by the predictor, planned into the room: the one
    decision the daemon's loop and the simulator share. ``cached``: fraction of each object
    cached (absent: 0); ``free``: unused cache bytes; ``displaceable``: (object, cached bytes)
    that a prefetch may push out (neither Guaranteed nor pinned), their hotness from the tracker;
    ``expected``: objects prefetched and not read since, with the probability they were fetched
    at, which stands for their hotness when higher (a new plan does not evict the last one's
    unread objects for ones no likelier); ``known``: the known-key catalogue, whose keys ahead
    of each reader (``interval`` sets how far) become candidates too. The tracker's
    ``PrefetchLedger`` settles past plans (read, or wasted after ``horizon``) and keeps prefixes
    where prefetch has not paid quiet. ``retain_threshold``: wholly cached objects are scored
    too, and every object scored at least this lands in ``report.confident`` (the cache then
    weights their chunks' retention: ``QoSPolicy.boost``). ``demand_yield``: what a cached byte
    earns on demand alone, hit bytes per second per byte of cache (``demand_yield``): a
    prefetched byte earns its probability once, after its ``expected_wait``, and holds its room
    (protected by its credit) until then; a candidate that earns less per second than the data
    it would keep out is not planned (on Zipf reads in a small cache, where a prefetch held for
    minutes pushes out demand data that would have hit meanwhile)."""
    report = RunReport()
    if known is not None:
        tracker.look_ahead(known, now, interval)
    cands = _scored_candidates(tracker, predictor, now, cached, rules, report, threshold=threshold,
                               limit=limit, horizon=horizon, retain_threshold=retain_threshold,
                               demand_yield=demand_yield)
    if known is not None and tracker.cold:
        cands += _ahead_of_new_readers(tracker, now, cached, rules, threshold,
                                       have={c.obj for c in cands})
    ledger = tracker.ledger
    ledger.settle(now, tracker.last_access, horizon)
    cands = ledger.admit(cands, now, _group)
    expected = expected or {}
    room = Room.build(free, ((max(tracker.hotness(o, now), expected.get(o, 0.0)), n) for o, n in displaceable))
    chosen = plan(cands, room, threshold=threshold, max_bytes=max_bytes)
    ledger.record(chosen.items, now, _group)
    report.eligible, report.chosen, report.nbytes = chosen.eligible, len(chosen.items), chosen.nbytes
    return chosen, report


def _scored_candidates(tracker: Any, predictor: Any, now: float, cached: Mapping[Hashable, float],
                       rules: RuleSet, report: RunReport, *, threshold: float, limit: int,
                       horizon: float, retain_threshold: float | None,
                       demand_yield: float) -> list[Candidate]:
    """The tracker's candidates the model scores at least ``threshold``, not wholly cached and
    not out-earned by the demand data they would keep out; fills in ``report``'s candidate
    count, inference time, ``confident`` and ``outyielded``."""
    import numpy as np  # noqa: PLC0415  (numpy loads only with prefetch on)

    from .features import FEATURES  # noqa: PLC0415

    eta_col = FEATURES.index("eta")
    every = tracker.candidates(now, limit)
    # Fractions once, over the list as ``candidates`` returned it (``matrix`` maps that list to
    # slots without a look-up per object); wholly cached objects leave the matrix by a mask.
    get = cached.get
    fractions = np.fromiter((get(o, 0.0) for o in every), dtype=np.float64, count=len(every))
    uncached = fractions < 1.0
    keep = np.arange(len(every)) if retain_threshold is not None else np.flatnonzero(uncached)
    report.candidates = int(uncached.sum())
    cands: list[Candidate] = []
    if not len(keep):
        return cands
    X = tracker.matrix(every, now, fractions)
    if len(keep) < len(every):
        X = X[keep]
    t = time.perf_counter()
    probs = predictor.score(X)
    report.inference_s = time.perf_counter() - t
    if retain_threshold is not None:
        report.confident = {every[int(keep[i])]: float(probs[i])
                            for i in np.flatnonzero(probs >= retain_threshold).tolist()}
    for i in np.flatnonzero(probs >= threshold).tolist():
        j = int(keep[i])
        if not uncached[j]:
            continue
        obj = every[j]
        size = tracker.size(obj)
        if not size:
            continue
        if demand_yield > 0 and probs[i] / max(1.0, expected_wait(X[i], horizon)) < demand_yield:
            report.outyielded += 1
            continue
        eta = float(X[i, eta_col])
        cands.append(Candidate(obj, size, float(fractions[j]), float(probs[i]), tracker.hotness(obj, now),
                               rules.match(*obj), eta=eta if eta < 1e7 else float("inf")))
    return cands


def _ahead_of_new_readers(tracker: Any, now: float, cached: Mapping[Hashable, float], rules: RuleSet,
                          threshold: float, *, have: set[Hashable]) -> list[Candidate]:
    """Keys ahead of a reader that has no rate yet (its first read of a listed prefix): the
    model has no pace to judge them by, so they are planned at the threshold, soonest first, as
    a reader of a listed prefix reads on in key order; the ledger mutes a prefix where that
    does not pay. ``have``: objects already among the scored candidates."""
    get = cached.get
    cands: list[Candidate] = []
    for obj in tracker.cold:
        if obj in have or get(obj, 0.0) >= 1.0:
            continue
        size = tracker.size(obj)
        if not size:
            continue
        cands.append(Candidate(obj, size, float(get(obj, 0.0)), threshold, tracker.hotness(obj, now),
                               rules.match(*obj), eta=float(tracker.ahead(obj))))
    return cands

