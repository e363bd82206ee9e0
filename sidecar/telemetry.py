"""Prometheus metrics and structured logs: the metric families, the per-request access log,
and structlog set up to write JSON lines (or console lines) to stdout.

Metrics live in a per-process ``CollectorRegistry`` owned by ``Metrics`` (never the global
default registry), so tests can build several apps side by side. Values other parts own (cache
bytes, entries, CRC failures...) are read at scrape time by a collector (``admin.py``) instead
of being copied into gauges on every change.

Logging is process-wide, as stdout is: ``setup_logging`` configures it, ``set_level`` changes
the level of every logger at run time (a config reload). The hit path's one line per request
is written by ``AccessLog`` without structlog's processor chain and is flushed in batches;
every other event goes through structlog, flushes at once, and passes ``redact_secrets``.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import re
import sys
import threading
import time
from bisect import bisect_left
from json.encoder import encode_basestring_ascii as _json_str
from typing import IO, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics

# ``*_created`` series (one more per counter child) carry nothing a dashboard or alert uses.
disable_created_metrics()

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _RequestTally:
    """One (operation, status, outcome)'s requests since start: count, seconds, and the count per
    latency bucket (the last one: above every bound), with what ``flush`` already passed on."""

    __slots__ = ("counter", "histogram", "count", "seconds", "buckets", "_count", "_seconds", "_buckets")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self.counter, self.histogram = counter, histogram
        self.count = self._count = 0
        self.seconds = self._seconds = 0.0
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        self._buckets = [0] * (len(_LATENCY_BUCKETS) + 1)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        self.buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1

    def flush(self) -> None:
        # snapshot first: an update landing meanwhile is passed on by the next flush
        count, seconds, buckets = self.count, self.seconds, list(self.buckets)
        if count == self._count:
            return
        self.counter.inc(count - self._count)
        # prometheus_client keeps a histogram child as its sum and one count per bucket
        # (cumulated when collected); the version is pinned in constraints.txt
        self.histogram._sum.inc(seconds - self._seconds)
        for i, (now, before) in enumerate(zip(buckets, self._buckets)):
            if now != before:
                self.histogram._buckets[i].inc(now - before)
        self._count, self._seconds, self._buckets = count, seconds, buckets


class _ReadTally:
    """One rule label's reads since start: hits, misses, hit bytes, miss bytes, tier bytes."""

    __slots__ = ("children", "totals", "_passed")

    def __init__(self, *children: Any) -> None:
        self.children = children
        self.totals = [0] * len(children)
        self._passed = [0] * len(children)

    def flush(self) -> None:
        totals = list(self.totals)
        for child, now, before in zip(self.children, totals, self._passed):
            if now != before:
                child.inc(now - before)
        self._passed = totals


class _Flush:
    """A collector with no metrics of its own, registered first: collecting it flushes the
    per-request tallies into the collectors that follow."""

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> list:
        self.metrics.flush()
        return []


