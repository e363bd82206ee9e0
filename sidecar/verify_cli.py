"""``sidecar verify``: check a cache directory offline (the checks: ``cache/verify.py``), and the
report printer that ``sidecar admin verify`` shares."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .cache.verify import verify_dir


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def print_report(out: dict[str, Any], as_json: bool, stream=sys.stdout) -> None:
    if as_json:
        print(json.dumps(out, indent=2), file=stream)
        return
    print(f"checked {out['chunks_checked']} chunks ({_human(out['bytes_checked'])}) of {out['objects']} objects "
          f"in {out['seconds']:.2f} s: {out['corrupt']} corrupt, {out['dropped']} dropped, "
          f"{out['repaired']} repaired", file=stream)
    for o in out["objects_with_problems"]:
        for c in o["corrupt"]:
            print(f"  s3://{o['bucket']}/{o['key']} chunk {c['index']}: {c['problem']}", file=stream)
    if out.get("orphan_files"):
        print(f"  {out['orphan_files']} files without valid metadata"
              + (" (removed)" if out.get("repair") else ""), file=stream)


def _run(args: argparse.Namespace) -> int:
    if args.key is not None and args.bucket is None:
        print("sidecar verify: --key needs --bucket", file=sys.stderr)
        return 2
    from . import config  # noqa: PLC0415

    cache_dir = Path(args.cache_dir) if args.cache_dir else config.load({}).cache_dir
    try:
        report = verify_dir(cache_dir, args.bucket, args.key, repair=args.repair)
    except FileNotFoundError as e:
        print(f"sidecar verify: {e}", file=sys.stderr)
        return 2
    out = report.as_json()
    out["repair"] = args.repair
    print_report(out, args.json)
    return 0 if out["ok"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a cache directory's chunks against their checksums",
                       description="Read every chunk under --cache-dir and report the corrupt ones; --repair "
                                   "deletes them (refetched on demand). A running sidecar checks its own cache "
                                   "with `sidecar admin verify`, which also refetches. Exit 1 when corruption "
                                   "was found and not repaired.")
    p.add_argument("--cache-dir", default=None, help="cache directory (default: the cache_dir setting)")
    p.add_argument("--bucket", default=None, help="only this bucket's objects")
    p.add_argument("--key", default=None, help="only this object (needs --bucket)")
    p.add_argument("--repair", action="store_true", help="delete corrupt chunks and orphan files")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)
