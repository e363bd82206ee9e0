"""The admin endpoint (its own port): health, readiness, Prometheus metrics and cache stats."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from .server import Sidecar

SIDECAR = web.AppKey("sidecar", object)


def _sc(request: web.Request) -> "Sidecar":
    return request.app[SIDECAR]  # type: ignore[return-value]


def refresh_gauges(sc: "Sidecar") -> None:
    m = sc.metrics
    m.cache_bytes.set(sc.store.used_bytes)
    m.cache_entries.set(sc.store.entries)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sc = _sc(request)
    checks = {
        "started": sc.ready,
        "cache_dir_writable": os.access(sc.store.root, os.W_OK),
    }
    ok = all(checks.values())
    return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    sc = _sc(request)
    refresh_gauges(sc)
    return web.Response(body=generate_latest(sc.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def stats_snapshot(sc: "Sidecar") -> dict[str, Any]:
    refresh_gauges(sc)
    st = sc.store.stats
    counters = sc.metrics.stats()

    def total(prefix: str) -> float:
        return sum(v for k, v in counters.items() if k.split("{")[0] == prefix)

    return {
        "uptime_s": round(time.time() - sc.started_at, 3),
        "cache": {
            "used_bytes": sc.store.used_bytes,
            "capacity_bytes": sc.store.space.capacity,
            "chunks": sc.store.entries,
            "objects": len(sc.store.versions),
            "chunk_size": sc.store.chunk_size,
            "evictions": st.evictions,
            "evicted_bytes": st.evicted_bytes,
            "crc_failures": st.crc_failures,
            "write_errors": st.write_errors,
            "restored_chunks": st.rebuilt_chunks,
        },
        "reads": {
            "hits": total("sidecar_cache_hits_total"),
            "misses": total("sidecar_cache_misses_total"),
            "hit_bytes": total("sidecar_cache_hit_bytes_total"),
            "miss_bytes": total("sidecar_cache_miss_bytes_total"),
            "coalesced": total("sidecar_coalesced_waiters_total"),
            "readahead_bytes": total("sidecar_readahead_bytes_total"),
        },
        "upstream": {
            "requests": {k.split("{", 1)[1].rstrip("}"): v for k, v in counters.items()
                         if k.startswith("sidecar_upstream_requests_total{")},
            "bytes": total("sidecar_upstream_bytes_total"),
            "metadata_lookups_shared": sc.catalog.shared_lookups,
            "revalidations": sc.catalog.revalidations,
        },
        "requests": {k.split("{", 1)[1].rstrip("}"): v for k, v in counters.items()
                     if k.startswith("sidecar_requests_total{")},
    }


async def stats(request: web.Request) -> web.Response:
    return web.json_response(stats_snapshot(_sc(request)))


def create_app(sc: "Sidecar") -> web.Application:
    app = web.Application()
    app[SIDECAR] = sc
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", stats)
    return app
