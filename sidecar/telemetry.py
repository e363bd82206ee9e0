"""Prometheus metrics and structlog logging.

Metrics live in a per-process ``CollectorRegistry`` owned by ``Metrics`` (never the global
default registry), so tests can build several apps side by side.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric the daemon exports. Names and units follow Prometheus conventions."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("sidecar_requests", "S3 requests answered, by operation and HTTP status",
                                ["operation", "status"], registry=r)
        self.request_duration = Histogram("sidecar_request_duration_seconds",
                                          "Time to answer S3 requests, by operation and cache outcome",
                                          ["operation", "outcome"], buckets=_LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter("sidecar_cache_hits", "Object reads served entirely from the cache",
                                  ["label"], registry=r)
        self.cache_misses = Counter("sidecar_cache_misses",
                                    "Object reads that needed bytes from the upstream (wholly or partly)",
                                    ["label"], registry=r)
        self.cache_hit_bytes = Counter("sidecar_cache_hit_bytes", "Bytes served to clients from the cache",
                                       ["label"], registry=r)
        self.cache_miss_bytes = Counter("sidecar_cache_miss_bytes",
                                        "Bytes served to clients as they arrived from the upstream", ["label"],
                                        registry=r)
        self.upstream_requests = Counter("sidecar_upstream_requests",
                                         "Requests sent to the upstream, by operation and outcome",
                                         ["operation", "outcome"], registry=r)
        self.upstream_duration = Histogram("sidecar_upstream_request_duration_seconds",
                                           "Upstream time to response headers, by operation",
                                           ["operation"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_bytes = Counter("sidecar_upstream_bytes", "Object bytes received from the upstream",
                                      ["purpose"], registry=r)
        self.upstream_errors = Counter("sidecar_upstream_errors", "Upstream failures, by kind", ["kind"],
                                       registry=r)
        self.cache_bytes = Gauge("sidecar_cache_bytes", "Bytes of chunks in the cache", registry=r)
        self.cache_capacity = Gauge("sidecar_cache_capacity_bytes", "Byte budget of the cache", registry=r)
        self.cache_entries = Gauge("sidecar_cache_entries", "Chunks in the cache", registry=r)
        self.evictions = Counter("sidecar_cache_evictions", "Chunks evicted, by reason", ["reason"], registry=r)
        self.evicted_bytes = Counter("sidecar_cache_evicted_bytes", "Bytes evicted, by reason", ["reason"],
                                     registry=r)
        self.crc_failures = Counter("sidecar_cache_crc_failures",
                                    "Chunks whose bytes did not match their CRC32C (dropped, refetched)",
                                    registry=r)
        self.disk_errors = Counter("sidecar_cache_disk_errors", "Cache disk operations that failed", ["op"],
                                   registry=r)
        self.coalesced = Counter("sidecar_coalesced_waiters",
                                 "Reads that joined a fetch already in flight instead of starting one",
                                 ["kind"], registry=r)
        self.readahead_bytes = Counter("sidecar_readahead_bytes", "Bytes fetched ahead of sequential readers",
                                       registry=r)
        self.invalidations = Counter("sidecar_invalidations", "Objects invalidated by writes through the sidecar",
                                     ["kind"], registry=r)

    def stats(self) -> dict[str, Any]:
        """A flat JSON-able snapshot of counters, for the admin API and the demo."""
        out: dict[str, Any] = {}
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name.endswith("_created") or s.name.endswith("_bucket"):
                    continue
                key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                                if s.labels else "")
                out[key] = s.value
        return out


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """JSON lines to stdout by default; human-readable console on a terminal or on request."""
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()) if fmt == "console"
                     else structlog.processors.JSONRenderer())
    # "off": nothing the sidecar logs is CRITICAL, so filtering at CRITICAL silences it
    numeric = logging.CRITICAL if level == "off" else getattr(logging, level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "sidecar") -> Any:
    return structlog.get_logger(name)