class Metrics:
    """Every metric family the daemon updates itself. Names and units follow Prometheus
    conventions (``promtool check metrics`` runs in the tests); ``docs/operations.md`` lists them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # Per-request figures accumulate in plain ints (see ``observe_request``) and reach the
        # Prometheus collectors here, first on every scrape and ``value()``/``stats()`` read.
        r.register(_Flush(self))
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, fds...
        self._add_request_metrics(r)
        self._add_read_metrics(r)
        self._add_space_metrics(r)
        self._add_upstream_metrics(r)
        self._add_prefetch_metrics(r)
        self._add_bandwidth_metrics(r)
        self._add_tier_metrics(r)
        self._add_auth_metrics(r)
        self._add_operations_metrics(r)
        self._request_children: dict[tuple[str, int, str], _RequestTally] = {}
        self._read_children: dict[str, _ReadTally] = {}
        self._fast_path_requests = self._fast_path_flushed = 0

    def _add_request_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter("sidecar_requests", "S3 requests answered, by operation and HTTP status",
                                ["operation", "status"], registry=r)
        self.fast_path_requests = Counter("sidecar_fast_path_requests",
                                          "GET/HEAD hits answered on the lean path, without aiohttp's web layer",
                                          registry=r)
        self.fast_path_handoffs = Counter("sidecar_fast_path_handoffs",
                                          "Client connections the lean path handed to aiohttp (a request "
                                          "it does not answer itself)", registry=r)
        self.fast_path_takebacks = Counter("sidecar_fast_path_takebacks",
                                           "Idle client connections the lean path took back from aiohttp "
                                           "(their next request was a hit)", registry=r)
        self.request_duration = Histogram("sidecar_request_duration_seconds",
                                          "Time to answer S3 requests (to the last body byte), by operation and "
                                          "cache outcome (hit, miss, partial, pass...)",
                                          ["operation", "outcome"], buckets=_LATENCY_BUCKETS, registry=r)

    def _add_read_metrics(self, r: CollectorRegistry) -> None:
        # label: the cache rule's labels, "" without rules
        self.cache_hits = Counter("sidecar_cache_hits", "Object reads served entirely from the cache",
                                  ["label"], registry=r)
        self.cache_misses = Counter("sidecar_cache_misses",
                                    "Object reads that needed bytes from beyond the local cache: the upstream "
                                    "or the shared tier (wholly or partly)", ["label"], registry=r)
        self.cache_hit_bytes = Counter("sidecar_cache_hit_bytes", "Bytes served to clients from the cache",
                                       ["label"], registry=r)
        self.cache_miss_bytes = Counter("sidecar_cache_miss_bytes",
                                        "Bytes served to clients as they arrived from the upstream", ["label"],
                                        registry=r)
        self.cache_tier_bytes = Counter("sidecar_cache_tier_bytes",
                                        "Bytes served to clients as they arrived from the shared tier (neither "
                                        "local hits nor upstream bytes)", ["label"], registry=r)
        self.coalesced = Counter("sidecar_coalesced_waiters",
                                 "Reads that joined a fetch already in flight instead of starting one",
                                 ["kind"], registry=r)
        self.readahead_bytes = Counter("sidecar_readahead_bytes", "Bytes fetched ahead of sequential readers",
                                       registry=r)
        self.invalidations = Counter("sidecar_invalidations", "Objects invalidated by writes through the sidecar",
                                     ["kind"], registry=r)

    def _add_space_metrics(self, r: CollectorRegistry) -> None:
        self.evictions = Counter("sidecar_cache_evictions", "Chunks evicted, by reason", ["reason"], registry=r)
        self.evicted_bytes = Counter("sidecar_cache_evicted_bytes", "Bytes evicted, by reason", ["reason"],
                                     registry=r)
        self.disk_errors = Counter("sidecar_cache_disk_errors", "Cache disk operations of chunk fills that failed",
                                   ["op"], registry=r)

    def _add_upstream_metrics(self, r: CollectorRegistry) -> None:
        self.upstream_requests = Counter("sidecar_upstream_requests",
                                         "Requests sent to the upstream, by operation and outcome",
                                         ["operation", "outcome"], registry=r)
        self.upstream_duration = Histogram("sidecar_upstream_request_duration_seconds",
                                           "Upstream time to response headers, by operation",
                                           ["operation"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_bytes = Counter("sidecar_upstream_bytes",
                                      "Object bytes received from the upstream, by purpose "
                                      "(demand, readahead, prefetch, direct)", ["purpose"], registry=r)
        self.upstream_errors = Counter("sidecar_upstream_errors", "Upstream failures, by kind", ["kind"],
                                       registry=r)

    def _add_prefetch_metrics(self, r: CollectorRegistry) -> None:
        # fed by the predictor loop and the reader's prefetch fills
        self.known_keys = Gauge("sidecar_known_keys", "Keys in the prefetcher's catalogue (listed or read)",
                                registry=r)
        self.known_keys_bytes = Gauge("sidecar_known_keys_bytes",
                                      "Approximate memory of the prefetcher's known-key catalogue", registry=r)
        self.prefetch_bytes = Counter("sidecar_prefetch_bytes", "Bytes the predictor had fetched ahead of demand",
                                      registry=r)
        self.prefetch_useful_bytes = Counter("sidecar_prefetch_useful_bytes",
                                             "Prefetched bytes later read by a client", registry=r)
        self.prefetch_wasted_bytes = Counter("sidecar_prefetch_wasted_bytes",
                                             "Prefetched bytes evicted or invalidated before any client read them",
                                             registry=r)
        self.prefetch_objects = Counter("sidecar_prefetch_objects", "Objects the predictor chose to prefetch",
                                        registry=r)
        self.prefetch_runs = Counter("sidecar_prefetch_runs", "Predictor runs, by result", ["result"], registry=r)
        self.prefetch_run_duration = Histogram("sidecar_prefetch_run_duration_seconds",
                                               "Time one predictor run takes (scoring and planning)",
                                               buckets=_RUN_BUCKETS, registry=r)
        self.prefetch_inference = Histogram("sidecar_prefetch_inference_seconds",
                                            "Time the model takes to score one run's candidates",
                                            buckets=_RUN_BUCKETS, registry=r)
        self.prefetch_candidates = Counter("sidecar_prefetch_candidates",
                                           "Candidate objects the predictor scored", registry=r)
        self.prefetch_fetches = Counter("sidecar_prefetch_fetches",
                                        "Object prefetches, by event (issued, completed, cancelled, failed)",
                                        ["event"], registry=r)

    def _add_bandwidth_metrics(self, r: CollectorRegistry) -> None:
        # fed by the token bucket
        self.bandwidth_rate = Gauge("sidecar_bandwidth_rate_bytes",
                                    "Current refill rate of the upstream token bucket, in bytes per second "
                                    "(0: background fetches not limited)", registry=r)
        self.bandwidth_tokens = Gauge("sidecar_bandwidth_tokens_bytes",
                                      "Bytes background fetches may take from the token bucket now; negative: "
                                      "the debt demand reads ran up (0 while not limited)", registry=r)
        self.bandwidth_decreases = Counter("sidecar_bandwidth_decreases",
                                           "Multiplicative cuts of the token bucket's rate, by cause (latency, "
                                           "error, throttled)", ["reason"], registry=r)

    def _add_tier_metrics(self, r: CollectorRegistry) -> None:
        """The shared tier (docs/shared-tier.md)."""
        self.tier_reads = Counter("sidecar_tier_reads",
                                  "Block reads from the shared tier, by result: hit, miss, and the causes of "
                                  "falling through to the upstream (timeout, error, breaker_open, corrupt, "
                                  "misbound, unsigned)", ["result"], registry=r)
        self.tier_read_bytes = Counter("sidecar_tier_read_bytes", "Verified bytes read from the shared tier",
                                       registry=r)
        self.tier_writes = Counter("sidecar_tier_writes",
                                   "Blocks offered to the shared tier, by result (written, dropped, failed)",
                                   ["result"], registry=r)
        self.tier_write_bytes = Counter("sidecar_tier_write_bytes", "Bytes written to the shared tier",
                                        registry=r)
        self.tier_write_queue = Gauge("sidecar_tier_write_queue_blocks",
                                      "Blocks waiting to be written to the shared tier", registry=r)
        self.tier_hints = Counter("sidecar_tier_hints",
                                  "Records of the version of an object last seen, read from the shared tier as "
                                  "the guess of a first read (hit, miss, late, timeout, error, breaker_open, "
                                  "corrupt, misbound, unsigned) and written to it (written, write_dropped, "
                                  "write_failed)", ["result"], registry=r)
        self.tier_speculations = Counter("sidecar_tier_speculations",
                                         "Speculative tier reads begun before the upstream confirmed the version, "
                                         "by the guess's source (expired: the entry the pod knew; hint: the tier's "
                                         "record) and verdict (confirmed, dropped)", ["source", "result"],
                                         registry=r)
        self.tier_speculative_dropped_bytes = Counter("sidecar_tier_speculative_dropped_bytes",
                                                      "Verified tier bytes read speculatively and dropped: the "
                                                      "upstream confirmed another version, or none", registry=r)

    def _add_auth_metrics(self, r: CollectorRegistry) -> None:
        self.auth_rejections = Counter("sidecar_auth_rejections",
                                       "Requests refused by client signature verification, by S3 error code",
                                       ["code"], registry=r)

    def _add_operations_metrics(self, r: CollectorRegistry) -> None:
        self.warm_jobs = Counter("sidecar_warm_jobs", "Warm jobs (admin API) finished, by result", ["result"],
                                 registry=r)
        self.config_reloads = Counter("sidecar_config_reloads", "Configuration reloads, by result", ["result"],
                                      registry=r)
        self.config_reload_time = Gauge("sidecar_config_last_reload_success_timestamp_seconds",
                                        "When the configuration was last loaded successfully (Unix time)",
                                        registry=r)
        self.config_restart_required = Gauge("sidecar_config_restart_required",
                                             "1 when the configuration file asks for changes that only a "
                                             "restart applies", registry=r)


    # The per-request updates. A ``labels()`` child's ``inc``/``observe`` takes a lock and, for a
    # histogram, walks the buckets: more than a small hit's whole bookkeeping should cost. So
    # each label set gets one plain record (ints and a float, the histogram bucket found by
    # bisection), and ``flush`` adds what accumulated since the last scrape to the collectors.

    def observe_request(self, operation: str, status: int, outcome: str, seconds: float) -> None:
        self.request_tally(operation, status, outcome).add(seconds)

    def request_tally(self, operation: str, status: int, outcome: str) -> "_RequestTally":
        """The record ``observe_request`` adds to (a caller answering the same kind of request
        again and again may hold on to it)."""
        rec = self._request_children.get((operation, status, outcome))
        if rec is None:
            rec = self._request_children[(operation, status, outcome)] = _RequestTally(
                self.requests.labels(operation, str(status)), self.request_duration.labels(operation, outcome))
        return rec

    def count_read(self, label: str, hit_bytes: int, miss_bytes: int, tier_bytes: int = 0) -> None:
        """One object read: bytes from the local cache, the upstream and the shared tier."""
        t = self.read_totals(label)
        if miss_bytes or tier_bytes:
            t[1] += 1
            t[3] += miss_bytes
            t[4] += tier_bytes
        else:
            t[0] += 1
        t[2] += hit_bytes

    def read_totals(self, label: str) -> list[int]:
        """A rule label's [hits, misses, hit bytes, miss bytes, tier bytes], which ``count_read``
        adds to."""
        rec = self._read_children.get(label)
        if rec is None:
            rec = self._read_children[label] = _ReadTally(
                self.cache_hits.labels(label), self.cache_misses.labels(label),
                self.cache_hit_bytes.labels(label), self.cache_miss_bytes.labels(label),
                self.cache_tier_bytes.labels(label))
        return rec.totals

    def fast_path_hit(self, n: int = 1) -> None:
        self._fast_path_requests += n

    def flush(self) -> None:
        """Add the per-request figures accumulated since the last flush to their collectors."""
        n = self._fast_path_requests
        if n != self._fast_path_flushed:
            self.fast_path_requests.inc(n - self._fast_path_flushed)
            self._fast_path_flushed = n
        for rec in list(self._request_children.values()):
            rec.flush()
        for rec in list(self._read_children.values()):
            rec.flush()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (0 if absent), e.g. ``value("sidecar_upstream_errors_total", {"kind": k})``."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v

    def stats(self) -> dict[str, Any]:
        """A flat JSON-able snapshot of counters, for the admin API and the demo."""
        out: dict[str, Any] = {}
        for metric in self.registry.collect():
            if metric.name.startswith("process_"):
                continue
            for s in metric.samples:
                if s.name.endswith("_created") or s.name.endswith("_bucket"):
                    continue
                key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
                                if s.labels else "")
                out[key] = s.value
        return out


# --- secrets never logged ----------------------------------------------------------------------

# Query-string authentication parameters and header forms of credentials: whatever follows them
# up to a separator is replaced.
_SECRET_VALUE = re.compile(
    r"(?i)((?:x-amz-signature|x-amz-credential|x-amz-security-token|awsaccesskeyid|signature|credential"
    r"|aws_secret_access_key|aws_session_token|secretaccesskey|sessiontoken)\s*[=:]\s*\"?)[^&\s,;\"'<>]+")
_SECRET_WORDS = ("signature", "credential", "token", "secret", "accesskey")
_SECRET_FIELDS = frozenset({"authorization", "x-amz-security-token", "x-amz-signature", "x-amz-credential",
                            "secret", "secret_key", "secret_access_key", "aws_secret_access_key", "password",
                            "token", "session_token", "aws_session_token", "signature", "credentials"})
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
REDACTED = "<redacted>"


def scrub(text: str) -> str:
    """``text`` with credential-looking values replaced (presigned query strings, auth headers,
    passwords in URLs). Cheap when there is nothing to find: every form needs a ``=`` or ``:``."""
    if "=" not in text and ":" not in text:
        return text
    if "://" in text:
        text = _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    lower = text.lower()
    if not any(w in lower for w in _SECRET_WORDS):
        return text
    return _SECRET_VALUE.sub(lambda m: m.group(1) + REDACTED, text)


def redact_secrets(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: no credential, signature or token reaches a log line."""
    for k, v in event_dict.items():
        if k.lower() in _SECRET_FIELDS:
            event_dict[k] = REDACTED
        elif isinstance(v, str):
            event_dict[k] = scrub(v)
        elif isinstance(v, (list, tuple, dict)):
            text = repr(v)
            if scrub(text) != text:
                event_dict[k] = scrub(text)
    return event_dict


