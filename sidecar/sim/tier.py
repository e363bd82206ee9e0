"""Shared tier sizing: a trace replayed as N pods, each with its own local cache, sharing one tier
of a given size; upstream bytes with and without the tier.

Every pod runs the cache's own ``CacheSpace`` and eviction policy (as the daemon does). A pod's
chunk read goes local → tier → upstream: a local miss that the tier holds costs no upstream
bytes; a chunk fetched from the upstream is written to the tier (the daemon writes it back in the
background). The tier is modelled as what a lifecycle rule makes of a bucket that nobody deletes
from: first in, first out by write time (``FIFOPolicy``), up to its size.

How pods share the trace (``--tier-split``):

* ``replicate``: every pod replays the whole trace, pod ``i`` starting ``i × stagger`` later (the
  pods of a training job reading one dataset, started apart); ``--tier-stagger`` as a share of
  the trace's time span;
* ``shard``: request ``r`` goes to pod ``r mod N`` (pods splitting one workload between them).
"""

from __future__ import annotations

import argparse
import heapq
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable

from ..cache.policy import EvictionPolicy
from ..cache.space import CacheSpace, NoRoom
from .replay import Workload


class FIFOPolicy:
    """First in, first out: reads do not extend an entry's life (an expiry rule by age)."""

    name = "fifo"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def admit(self, key: Hashable, size: int, now: float) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: Hashable, now: float) -> None:
        pass

    def victim(self) -> Hashable | None:
        return next(iter(self._order), None)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order


def _insert(space: CacheSpace, key: Hashable, size: int, now: float) -> None:
    if size <= space.capacity:
        try:
            space.insert(key, size, now)
        except NoRoom:
            pass


def replay_pods(workload: Workload, pods: int, local_capacity: int, tier_capacity: int,
                policy: Callable[[], EvictionPolicy], *, split: str = "replicate",
                stagger: float = 0.05) -> tuple[int, int]:
    """(upstream bytes, tier-hit bytes) of ``pods`` pods; ``tier_capacity`` 0: no tier."""
    times, keys, sizes, first = workload.trace.times, workload.keys, workload.sizes, workload.first
    n = len(times)
    locals_ = [CacheSpace(local_capacity, policy()) for _ in range(pods)]
    tier = CacheSpace(tier_capacity, FIFOPolicy()) if tier_capacity > 0 else None
    span = (times[-1] - times[0]) if n else 0.0
    offset = stagger * span

    def events():
        if split == "shard":
            for r in range(n):
                yield times[r], r % pods, r
            return
        # every pod replays the whole trace, shifted: merge the N shifted copies by time
        def shifted(p: int):
            return ((times[r] + p * offset, p, r) for r in range(n))

        streams = [shifted(p) for p in range(pods)]
        yield from heapq.merge(*streams)

    upstream = tier_hits = 0
    for now, p, r in events():
        local = locals_[p]
        for j in ((r,) if first is None else range(first[r], first[r + 1])):
            key = keys[j]
            if local.hit(key, now):
                continue
            size = sizes[j]
            if tier is not None and tier.hit(key, now):
                tier_hits += size
            else:
                upstream += size
                if tier is not None:
                    _insert(tier, key, size, now)
            _insert(local, key, size, now)
    return upstream, tier_hits


def run(args: argparse.Namespace, workload: Workload, unique: int, policy: Callable[[], EvictionPolicy],
        parse_capacity: Callable[[str, int], int], out=None) -> int:
    """The sizing table: for each pod count, upstream bytes without a tier and with each size."""
    out = out or sys.stdout
    pod_counts = [int(x) for x in str(args.tier_pods).split(",") if x.strip()]
    local = parse_capacity(args.tier_local_size, unique)
    tiers = [(s.strip(), parse_capacity(s, unique)) for s in args.tier_sizes.split(",") if s.strip()]
    print(f"pods share a tier ({args.tier_split}"
          + (f", stagger {args.tier_stagger:g} of the trace's span" if args.tier_split == "replicate" else "")
          + f"); local cache {args.tier_local_size} = {local / 2**20:.0f} MiB per pod, policy {args.tier_policy}; "
          f"upstream bytes as a multiple of the unique bytes ({unique / 2**30:.2f} GiB)", file=out)
    head = f"{'pods':>4} {'no tier':>9}" + "".join(f" {'tier ' + label:>12}" for label, _ in tiers)
    print(head, file=out)
    for pods in pod_counts:
        base, _ = replay_pods(workload, pods, local, 0, policy, split=args.tier_split, stagger=args.tier_stagger)
        cells = [f"{base / unique:9.2f}"]
        for _, cap in tiers:
            up, _ = replay_pods(workload, pods, local, cap, policy, split=args.tier_split, stagger=args.tier_stagger)
            cells.append(f"{up / unique:12.2f}")
        print(f"{pods:>4} " + " ".join(cells), file=out, flush=True)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("shared tier sizing", "replay as N pods sharing a tier (--tier-pods)")
    g.add_argument("--tier-pods", default=None, metavar="N,N,...",
                   help="replay the trace as these numbers of pods sharing a tier, and print upstream bytes "
                        "without it and with each --tier-sizes")
    g.add_argument("--tier-sizes", default="10%,50%,100%",
                   help="tier sizes: bytes or %% of the unique bytes [10%%,50%%,100%%]")
    g.add_argument("--tier-local-size", default="10%", help="each pod's local cache: bytes or %% [10%%]")
    g.add_argument("--tier-policy", default="lru-2", help="each pod's eviction policy (as --policies) [lru-2]")
    g.add_argument("--tier-split", choices=("replicate", "shard"), default="replicate",
                   help="every pod replays the whole trace (staggered), or request r goes to pod r mod N")
    g.add_argument("--tier-stagger", type=float, default=0.05, metavar="F",
                   help="replicate: pod i starts i*F of the trace's time span later [0.05]")

