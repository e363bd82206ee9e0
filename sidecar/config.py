"""One settings object from defaults, an optional YAML file, SIDECAR_* env vars and flags.

Precedence, lowest first: defaults < YAML file (``--config``) < ``SIDECAR_*`` environment
< command-line flags. Every option is declared once in ``OPTIONS``; flags, environment names,
YAML keys, defaults and validation all derive from that table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid setting. ``str()`` is the one line shown to the user."""

    def __init__(self, setting: str, value: object, accepted: str) -> None:
        self.setting = setting
        self.value = value
        self.accepted = accepted
        where = f" ({flag_name(setting)} / {env_name(setting)})" if setting in _BY_NAME else ""
        shown: object = value
        if setting in _BY_NAME and _BY_NAME[setting].secret:
            shown = REDACTED
        elif isinstance(value, str):
            shown = redact_url(value)
        super().__init__(f"invalid {setting}{where}: {shown!r} (expected {accepted})")


REDACTED = "<redacted>"
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """``text`` with the user:password part of any URL in it replaced."""
    return _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)


# --- value parsers -----------------------------------------------------------------------------

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
SIZE_FORM = "a byte size such as 4MiB, 20GiB, 512Ki, 1G or 1048576"


def parse_size(text: str | int) -> int:
    """Parse a byte size; IEC (KiB, Mi) units are powers of 1024, SI (KB, M) of 1000."""
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, int):
        if text < 0:
            raise ValueError(text)
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(text)
    value = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not math.isfinite(value):
        raise ValueError(text)
    return int(value)


def format_size(n: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_FORM = "a duration in seconds such as 60, 2.5, 500ms, 5m or 1h"


def parse_duration(text: str | float) -> float:
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, (int, float)):
        if text < 0 or not math.isfinite(text):
            raise ValueError(text)
        return float(text)
    m = _DURATION_RE.match(str(text))
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_ttl(text: str | float | None) -> float | None:
    """A duration, or ``indefinite`` (None): cached metadata never expires by age."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("indefinite", "inf", "never")):
        return None
    return parse_duration(text)


def parse_hostport(text: str) -> tuple[str, int]:
    text = str(text).strip()
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]*):(\d+)$", text)
    if not m:
        raise ValueError(text)
    port = int(m.group(2))
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return (m.group(1) or "0.0.0.0", port)


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def parse_upstream(text: str | None) -> str | None:
    """``None`` (AWS's regional endpoint), an http(s) URL, or ``file:///dir`` — optionally
    ``file:///dir?latency=20ms&bandwidth=200MiB`` to behave like a distant store."""
    if text is None or str(text).strip() == "":
        return None
    t = str(text).strip()
    if t.startswith("file://"):
        path, _, query = t[len("file://"):].partition("?")
        if not path.startswith("/"):
            raise ValueError(t)
        local_upstream_options(query)
        return t
    if re.match(r"^https?://[^/\s]+/?$", t):
        return t.rstrip("/")
    raise ValueError(t)


def local_upstream_options(query: str) -> dict[str, float]:
    """``latency`` (a duration), ``bandwidth`` (bytes per second shared by all requests) and
    ``connection_bandwidth`` (bytes per second of each request) of a file:// upstream."""
    out: dict[str, float] = {}
    for part in filter(None, query.split("&")):
        name, _, value = part.partition("=")
        if name == "latency":
            out["latency"] = parse_duration(value)
        elif name in ("bandwidth", "connection_bandwidth"):
            out[name] = float(parse_size(value))
        else:
            raise ValueError(part)
    return out


def parse_tier_location(text: str | None) -> str | None:
    """``s3://BUCKET/PREFIX`` (the prefix may be empty), or None: no shared tier."""
    if text is None or str(text).strip() == "":
        return None
    t = str(text).strip()
    if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](--[a-z0-9-]+--x-s3)?(/[^\s]*)?$", t):
        raise ValueError(t)
    return t.rstrip("/")


def parse_endpoint(text: str | None) -> str | None:
    if text is None or str(text).strip() == "":
        return None
    t = str(text).strip()
    if not re.match(r"^https?://[^/\s]+/?$", t):
        raise ValueError(t)
    return t.rstrip("/")


UPSTREAM_FORM = ("an http(s):// URL or file:///absolute/dir "
                 "(optionally file:///dir?latency=20ms&bandwidth=200MiB)")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        t = str(text).strip().lower()
        if t not in choices:
            raise ValueError(text)
        return t
    return parse


