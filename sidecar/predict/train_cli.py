"""``sidecar train``: fit the access predictor on an access log or a generated workload and export it as ONNX."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import DURATION_FORM, ConfigError, parse_duration
from ..extras import require
from .train import MAX_ROWS
from .workload import KINDS


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {DURATION_FORM}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the access predictor and export it as ONNX",
                       description="Build (features at t, read within the horizon) pairs from an access "
                                   "log (the cache dir's access-log directory) or from a generated workload, "
                                   "fit a boosted-tree classifier on the earlier part, export it to ONNX with "
                                   "its feature schema, and print AUC, precision and recall on the later "
                                   "time slice it did not train on.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", metavar="DIR", help="directory of access-*.jsonl files written by the sidecar")
    src.add_argument("--workload", choices=KINDS, help="train on a generated workload of this kind instead")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="where to write the model")
    p.add_argument("--horizon", type=_duration, default=300.0, metavar="DURATION",
                   help="label: the object is read within this long after the sample [5m]")
    p.add_argument("--sample-every", type=_duration, default=30.0, metavar="DURATION",
                   help="time between feature samples, the predictor's period [30s]")
    p.add_argument("--test-fraction", type=float, default=0.25,
                   help="share of the time span, at its end, held out for the metrics [0.25]")
    p.add_argument("--max-rows", type=int, default=MAX_ROWS, metavar="N",
                   help=f"feature rows sampled for fitting and testing (uniformly per sample time) [{MAX_ROWS}]")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload and of the fit [0]")
    p.add_argument("--duration", type=_duration, default=6 * 3600.0, metavar="DURATION",
                   help="length of a generated workload [6h]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require("sidecar train", "sklearn", "skl2onnx")  # before replaying anything
    from . import train as training
    from .accesslog import read_log
    from .workload import generate

    if not 0.0 < args.test_fraction < 1.0:
        raise ConfigError("test-fraction", str(args.test_fraction), "a number between 0 and 1")
    if args.max_rows < 100:
        raise ConfigError("max-rows", str(args.max_rows), "a whole number of at least 100")
    if args.log:
        directory = Path(args.log)
        if not directory.is_dir():
            print(f"sidecar train: {directory} is not a directory", file=sys.stderr)
            return 2
        accesses = list(read_log(directory))
        source = f"access log {directory} ({len(accesses)} reads)"
    else:
        accesses = generate(args.workload, seed=args.seed, duration=args.duration)
        source = (f"sidecar.predict.workload.generate({args.workload!r}, seed={args.seed}, "
                  f"duration={args.duration:g}) ({len(accesses)} reads)")
    if not accesses:
        print(f"sidecar train: no reads in {source}", file=sys.stderr)
        return 2
    print(f"training on {source}", file=sys.stderr)
    try:
        m = training.train(accesses, Path(args.out), horizon=args.horizon, test_fraction=args.test_fraction,
                           progress=not args.no_progress, seed=args.seed, sample_every=args.sample_every,
                           max_rows=args.max_rows,
                           trained_on=source, log=lambda s: print(s, file=sys.stderr))
    except ValueError as e:
        print(f"sidecar train: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    print(f"held-out later slice: {m['test_samples']} samples ({m['positive_rate']:.1%} read within "
          f"{args.horizon:g} s); trained on {m['train_samples']}")
    print(f"AUC {m['auc']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
          f"(at p >= {m['threshold']:g})")
    return 0
