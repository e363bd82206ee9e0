"""``sidecar serve``: the assembled daemon — chunk store, upstream, catalog, reader, S3 face
and admin endpoint — and its lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import math
import os
import signal
import time

from aiohttp import web

from . import admin, config
from .bandwidth import TokenBucket
from .cache.ledger import PrefetchedChunks
from .cache.qos import QoSPolicy
from .cache.rules import Rule, RuleSet
from .cache.scrub import scrub_forever
from .cache.store import ChunkStore
from .cache.tier import SharedTier
from .catalog import Catalog, current_on_disk
from .health import Readiness
from .objects import ObjectMeta
from .operations import Operations
from .reader import Reader
from .reload import Reloader
from .s3 import auth
from .s3.face import S3Face
from .s3.fastpath import FastPath
from .s3.limits import RateLimit, S3Server
from .telemetry import AccessLog, Metrics, flush_logs, get_logger, setup_logging
from .upstream.base import Upstream
from .upstream.metered import MeteredUpstream
from .upstream.resilient import ResilientUpstream
from .warm import WarmJobs

log = get_logger("sidecar.server")


def make_upstream(settings: config.Settings) -> Upstream:
    local = settings.local_upstream_dir
    if local is not None:
        from .upstream.local import LocalUpstream  # noqa: PLC0415

        upstream: Upstream = LocalUpstream(local)
        if settings.local_upstream_options:
            from .upstream.throttle import ThrottledUpstream  # noqa: PLC0415

            upstream = ThrottledUpstream(upstream, **settings.local_upstream_options)
        return upstream
    from .upstream.s3 import S3Upstream  # noqa: PLC0415

    return S3Upstream(settings)


class Sidecar:
    """One running sidecar. ``async with Sidecar(settings) as sc:`` opens everything it needs
    and serves until the block exits; nothing here is global."""

    def __init__(self, settings: config.Settings, upstream: Upstream | None = None, *,
                 flags: dict | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.fast_path: FastPath | None = None
        self.rules = RuleSet.from_settings(settings)
        self.policy = QoSPolicy.from_settings(settings, locate=self._locate, rules=self.rules)
        # Large-chunk verification and sendfile run here; both release the GIL.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="sidecar-io")
        # Upstream bytes: demand spends them, background (prefetch, readahead, warm) waits for them;
        # the rate follows the upstream's latency, errors and throttling (docs/bandwidth.md).
        # A 50 ms burst: background over any second stays within ~5 % of the rate (docs/bandwidth.md).
        self.bandwidth = TokenBucket(settings.bandwidth_cap, floor=settings.bandwidth_floor or None,
                                     tolerance=settings.bandwidth_latency_tolerance, burst=0.05, debt=1.0,
                                     on_decrease=lambda reason: self.metrics.bandwidth_decreases.labels(reason).inc())
        self.metrics.bandwidth_rate.set_function(lambda: _finite(self.bandwidth.rate))
        self.metrics.bandwidth_tokens.set_function(lambda: _finite(self.bandwidth.tokens))
        # Every attempt is metered; the resilience layer above bounds retries and waits.
        self.upstream = ResilientUpstream(MeteredUpstream(upstream or make_upstream(settings), self.metrics,
                                                          observe=self.bandwidth.observe),
                                          answer_within=settings.upstream_answer_within,
                                          retries=settings.upstream_retries)
        # The prefetch ledger: chunks a prefetch brought that no client has read yet; the store
        # enters and retires them, a hit takes them, the prefetch loop asks which objects hold them.
        self.prefetched = PrefetchedChunks(on_wasted=self.metrics.prefetch_wasted_bytes.inc)
        self.store = ChunkStore(
            settings.cache_dir, chunk_size=settings.chunk_size, capacity=settings.cache_size,
            policy=self.policy, ram_chunk_max=settings.ram_chunk_max, ram_cache_size=settings.ram_cache_size,
            verify_every_read=settings.chunk_verification == "every-read",
            on_evict=self._on_evict, prefetched=self.prefetched)
        self.catalog = Catalog(self.upstream, ttl=lambda bucket, key: self.rule_for(bucket, key)[0].metadata_ttl,
                               stale_if_error=settings.stale_if_error,
                               on_obsolete=self.drop_version)
        self.reader = Reader(self.store, self.upstream, self.metrics,
                             readahead_chunks=settings.readahead_chunks,
                             readahead_max_bytes=settings.readahead_max_bytes,
                             on_object_changed=self.catalog.version_changed,
                             gate=self.bandwidth.acquire,
                             spend_demand=self.bandwidth.spend_demand,
                             executor=self.executor, prefetched=self.prefetched)
        # The shared tier (off unless configured): its background writes wait on the same bucket.
        self.tier = SharedTier.from_settings(settings, self.metrics,
                                             gate=lambda nbytes: self.bandwidth.acquire(nbytes))
        self.reader.tier = self.tier
        if self.tier is not None:
            self.catalog.on_resolved = self.reader.resolved  # the verdicts on speculative tier reads
            self.reader.tier_keeps = lambda meta: self.read_policy(meta.bucket, meta.key, meta.size)[0]
        self.face = S3Face(upstream=self.upstream, catalog=self.catalog, reader=self.reader, metrics=self.metrics,
                           virtual_host_suffixes=settings.virtual_host_suffixes,
                           read_policy=self.read_policy,
                           executor=self.executor)
        self.face.access_log = AccessLog(settings.log_keys)
        self.face.auth = auth.from_settings(settings, self.metrics)
        self.readiness = Readiness(self.upstream, self.store.tmp, interval=settings.upstream_probe_interval,
                                   requires_upstream=settings.ready_requires_upstream,
                                   requires_cache=settings.ready_requires_cache)
        self.started_at = time.time()
        self.ready = False
        # Admin actions (``flags``: the command line's, kept over a reload).
        self.ops = Operations(
            settings=lambda: self.settings, rules=lambda: self.rules, started=lambda: self.ready,
            catalog=self.catalog, store=self.store, policy=self.policy, metrics=self.metrics,
            readiness=self.readiness, reloader=Reloader(self, flags),
            warm=WarmJobs(upstream=self.upstream, catalog=self.catalog, reader=self.reader, store=self.store,
                          metrics=self.metrics, may_cache=lambda b, k, size: self.read_policy(b, k, size)[0]))
        # The predictor loop (predict/loop.py): every read feeds its access log and features.
        from .predict.loop import PrefetchLoop  # noqa: PLC0415  (numpy/onnxruntime load only with prefetch)

        self.prefetch = PrefetchLoop(self)
        self.face.on_read = self._on_read
        self.face.on_hits = self._on_hits
        self.face.listing_tap = self.prefetch.listing_tap
        self.catalog.on_learned = self.prefetch.on_learned  # HEADs name keys too
        self.catalog.on_cold_read = self.prefetch.on_cold_read  # a reader's first read, at its start
        self._runners: list[web.BaseRunner] = []
        self._scrub: asyncio.Future | None = None
        self.s3_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    def _locate(self, chunk_key) -> tuple[str, str] | None:
        """The object a chunk belongs to, for the rules and pins the policy applies per object."""
        return self.store.object_of(chunk_key[0])

    def _on_read(self, bucket: str, key: str, meta: ObjectMeta, rng, stats) -> None:
        """The S3 face's hook, after every object read answered (hit or miss)."""
        self.ops.on_read(bucket, key)  # hot objects
        self.prefetch.on_read(bucket, key, meta, rng, stats)

    def _on_hits(self, reads: list[tuple]) -> None:
        """The same hook for reads the lean path answered as planned, recorded together (see
        ``S3Face.on_hits``)."""
        self.ops.on_hits(reads)
        self.prefetch.on_hits(reads)

    RULE_MEMO_MAX = 65536

    @property
    def rules(self) -> RuleSet:
        return self._rules

    @rules.setter
    def rules(self, rules: RuleSet) -> None:
        self._rules = rules
        self._rule_memo: dict[tuple[str, str], tuple[Rule, str]] = {}
        if self.fast_path is not None:
            self.fast_path.forget_plans()  # they hold TTLs, labels and read policies of the old rules

    def rule_for(self, bucket: str, key: str) -> tuple[Rule, str]:
        """The rule an object falls under and its metrics label, remembered per rule set: a hit
        asks for both (freshness and the read policy) and clients read the same keys again."""
        found = self._rule_memo.get((bucket, key))
        if found is None:
            rule = self._rules.match(bucket, key)
            found = (rule, ",".join(f"{k}={v}" for k, v in sorted(rule.labels.items())))
            if len(self._rule_memo) >= self.RULE_MEMO_MAX:
                self._rule_memo.clear()
            self._rule_memo[(bucket, key)] = found
        return found

    def read_policy(self, bucket: str, key: str, size: int) -> tuple[bool, str]:
        """Whether an object may be cached, and the metrics label of its rule."""
        rule, label = self.rule_for(bucket, key)
        return rule.caches(size), label

    def apply_rules(self, raw_rules) -> RuleSet:
        """Swap in a new rule set (a reload): TTLs, classes, pins and limits apply from now on.
        Raises ConfigError and keeps the old rules if ``raw_rules`` is invalid."""
        rules = RuleSet.from_config(raw_rules, metadata_ttl=self.settings.metadata_ttl)
        self.rules = rules
        self.policy.set_rules(rules, time.monotonic())
        return rules

    def _on_evict(self, reason: str, chunks: int, nbytes: int) -> None:
        self.metrics.evictions.labels(reason).inc(chunks)
        self.metrics.evicted_bytes.labels(reason).inc(nbytes)

    def drop_version(self, meta: ObjectMeta) -> None:
        """A version is dead (overwritten or deleted): free its chunks."""
        v = self.store.cached_version(meta)
        if v is not None:
            self.store.drop_version(v.vid)

    async def __aenter__(self) -> "Sidecar":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        # The store rebuilds its index from disk; the catalog says which versions are current.
        versions = await loop.run_in_executor(None, self.store.open, current_on_disk)
        for v in versions:
            self.catalog.restore(v.meta, confirmed=v.stored_at)
        await self.ops.start()
        await self.upstream.start()
        await self.prefetch.start()
        if self.tier is not None:
            await self.tier.start()
        self._scrub = asyncio.ensure_future(scrub_forever(self.store, s.scrub_rate, self.executor))
        s3_server = S3Server(self.face.handle, reject=self.face.reject, max_connections=s.max_client_connections,
                             rate=RateLimit(s.client_request_rate, s.client_request_burst),
                             max_line_size=s.max_header_size, max_field_size=s.max_header_size,
                             max_headers=s.max_header_count, access_log=None,
                             # S3 stores a Content-Encoding: gzip body as sent; never inflate it
                             auto_decompress=False)
        if s.fast_path:
            self.fast_path = s3_server.fast = FastPath(self.face, s3_server, max_headers=s.max_header_count)
        s3_runner = web.ServerRunner(s3_server, handle_signals=False, shutdown_timeout=s.shutdown_grace)
        await s3_runner.setup()
        site = web.TCPSite(s3_runner, s.listen[0], s.listen[1], backlog=1024, reuse_address=True)
        await site.start()
        self._runners.append(s3_runner)
        self.s3_address = _bound(s3_runner)
        admin_runner = web.AppRunner(admin.create_app(self), handle_signals=False, access_log=None)
        await admin_runner.setup()
        await web.TCPSite(admin_runner, s.admin_listen[0], s.admin_listen[1], reuse_address=True).start()
        self._runners.append(admin_runner)
        self.admin_address = _bound(admin_runner)
        self.ready = True
        log.info("started", listen=f"{self.s3_address[0]}:{self.s3_address[1]}",
                 admin=f"{self.admin_address[0]}:{self.admin_address[1]}",
                 upstream=s.upstream or f"aws:{s.effective_region}", cache_dir=str(s.cache_dir),
                 cache_size=s.cache_size, chunk_size=s.chunk_size, restored_chunks=self.store.stats.rebuilt_chunks)

    async def stop(self) -> None:
        """Stop accepting, let responses in flight finish (up to ``shutdown_grace``; the admin
        endpoint answers /readyz 503 meanwhile), then close everything."""
        t0 = time.monotonic()
        self.ready = False
        self.ops.draining = True
        in_flight = self.face.in_flight
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()
        drained = time.monotonic() - t0
        await self.ops.stop()
        await self.prefetch.stop()
        if self._scrub is not None:
            self._scrub.cancel()
            with contextlib.suppress(BaseException):
                await self._scrub
        await self.reader.close(grace=min(5.0, self.settings.shutdown_grace))
        self.store.disk.close_kept()
        if self.tier is not None:
            await self.tier.close(grace=min(2.0, self.settings.shutdown_grace))
        with contextlib.suppress(Exception):
            await self.upstream.close()
        self.executor.shutdown(wait=True)
        log.info("stopped", in_flight_at_stop=in_flight, drain_s=round(drained, 3),
                 total_s=round(time.monotonic() - t0, 3))
        flush_logs()


