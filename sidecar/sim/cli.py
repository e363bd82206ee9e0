"""``sidecar sim TRACE``: miss ratios of eviction policies over a trace, at several cache sizes."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Hashable, Sequence

from ..cache.lruk import AdmitLRUK, LRUKPolicy, ProbationLRUK
from ..cache.policy import EvictionPolicy, LRUPolicy
from ..cache.qos import QoSPolicy
from ..config import ConfigError, format_size, parse_duration, parse_size
from ..extras import require
from .inputs import load_rules, parse_capacity
from .oracle import BeladyPolicy, BeladySizePolicy
from .replay import Replay, ReplayResult, Workload
from .trace import TraceError, read_trace

DEFAULT_POLICIES = "lru,lru-2,lru-3,belady"
DEFAULT_SIZES = "1%,5%,10%,20%"
_LRU_K = re.compile(r"^lru-(\d+|k)(-forget)?(?:-([pa])(\d+)|-(admit)(\d+)?(?:-w(\d+))?(?:-c(\d))?(-f)?(-m)?(-h)?)?$")

PolicyFactory = Callable[[], EvictionPolicy]


def policy_factory(spec: str, args: argparse.Namespace) -> PolicyFactory:
    """``default`` (the daemon's policy and default settings), ``lru``, ``lru-K`` (``lru-k``: K
    from --lru-k), ``lru-K-forget`` (no retained history, as libCacheSim's LRU-K), ``lru-K-pNN``
    (``ProbationLRUK``: a probationary FIFO of NN %% of the bytes in front; ``lru-K-aNN``: its
    share adaptive, starting at NN %%), ``lru-K-admit[MM][-wWW][-cC][-f][-m][-h]`` (``AdmitLRUK``: adaptive
    probation, its share bounded by MM %% [50], moved by returns within WW %% of the resident bytes
    [10], C second chances in main [3]; ``-f``: returning keys ranked fresh, 1.5x history; ``-m``:
    the cold start fills main; ``-h``: a held part, ``lru_k_admission: hold``; the
    daemon's ``lru_k_admission: adaptive`` is ``lru-K-admit``), ``belady``,
    ``belady-size``, ``qos:INNER`` (``QoSPolicy`` over INNER per class, rules from --rules)."""
    spec = spec.strip().lower()
    if spec == "default":
        # the daemon's own policy object with the daemon's default settings (config.py)
        from ..config import load  # noqa: PLC0415

        settings = load({}, {})
        return lambda: QoSPolicy.from_settings(settings, locate=locate_in_trace)
    if spec.startswith("qos:"):
        inner = policy_factory(spec[len("qos:"):], args)
        rules = load_rules(args.rules)
        return lambda: QoSPolicy(rules, inner, locate=locate_in_trace)
    if spec == "lru":
        return LRUPolicy
    if spec == "belady":
        return BeladyPolicy
    if spec == "belady-size":
        return lambda: BeladySizePolicy(seed=args.seed)
    m = _LRU_K.match(spec)
    if m:
        k = args.lru_k if m.group(1) == "k" else int(m.group(1))
        if not 1 <= k <= 8:
            raise ConfigError("policy", spec, "K from 1 to 8")
        history = 0 if m.group(2) else args.history_size
        if m.group(5):
            bound = int(m.group(6)) / 100 if m.group(6) else 0.5
            return lambda: AdmitLRUK(k, correlated_period=args.correlated_period, retained_period=args.retained_period,
                                     history_size=history, max_share=bound,
                                     window=int(m.group(7)) / 100 if m.group(7) else 0.1,
                                     chances=int(m.group(8) or 3), fresh_returns=bool(m.group(9)),
                                     ghost=1.5 if m.group(9) else 1.0, fill_main=bool(m.group(10)),
                                     hold=bool(m.group(11)))
        if m.group(3):
            share, adaptive = int(m.group(4)) / 100, m.group(3) == "a"
            return lambda: ProbationLRUK(k, probation=share, correlated_period=args.correlated_period,
                                         retained_period=args.retained_period, history_size=history,
                                         adaptive=adaptive)
        return lambda: LRUKPolicy(k, correlated_period=args.correlated_period,
                                  retained_period=args.retained_period, history_size=history)
    raise ConfigError("policy", spec, "default, lru, lru-K (e.g. lru-2), lru-K-pNN, lru-K-aNN, lru-K-admit, lru-K-forget, "
                                      "belady, belady-size or qos:INNER")


def locate_in_trace(key: Hashable) -> tuple[str, str] | None:
    """(bucket, key) of a trace item: CSV keys are ``bucket/key``; chunks are (key, index)."""
    if isinstance(key, tuple):
        key = key[0]
    if isinstance(key, str) and "/" in key:
        bucket, _, name = key.partition("/")
        return bucket, name
    return None


def _history_size(text: str) -> int | None:
    t = text.strip().lower()
    if t in ("resident", "auto"):
        return None
    n = int(t)
    if n < 0:
        raise ValueError(text)
    return n


def _optional_duration(text: str) -> float | None:
    return None if text.strip().lower() in ("none", "forever", "indefinite") else parse_duration(text)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require("sidecar sim --plot", "matplotlib")
    if args.prefetch or args.workload:
        if not args.model:  # a model is trained on the first part of the trace
            require("sidecar sim --prefetch", "sklearn", "skl2onnx")
        from .prefetch import run_cli  # noqa: PLC0415  (numpy, onnxruntime and scikit-learn)

        return run_cli(args)
    if args.trace is None:
        print("sidecar sim: a trace file (or --workload KIND) is required", file=sys.stderr)
        return 2
    try:
        trace = read_trace(args.trace, args.format, args.limit)
    except TraceError as e:
        print(f"sidecar sim: {e}", file=sys.stderr)
        return 2
    if not len(trace):
        print(f"sidecar sim: {args.trace}: no requests", file=sys.stderr)
        return 2
    chunk_size = parse_size(args.chunk_size) if args.chunk_size else None
    workload = Workload.build(trace, chunk_size)
    unique = workload.unique_bytes()
    specs = [s for s in args.policies.split(",") if s.strip()]
    factories = [(s.strip().lower(), policy_factory(s, args)) for s in specs]
    if args.tier_pods:  # shared tier sizing (sim/tier.py)
        from .tier import run as run_tier  # noqa: PLC0415

        return run_tier(args, workload, unique, policy_factory(args.tier_policy, args), parse_capacity)
    sizes = [(s.strip(), parse_capacity(s, unique)) for s in args.sizes.split(",") if s.strip()]

    chunks = f", {len(workload.keys):,} chunks of {format_size(chunk_size)}" if chunk_size else ""
    print(f"{trace.name}: {len(trace):,} requests{chunks}, {unique:,} unique bytes")
    results = simulate(workload, factories, [c for _, c in sizes], tick=args.tick, progress=not args.no_progress)
    print_table(results, unique, chunked=chunk_size is not None, labels=dict((c, s) for s, c in sizes))
    if args.plot:
        plot(results, unique, args.plot, title=f"{trace.name}" + (f", {format_size(chunk_size)} chunks" if chunk_size else ""))
        print(f"miss-ratio curve written to {args.plot}")
    return 0


def simulate(workload: Workload, factories: Sequence[tuple[str, PolicyFactory]], capacities: Sequence[int], *,
             tick: float = 30.0, progress: bool = True) -> list[ReplayResult]:
    """Every policy at every capacity, each a fresh replay of the workload."""
    from tqdm import tqdm  # noqa: PLC0415  (only the command needs it)

    results = []
    with tqdm(total=len(workload) * len(factories) * len(capacities), unit="req", unit_scale=True,
              disable=not progress, leave=False, file=sys.stderr) as bar:
        for label, factory in factories:
            for capacity in capacities:
                bar.set_description(f"{label} {format_size(capacity)}")
                results.append(Replay(workload, capacity, factory(), tick=tick, label=label).run(bar.update))
    return results


def print_table(results: Sequence[ReplayResult], unique: int, *, chunked: bool = False,
                labels: dict[int, str] | None = None, out=None) -> None:
    out = out or sys.stdout
    labels = labels or {}
    head = f"{'policy':<16} {'cache size':>16} {'object miss':>11} {'byte miss':>9}"
    if chunked:
        head += f" {'chunk miss':>10}"
    print(head + f" {'req/s':>9}", file=out)
    for r in results:
        size = labels.get(r.capacity) or format_size(r.capacity)
        if not size.endswith("%"):
            size += f" ({100 * r.capacity / unique:.1f}%)" if unique else ""
        line = f"{r.policy:<16} {size:>16} {r.object_miss_ratio:11.4f} {r.byte_miss_ratio:9.4f}"
        if chunked:
            line += f" {r.item_miss_ratio:10.4f}"
        rate = r.requests / r.seconds if r.seconds else 0.0
        print(line + f" {rate:9,.0f}", file=out)


def plot(results: Sequence[ReplayResult], unique: int, path: str, title: str = "") -> None:
    import matplotlib  # noqa: PLC0415  (in the train extra; only --plot needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    by_policy: dict[str, list[ReplayResult]] = {}
    for r in results:
        by_policy.setdefault(r.policy, []).append(r)
    for policy, runs in by_policy.items():
        runs = sorted(runs, key=lambda r: r.capacity)
        x = [100 * r.capacity / unique for r in runs]
        axes[0].plot(x, [r.object_miss_ratio for r in runs], marker="o", label=policy)
        axes[1].plot(x, [r.byte_miss_ratio for r in runs], marker="o", label=policy)
    for ax, what in zip(axes, ("object miss ratio", "byte miss ratio")):
        ax.set_xlabel("cache size, % of unique bytes")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="replay a trace through the eviction policies and print miss ratios",
                       description="Replay a trace (libCacheSim oracleGeneral or CSV) through the cache's "
                                   "own CacheSpace and policies on simulated time.")
    p.add_argument("trace", nargs="?",
                   help="trace file: oracleGeneral (.bin) or CSV (time,key,size[,offset,length])")
    p.add_argument("--format", choices=("auto", "oracle", "csv"), default="auto", help="trace format")
    p.add_argument("--sizes", default=DEFAULT_SIZES,
                   help="cache sizes, comma-separated: bytes (4GiB) or %% of unique bytes "
                        f"[{DEFAULT_SIZES.replace('%', '%%')}]")
    p.add_argument("--policies", default=DEFAULT_POLICIES,
                   help="comma-separated: default (the daemon's policy and default settings), lru, lru-K "
                        "(lru-k: K from --lru-k), lru-K-forget (no retained history), lru-K-pNN (a "
                        "probationary FIFO of NN%% of the bytes in front), lru-K-admit (adaptive probation and "
                        "second chances: lru_k_admission: adaptive; lru-K-admit-h adds the held part: "
                        "lru_k_admission: hold, the daemon's default), belady, belady-size, qos:INNER (e.g. qos:lru-2; QoS classes from "
                        f"--rules over INNER) [{DEFAULT_POLICIES}]")
    p.add_argument("--rules", metavar="FILE.yaml",
                   help="rules for qos:* policies (a YAML file with a rules: section); CSV keys are bucket/key")
    p.add_argument("--lru-k", type=int, default=2, help="K for the policy named lru-k [2]")
    p.add_argument("--correlated-period", type=parse_duration, default=0.0, metavar="SECONDS",
                   help="LRU-K: references closer than this count as one [0]")
    p.add_argument("--retained-period", type=_optional_duration, default=3600.0, metavar="SECONDS",
                   help="LRU-K: how long an evicted key's history is kept, or 'forever' [3600]")
    p.add_argument("--history-size", type=_history_size, default=None, metavar="N",
                   help="LRU-K: at most N evicted keys keep history; 'resident' (default) is as many "
                        "as there are cached entries")
    p.add_argument("--chunk-size", default=None, metavar="SIZE",
                   help="split each request into chunks of this size, as the daemon caches them")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="replay only the first N requests")
    p.add_argument("--tick", type=parse_duration, default=30.0, metavar="SECONDS",
                   help="period of the replay's ticks (the predictor's period) [30]")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling policies (belady-size) and of --workload")
    p.add_argument("--plot", metavar="FILE.png", help="draw the miss-ratio curves to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("prefetch", "replay with the access predictor in the loop (--prefetch)")
    g.add_argument("--prefetch", action="store_true",
                   help="train on the first part of the trace, replay the rest without and with the "
                        "predictor's prefetch (every --tick seconds) at each --sizes, and compare")
    g.add_argument("--workload", choices=("periodic", "zipf", "mixed"), default=None,
                   help="use the workload generator's reads (seeded by --seed) instead of a trace file")
    g.add_argument("--duration", type=parse_duration, default=None, metavar="SECONDS",
                   help="length of the generated workload [6h]")
    g.add_argument("--train-fraction", type=float, default=0.5, metavar="F",
                   help="share of the trace's time span the model is trained on [0.5]")
    g.add_argument("--model", default=None, metavar="FILE.onnx",
                   help="score with this model instead of training one on the first part")
    g.add_argument("--threshold", type=float, default=0.7, help="prefetch threshold [0.7]")
    g.add_argument("--retention-weight", type=float, default=0.0, metavar="W",
                   help="predictor-weighted retention in the run with prefetch, as the daemon's "
                        "lru_k_retention_weight (e.g. 0.3: +30 %%); 0 turns it off [0]")
    g.add_argument("--retention-threshold", type=float, default=0.85, metavar="P",
                   help="probability from which an object's chunks get the weight [0.85]")
    from .tier import add_arguments as add_tier_arguments  # noqa: PLC0415

    add_tier_arguments(p)
    p.set_defaults(func=run)
