"""Eviction policy figures: touches per second, cache operations per second, index bytes per entry.

    .venv/bin/python bench/policy_bench.py [--entries 1000000] [--ops 1000000] [--policy lru-k:2 ...]

- touch: ``policy.touch`` on resident keys drawn from a skewed (Zipf-like) distribution.
- cache op: ``CacheSpace.hit`` or, on a miss, ``CacheSpace.insert`` with evictions, keys drawn
  from a key space twice the cache's entries (about half the operations evict).
- index bytes/entry: memory allocated by the policy (tracemalloc) for N resident entries,
  divided by N, right after admitting them and again after N more touches (for LRU-K this
  includes the heap's stale values); keys are built beforehand and not counted (the cache owns
  them). For LRU-K the retained history of evicted keys is measured separately, per key.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.cache.lruk import AdmitLRUK, LRUKPolicy, ProbationLRUK  # noqa: E402
from sidecar.cache.policy import LRUPolicy  # noqa: E402
from sidecar.cache.space import CacheSpace  # noqa: E402


def build(spec: str):
    if spec == "lru":
        return LRUPolicy()
    name, _, rest = spec.partition(":")
    k, _, share = rest.partition(":")
    if name == "lru-k":
        return LRUKPolicy(k=int(k or 2))
    if name in ("lru-k-admit", "lru-k-hold"):
        return AdmitLRUK(k=int(k or 2), hold=name == "lru-k-hold")
    if name in ("lru-k-probation", "lru-k-adaptive"):
        return ProbationLRUK(k=int(k or 2), probation=float(share or 0.1), adaptive=name == "lru-k-adaptive")
    raise SystemExit(f"unknown policy {spec!r} (lru, lru-k:K, lru-k-admit:K, lru-k-hold:K, lru-k-probation:K:SHARE, "
                     "lru-k-adaptive:K:SHARE)")


def chunk_keys(n: int) -> list[tuple[str, int]]:
    """Keys shaped like the daemon's: (version id, chunk index)."""
    return [(f"{i // 16:040x}", i % 16) for i in range(n)]


def skewed(n: int, count: int, rng: random.Random) -> list[int]:
    # Zipf-like popularity (exponent 0.8, inverse-CDF of its continuous form), hot keys scattered.
    return [int(n * rng.random() ** 5) * 7919 % n for _ in range(count)]


def bench_touch(spec: str, keys: list, ops: int, rng: random.Random) -> float:
    policy = build(spec)
    for i, key in enumerate(keys):
        policy.admit(key, 4 << 20, i * 1e-3)
    if isinstance(policy, (ProbationLRUK, AdmitLRUK)):
        # time the steady state: most entries past probation, in the LRU-K queue
        for key in keys:
            policy.touch(key, len(keys) * 1e-3)
        policy.victim()
    picks = [keys[i] for i in skewed(len(keys), ops, rng)]
    now = len(keys) * 1e-3 + 1
    gc.collect()
    start = time.perf_counter()
    for key in picks:
        now += 1e-4
        policy.touch(key, now)
    return ops / (time.perf_counter() - start)


def bench_cache(spec: str, keys: list, ops: int, rng: random.Random) -> tuple[float, float]:
    entries = len(keys) // 2
    space = CacheSpace(entries * 4096, build(spec))
    picks = [keys[i] for i in skewed(len(keys), ops, rng)]
    misses = 0
    now = 0.0
    gc.collect()
    start = time.perf_counter()
    for key in picks:
        now += 1e-4
        if not space.hit(key, now):
            misses += 1
            space.insert(key, 4096, now)
    return ops / (time.perf_counter() - start), misses / ops


