"""The ``sidecar`` command: one subcommand per job, each registered by the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .config import ConfigError
from .extras import MissingExtra, missing_extra

# Modules that contribute subcommands; each defines ``register(subparsers)`` and sets
# ``func`` on its parser: ``func(args) -> int`` (the exit code).
COMMAND_MODULES = (
    "sidecar.server",
    "sidecar.demo",
    "sidecar.config_cli",
    "sidecar.admin_cli",
    "sidecar.verify_cli",
    "sidecar.sim.cli",
    "sidecar.inject.cli",
    "sidecar.predict.train_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description="Per-pod caching proxy for S3.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"sidecar: {e}", file=sys.stderr)
        return 2
    except MissingExtra as e:
        print(e, file=sys.stderr)
        return 2
    except ImportError as e:  # an optional package imported where no require() said so
        missing = missing_extra(e, f"sidecar {args.command}")
        if missing is None:
            raise
        print(missing, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
