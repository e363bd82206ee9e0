"""What an operator does to a running sidecar, in one place: readiness, purge, pins, warm jobs,
the hottest objects, configuration reload, and notable events summarised in the log.

``Operations`` is given the parts it acts on (catalog, store, policy, readiness, warm jobs,
reloader) and is started and stopped with the daemon; the admin API (``admin.py``) and the
signal handlers call into it. Pins are the policy's own (``QoSPolicy.pin``:
pinned chunks sit outside every eviction queue); here they are also kept in
``<cache_dir>/pins.json`` so they outlive a restart, as the cached chunks do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cache.hotness import HotnessTable, half_life_to_lambda
from .cache.qos import QoSPolicy
from .cache.rules import RuleSet
from .cache.store import ChunkStore
from .catalog import Catalog
from .config import Settings
from .health import Readiness
from .reload import Reloader
from .telemetry import Metrics, get_logger
from .warm import WarmJobs

log = get_logger("sidecar.ops")

PINS_FILE = "pins.json"
HOT_OBJECTS_TRACKED = 20_000  # bound on per-object read counters; when full the coldest half goes (~15 ms)
BURST_FRACTION = 0.05  # evicting this share of the cache within one event interval is a burst


class Operations:
    """``rules`` and ``settings`` are asked for each time: a reload replaces both. ``started``:
    whether the daemon has finished starting (its listeners are up)."""

    def __init__(self, *, settings: Callable[[], Settings], rules: Callable[[], RuleSet],
                 started: Callable[[], bool], catalog: Catalog, store: ChunkStore, policy: QoSPolicy,
                 metrics: Metrics, readiness: Readiness, warm: WarmJobs, reloader: Reloader) -> None:
        self.settings = settings
        self.rules = rules
        self.started = started
        self.catalog = catalog
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.readiness = readiness
        self.warm = warm
        self.reloader = reloader
        s = settings()
        # Client reads per object, decayed; correlated_period 0: every read counts.
        self.hotness = HotnessTable(half_life_to_lambda(s.hotness_half_life), correlated_period=0.0,
                                    limit=HOT_OBJECTS_TRACKED)
        self.index_loaded = False
        self.draining = False
        self._tasks: list[asyncio.Task] = []
        self._pins_path = Path(s.cache_dir) / PINS_FILE

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """After the store is open: restore runtime pins, start the watchers."""
        self.index_loaded = True
        for bucket, prefix in self._load_pins():
            self.policy.pin(bucket, prefix, time.monotonic())
        events = EventMonitor(self.store, self.policy, self.metrics, lambda: self.settings().event_interval)
        self._tasks = [asyncio.ensure_future(self.reloader.watch()), asyncio.ensure_future(events.run())]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        await self.warm.close()

    # --- readiness ---------------------------------------------------------------------------

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        return await self.readiness.report(started=self.started(), index_loaded=self.index_loaded,
                                           draining=self.draining)

    # --- purge -------------------------------------------------------------------------------

    def purge(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Forget every cached version under bucket/prefix: catalog entries, chunks and files."""
        catalog, store = self.catalog, self.store
        if prefix:
            entries = 0
            for b, k in [k for k in list(catalog.entries) if k[0] == bucket and k[1].startswith(prefix)]:
                if catalog.invalidate(b, k) is not None:
                    entries += 1
        else:
            entries = len(catalog.invalidate_bucket(bucket))
        objects = chunks = nbytes = 0
        for v in store.iter_versions():
            if v.meta.bucket == bucket and v.meta.key.startswith(prefix):
                objects += 1
                chunks += len(v.chunks)
                nbytes += v.cached_bytes
                store.drop_version(v.vid)
        out = {"catalog_entries": entries, "objects": objects, "chunks": chunks, "bytes": nbytes}
        log.info("purged", bucket=bucket, prefix=prefix, **out)
        return out

    # --- pins --------------------------------------------------------------------------------

    def pin(self, bucket: str, prefix: str = "") -> dict[str, Any]:
        n = self.policy.pin(bucket, prefix, time.monotonic())
        self._save_pins()
        log.info("pinned", bucket=bucket, prefix=prefix, entries=n)
        return {"entries_pinned": n, **self.pins()}

    def unpin(self, bucket: str, prefix: str = "") -> dict[str, Any]:
        n = self.policy.unpin(bucket, prefix, time.monotonic())
        self._save_pins()
        log.info("unpinned", bucket=bucket, prefix=prefix, entries=n)
        return {"entries_unpinned": n, **self.pins()}

    def pins(self) -> dict[str, Any]:
        policy = self.policy
        from_rules = [{"bucket": r.bucket, "prefix": r.prefix} for r in self.rules() if r.pin]
        return {"pins": [{"bucket": b, "prefix": p} for b, p in policy.pins()], "rule_pins": from_rules,
                "pinned_bytes": policy.pinned_bytes}

    def _load_pins(self) -> list[tuple[str, str]]:
        try:
            data = json.loads(self._pins_path.read_text())
            return [(str(p["bucket"]), str(p.get("prefix", ""))) for p in data.get("pins", [])]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("pins_unreadable", path=str(self._pins_path), error=repr(e))
            return []

    def _save_pins(self) -> None:
        body = json.dumps({"pins": self.pins()["pins"]}, indent=1).encode()
        tmp = self._pins_path.with_name(f".{PINS_FILE}.{secrets.token_hex(4)}")
        try:
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._pins_path)
        except OSError as e:
            log.error("pins_not_saved", path=str(self._pins_path), error=repr(e))
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    # --- hot objects -------------------------------------------------------------------------

    def on_read(self, bucket: str, key: str) -> None:
        """After every object read answered (hit or miss)."""
        self.hotness.touch((bucket, key), time.monotonic())

    def on_hits(self, reads: list[tuple]) -> None:
        """After reads answered together (``S3Face.on_hits``): one touch per run of reads of
        the same object, weighted by how many it holds."""
        now = time.monotonic()
        touch = self.hotness.touch
        run, n = None, 0
        for r in reads:
            obj = (r[0], r[1])
            if obj != run:
                if n:
                    touch(run, now, n)
                run, n = obj, 0
            n += 1
        if n:
            touch(run, now, n)

    def hot(self, n: int = 20) -> list[dict[str, Any]]:
        """The ``n`` objects clients read most, by decayed hotness (half-life
        ``hotness_half_life``): H = sum of exp(-lambda * age) over the object's reads."""
        out = []
        for obj, heat in self.hotness.hottest(n, time.monotonic()):
            bucket, key = obj  # type: ignore[misc]
            entry = self.catalog.peek(bucket, key)
            cached = size = None
            if entry is not None:
                size = entry.meta.size
                v = self.store.cached_version(entry.meta)
                cached = v.cached_bytes if v is not None else 0
            out.append({"bucket": bucket, "key": key, "hotness": round(heat, 4), "size": size,
                        "cached_bytes": cached})
        return out


