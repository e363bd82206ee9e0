"""The admin endpoint (its own port, JSON): health, readiness, Prometheus metrics, stats, and the
operator's actions — purge, pin, warm, hot objects, configuration reload. ``docs/operations.md``
describes every route with curl examples."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import time
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .cache.qos import QoSPolicy
from .cache.store import ChunkStore
from .catalog import Catalog
from .config import Settings
from .operations import Operations
from .reader import Priority, Reader
from .telemetry import Metrics

if TYPE_CHECKING:
    from .s3.face import S3Face

VERSION = "0.1.0"


class PrefetchState(Protocol):
    def state(self) -> dict[str, Any]: ...


class Daemon(Protocol):
    """What the admin endpoint reads and acts on: the daemon's parts and its figures."""

    settings: Settings
    metrics: Metrics
    store: ChunkStore
    catalog: Catalog
    reader: Reader
    face: "S3Face"
    policy: QoSPolicy
    ops: Operations
    prefetch: PrefetchState
    executor: concurrent.futures.Executor
    ready: bool
    started_at: float


SIDECAR = web.AppKey("sidecar", Daemon)


def _sc(request: web.Request) -> Daemon:
    return request.app[SIDECAR]


class DaemonCollector:
    """Metrics read from the parts that own the figures, at scrape time: nothing is copied on
    the hot path. Registered on the daemon's registry by ``create_app``."""

    def __init__(self, sc: Daemon) -> None:
        self.sc = sc

    def describe(self) -> list:
        return []  # collected only at scrape time; names are checked by promtool in the tests

    def collect(self):
        sc = self.sc
        store, st = sc.store, sc.store.stats

        def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
            g.add_metric(list((labels or {}).values()), value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            return c

        yield gauge("sidecar_build_info", "Version of the running sidecar (always 1)", 1, {"version": VERSION})
        yield gauge("sidecar_start_time_seconds", "When this sidecar started (Unix time)", sc.started_at)
        yield gauge("sidecar_ready", "1 while the sidecar is started and not draining (see /readyz for every check)",
                    1 if sc.ready and not sc.ops.draining else 0)
        yield gauge("sidecar_requests_in_flight", "S3 requests being answered", sc.face.in_flight)
        yield gauge("sidecar_cache_bytes", "Bytes of chunks in the cache", store.used_bytes)
        yield gauge("sidecar_cache_capacity_bytes", "Byte budget of the cache", store.capacity)
        yield gauge("sidecar_cache_entries", "Chunks in the cache", store.entries)
        yield gauge("sidecar_cache_objects", "Object versions with at least one chunk in the cache",
                    store.object_count)
        policy = sc.policy
        yield gauge("sidecar_cache_pinned_bytes", "Bytes of pinned chunks (never evicted)", policy.pinned_bytes)
        g = GaugeMetricFamily("sidecar_cache_qos_bytes", "Evictable bytes in the cache, by QoS class",
                              labels=["qos"])
        for qos, n in policy.usage().items():
            if qos != "pinned":
                g.add_metric([qos], n)
        yield g
        yield counter("sidecar_cache_crc_failures", "Cached chunks whose bytes did not match their CRC32C "
                                                    "(dropped, refetched on demand)", st.crc_failures)
        c = CounterMetricFamily("sidecar_cache_store_errors", "Chunk store file operations that failed, by "
                                                              "operation", labels=["op"])
        c.add_metric(["read"], st.read_errors)
        c.add_metric(["write"], st.write_errors)
        yield c
        yield counter("sidecar_cache_ram_hits", "Chunk reads answered from the in-memory copy of small chunks",
                      st.ram_hits)
        yield counter("sidecar_cache_checked_bytes", "Bytes read from cached chunk files and checked against "
                      "their piece CRC32Cs to serve reads", st.checked_bytes)
        yield counter("sidecar_cache_unchecked_bytes", "Bytes sent from cached chunk files without a check: "
                      "checked since the file last changed (docs/integrity.md)", st.unchecked_bytes)
        yield counter("sidecar_cache_scrubbed_bytes", "Bytes of chunk files the background scrub read from the "
                      "device and found good", st.scrubbed_bytes)
        yield gauge("sidecar_cache_scrub_pass_seconds", "How long the scrub's last whole pass over the cache took "
                    "(0: none finished yet)", st.scrub_pass_seconds)
        rate = sc.settings.scrub_rate
        yield gauge("sidecar_cache_scrub_estimate_seconds", "Time one scrub pass over the cache takes at "
                    "scrub_rate (cache bytes / rate; 0: scrub off)", store.used_bytes / rate if rate else 0)
        yield counter("sidecar_cache_restored_chunks", "Chunks found on disk and indexed at start",
                      st.rebuilt_chunks)
        yield gauge("sidecar_hot_objects_tracked", "Objects whose decayed read hotness is tracked (for /hot)",
                    len(sc.ops.hotness))
        yield gauge("sidecar_catalog_entries", "Objects whose current version (ETag, size) is known",
                    len(sc.catalog.entries))
        yield counter("sidecar_catalog_revalidations", "Conditional HEADs sent to revalidate expired metadata",
                      sc.catalog.revalidations)
        yield counter("sidecar_catalog_shared_lookups", "Metadata lookups that joined one already in flight",
                      sc.catalog.shared_lookups)
        yield gauge("sidecar_fills_in_flight", "Chunks being fetched from the upstream", len(sc.reader.fills))
        yield gauge("sidecar_readahead_in_flight_bytes", "Bytes being read ahead of sequential readers",
                    sc.reader.readahead_in_flight)
        yield gauge("sidecar_warm_jobs_running", "Warm jobs (admin API) in progress", sc.ops.warm.running)
        probe = sc.ops.readiness.upstream_probe.last
        if probe is not None:
            yield gauge("sidecar_upstream_up", "1 if the last upstream probe got an answer (readiness)",
                        1 if probe.ok else 0)


# --- health ------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers. Never depends on the disk or the upstream."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ok, body = await _sc(request).ops.ready()
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    sc = _sc(request)
    return web.Response(body=generate_latest(sc.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- stats -------------------------------------------------------------------------------------


def stats_snapshot(sc: Daemon) -> dict[str, Any]:
    st = sc.store.stats
    counters = sc.metrics.stats()

    def total(prefix: str) -> float:
        return sum(v for k, v in counters.items() if k.split("{")[0] == prefix)

    def by_label(prefix: str) -> dict[str, float]:
        return {k.split("{", 1)[1].rstrip("}"): v for k, v in counters.items() if k.startswith(prefix + "{")}

    policy = sc.policy
    reload = sc.ops.reloader.last
    return {
        "uptime_s": round(time.time() - sc.started_at, 3),
        "ready": sc.ready and not sc.ops.draining,
        "in_flight": sc.face.in_flight,
        "cache": {
            "used_bytes": sc.store.used_bytes,
            "capacity_bytes": sc.store.capacity,
            "chunks": sc.store.entries,
            "objects": sc.store.object_count,
            "chunk_size": sc.store.chunk_size,
            "pinned_bytes": policy.pinned_bytes,
            "by_qos": {k: v for k, v in policy.usage().items() if k != "pinned"},
            "evictions": st.evictions,
            "evicted_bytes": st.evicted_bytes,
            "crc_failures": st.crc_failures,
            "checked_bytes": st.checked_bytes,
            "unchecked_bytes": st.unchecked_bytes,
            "scrubbed_bytes": st.scrubbed_bytes,
            "scrub_pass_seconds": st.scrub_pass_seconds,
            "write_errors": st.write_errors,
            "restored_chunks": st.rebuilt_chunks,
        },
        "reads": {
            "hits": total("sidecar_cache_hits_total"),
            "misses": total("sidecar_cache_misses_total"),
            "hit_bytes": total("sidecar_cache_hit_bytes_total"),
            "miss_bytes": total("sidecar_cache_miss_bytes_total"),
            "tier_bytes": total("sidecar_cache_tier_bytes_total"),
            "coalesced": total("sidecar_coalesced_waiters_total"),
            "readahead_bytes": total("sidecar_readahead_bytes_total"),
        },
        "upstream": {
            "requests": by_label("sidecar_upstream_requests_total"),
            "errors": by_label("sidecar_upstream_errors_total"),
            "bytes": total("sidecar_upstream_bytes_total"),
            "metadata_lookups_shared": sc.catalog.shared_lookups,
            "revalidations": sc.catalog.revalidations,
        },
        "requests": by_label("sidecar_requests_total"),
        "tier": None if sc.tier is None else {
            **sc.tier.stats(),
            "reads": {k.split("=", 1)[1]: v for k, v in by_label("sidecar_tier_reads_total").items()},
            "read_bytes": total("sidecar_tier_read_bytes_total"),
            "writes": {k.split("=", 1)[1]: v for k, v in by_label("sidecar_tier_writes_total").items()},
            "write_bytes": total("sidecar_tier_write_bytes_total"),
            "hints": {k.split("=", 1)[1]: v for k, v in by_label("sidecar_tier_hints_total").items()},
            # "SOURCE/RESULT", e.g. "hint/dropped"
            "speculations": {"/".join(p.split("=", 1)[1] for p in reversed(k.split(","))): v
                             for k, v in by_label("sidecar_tier_speculations_total").items()},
            "speculative_dropped_bytes": total("sidecar_tier_speculative_dropped_bytes_total"),
        },
        "pins": sc.ops.pins()["pins"],
        "warm_jobs_running": sc.ops.warm.running,
        "prefetch": sc.prefetch.state(),
        "config": {"log_level": sc.settings.log_level,
                   "last_reload": reload.as_json() if reload is not None else None},
    }


async def stats(request: web.Request) -> web.Response:
    return web.json_response(stats_snapshot(_sc(request)))


async def effective_config(request: web.Request) -> web.Response:
    return web.json_response(_sc(request).settings.as_dict(redact=True), dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


# --- actions -----------------------------------------------------------------------------------


class BadRequest(Exception):
    pass


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a POST (query parameters fill in when there is no body)."""
    data: Any = dict(request.query)
    if request.can_read_body:
        try:
            data = {**data, **(await request.json())}
        except (ValueError, TypeError):
            raise BadRequest("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _bucket_prefix(data: dict[str, Any]) -> tuple[str, str]:
    bucket, prefix = data.get("bucket"), data.get("prefix", "") or ""
    if not isinstance(bucket, str) or not bucket or "/" in bucket:
        raise BadRequest("'bucket' is required: a bucket name")
    if not isinstance(prefix, str):
        raise BadRequest("'prefix' must be a string")
    return bucket, prefix


def _is_loopback(peer: str | None) -> bool:
    try:
        return peer is not None and ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        return False


@web.middleware
async def _local_control(request: web.Request, handler) -> web.StreamResponse:
    """Reads (health, metrics, stats) are open to whoever reaches the port — kubelet probes and
    Prometheus come from the pod network. Changes (purge, pin, warm, reload) come from the pod
    itself unless ``admin_remote_control`` allows more."""
    if request.method not in ("GET", "HEAD") and not _is_loopback(request.remote) \
            and not _sc(request).settings.admin_remote_control:
        return web.json_response({"error": "admin changes are accepted from loopback only "
                                           "(set admin_remote_control to allow others)"}, status=403)
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as e:
        return web.json_response({"error": str(e)}, status=400)


async def purge(request: web.Request) -> web.Response:
    bucket, prefix = _bucket_prefix(await _body(request))
    return web.json_response({"bucket": bucket, "prefix": prefix, **_sc(request).ops.purge(bucket, prefix)})


async def pin(request: web.Request) -> web.Response:
    bucket, prefix = _bucket_prefix(await _body(request))
    return web.json_response(_sc(request).ops.pin(bucket, prefix))


async def unpin(request: web.Request) -> web.Response:
    bucket, prefix = _bucket_prefix(await _body(request))
    return web.json_response(_sc(request).ops.unpin(bucket, prefix))


async def pins(request: web.Request) -> web.Response:
    return web.json_response(_sc(request).ops.pins())


async def warm_start(request: web.Request) -> web.Response:
    data = await _body(request)
    keys = data.get("keys")
    if keys is not None:
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise BadRequest("'keys' must be a list of object keys")
        if "prefix" in data:
            raise BadRequest("give 'keys' or 'prefix', not both")
        bucket = data.get("bucket")
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise BadRequest("'bucket' is required: a bucket name")
        prefix = None
    else:
        bucket, prefix = _bucket_prefix(data)
    job = _sc(request).ops.warm.start(bucket, prefix, keys)
    return web.json_response(job.as_json(), status=202, headers={"Location": f"/warm/{job.id}"})


def _job(request: web.Request):
    job = _sc(request).ops.warm.get(request.match_info["id"])
    if job is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such warm job"}), content_type="application/json")
    return job


async def warm_status(request: web.Request) -> web.Response:
    return web.json_response(_job(request).as_json())


async def warm_cancel(request: web.Request) -> web.Response:
    job = _job(request)
    _sc(request).ops.warm.cancel(job.id)
    return web.json_response(job.as_json())


async def warm_list(request: web.Request) -> web.Response:
    return web.json_response({"jobs": [j.as_json() for j in _sc(request).ops.warm.jobs.values()]})


async def hot(request: web.Request) -> web.Response:
    try:
        n = int(request.query.get("n", "20"))
    except ValueError:
        raise BadRequest("'n' must be an integer") from None
    if not 1 <= n <= 10000:
        raise BadRequest("'n' must be between 1 and 10000")
    return web.json_response({"objects": _sc(request).ops.hot(n)})


async def verify(request: web.Request) -> web.Response:
    """Check cached chunks (one object, a bucket, or everything); corrupt ones are dropped and,
    unless ``repair`` is false, refetched. ``ok`` is false when corruption is left."""
    from .cache.verify import targets, verify_online  # noqa: PLC0415

    try:
        bucket, key, repair = targets(await _body(request))
    except ValueError as e:
        raise BadRequest(str(e)) from None
    sc = _sc(request)

    async def refetch(meta, indexes: list[int]) -> int:
        """Fetch dropped chunks again through the reader, at WARM priority; how many are cached."""
        fetches = [sc.reader.fetch(meta, i, i, Priority.WARM) for i in indexes]
        for fetch in fetches:
            await fetch  # ours, or a reader's that got there first
        return sum(1 for fetch in fetches if fetch.cached(fetch.first))

    report = await verify_online(sc.store, sc.executor, refetch if repair else None, bucket, key)
    return web.json_response(report.as_json())


async def reload(request: web.Request) -> web.Response:
    report = _sc(request).ops.reloader.reload("admin-api")
    return web.json_response(report.as_json(), status=200 if report.ok else 422)


def create_app(sc: Daemon) -> web.Application:
    app = web.Application(middlewares=[_local_control, _errors], client_max_size=4 * 1024 * 1024)
    app[SIDECAR] = sc
    sc.metrics.registry.register(DaemonCollector(sc))
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/stats", stats)
    r.add_get("/config", effective_config)
    r.add_post("/reload", reload)
    r.add_post("/purge", purge)
    r.add_post("/pin", pin)
    r.add_post("/unpin", unpin)
    r.add_get("/pins", pins)
    r.add_post("/warm", warm_start)
    r.add_get("/warm", warm_list)
    r.add_get("/warm/{id}", warm_status)
    r.add_delete("/warm/{id}", warm_cancel)
    r.add_get("/hot", hot)
    r.add_post("/verify", verify)
    return app