def _int_range(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    def parse(text: Any) -> int:
        if isinstance(text, bool):
            raise ValueError(text)
        v = int(str(text).strip()) if not isinstance(text, int) else text
        if v < lo or (hi is not None and v > hi):
            raise ValueError(text)
        return v
    return parse


def _size_range(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(text: Any) -> int:
        v = parse_size(text)
        if not lo <= v <= hi:
            raise ValueError(text)
        return v
    return parse


def _float_range(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(text: Any) -> float:
        if isinstance(text, bool):
            raise ValueError(text)
        v = float(text)
        if not (lo <= v <= hi):
            raise ValueError(text)
        return v
    return parse


def _path(text: str) -> Path:
    t = str(text).strip()
    if not t:
        raise ValueError(text)
    return Path(os.path.expanduser(t))


def _optional_path(text: str | None) -> Path | None:
    if text is None or str(text).strip() == "":
        return None
    return _path(text)


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sidecar")


@dataclasses.dataclass(frozen=True)
class Option:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    accepted: str
    help: str
    secret: bool = False
    # flag-only options (like --config) are not read from YAML
    yaml: bool = True


OPTIONS: tuple[Option, ...] = (
    # --- serving
    Option("listen", "127.0.0.1:9400", parse_hostport, "host:port", "address of the S3 endpoint"),
    Option("admin_listen", "127.0.0.1:9401", parse_hostport, "host:port",
           "address of the admin endpoint (health, metrics, stats)"),
    Option("admin_remote_control", False, parse_bool, "true or false",
           "accept purge, pin, warm and reload from other hosts than loopback (reads are always open)"),
    Option("virtual_host_suffixes", "localhost,s3.amazonaws.com", lambda t: tuple(
        s.strip().lower() for s in (t if isinstance(t, (list, tuple)) else str(t).split(",")) if s.strip()),
           "a comma-separated list of domain names",
           "Host suffixes under which <bucket>.<suffix> is a virtual-hosted-style request"),
    Option("max_header_size", 16 * 1024, _size_range(1024, 1024**2), SIZE_FORM + " between 1KiB and 1MiB",
           "longest request line and longest header accepted; longer ones get 400 RequestHeaderSectionTooLarge"),
    Option("max_header_count", 128, _int_range(8, 10000), "an integer from 8 to 10000",
           "most headers a request may have; more get 400 RequestHeaderSectionTooLarge"),
    Option("fast_path", True, parse_bool, "true or false",
           "answer plain GET/HEAD cache hits on the raw connection, without the web framework's "
           "per-request cost (docs/operations.md); false: every request goes through aiohttp"),
    Option("max_client_connections", 1024, _int_range(1, 1000000), "an integer from 1 to 1000000",
           "client connections served at once; requests on further connections get 503 SlowDown"),
    Option("client_request_rate", 0.0, _float_range(0.0, 1e9), "a number of requests per second (0 is unlimited)",
           "requests per second each client address may make; more get 503 SlowDown, as S3 throttles"),
    Option("client_request_burst", 100, _int_range(1, 1000000), "an integer from 1 to 1000000",
           "requests a client address may make at once above client_request_rate"),
    # --- client authentication
    Option("auth", "off", _choice("off", "sigv4"), "off or sigv4",
           "verify clients' AWS Signature Version 4 (headers, presigned URLs, signed aws-chunked "
           "uploads) against auth_keys_dir; off accepts any request"),
    Option("auth_keys_dir", None, _optional_path, "a directory path",
           "client access keys for auth: one file per key, named by the access key id and holding "
           "the secret (a mounted Kubernetes Secret has this shape)"),
    Option("auth_region", None, lambda t: str(t).strip() or None, "an AWS region name such as eu-west-1",
           "region clients must sign for (default: the region setting's value)"),
    # --- upstream
    Option("upstream", None, parse_upstream, UPSTREAM_FORM,
           "upstream S3 endpoint; AWS's regional endpoint when unset"),
    Option("region", None, lambda t: str(t).strip() or None, "an AWS region name such as eu-west-1",
           "region to sign upstream requests for (default: AWS_REGION, else us-east-1)"),
    Option("upstream_addressing", "auto", _choice("auto", "path", "virtual"), "auto, path or virtual",
           "bucket addressing towards the upstream; auto is path-style for custom endpoints"),
    Option("upstream_connect_timeout", 5.0, parse_duration, DURATION_FORM,
           "time allowed to connect to the upstream"),
    Option("upstream_read_timeout", 60.0, parse_duration, DURATION_FORM,
           "time allowed between bytes from the upstream"),
    Option("upstream_answer_within", 2.0, parse_duration, DURATION_FORM,
           "longest a client waits on an unreachable or silent upstream before S3's 503 "
           "ServiceUnavailable (retries of idempotent reads happen within it)"),
    Option("upstream_retries", 3, _int_range(0, 10), "an integer from 0 to 10",
           "retries of idempotent upstream reads (HEAD, ranged GET), with jittered backoff"),
    Option("stale_if_error", 3600.0, parse_ttl, DURATION_FORM + ", or indefinite",
           "while the upstream cannot be reached, cached objects whose metadata the upstream "
           "confirmed at most this long ago are still served"),
    Option("upstream_max_connections", 128, _int_range(1, 10000), "an integer from 1 to 10000",
           "connection pool size towards the upstream"),
    # --- shared tier (docs/shared-tier.md)
    Option("shared_tier", None, parse_tier_location, "s3://BUCKET/PREFIX (empty: off)",
           "a bucket that the pods of a job share as a second cache tier (S3 Express One Zone, MinIO, "
           "Ceph RGW); off when unset"),
    Option("shared_tier_endpoint", None, parse_endpoint, "an http(s):// URL",
           "endpoint of the store holding the shared tier; AWS's when unset"),
    Option("shared_tier_region", None, lambda t: str(t).strip() or None, "an AWS region name such as eu-west-1",
           "region to sign shared tier requests for (default: the profile's, else AWS_REGION, else us-east-1)"),
    Option("shared_tier_profile", None, lambda t: str(t).strip() or None, "an AWS profile name",
           "credentials profile for the shared tier (default: the standard credential chain)"),
    Option("shared_tier_credentials_file", None, _optional_path, "a file path",
           "an AWS shared credentials file used for the shared tier only (its shared_tier_profile, else "
           "default); unset: the standard credential chain"),
    Option("shared_tier_read_within", 1.0, parse_duration, DURATION_FORM,
           "deadline of one block read from the shared tier; past it the read falls through to the upstream"),
    Option("shared_tier_connect_timeout", 1.0, parse_duration, DURATION_FORM,
           "time allowed to connect to the shared tier's store"),
    Option("shared_tier_write_queue", 64, _int_range(1, 100000), "an integer from 1 to 100000",
           "blocks waiting to be written to the shared tier; further blocks are dropped (and counted)"),
    Option("shared_tier_hmac_key_file", None, _optional_path, "a file path",
           "a key every pod of the job shares: blocks are signed (HMAC-SHA256) and unsigned ones refused"),
    # --- cache
    Option("cache_dir", _default_cache_dir(), _path, "a directory path", "where chunks are stored"),
    Option("cache_size", 10 * 1024**3, parse_size, SIZE_FORM, "byte budget of the chunk cache"),
    Option("chunk_size", 4 * 1024**2, parse_size, SIZE_FORM + " between 64KiB and 256MiB",
           "size of cached chunks"),
    Option("metadata_ttl", 60.0, parse_ttl, DURATION_FORM + ", or indefinite",
           "how long object metadata (ETag, size) is trusted before revalidation"),
    Option("readahead_chunks", 4, _int_range(0, 1024), "an integer from 0 to 1024",
           "chunks fetched ahead of a client reading an object in order (0 disables)"),
    Option("readahead_max_bytes", 256 * 1024**2, parse_size, SIZE_FORM,
           "bound on bytes being read ahead at once across all clients"),
    Option("ram_chunk_max", 64 * 1024, parse_size, SIZE_FORM,
           "chunks up to this size are also kept in memory once verified"),
    Option("ram_cache_size", 64 * 1024**2, parse_size, SIZE_FORM,
           "memory budget of the verified small-chunk cache (0 disables)"),
    Option("chunk_verification", "when-changed", _choice("every-read", "when-changed"),
           "every-read or when-changed",
           "when-changed: a read checks the 64 KiB pieces it touches unless they were checked since "
           "the chunk file last changed (inode, size, mtime, ctime), and the scrub finds media "
           "corruption; every-read (strict): every piece a read touches is checked on every read "
           "(docs/integrity.md)"),
    Option("scrub_rate", 8 * 1024**2, parse_size, SIZE_FORM + " (per second; 0 turns the scrub off)",
           "rate at which the background scrub re-reads cached chunk files past the page cache to find "
           "silent media corruption; the time one pass over the cache takes is in "
           "sidecar_cache_scrub_pass_seconds"),
    Option("policy", "lru-k", _choice("lru", "lru-k"), "lru or lru-k",
           "eviction policy within each QoS class of the cache rules"),
    Option("lru_k", 2, _int_range(1, 8), "an integer from 1 to 8", "K of the LRU-K policy"),
    Option("lru_k_correlated_period", 1.0, parse_duration, DURATION_FORM,
           "LRU-K: references to a chunk closer than this count as one (a client reading a "
           "chunk in small ranges touches it many times at once)"),
    Option("lru_k_retained_period", 3600.0, parse_ttl, DURATION_FORM + ", or indefinite",
           "LRU-K: how long an evicted chunk's reference history is kept, so it keeps its past "
           "when it returns"),
    Option("lru_k_probation", 0.0, _float_range(0.0, 0.5), "a number from 0 to 0.5",
           "LRU-K: share of the cache's bytes for a probationary FIFO (with a ghost list) that new "
           "chunks pass before the LRU-K queue; 0 turns it off. Wins on scan-heavy, one-hit-rich "
           "work (OLTP), loses on large-object block traces (cloudPhysics): see docs/policy.md"),
    Option("lru_k_admission", "hold", _choice("off", "adaptive", "hold"), "off, adaptive or hold",
           "LRU-K: 'adaptive' (AdmitLRUK) makes new chunks (no retained history) pass a probationary "
           "FIFO whose share of the bytes moves with the returns of keys each side let go (ARC's "
           "rule; 0 is plain LRU-K, at most half the cache), and spares main entries read more often "
           "(S3-FIFO's second chances). 'hold' (the default) adds a held part: chunks reaching the "
           "probation's end are held while there is room beside main, and the held part gives room "
           "newest first unless its oldest has waited longer than a held chunk ever waited before "
           "its read, so a cyclic read larger than the cache (training epochs) keeps a fixed part "
           "and chunks never read again still go. At or below min(LRU, ARC, S3-FIFO) on every trace "
           "and workload measured; 'off' is plain LRU-K: see docs/policy.md. lru_k_probation above "
           "0 takes precedence"),
    Option("lru_k_retention_weight", 0.0, _float_range(0.0, 4.0), "a number from 0 to 4",
           "LRU-K: after each predictor run, cached chunks of objects scored at least "
           "lru_k_retention_threshold rank as if their backward K-distance were 1 + this times "
           "shorter (0.3: +30 % retention weight); 0 (the default: no gain measured, see "
           "docs/policy.md) turns it off"),
    Option("lru_k_retention_threshold", 0.85, _float_range(0.0, 1.0), "a number from 0 to 1",
           "LRU-K: predicted probability of a read from which an object's cached chunks get "
           "lru_k_retention_weight"),
    Option("hotness_half_life", 600.0, parse_duration, DURATION_FORM,
           "half-life of the decayed per-object read hotness (admin /hot) and of the predictor's hotness feature"),
    # --- prefetch and bandwidth
    Option("prefetch", True, parse_bool, "true or false", "run the access predictor and prefetch"),
    Option("prefetch_interval", 30.0, parse_duration, DURATION_FORM, "how often the predictor runs"),
    Option("prefetch_threshold", 0.7, _float_range(0.0, 1.0), "a number from 0 to 1",
           "minimum predicted probability of a read for an object to be prefetched"),
    Option("prefetch_max_bytes", 1024**3, parse_size, SIZE_FORM,
           "bound on the bytes one predictor run may plan to prefetch"),
    Option("prefetch_known_keys", 200_000, _int_range(0, 100_000_000), "an integer from 0 to 100000000",
           "bound on the keys the prefetcher remembers from listings and reads (about 100 bytes each)"),
    Option("prefetch_candidates", 100_000, _int_range(1, 10_000_000), "an integer from 1 to 10000000",
           "bound on the objects the predictor scores in one run"),
    Option("model", None, _optional_path, "a path to an .onnx file",
           "access predictor model (default: the shipped models/predictor.onnx)"),
    Option("bandwidth_cap", 0, parse_size, SIZE_FORM + " (per second; 0 is unlimited)",
           "upstream bandwidth cap shared by demand reads and prefetch, bytes per second"),
    Option("bandwidth_floor", 0, parse_size, SIZE_FORM + " (per second; 0 is 5% of bandwidth_cap, or 1MiB "
           "without a cap)",
           "lowest rate background fetches (prefetch, readahead, warm) are slowed to when the upstream "
           "is congested, bytes per second"),
    Option("bandwidth_latency_tolerance", 0.5, _float_range(0.0, 100.0), "a number from 0 to 100",
           "background fetches back off when the upstream's latency (EMA) exceeds its baseline by more "
           "than this fraction (0.5: 1.5 times)"),
    # --- logging
    Option("log_level", "info", _choice("debug", "info", "warning", "error", "off"),
           "debug, info, warning, error or off", "log level"),
    Option("log_format", "auto", _choice("auto", "json", "console"), "auto, json or console",
           "log format; auto is console on a terminal and JSON otherwise"),
    Option("shutdown_grace", 20.0, parse_duration, DURATION_FORM,
           "on SIGTERM, how long in-flight responses may take to finish"),
    # --- operations
    Option("log_keys", "plain", _choice("plain", "hash"), "plain or hash",
           "object keys in request logs: as they are, or hashed (sha256: and 16 hex digits of bucket/key)"),
    Option("config_watch_interval", 5.0, parse_duration, DURATION_FORM + " (0 disables)",
           "how often the --config file is checked for changes to reload (SIGHUP reloads at once)"),
    Option("ready_requires_upstream", False, parse_bool, "true or false",
           "readiness fails while the upstream is unreachable (by default the sidecar stays ready and "
           "serves what it has cached)"),
    Option("ready_requires_cache", False, parse_bool, "true or false",
           "readiness fails while the cache disk takes no writes (by default the sidecar stays ready "
           "and passes reads through to the upstream)"),
    Option("upstream_probe_interval", 5.0, parse_duration, DURATION_FORM,
           "readiness probes the upstream at most this often and reuses the answer in between"),
    Option("event_interval", 10.0, parse_duration, DURATION_FORM,
           "how often notable events (eviction bursts, upstream errors, CRC failures) are summarised in the log"),
    # --- file
    Option("config", None, _optional_path, "a YAML file path", "YAML configuration file", yaml=False),
)

_BY_NAME = {o.name: o for o in OPTIONS}


@dataclasses.dataclass(frozen=True)
class Settings:
    listen: tuple[str, int]
    admin_listen: tuple[str, int]
    admin_remote_control: bool
    virtual_host_suffixes: tuple[str, ...]
    max_header_size: int
    max_header_count: int
    fast_path: bool
    max_client_connections: int
    client_request_rate: float
    client_request_burst: int
    auth: str
    auth_keys_dir: Path | None
    auth_region: str | None
    upstream: str | None
    region: str | None
    upstream_addressing: str
    upstream_connect_timeout: float
    upstream_read_timeout: float
    upstream_answer_within: float
    upstream_retries: int
    stale_if_error: float | None
    upstream_max_connections: int
    shared_tier: str | None
    shared_tier_endpoint: str | None
    shared_tier_region: str | None
    shared_tier_profile: str | None
    shared_tier_credentials_file: Path | None
    shared_tier_read_within: float
    shared_tier_connect_timeout: float
    shared_tier_write_queue: int
    shared_tier_hmac_key_file: Path | None
    cache_dir: Path
    cache_size: int
    chunk_size: int
    metadata_ttl: float | None
    readahead_chunks: int
    readahead_max_bytes: int
    ram_chunk_max: int
    ram_cache_size: int
    chunk_verification: str
    scrub_rate: int
    policy: str
    lru_k: int
    lru_k_correlated_period: float
    lru_k_retained_period: float | None
    lru_k_probation: float
    lru_k_admission: str
    lru_k_retention_weight: float
    lru_k_retention_threshold: float
    hotness_half_life: float
    prefetch: bool
    prefetch_interval: float
    prefetch_threshold: float
    prefetch_max_bytes: int
    prefetch_candidates: int
    prefetch_known_keys: int
    model: Path | None
    bandwidth_cap: int
    bandwidth_floor: int
    bandwidth_latency_tolerance: float
    log_level: str
    log_format: str
    shutdown_grace: float
    log_keys: str
    config_watch_interval: float
    ready_requires_upstream: bool
    ready_requires_cache: bool
    upstream_probe_interval: float
    event_interval: float
    config: Path | None
    # sections of the YAML file that other modules interpret (e.g. ``rules``)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def effective_region(self) -> str:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    @property
    def local_upstream_dir(self) -> Path | None:
        if self.upstream and self.upstream.startswith("file://"):
            return Path(self.upstream[len("file://"):].partition("?")[0])
        return None

    @property
    def local_upstream_options(self) -> dict[str, float]:
        if self.upstream and self.upstream.startswith("file://"):
            return local_upstream_options(self.upstream.partition("?")[2])
        return {}

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def as_dict(self, redact: bool = True) -> dict[str, Any]:
        """The effective configuration, printable; secrets redacted."""
        out: dict[str, Any] = {}
        for o in OPTIONS:
            v = getattr(self, o.name)
            if o.secret and redact and v:
                v = REDACTED
            elif isinstance(v, str) and redact:
                v = redact_url(v)
            elif isinstance(v, tuple) and o.name.endswith("listen"):
                v = f"{v[0]}:{v[1]}"
            elif isinstance(v, tuple):
                v = ",".join(v)
            elif isinstance(v, Path):
                v = str(v)
            elif o.name in ("cache_size", "chunk_size", "readahead_max_bytes", "ram_chunk_max", "ram_cache_size",
                            "max_header_size", "bandwidth_cap", "bandwidth_floor", "prefetch_max_bytes",
                            "scrub_rate"):
                v = format_size(v)
            elif o.name in ("metadata_ttl", "lru_k_retained_period", "stale_if_error") and v is None:
                v = "indefinite"
            out[o.name] = v
        for k, v in self.extra.items():
            out[k] = v
        return out


def env_name(name: str) -> str:
    return "SIDECAR_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option. Flags default to None so only given flags override."""
    for o in OPTIONS:
        parser.add_argument(flag_name(o.name), dest=o.name, default=None, metavar=o.name.split("_")[-1].upper(),
                            help=f"{o.help} [env {env_name(o.name)}; default {o.default!r}]")


def _validate(setting: str, raw: Any) -> Any:
    o = _BY_NAME[setting]
    try:
        return o.parse(raw)
    except (ValueError, TypeError):
        raise ConfigError(setting, raw, o.accepted) from None


def _check_consistency(values: dict[str, Any]) -> None:
    if values["auth"] == "sigv4" and values["auth_keys_dir"] is None:
        raise ConfigError("auth_keys_dir", "", "a directory of access keys when auth is sigv4")
    cs = values["chunk_size"]
    if not 64 * 1024 <= cs <= 256 * 1024**2:
        raise ConfigError("chunk_size", format_size(cs), _BY_NAME["chunk_size"].accepted)
    if values["cache_size"] < cs:
        raise ConfigError("cache_size", format_size(values["cache_size"]),
                          f"at least one chunk ({format_size(cs)})")
    if values["upstream_addressing"] == "virtual" and values["upstream"] and values["upstream"].startswith("file://"):
        raise ConfigError("upstream_addressing", "virtual", "auto or path with a file:// upstream")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError("config", str(path), "an existing YAML file") from None
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("config", str(path), f"a readable YAML mapping ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "a YAML mapping of setting: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# Top-level YAML sections that are not scalar options; their owners validate them.
EXTRA_SECTIONS = ("rules",)


def load(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults < YAML < env < flags; raise ConfigError on the first bad value."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    raw: dict[str, Any] = {o.name: o.default for o in OPTIONS}
    source: dict[str, str] = {}

    config_path = flags.get("config") or env.get(env_name("config")) or None
    extra: dict[str, Any] = {}
    if config_path:
        path = _validate("config", config_path)
        data = read_yaml(path)
        for k, v in data.items():
            if k in EXTRA_SECTIONS:
                extra[k] = v
                continue
            if k not in _BY_NAME or not _BY_NAME[k].yaml:
                known = ", ".join(o.name for o in OPTIONS if o.yaml)
                raise ConfigError(f"{k} (in {path})", v, f"one of the known settings: {known}")
            raw[k] = v
        raw["config"] = path
    for o in OPTIONS:
        if env_name(o.name) in env:
            raw[o.name] = env[env_name(o.name)]
            source[o.name] = "env"
    for k, v in flags.items():
        if k in _BY_NAME:
            raw[k] = v
    values = {}
    for o in OPTIONS:
        values[o.name] = _validate(o.name, raw[o.name]) if raw[o.name] is not None else None
    _check_consistency(values)
    return Settings(**values, extra=extra)


def settings_for_tests(**overrides: Any) -> Settings:
    """Settings with defaults and the given overrides, validated like any other source."""
    return load(flags={k: v for k, v in overrides.items()}, env={})


def option_names() -> Sequence[str]:
    return [o.name for o in OPTIONS]