# --- output ------------------------------------------------------------------------------------


class LogSink:
    """Where log lines go. ``write`` is immediate (and first writes anything buffered, so lines
    stay in order); ``write_batched`` and ``write_many`` (the access log) collect lines and write
    them together at most ``interval`` seconds later, one system call per batch instead of one
    per request."""

    def __init__(self, stream: IO[str], batched: bool, interval: float = 0.1, max_lines: int = 512) -> None:
        self.stream = stream
        self.batched = batched
        self.interval = interval
        self.max_lines = max_lines
        self._buf: list[str] = []
        self._scheduled = False
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        self._buf.append(line)
        self.flush()

    def write_batched(self, line: str) -> None:
        # No lock here: list.append is atomic, and flush takes the list before joining it.
        buf = self._buf
        buf.append(line)
        self._flush_soon(buf)

    def write_many(self, lines: list[str]) -> None:
        buf = self._buf
        buf.extend(lines)  # atomic too
        self._flush_soon(buf)

    def _flush_soon(self, buf: list[str]) -> None:
        if not self.batched or len(buf) >= self.max_lines:
            self.flush()
        elif not self._scheduled:
            loop = asyncio._get_running_loop()
            if loop is None:  # not on an event loop: nothing would flush later
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.interval, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        with self._lock:
            buf, self._buf = self._buf, []
            if not buf:
                return
            try:
                self.stream.write("".join(buf))
                self.stream.flush()
            except (OSError, ValueError):  # stdout closed or gone: logging must never take the daemon down
                pass


