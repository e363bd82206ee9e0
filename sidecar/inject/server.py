"""The webhook's HTTPS endpoint: ``POST /mutate`` for the API server, health and metrics beside it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from . import review
from .spec import InjectSpec
from .tls import ReloadingCertificate

log = logging.getLogger("sidecar.inject")

# The API server sends at most ~3 MiB per object; leave room for the review around it.
MAX_REVIEW_BYTES = 8 * 1024 * 1024


class Metrics:
    """Per-app Prometheus collectors (no global registry: several apps can live in one test)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reviews = Counter("sidecar_inject_reviews", "Admission reviews answered, by outcome",
                               ["outcome"], registry=self.registry)
        self.duration = Histogram(
            "sidecar_inject_review_duration_seconds", "Time to answer one admission review (body read to response)",
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry)


SPEC = web.AppKey("spec", InjectSpec)
METRICS = web.AppKey("metrics", Metrics)
TLS = web.AppKey("tls", ReloadingCertificate)


async def _mutate(request: web.Request) -> web.Response:
    start = time.perf_counter()
    body = await request.read()
    ans = review.answer(body, request.app[SPEC])
    response = web.json_response(ans.document)
    metrics = request.app[METRICS]
    metrics.reviews.labels(ans.outcome).inc()
    metrics.duration.observe(time.perf_counter() - start)
    return response


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    tls = request.app.get(TLS)
    if tls is not None and not tls.reload_if_changed():
        return web.Response(status=503, text="TLS certificate not loadable\n")
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(spec: InjectSpec, *, tls: ReloadingCertificate | None = None,
               tls_reload_interval: float = 10.0) -> web.Application:
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app[SPEC] = spec
    app[METRICS] = Metrics()
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    if tls is not None:
        app[TLS] = tls

        async def watch_certificate(app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(tls.watch(tls_reload_interval))
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(watch_certificate)
    return app


async def start(spec: InjectSpec, host: str, port: int, tls: ReloadingCertificate,
                tls_reload_interval: float = 10.0) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (call ``cleanup()`` to stop) and the bound port."""
    runner = web.AppRunner(create_app(spec, tls=tls, tls_reload_interval=tls_reload_interval),
                           access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls.context)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, bound


async def serve(spec: InjectSpec, host: str, port: int, tls: ReloadingCertificate, *,
                tls_reload_interval: float, drain_delay: float) -> None:
    """Serve until SIGTERM/SIGINT; then keep answering for ``drain_delay`` seconds while the
    API server stops routing to this replica, and stop."""
    runner, bound = await start(spec, host, port, tls, tls_reload_interval)
    log.info("sidecar inject listening on https://%s:%d/mutate", host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping in %.1fs", drain_delay)
        await asyncio.sleep(drain_delay)
    finally:
        await runner.cleanup()
