"""Reference policies beside ours: libCacheSim's (Python bindings) and ``sidecar sim``'s on the
same oracleGeneral trace and cache sizes, in one table of object / byte miss ratios, plus a
miss-ratio-curve plot.

    python bench/ref_policies.py ../shared/traces/OLTP.oracleGeneral.bin \
        --ours lru-2,lru-2-p10 --plot mrc.png

Sizes are shares of the trace's unique bytes, as in the traces' README. libCacheSim replays
whole objects; so does ``sidecar sim`` here (no chunking), so the rows compare like for like.
Needs the ``bench`` extra (``libcachesim``); without it only our rows are printed, and it says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.cli import build_parser  # noqa: E402
from sidecar.sim import cli as sim_cli  # noqa: E402
from sidecar.sim.replay import Replay, Workload  # noqa: E402
from sidecar.sim.trace import read_trace  # noqa: E402

# libCacheSim class name -> label; Belady needs the oracle's next-access field, which
# oracleGeneral traces carry.
REFERENCE = ("LRU", "FIFO", "ARC", "S3FIFO", "LIRS", "WTinyLFU", "TwoQ", "Sieve", "Clock", "SLRU",
             "LHD", "GDSF", "Cacheus", "LeCaR", "Hyperbolic", "LFU", "Belady", "BeladySize")


def reference_rows(trace_path: str, capacities: list[int], names: list[str]) -> list[tuple[str, int, float, float]]:
    import libcachesim as lcs  # noqa: PLC0415

    rows = []
    for name in names:
        cls = getattr(lcs, name, None)
        if cls is None:
            print(f"libcachesim has no {name}; skipped", file=sys.stderr)
            continue
        for capacity in capacities:
            reader = lcs.TraceReader(trace_path, lcs.TraceType.ORACLE_GENERAL_TRACE)
            try:
                obj, byte = cls(capacity).process_trace(reader)
            except Exception as e:  # a policy that cannot run here is reported, not fatal
                print(f"libcachesim {name} at {capacity:,} B failed: {e}", file=sys.stderr)
                break
            rows.append((f"lcs:{name}", capacity, obj, byte))
    return rows


def our_rows(trace_path: str, capacities: list[int], specs: list[str],
             sim_args: list[str] = ()) -> list[tuple[str, int, float, float]]:
    args = build_parser().parse_args(["sim", trace_path, *sim_args])
    trace = read_trace(trace_path)
    workload = Workload.build(trace)
    rows = []
    for spec in specs:
        factory = sim_cli.policy_factory(spec, args)
        for capacity in capacities:
            r = Replay(workload, capacity, factory(), label=spec).run()
            rows.append((spec, capacity, r.object_miss_ratio, r.byte_miss_ratio))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", help="an oracleGeneral trace (.bin)")
    p.add_argument("--sizes", default="1,5,10,20", help="shares of unique bytes, in %% [1,5,10,20]")
    p.add_argument("--ours", default="default,lru-2", help="sidecar sim policies [default,lru-2]")
    p.add_argument("--reference", default="LRU,ARC,S3FIFO,LIRS,WTinyLFU,Belady",
                   help=f"libCacheSim policies, or 'all' ({','.join(REFERENCE)})")
    p.add_argument("--plot", metavar="FILE.png", help="write the byte-miss-ratio curves here")
    a = p.parse_args()
    unique = read_trace(a.trace).unique_bytes()
    shares = [float(s) for s in a.sizes.split(",")]
    capacities = [max(1, int(unique * s / 100)) for s in shares]
    rows = our_rows(a.trace, capacities, [s.strip() for s in a.ours.split(",") if s.strip()])
    names = list(REFERENCE) if a.reference == "all" else [s.strip() for s in a.reference.split(",") if s.strip()]
    try:
        rows += reference_rows(a.trace, capacities, names)
    except ImportError:
        print("libcachesim is not installed (pip install -e '.[bench]'): reference rows left out", file=sys.stderr)
    share_of = dict(zip(capacities, shares))
    policies = list(dict.fromkeys(r[0] for r in rows))
    print(f"{Path(a.trace).name}: {unique:,} unique bytes; object miss / byte miss")
    print(f"{'policy':<16}" + "".join(f"{f'{s:g} %':>18}" for s in shares))
    for pol in policies:
        cells = {c: (o, b) for name, c, o, b in rows if name == pol}
        print(f"{pol:<16}" + "".join(f"{cells[c][0]:>9.4f}/{cells[c][1]:.4f}" if c in cells else f"{'-':>18}"
                                     for c in capacities))
    if a.plot:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for pol in policies:
            pts = sorted((share_of[c], b) for name, c, o, b in rows if name == pol)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=pol,
                    linewidth=2.5 if not pol.startswith("lcs:") else 1.2)
        ax.set_xlabel("cache size, % of unique bytes")
        ax.set_ylabel("byte miss ratio")
        ax.set_title(Path(a.trace).name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"miss-ratio curve written to {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
