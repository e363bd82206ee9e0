"""``sidecar serve``: the S3 endpoint and the admin endpoint in one process."""

from __future__ import annotations

import argparse

from . import config


def _serve(args: argparse.Namespace) -> int:
    settings = config.load({k: getattr(args, k) for k in config.option_names()})
    raise SystemExit(f"serve not implemented yet ({settings.listen})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the caching S3 endpoint")
    config.add_flags(p)
    p.set_defaults(func=_serve)
