"""Warm jobs: fetch named objects, or everything under a prefix, into the cache now.

A job lists the prefix upstream (ListObjectsV2 pages through the pass-through path), looks
each object up in the catalog and has the reader fetch its missing chunks — through
``Reader.fetch``, the one fetch path, at background (WARM) priority, one span window at a time and a
few objects at once, so a warm never floods the upstream or the cache with concurrent fills.
Progress (objects and bytes, done and total) is kept on the job for ``GET /warm/<id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from .cache.store import ChunkStore
from .catalog import Catalog, Entry
from .errors import ObjectChanged, S3Error
from .reader import MAX_SPAN_CHUNKS, Priority, Reader
from .telemetry import Metrics, get_logger
from .upstream.base import ForwardRequest, Upstream

log = get_logger("sidecar.warm")

LIST_BODY_MAX = 16 * 1024 * 1024  # one ListObjectsV2 page is far smaller
MAX_ERRORS_KEPT = 20


@dataclasses.dataclass
class WarmJob:
    id: str
    bucket: str
    prefix: str | None
    keys: list[str] | None
    state: str = "listing"  # listing, running, done, failed, cancelled
    objects_total: int = 0
    objects_done: int = 0
    objects_failed: int = 0
    objects_skipped: int = 0  # a rule says they are not cached
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_already_cached: int = 0
    bytes_fetched: int = 0
    error: str | None = None
    errors: list[dict[str, str]] = dataclasses.field(default_factory=list)
    started_at: float = dataclasses.field(default_factory=time.time)
    finished_at: float | None = None
    task: asyncio.Task | None = dataclasses.field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def fail_object(self, key: str, error: str) -> None:
        self.objects_failed += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append({"key": key, "error": error})

    def as_json(self) -> dict[str, Any]:
        end = self.finished_at or time.time()
        return {
            "id": self.id, "bucket": self.bucket, "prefix": self.prefix,
            "keys": len(self.keys) if self.keys is not None else None, "state": self.state,
            "objects_total": self.objects_total, "objects_done": self.objects_done,
            "objects_failed": self.objects_failed, "objects_skipped": self.objects_skipped,
            "bytes_total": self.bytes_total, "bytes_done": self.bytes_done,
            "bytes_already_cached": self.bytes_already_cached, "bytes_fetched": self.bytes_fetched,
            "error": self.error, "errors": list(self.errors),
            "started_at": self.started_at, "finished_at": self.finished_at,
            "elapsed_s": round(end - self.started_at, 3),
        }


class WarmJobs:
    """Running and recent warm jobs. ``may_cache(bucket, key, size)`` applies the cache rules:
    objects they keep out of the cache are skipped, not fetched."""

    def __init__(self, *, upstream: Upstream, catalog: Catalog, reader: Reader, store: ChunkStore,
                 metrics: Metrics, may_cache: Callable[[str, str, int], bool] = lambda b, k, s: True,
                 objects_at_once: int = 4, keep: int = 100) -> None:
        self.upstream = upstream
        self.catalog = catalog
        self.reader = reader
        self.store = store
        self.metrics = metrics
        self.may_cache = may_cache
        self.keep = keep
        self.jobs: OrderedDict[str, WarmJob] = OrderedDict()
        self._slots = asyncio.Semaphore(objects_at_once)  # objects being fetched, across jobs

    def start(self, bucket: str, prefix: str | None = None, keys: list[str] | None = None) -> WarmJob:
        job = WarmJob(secrets.token_hex(6), bucket, prefix, list(keys) if keys is not None else None)
        if keys is not None:
            job.objects_total = len(keys)
        self.jobs[job.id] = job
        self._prune()
        job.task = asyncio.ensure_future(self._run(job))
        log.info("warm_started", job=job.id, bucket=bucket, prefix=prefix, keys=job.objects_total if keys else None)
        return job

    def get(self, job_id: str) -> WarmJob | None:
        return self.jobs.get(job_id)

    @property
    def running(self) -> int:
        return sum(1 for j in self.jobs.values() if not j.finished)

    def cancel(self, job_id: str) -> WarmJob | None:
        job = self.jobs.get(job_id)
        if job is not None and job.task is not None and not job.finished:
            job.task.cancel()
        return job

    async def close(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    def _prune(self) -> None:
        while len(self.jobs) > self.keep:
            oldest = next((k for k, j in self.jobs.items() if j.finished), None)
            if oldest is None:
                return
            del self.jobs[oldest]

    # --- the job ---------------------------------------------------------------------------

    async def _run(self, job: WarmJob) -> None:
        queue: asyncio.Queue[tuple[str, int | None] | None] = asyncio.Queue(maxsize=256)
        workers = [asyncio.ensure_future(self._worker(job, queue)) for _ in range(4)]
        try:
            if job.keys is not None:
                job.state = "running"
                for key in job.keys:
                    await queue.put((key, None))
            else:
                async for key, size in list_objects(self.upstream, job.bucket, job.prefix or ""):
                    job.objects_total += 1
                    job.bytes_total += size
                    await queue.put((key, size))
                job.state = "running"
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            job.state = "done"
        except asyncio.CancelledError:
            job.state = "cancelled"
            raise
        except S3Error as e:
            job.state, job.error = "failed", f"{e.code}: {e.message}"
        except Exception as e:  # noqa: BLE001 - the job reports its failure; the daemon goes on
            job.state, job.error = "failed", f"{type(e).__name__}: {e}"
            log.exception("warm_failed", job=job.id)
        finally:
            for w in workers:
                w.cancel()
            for w in workers:
                with contextlib.suppress(BaseException):
                    await w
            job.finished_at = time.time()
            self.metrics.warm_jobs.labels(job.state).inc()
            log.info("warm_finished", job=job.id, state=job.state, objects=job.objects_done,
                     failed=job.objects_failed, skipped=job.objects_skipped, bytes_fetched=job.bytes_fetched,
                     bytes_already_cached=job.bytes_already_cached, seconds=round(job.finished_at - job.started_at, 3),
                     error=job.error)

    async def _worker(self, job: WarmJob, queue: asyncio.Queue) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            key, listed_size = item
            async with self._slots:
                try:
                    entry = await self.catalog.lookup(job.bucket, key)
                except S3Error as e:
                    job.fail_object(key, f"{e.code}: {e.message}")
                    job.bytes_total -= listed_size or 0  # nothing of it will be done
                    continue
                # The totals follow what the object turned out to be.
                job.bytes_total += entry.meta.size - (listed_size or 0)
                try:
                    await self._warm_object(job, key, entry)
                except S3Error as e:
                    job.fail_object(key, f"{e.code}: {e.message}")
                except ObjectChanged:
                    job.fail_object(key, "the object changed while it was being fetched")

    async def _warm_object(self, job: WarmJob, key: str, entry: Entry) -> None:
        meta = entry.meta
        if not self.may_cache(job.bucket, key, meta.size):
            job.objects_skipped += 1
            job.bytes_total -= meta.size
            # not fetched, but a client's GET of it (checksum mode) then sends only the GET of its bytes
            await self.catalog.with_checksums(entry, "GET")
            return
        layout = self.reader.layout
        n = layout.count(meta.size)
        vid = self.store.version_for(meta).vid
        missing = []
        for i in range(n):
            if self.store.has(vid, i):
                job.bytes_done += layout.length(i, meta.size)
                job.bytes_already_cached += layout.length(i, meta.size)
            else:
                missing.append(i)
        failed = 0
        # One span window at a time: at most MAX_SPAN_CHUNKS chunks of this object in flight.
        for w in range(0, len(missing), MAX_SPAN_CHUNKS):
            window = missing[w:w + MAX_SPAN_CHUNKS]
            fetch = await self.reader.fetch(meta, window[0], window[-1], Priority.WARM)
            for i in window:
                if fetch.cached(i):
                    length = layout.length(i, meta.size)
                    job.bytes_done += length
                    job.bytes_fetched += length
                else:
                    failed += 1
            if failed and fetch.object_changed:
                raise ObjectChanged()
        if failed:
            job.fail_object(key, f"{failed} of {n} chunks could not be cached (cache full or upstream errors)")
            return
        await self.catalog.fetched_whole(entry, self.reader.learned_checksums)
        job.objects_done += 1


async def list_objects(upstream: Upstream, bucket: str, prefix: str) -> AsyncIterator[tuple[str, int]]:
    """(key, size) of every object under ``prefix``, page by page (ListObjectsV2)."""
    token: str | None = None
    while True:
        query = [("list-type", "2"), ("prefix", prefix)]
        if token:
            query.append(("continuation-token", token))
        resp = await upstream.forward(ForwardRequest(method="GET", bucket=bucket, key=None, query=tuple(query),
                                                     headers=[], body=None, content_length=0))
        try:
            parts, n = [], 0
            async for piece in resp.body:
                n += len(piece)
                if n > LIST_BODY_MAX:
                    raise S3Error("InternalError", "The upstream's listing page is too large.")
                parts.append(piece)
            status = resp.status
        finally:
            await resp.close()
        body = b"".join(parts)
        if status != 200:
            raise _listing_error(status, body)
        root = ET.fromstring(body)
        for el in root:
            if _tag(el) == "Contents":
                fields = {_tag(c): c.text or "" for c in el}
                yield fields.get("Key", ""), int(fields.get("Size") or 0)
        truncated = next((el.text for el in root if _tag(el) == "IsTruncated"), "false")
        token = next((el.text for el in root if _tag(el) == "NextContinuationToken"), None)
        if truncated != "true" or not token:
            return


def _tag(el: ET.Element) -> str:
    return el.tag.rsplit("}", 1)[-1]


def _listing_error(status: int, body: bytes) -> S3Error:
    code, message = "InternalError", f"listing failed with HTTP {status}"
    with contextlib.suppress(ET.ParseError):
        root = ET.fromstring(body)
        code = next((el.text for el in root if _tag(el) == "Code"), None) or code
        message = next((el.text for el in root if _tag(el) == "Message"), None) or message
    return S3Error(code, message, status=status)
