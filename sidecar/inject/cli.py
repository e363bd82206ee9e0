"""``sidecar inject serve|show-spec``: run the admission webhook, or print the spec it would use."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys

import yaml

from .. import config
from . import spec as inject_spec


def _load_spec(args: argparse.Namespace) -> inject_spec.InjectSpec:
    try:
        return inject_spec.load(args.config)
    except inject_spec.SpecError as e:
        raise config.ConfigError("inject spec", args.config or "(defaults)", str(e)) from None


def _serve(args: argparse.Namespace) -> int:
    from . import server
    from .tls import ReloadingCertificate

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = _load_spec(args)
    try:
        host, port = config.parse_hostport(args.listen)
    except ValueError:
        raise config.ConfigError("listen", args.listen, "host:port") from None
    try:
        interval = config.parse_duration(args.tls_reload_interval)
        drain = config.parse_duration(args.drain_delay)
    except ValueError as e:
        raise config.ConfigError("duration", str(e), config.DURATION_FORM) from None
    try:
        tls = ReloadingCertificate(args.tls_cert, args.tls_key)
    except ssl.SSLError as e:
        print(f"sidecar inject: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep the webhook usable without it
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(server.serve(spec, host, port, tls, tls_reload_interval=interval, drain_delay=drain))
    return 0


def _show_spec(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(_load_spec(args).to_mapping(), sort_keys=False), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inject", help="Kubernetes admission webhook that adds the sidecar to pods")
    isub = p.add_subparsers(dest="inject_command", metavar="ACTION")

    serve = isub.add_parser("serve", help="serve the mutating webhook over HTTPS")
    serve.add_argument("--config", help="inject spec (YAML, as rendered by the Helm chart); defaults if unset")
    serve.add_argument("--listen", default="0.0.0.0:8443", help="host:port to serve HTTPS on [0.0.0.0:8443]")
    serve.add_argument("--tls-cert", required=True, help="PEM certificate (chain) file; reloaded when it changes")
    serve.add_argument("--tls-key", required=True, help="PEM private key file; reloaded when it changes")
    serve.add_argument("--tls-reload-interval", default="10s", help="how often to check the TLS files [10s]")
    serve.add_argument("--drain-delay", default="2s",
                       help="on SIGTERM, keep answering this long before stopping [2s]")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=_serve)

    show = isub.add_parser("show-spec", help="print the effective inject spec (defaults merged with --config)")
    show.add_argument("--config", help="inject spec YAML file")
    show.set_defaults(func=_show_spec)

    p.set_defaults(func=lambda args: p.print_help() or 2)