def bench_ordering(n: int, ops: int, rng: random.Random) -> tuple[float, float]:
    """The two candidate order structures alone: moving one entry in a SortedList of n live
    values (remove + add) against pushing its new value on a heap (lazy deletion)."""
    from sortedcontainers import SortedList  # noqa: PLC0415

    values = list(range(0, 2 * n, 2))
    moves = [(rng.randrange(n) * 2, 2 * n + 2 * i + 1) for i in range(ops)]
    order = SortedList(values)
    start = time.perf_counter()
    for old, new in moves:
        order.remove(old)
        order.add(new)
        order.remove(new)
        order.add(old)
    sorted_rate = 2 * ops / (time.perf_counter() - start)
    heap = list(values)
    start = time.perf_counter()
    for _old, new in moves:
        heapq.heappush(heap, new)
        if len(heap) > 2 * n:
            heap = heap[:n]  # stands for the periodic rebuild
            heapq.heapify(heap)
    heap_rate = ops / (time.perf_counter() - start)
    return sorted_rate, heap_rate


def bench_memory(spec: str, keys: list, rng: random.Random) -> tuple[float, float, float | None]:
    """Bytes per resident entry right after admission and after as many touches (stale heap
    values included), and bytes per retained evicted key."""
    picks = [keys[i] for i in skewed(len(keys), len(keys), rng)]
    more = [(f"{i:040x}", -1) for i in range(len(keys))]
    gc.collect()
    tracemalloc.start()
    policy = build(spec)
    for i, key in enumerate(keys):
        policy.admit(key, 4 << 20, i * 1e-3)
    if isinstance(policy, AdmitLRUK) and policy.hold:
        policy.victim()  # the first victim holds probation's entries (8 more bytes each in its array)
    admitted = tracemalloc.get_traced_memory()[0] / len(keys)
    now = len(keys) * 1e-3
    for key in picks:
        now += 1e-4
        policy.touch(key, now)
    if isinstance(policy, ProbationLRUK):
        policy.victim()  # the entries read again leave probation for the LRU-K queue
    touched = tracemalloc.get_traced_memory()[0] / len(keys)
    per_retained = None
    if isinstance(policy, ProbationLRUK):
        policy = policy.main
    if isinstance(policy, LRUKPolicy):
        # Replace every entry by a new one; each evicted key's history is retained. Their
        # cost is what dropping the retained histories frees.
        for old, new in zip(keys, more):
            now += 1e-4
            policy.remove(old)
            policy.admit(new, 4 << 20, now)
        before = tracemalloc.get_traced_memory()[0]
        retained = policy.retained
        policy._retained.clear()
        per_retained = (before - tracemalloc.get_traced_memory()[0]) / max(1, retained)
    tracemalloc.stop()
    return admitted, touched, per_retained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="resident entries")
    ap.add_argument("--ops", type=int, default=1_000_000, help="operations timed per figure")
    ap.add_argument("--policy", action="append", 
                    help="lru, lru-k:K, lru-k-admit:K, lru-k-hold:K, lru-k-probation:K:SHARE or lru-k-adaptive:K:SHARE "
                         "(repeatable)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    specs = args.policy or ["lru", "lru-k:1", "lru-k:2", "lru-k:3"]
    keys = chunk_keys(args.entries)
    print(f"python {sys.version.split()[0]}, {args.entries:,} entries, {args.ops:,} operations")
    sorted_rate, heap_rate = bench_ordering(len(keys), args.ops, random.Random(args.seed))
    print(f"order structure, moves/s: SortedList remove+add {sorted_rate:,.0f}, heap push {heap_rate:,.0f}")
    print(f"{'policy':<9} {'touches/s':>11} {'cache ops/s':>12} {'miss ratio':>10} "
          f"{'B/entry':>8} {'touched':>8} {'B/retained':>10}")
    for spec in specs:
        rng = random.Random(args.seed)
        touches = bench_touch(spec, keys, args.ops, rng)
        cache_ops, miss = bench_cache(spec, keys, args.ops, rng)
        admitted, touched, per_retained = bench_memory(spec, keys, rng)
        retained = f"{per_retained:10.0f}" if per_retained is not None else f"{'-':>10}"
        print(f"{spec:<9} {touches:11,.0f} {cache_ops:12,.0f} {miss:10.3f} {admitted:8.0f} {touched:8.0f} {retained}")


if __name__ == "__main__":
    main()