def _finite(value: float) -> float:
    """A bucket value for a gauge: 0 while background fetches are not limited (inf)."""
    return value if math.isfinite(value) else 0.0


def _bound(runner: web.BaseRunner) -> tuple[str, int]:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            addr = server.sockets[0].getsockname()
            return addr[0], addr[1]
    raise RuntimeError("server is not listening")


async def run(settings: config.Settings, flags: dict | None = None) -> None:
    stop = asyncio.Event()
    received: list[str] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if received:  # a second signal: the operator will not wait for the drain
            log.warning("stopping_now", signal=sig.name, detail="second signal: responses in flight are cut")
            flush_logs()
            os._exit(1)
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    async with Sidecar(settings, flags=flags) as sc:
        # Everything built to start (modules, the upstream client's models, the rules: some
        # 150k objects) lives as long as the daemon. Out of the collector's sight, a full
        # collection walks only what came after: under a stream of hits one took ~80 ms (about
        # one every few seconds), during which no request was answered.
        gc.freeze()
        loop.add_signal_handler(signal.SIGHUP, lambda: sc.ops.reloader.reload("SIGHUP"))
        await stop.wait()
        log.info("stopping", signal=received[0] if received else None, in_flight=sc.face.in_flight,
                 grace_s=sc.settings.shutdown_grace)


def _serve(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in config.option_names() if getattr(args, k) is not None}
    settings = config.load(flags)
    local = settings.local_upstream_dir
    if local is not None and not local.is_dir():  # checked here, not by `config check` on another machine
        raise config.ConfigError("upstream", settings.upstream or "", "file:// and the path of an existing directory")
    setup_logging(settings.log_level, settings.log_format)
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a dependency; run on asyncio's loop without it
        asyncio.run(run(settings, flags))
    else:
        uvloop.run(run(settings, flags))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the caching S3 endpoint")
    config.add_flags(p)
    p.set_defaults(func=_serve)
