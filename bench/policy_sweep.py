"""Sweep eviction-policy candidates over several traces and sizes in one byte-miss table, beside
libCacheSim's references, marking where a candidate is not at or below min(LRU, ARC, S3-FIFO).

    nice -n 10 python bench/policy_sweep.py --ours default,lru-2,lru-2-admit \
        [--traces ../shared/traces/*.bin] [--workloads periodic,zipf,mixed] [--sizes 1,5,10,20]

Our rows replay whole objects through ``sidecar sim``'s policies (bench/ref_policies.py does
the same); the reference rows come from libCacheSim's Python bindings and are cached in
``$XDG_CACHE_HOME/sidecar-policy-sweep.json`` (keyed by trace, size and policy), because they
do not change between candidates. A cell prints the byte miss ratio, then ``*`` where it is
above the best of LRU, ARC and S3-FIFO at that size, and ``!`` where it is the best row.

``--workloads``: the workload generator's reads (``sidecar sim --workload KIND``, seed 0), cut
into the daemon's default chunks, each chunk written as one object of an oracleGeneral file
(times in whole seconds, as the format has them) beside the reference cache, so that our
policies and libCacheSim's replay the same items.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ref_policies import our_rows, reference_rows  # noqa: E402

from sidecar.sim.trace import read_trace, write_oracle_general  # noqa: E402

GOAL = ("lcs:LRU", "lcs:ARC", "lcs:S3FIFO")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sidecar-policy-sweep.json"


def cached_references(trace: str, capacities: list[int], names: list[str]) -> list[tuple[str, int, float, float]]:
    try:
        cache = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    rows, missing = [], []
    stamp = f"{Path(trace).resolve()}:{os.stat(trace).st_size}"
    for name in names:
        for c in capacities:
            hit = cache.get(f"{stamp}:{name}:{c}")
            if hit is None:
                missing.append((name, c))
            else:
                rows.append((f"lcs:{name}", c, *hit))
    for name in dict.fromkeys(n for n, _ in missing):
        for label, c, obj, byte in reference_rows(trace, [c for n, c in missing if n == name], [name]):
            cache[f"{stamp}:{name}:{c}"] = [obj, byte]
            rows.append((label, c, obj, byte))
    if missing:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache))
    return rows


def workload_trace(kind: str, seed: int = 0) -> str:
    """The generated workload ``kind`` as an oracleGeneral file of chunks (built once)."""
    from sidecar.sim.prefetch import DEFAULT_CHUNK, accesses_to_trace, workload_accesses  # noqa: PLC0415
    from sidecar.sim.replay import Workload  # noqa: PLC0415

    path = CACHE.with_name(f"sidecar-workload-{kind}-seed{seed}.oracleGeneral.bin")
    if not path.exists():
        w = Workload.build(accesses_to_trace(workload_accesses(kind, seed=seed), kind), DEFAULT_CHUNK)
        ids: dict = {}
        first = w.first or list(range(len(w.keys) + 1))
        times = [int(w.trace.times[r]) for r in range(len(w.trace)) for _ in range(first[r + 1] - first[r])]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_oracle_general(path, times, [ids.setdefault(k, len(ids) + 1) for k in w.keys], w.sizes)
    return str(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--traces", nargs="+", default=sorted(glob.glob(str(here.parent / "shared/traces/*.bin"))
                                                          or glob.glob(str(here.parents[1] / "shared/traces/*.bin"))))
    p.add_argument("--workloads", default="", help="generated workloads too: periodic, zipf, mixed (comma-separated)")
    p.add_argument("--sizes", default="1,5,10,20", help="shares of unique bytes, in %% [1,5,10,20]")
    p.add_argument("--ours", default="default,lru-2", help="sidecar sim policies [default,lru-2]")
    p.add_argument("--reference", default="LRU,ARC,S3FIFO,LIRS,WTinyLFU,Belady", help="libCacheSim policies")
    p.add_argument("--sim-args", default="", help="options of sidecar sim for our rows, e.g. '--correlated-period 1'")
    a = p.parse_args()
    shares = [float(s) for s in a.sizes.split(",")]
    specs = [s.strip() for s in a.ours.split(",") if s.strip()]
    names = [s.strip() for s in a.reference.split(",") if s.strip()]
    traces = list(a.traces) + [workload_trace(k.strip()) for k in a.workloads.split(",") if k.strip()]
    for trace in traces:
        unique = read_trace(trace).unique_bytes()
        capacities = [max(1, int(unique * s / 100)) for s in shares]
        started = time.perf_counter()
        rows = our_rows(trace, capacities, specs, a.sim_args.split())
        took = time.perf_counter() - started
        try:
            rows += cached_references(trace, capacities, names)
        except ImportError:
            print("libcachesim is not installed (pip install -e '.[bench]'): reference rows left out", file=sys.stderr)
        byte = {(r[0], r[1]): r[3] for r in rows}
        goal = {c: min((byte[g, c] for g in GOAL if (g, c) in byte), default=None) for c in capacities}
        best = {c: min(v for (n, cc), v in byte.items() if cc == c and n != "lcs:Belady") for c in capacities}
        print(f"\n{Path(trace).name}: byte miss ratio ({took:.0f} s for our rows); * above min(LRU, ARC, S3-FIFO)")
        print(f"{'policy':<22}" + "".join(f"{f'{s:g} %':>10}" for s in shares))
        for pol in dict.fromkeys(r[0] for r in rows):
            cells = []
            for c in capacities:
                v = byte.get((pol, c))
                if v is None:
                    cells.append(f"{'-':>10}")
                    continue
                mark = "*" if goal[c] is not None and v > goal[c] + 5e-5 and not pol.startswith("lcs:") else \
                       "!" if v <= best[c] and pol != "lcs:Belady" else " "
                cells.append(f"{v:>9.4f}{mark}")
            print(f"{pol:<22}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