class _SinkLogger:
    """The structlog output logger: every level writes the rendered line to the sink."""

    __slots__ = ("name",)

    def __init__(self, name: str = "sidecar") -> None:
        self.name = name

    def msg(self, message: str) -> None:
        _STATE.sink.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


class _State:
    __slots__ = ("level", "sink", "fmt", "renderer")

    def __init__(self) -> None:
        self.level = logging.INFO
        self.sink = LogSink(sys.stdout, batched=False)
        self.fmt = "json"
        self.renderer: Any = structlog.processors.JSONRenderer()


_STATE = _State()
_OFF = logging.CRITICAL + 10
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "off": _OFF}


class SwitchableLogger(structlog.BoundLoggerBase):
    """A bound logger whose level is read at each call from the process-wide setting, so
    ``set_level`` reaches loggers structlog has already cached. A filtered call costs one
    comparison."""

    def _log(self, level: int, method: str, event: Any, args: tuple, kw: dict[str, Any]) -> Any:
        if level < _STATE.level:
            return None
        if args:
            event = event % args
        return self._proxy_to_logger(method, event, **kw)

    def debug(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return None if logging.DEBUG < _STATE.level else self._log(logging.DEBUG, "debug", event, args, kw)

    def info(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return None if logging.INFO < _STATE.level else self._log(logging.INFO, "info", event, args, kw)

    def warning(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return None if logging.WARNING < _STATE.level else self._log(logging.WARNING, "warning", event, args, kw)

    warn = warning

    def error(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return None if logging.ERROR < _STATE.level else self._log(logging.ERROR, "error", event, args, kw)

    def exception(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self.error(event, *args, **kw)

    def critical(self, event: Any = None, *args: Any, **kw: Any) -> Any:
        return self._log(logging.CRITICAL, "critical", event, args, kw)

    def is_enabled_for(self, level: int) -> bool:
        return level >= _STATE.level


def _add_logger_name(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    name = getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


class _SinkHandler(logging.Handler):
    """Standard-library log records (aiohttp, asyncio, the local upstream) as the same lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _STATE.sink.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001
            self.handleError(record)


# Libraries whose debug logs print signed request headers: never below WARNING.
_CHATTY = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3")


def setup_logging(level: str = "info", fmt: str = "auto", *, stream: IO[str] | None = None) -> None:
    """JSON lines to stdout by default; human-readable console on a terminal or on request.
    ``stream`` replaces stdout (benchmarks, tests)."""
    out = stream if stream is not None else sys.stdout
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    _STATE.sink.flush()
    _STATE.fmt = fmt
    _STATE.sink = LogSink(out, batched=fmt == "json")
    _STATE.renderer = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if fmt == "console"
                       else structlog.processors.JSONRenderer())
    set_level(level)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            timestamper,
            structlog.processors.format_exc_info,
            redact_secrets,
            _STATE.renderer,
        ],
        wrapper_class=SwitchableLogger,
        logger_factory=lambda name="sidecar", *args: _SinkLogger(name),
        cache_logger_on_first_use=True,
    )
    handler = _SinkHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info,
                    redact_secrets, _STATE.renderer],
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, timestamper]))
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _SinkHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)


def set_level(level: str) -> None:
    """Change the level of every logger, at once (a config reload)."""
    _STATE.level = LEVELS[level]
    logging.getLogger().setLevel(min(_STATE.level, logging.CRITICAL + 1))


def flush_logs() -> None:
    _STATE.sink.flush()


atexit.register(flush_logs)


def get_logger(name: str = "sidecar") -> Any:
    return structlog.get_logger(name)


# --- the access log ----------------------------------------------------------------------------


class AccessLog:
    """One line per S3 request. In JSON mode the line is formatted here (no processor chain) and
    written in batches; in console mode it goes through structlog like any event.

    ``key_mode``: ``plain`` logs object keys as they are; ``hash`` logs ``sha256:`` and the first
    16 hex digits of SHA-256 over ``bucket/key`` (same key, same hash, across pods)."""

    __slots__ = ("key_mode", "_sec", "_stamp", "_log", "_objects")

    OBJECTS_MAX = 16384

    def __init__(self, key_mode: str = "plain") -> None:
        self.key_mode = key_mode
        # (key mode, bucket, key) -> their JSON fields, escaped and scrubbed once: clients read the same keys
        self._objects: dict[tuple[str, str | None, str | None], str] = {}
        self._sec = -1
        self._stamp = ""
        self._log = get_logger("sidecar.access")

    @property
    def enabled(self) -> bool:
        return _STATE.level <= logging.INFO

    def _key(self, bucket: str | None, key: str | None) -> str | None:
        if key is None:
            return None
        if self.key_mode == "hash":
            return "sha256:" + hashlib.sha256(f"{bucket}/{key}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return key

    def _timestamp(self, at: float) -> str:
        """Unix time ``at`` as the line's UTC timestamp, to the microsecond."""
        us = int(at * 1e6)
        sec = us // 1_000_000
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        return "%s%06dZ" % (self._stamp, us - sec * 1_000_000)

    def emit(self, request_id: str, method: str, operation: str, bucket: str | None, key: str | None,
             range_: str | None, status: int, outcome: str, nbytes: int, bytes_cache: int, bytes_upstream: int,
             seconds: float, bytes_tier: int = 0) -> None:
        if _STATE.level > logging.INFO:
            return
        if _STATE.fmt == "json":
            self.emit_prepared(request_id, self.prepare(method, operation, bucket, key, range_, status, outcome,
                                                        nbytes, bytes_cache, bytes_upstream, bytes_tier), seconds)
            return
        self._log.info("request", request_id=request_id, method=method, operation=operation, bucket=bucket,
                       key=self._key(bucket, key), range=range_, status=status, outcome=outcome, bytes=nbytes,
                       bytes_cache=bytes_cache, bytes_upstream=bytes_upstream, bytes_tier=bytes_tier,
                       ms=round(seconds * 1000, 3))

    def prepare(self, method: str, operation: str, bucket: str | None, key: str | None, range_: str | None,
                status: int, outcome: str, nbytes: int, bytes_cache: int, bytes_upstream: int,
                bytes_tier: int = 0) -> str:
        """The fields of a JSON line between its request id and its duration: a caller that logs
        the same answer again and again prepares them once."""
        before, after = self.parts(method, operation, bucket, key, status, outcome)
        return before + _range(range_) + after % (nbytes, bytes_cache, bytes_upstream, bytes_tier)

    def parts(self, method: str, operation: str, bucket: str | None, key: str | None, status: int,
              outcome: str) -> tuple[str, str]:
        """``prepare``'s fields in two parts, for a caller that logs answers of one object differing
        only in their range and byte counts: the fields before the range's JSON value, and those
        after it as a format taking (bytes, bytes_cache, bytes_upstream, bytes_tier)."""
        # Values a client controls are JSON-escaped, and scrubbed where a credential could hide.
        obj = self._objects.get((self.key_mode, bucket, key))
        if obj is None:
            obj = f'"bucket": {_opt(bucket)}, "key": {_opt(self._key(bucket, key))}'
            if len(self._objects) >= self.OBJECTS_MAX:
                self._objects.clear()
            self._objects[(self.key_mode, bucket, key)] = obj
        # (only the second part is a format: the first holds the key, whose % are its own)
        return (f'"method": {_json_str(method)}, "operation": "{operation}", {obj}, "range": ',
                f', "status": {status}, "outcome": "{outcome}", "bytes": %d, "bytes_cache": %d, '
                f'"bytes_upstream": %d, "bytes_tier": %d, ')

    def emit_prepared(self, request_id: str, fields: str, seconds: float) -> bool:
        """Log one request whose fields ``prepare`` gave, ending now; False (nothing logged) when
        lines are not JSON: the caller then uses ``emit``."""
        return self.emit_prepared_many([(request_id, fields, seconds, time.time())])

    def emit_prepared_many(self, entries: list[tuple[str, str, float, float]]) -> bool:
        """Log requests whose fields ``prepare`` gave, each (request id, fields, seconds, the Unix
        time it ended), in one write to the sink; False (nothing logged) when lines are not JSON."""
        if _STATE.fmt != "json":
            return False
        if _STATE.level <= logging.INFO:
            stamp = self._timestamp
            _STATE.sink.write_many([
                f'{{"timestamp": "{stamp(at)}", "level": "info", "logger": "sidecar.access", '
                f'"event": "request", "request_id": "{rid}", {fields}"ms": {seconds * 1000:.3f}}}\n'
                for rid, fields, seconds, at in entries])
        return True


def _opt(value: str | None) -> str:
    if value is None:
        return "null"
    return _json_str(scrub(value))


_PLAIN_RANGE = re.compile(r"bytes=[0-9, -]{1,64}")


def _range(value: str | None) -> str:
    if value is None:
        return "null"
    return _json_str(value if _PLAIN_RANGE.fullmatch(value) else scrub(value))