class EventMonitor:
    """Every ``event_interval`` seconds, one log line per kind of notable change since the last
    look: eviction bursts, upstream errors, CRC failures, cache disk errors."""

    def __init__(self, store: ChunkStore, policy: QoSPolicy, metrics: Metrics, interval: Callable[[], float]) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self._interval = interval
        self._last = self._sample()

    @property
    def interval(self) -> float:
        return self._interval()

    def _sample(self) -> dict[str, Any]:
        st = self.store.stats
        errors: dict[str, float] = {}
        for metric in self.metrics.upstream_errors.collect():
            for s in metric.samples:
                if s.name.endswith("_total"):
                    errors[s.labels["kind"]] = s.value
        return {"evictions": st.evictions, "evicted_bytes": st.evicted_bytes, "crc": st.crc_failures,
                "disk": st.write_errors + st.read_errors, "upstream": errors}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def check(self) -> None:
        now, was = self._sample(), self._last
        self._last = now
        store = self.store
        chunks, nbytes = now["evictions"] - was["evictions"], now["evicted_bytes"] - was["evicted_bytes"]
        if nbytes > 0:
            burst = nbytes >= BURST_FRACTION * store.capacity
            (log.info if burst else log.debug)(
                "eviction_burst" if burst else "evictions", chunks=chunks, bytes=nbytes, window_s=self.interval,
                used_bytes=store.used_bytes, capacity_bytes=store.capacity,
                pinned_bytes=self.policy.pinned_bytes)
        upstream = {k: int(v - was["upstream"].get(k, 0.0)) for k, v in now["upstream"].items()
                    if v > was["upstream"].get(k, 0.0)}
        if upstream:
            log.warning("upstream_errors", by_kind=upstream, window_s=self.interval)
        if now["crc"] > was["crc"]:
            log.warning("crc_failures", chunks=now["crc"] - was["crc"], window_s=self.interval,
                        detail="cached chunks failed verification and were dropped (refetched on demand)")
        if now["disk"] > was["disk"]:
            log.warning("cache_disk_errors", count=now["disk"] - was["disk"], window_s=self.interval)
