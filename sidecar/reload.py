"""Configuration reload without a restart: on SIGHUP, on a change of the ``--config`` file, or on
``POST /reload``.

The settings are rebuilt from the same sources as at start (defaults < YAML < ``SIDECAR_*``
environment < the original flags) and validated whole, cache rules included, before anything
changes: a bad file keeps the running configuration and logs one error. Settings in
``APPLIERS`` take effect at once; a change to any other (listen address, cache dir, chunk
size...) is reported as needing a restart and the running value is kept. Connections are
never touched.

A setting becomes reloadable by an entry in ``APPLIERS``: a function that makes the running
parts follow the new value (``_set_nothing`` when they read it from the settings each time)::

    "readahead_chunks": _set_readahead_chunks,   # sc.reader.readahead_chunks = s.readahead_chunks
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import config, telemetry
from .telemetry import Metrics, get_logger

if TYPE_CHECKING:
    from .bandwidth import TokenBucket
    from .cache.rules import RuleSet
    from .health import Readiness
    from .reader import Reader
    from .s3.face import S3Face
    from .s3.fastpath import FastPath

log = get_logger("sidecar.reload")


class PrefetchSchedule(Protocol):
    def interval_changed(self) -> None: ...


class Reloadable(Protocol):
    """The parts of a running daemon that a reload replaces or adjusts."""

    settings: config.Settings
    metrics: Metrics
    face: "S3Face"
    reader: "Reader"
    bandwidth: "TokenBucket"
    readiness: "Readiness"
    prefetch: PrefetchSchedule
    fast_path: "FastPath | None"

    def apply_rules(self, raw_rules: Any) -> "RuleSet": ...


def _set_readahead_chunks(sc: Reloadable, s: config.Settings) -> None:
    sc.reader.readahead_chunks = s.readahead_chunks


def _set_readahead_max_bytes(sc: Reloadable, s: config.Settings) -> None:
    sc.reader.readahead_max_bytes = s.readahead_max_bytes


def _set_log_level(sc: Reloadable, s: config.Settings) -> None:
    telemetry.set_level(s.log_level)


def _set_log_keys(sc: Reloadable, s: config.Settings) -> None:
    sc.face.access_log.key_mode = s.log_keys
    if sc.fast_path is not None:
        sc.fast_path.forget_plans()  # their request-log fields were prepared under the old mode


def _set_bandwidth(sc: Reloadable, s: config.Settings) -> None:
    sc.bandwidth.configure(s.bandwidth_cap, floor=s.bandwidth_floor or None, tolerance=s.bandwidth_latency_tolerance)


def _set_nothing(sc: Reloadable, s: config.Settings) -> None:
    """Read from ``sc.settings`` where used; replacing the settings object is enough."""


# Setting name -> applier(sidecar, new settings), run after ``sc.settings`` is replaced.
# ``metadata_ttl`` and the ``rules`` section are applied together through the daemon's ``apply_rules``.
APPLIERS: dict[str, Callable[[Reloadable, config.Settings], None]] = {
    "metadata_ttl": _set_nothing,
    "readahead_chunks": _set_readahead_chunks,
    "readahead_max_bytes": _set_readahead_max_bytes,
    "log_level": _set_log_level,
    "log_keys": _set_log_keys,
    "config_watch_interval": _set_nothing,
    "event_interval": _set_nothing,
    "upstream_probe_interval": lambda sc, s: [setattr(p, "interval", s.upstream_probe_interval)
                                              for p in (sc.readiness.upstream_probe, sc.readiness.disk_probe)],
    "ready_requires_upstream": lambda sc, s: setattr(sc.readiness, "requires_upstream", s.ready_requires_upstream),
    "ready_requires_cache": lambda sc, s: setattr(sc.readiness, "requires_cache", s.ready_requires_cache),
    # The prefetch loop reads these from ``sc.settings`` on each run; a new interval also
    # restarts the wait in progress.
    "prefetch_interval": lambda sc, s: sc.prefetch.interval_changed(),
    "prefetch_threshold": _set_nothing,
    "bandwidth_cap": _set_bandwidth,
    "bandwidth_floor": _set_bandwidth,
    "bandwidth_latency_tolerance": _set_bandwidth,
    "prefetch_max_bytes": _set_nothing,
    "prefetch_candidates": _set_nothing,
}
# YAML sections other than scalar settings that can change at run time.
SECTIONS = ("rules",)


@dataclasses.dataclass
class ReloadReport:
    ok: bool
    reason: str
    changed: list[str] = dataclasses.field(default_factory=list)
    restart_required: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Reloader:
    """Rebuilds and applies the settings of one running daemon. ``flags`` are the command
    line's (they keep their precedence over the file); ``env`` defaults to the process's."""

    def __init__(self, sc: Reloadable, flags: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.sc = sc
        self.flags = dict(flags or {})
        if not self.flags and sc.settings.config is not None:
            self.flags["config"] = str(sc.settings.config)
        self.env = env
        self.last: ReloadReport | None = None
        self._stamp = self._file_stamp()

    def reload(self, reason: str) -> ReloadReport:
        sc, m = self.sc, self.sc.metrics
        current = sc.settings
        self._stamp = self._file_stamp()  # this version of the file has been seen
        try:
            new = config.load(self.flags, env=os.environ if self.env is None else self.env)
            changed, restart = [], []
            for name in config.option_names():
                if getattr(new, name) != getattr(current, name):
                    (changed if name in APPLIERS else restart).append(name)
            sections = {k: new.extra.get(k) for k in SECTIONS}
            changed += [k for k in SECTIONS if sections[k] != current.extra.get(k)]
            extra = dict(current.extra)
            for k, v in sections.items():
                if v is None:
                    extra.pop(k, None)
                else:
                    extra[k] = v
            merged = dataclasses.replace(current, **{n: getattr(new, n) for n in changed if n in APPLIERS},
                                         extra=extra)
            rules_change = "rules" in changed or "metadata_ttl" in changed
            if rules_change:
                from .cache.rules import RuleSet  # noqa: PLC0415

                RuleSet.from_config(sections["rules"], metadata_ttl=merged.metadata_ttl)  # validate first
        except config.ConfigError as e:
            m.config_reloads.labels("error").inc()
            report = ReloadReport(False, reason, error=str(e))
            log.error("config_reload_failed", reason=reason, error=str(e), kept="the running configuration")
            self.last = report
            return report
        sc.settings = merged
        if rules_change:
            sc.apply_rules(sections["rules"])
        # The log level changes last: the reload itself is logged under the level it replaces.
        for name in sorted(changed, key=lambda n: n == "log_level"):
            if name in APPLIERS:
                if name == "log_level":
                    self._log_done(reason, changed, restart)
                APPLIERS[name](sc, merged)
        if "log_level" not in changed:
            self._log_done(reason, changed, restart)
        if sc.face.auth is not None:
            sc.face.auth.keys.refresh()  # a rotated client keys directory counts at once, not at its next check
        m.config_reloads.labels("ok").inc()
        m.config_reload_time.set(time.time())
        m.config_restart_required.set(1 if restart else 0)
        self.last = ReloadReport(True, reason, changed, restart)
        return self.last

    @staticmethod
    def _log_done(reason: str, changed: list[str], restart: list[str]) -> None:
        log.info("config_reloaded", reason=reason, changed=changed, restart_required=restart)
        if restart:
            log.warning("config_restart_required", settings=restart,
                        detail="these settings only change on a restart; the running values are kept")

    # --- watching the file -------------------------------------------------------------------

    def _path(self) -> Path | None:
        return self.sc.settings.config

    def _file_stamp(self) -> tuple[int, int, int] | None:
        path = self._path()
        if path is None:
            return None
        try:
            st = os.stat(path)  # follows symlinks: a ConfigMap update swaps the link's target
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    async def watch(self) -> None:
        """Reload when the file changes (checked every ``config_watch_interval`` seconds)."""
        while True:
            interval = self.sc.settings.config_watch_interval
            await asyncio.sleep(interval if interval > 0 else 5.0)
            if interval <= 0 or self._path() is None:
                continue
            if self._file_stamp() != self._stamp:
                self.reload("file-changed")
