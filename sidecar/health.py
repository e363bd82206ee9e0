"""Readiness checks: the cache disk takes writes, and the upstream answers — each probed at most
once per interval, the answer reused in between, so a kubelet polling /readyz costs nearly nothing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .errors import S3Error, UpstreamUnavailable
from .telemetry import get_logger
from .upstream.base import ForwardRequest, Upstream

log = get_logger("sidecar.health")


@dataclasses.dataclass
class Probe:
    ok: bool
    detail: str = ""
    checked_at: float = 0.0  # monotonic
    latency_s: float = 0.0

    def as_json(self, now: float) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "checked_ago_s": round(now - self.checked_at, 3),
                "latency_ms": round(self.latency_s * 1000, 3)}


class CachedProbe:
    """Runs ``check`` at most once per ``interval`` seconds; callers in between get the last
    answer, and concurrent callers share one run. ``check`` returns (ok, detail)."""

    def __init__(self, check: Callable[[], Awaitable[tuple[bool, str]]], interval: float, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.last: Probe | None = None
        self._running: asyncio.Task | None = None

    async def get(self) -> Probe:
        if self.last is not None and self.clock() - self.last.checked_at < self.interval:
            return self.last
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        try:
            return await asyncio.shield(self._running)
        finally:
            if self._running is not None and self._running.done():
                self._running = None

    async def _run(self) -> Probe:
        t0 = self.clock()
        try:
            ok, detail = await asyncio.wait_for(self._check(), self.timeout)
        except asyncio.TimeoutError:
            ok, detail = False, f"no answer within {self.timeout:g}s"
        except Exception as e:  # noqa: BLE001 - a probe reports, it never raises
            ok, detail = False, f"{type(e).__name__}: {e}"
        self.last = Probe(ok, detail, self.clock(), self.clock() - t0)
        return self.last


class Readiness:
    """What /readyz reports. The upstream only counts when ``requires_upstream``: by default a
    sidecar that cannot reach its upstream stays ready, serving what it has cached (stale if
    need be) and answering the rest with a fast 503 ServiceUnavailable. Likewise the cache disk
    only counts when ``requires_cache``: a sidecar whose disk fails carries on as a pass-through
    proxy, and taking the pod out of service for that would turn a cache fault into an outage."""

    def __init__(self, upstream: Upstream, scratch_dir: Path, *, interval: float, requires_upstream: bool,
                 requires_cache: bool = False, timeout: float = 2.0) -> None:
        self.upstream = upstream
        self.scratch_dir = Path(scratch_dir)
        self.requires_upstream = requires_upstream
        self.requires_cache = requires_cache
        self.upstream_probe = CachedProbe(self._probe_upstream, interval, timeout)
        self.disk_probe = CachedProbe(self._probe_disk, interval, timeout)
        self._was_reachable: bool | None = None

    async def _probe_upstream(self) -> tuple[bool, str]:
        """Any HTTP answer below 500 — even 403 or 405 — means the upstream is there."""
        try:
            resp = await self.upstream.forward(ForwardRequest(
                method="HEAD", bucket=None, key=None, query=(), headers=[], body=None, content_length=0))
        except UpstreamUnavailable as e:
            return self._note(False, f"unreachable: {e.message}")
        except S3Error as e:
            return self._note(e.status < 500, f"answered {e.status} {e.code}")
        try:
            return self._note(resp.status < 500, f"answered {resp.status}")
        finally:
            with contextlib.suppress(Exception):
                await resp.close()

    def _note(self, ok: bool, detail: str) -> tuple[bool, str]:
        if self._was_reachable is not None and ok != self._was_reachable:
            if ok:
                log.info("upstream_reachable", detail=detail)
            else:
                log.warning("upstream_unreachable", detail=detail)
        self._was_reachable = ok
        return ok, detail

    async def _probe_disk(self) -> tuple[bool, str]:
        """Create, write, sync and remove a small file where chunks are written (off the loop: a
        hung disk must not hang the probe)."""
        return await asyncio.get_running_loop().run_in_executor(None, self._disk_roundtrip)

    def _disk_roundtrip(self) -> tuple[bool, str]:
        path = self.scratch_dir / f".probe-{secrets.token_hex(4)}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"sidecar readiness probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(path)
        except OSError as e:
            return False, f"{e.strerror or e} ({path.parent})"
        return True, "writable"

    async def report(self, *, started: bool, index_loaded: bool, draining: bool) -> tuple[bool, dict[str, Any]]:
        upstream, disk = await asyncio.gather(self.upstream_probe.get(), self.disk_probe.get())
        now = time.monotonic()
        checks = {"started": started and not draining, "index_loaded": index_loaded,
                  "cache_dir_writable": disk.ok or not self.requires_cache,
                  "upstream_reachable": upstream.ok or not self.requires_upstream}
        ok = all(checks.values())
        return ok, {"ready": ok, "draining": draining, "checks": checks,
                    "upstream": {**upstream.as_json(now), "required": self.requires_upstream},
                    "cache_dir": {**disk.as_json(now), "required": self.requires_cache}}
