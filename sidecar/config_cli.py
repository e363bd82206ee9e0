"""``sidecar config show|check``: the effective configuration, and validation of a file."""

from __future__ import annotations

import argparse
import json

from . import config


def _show(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in config.option_names() if getattr(args, k, None) is not None}
    settings = config.load(flags)
    print(json.dumps(settings.as_dict(redact=True), indent=2, default=str))
    return 0


def _check(args: argparse.Namespace) -> int:
    from .cache.rules import RuleSet  # noqa: PLC0415

    settings = config.load({"config": args.file}, env={})
    RuleSet.from_settings(settings)
    print(f"{args.file}: ok")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the effective configuration or check a file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="print the effective configuration (secrets redacted)")
    config.add_flags(show)
    show.set_defaults(func=_show)
    check = csub.add_parser("check", help="validate a YAML configuration file")
    check.add_argument("file")
    check.set_defaults(func=_check)
