"""Replay with the predictor in the loop, on simulated time: hit ratios with and without prefetch.

The accesses (a trace file, or the workload generator's output) are split in time: a model is
trained on the first part (``train.train``, unless one is given) and the rest is replayed twice
through the same ``Replay``, ``CacheSpace`` and ``QoSPolicy`` over LRU-K that the daemon runs,
at the same capacity: once as is, once with ``PrefetchHook``. Every ``interval`` of simulated
time the hook makes the daemon loop's decision (``loop.choose``: tracker candidates, predictor
scores, ``planner.plan`` within the room) and puts the planned objects' chunks in the cache
through ``Replay.prefetch``, with the daemon's credit (``QoSPolicy``: protected from demand data
until read or the model's horizon) and its budget (``loop.prefetch_budget``). The tracker is fed every request as it is replayed (and the training
part beforehand, as a running daemon would have seen it); a prefix's keys become known at its
first read (``train.Listings``, as a listing passing through the daemon makes them), so the keys
ahead of each reader are candidates as in the daemon; the demand hit bytes of each tick feed the
loop's demand-yield test (``loop.demand_yield``).

A prefetch lands at once here: the simulation measures what the predictor chooses, not how fast
the upstream delivers it (the token bucket's concern).

Prefetched bytes later read: a prefetched chunk counts as read the first time a request covers
it while it is still cached; evicted before that, it counts as wasted.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from ..cache.layout import ChunkLayout
from ..cache.lruk import LRUKPolicy
from ..cache.qos import QoSPolicy
from ..cache.rules import QoSClass, RuleSet
from .inputs import load_rules, parse_capacity
from .replay import Replay, ReplayResult, Workload
from .trace import Trace

DEFAULT_CHUNK = 8 * 1024**2


def accesses_to_trace(accesses: Sequence[Any], name: str = "") -> Trace:
    """Accesses as a ranged trace; keys are ``bucket/key`` (what ``locate_in_trace`` reads)."""
    return Trace(times=[a.t for a in accesses], keys=[f"{a.bucket}/{a.key}" for a in accesses],
                 sizes=[a.size for a in accesses], offsets=[a.start for a in accesses],
                 lengths=[a.end - a.start + 1 for a in accesses], name=name)


def trace_to_accesses(trace: Trace) -> list[Any]:
    """A trace's requests as accesses; keys without ``bucket/`` go to bucket ``trace``."""
    from ..predict.accesslog import Access  # noqa: PLC0415

    out = []
    offsets = trace.offsets or [0] * len(trace)
    lengths = trace.lengths or [None] * len(trace)
    for t, key, size, off, length in zip(trace.times, trace.keys, trace.sizes, offsets, lengths):
        bucket, sep, name = str(key).partition("/")
        if not sep:
            bucket, name = "trace", str(key)
        end = size - 1 if length is None else off + length - 1
        out.append(Access(float(t), bucket, name, off, max(off, end), size, "miss"))
    return out


def _locate(key: Hashable) -> tuple[str, str] | None:
    if isinstance(key, tuple):
        key = key[0]
    bucket, _, name = str(key).partition("/")
    return bucket, name


class _Watched:
    """The replay's policy, passed through, telling the hook when an entry leaves the cache."""

    def __init__(self, inner: Any, on_remove: Callable[[Hashable], None]) -> None:
        self._inner = inner
        self._on_remove = on_remove
        self.name = inner.name

    def admit(self, key, size, now, **kw) -> None:
        self._inner.admit(key, size, now, **kw)

    def touch(self, key, now) -> None:
        self._inner.touch(key, now)

    def victim(self):
        return self._inner.victim()

    def remove(self, key) -> None:
        self._on_remove(key)
        self._inner.remove(key)

    def forget(self, key) -> None:
        self._on_remove(key)
        getattr(self._inner, "forget", self._inner.remove)(key)

    def __len__(self) -> int:
        return len(self._inner)

    def __contains__(self, key: object) -> bool:
        return key in self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclasses.dataclass
class PrefetchStats:
    runs: int = 0
    planned_objects: int = 0
    prefetched_bytes: int = 0
    useful_bytes: int = 0  # prefetched chunks read while still cached
    wasted_bytes: int = 0  # prefetched chunks evicted unread
    candidates: int = 0
    cpu_s: float = 0.0  # scoring + planning, all runs
    inference_s: float = 0.0

    @property
    def useful_share(self) -> float:
        return self.useful_bytes / self.prefetched_bytes if self.prefetched_bytes else 0.0


class PrefetchHook:
    """The daemon loop's decision on simulated time; see the module docstring."""

    def __init__(self, predictor: Any, tracker: Any, rules: RuleSet, chunk_size: int | None, *,
                 threshold: float = 0.7, max_bytes: int | None = None, limit: int = 100_000,
                 credit: float | None = None, retention_weight: float = 0.0,
                 retention_threshold: float = 0.85, listings: Any = None, interval: float = 30.0) -> None:
        """``listings``: a ``train.Listings`` (a prefix's keys become known at its first read, as a
        listing passing through the daemon's face makes them): the keys ahead of each reader are
        candidates, as in the daemon and in training; ``interval``: the replay's tick, which sets
        how far ahead (``FeatureTracker.look_ahead``).
        ``retention_weight``/``retention_threshold``: the daemon's predictor-weighted retention
        (``lru_k_retention_weight``/``_threshold``), the same ``QoSPolicy.boost`` after each run.
        ``credit``: seconds a prefetched chunk is protected from demand data while unread (as
        the daemon's ``PrefetchedChunks.credit``): the predictor's horizon unless given; 0: none."""
        self.predictor = predictor
        self.tracker = tracker
        self.rules = rules
        self.chunk_size = chunk_size
        self.threshold = threshold
        self.max_bytes = max_bytes
        self.limit = limit
        self.credit = credit if credit is not None else (getattr(predictor, "horizon", None) or 300.0)
        self.retention_weight = retention_weight
        self.retention_threshold = retention_threshold
        self.listings = listings
        self.interval = interval
        self.stats = PrefetchStats()
        self.watching: dict[Hashable, int] = {}  # prefetched item -> bytes, until read or evicted
        self.expected: dict[tuple[str, str], float] = {}  # object -> probability it was prefetched at
        self._admitted = 0  # the policy's demand-admitted bytes at the last run
        self._demand_hits = 0  # bytes of requests served wholly from demand-cached items since the last run

    def on_remove(self, key: Hashable) -> None:
        n = self.watching.pop(key, 0)
        self.stats.wasted_bytes += n

    def request(self, replay: Replay, index: int, missed: bool) -> None:
        from ..predict.accesslog import Access  # noqa: PLC0415

        w = replay.workload
        tr = w.trace
        items = range(index, index + 1) if w.first is None else range(w.first[index], w.first[index + 1])
        watching = self.watching
        bucket, name = _locate(tr.keys[index])
        for j in items:
            n = watching.pop(w.keys[j], 0) if watching else 0
            self.stats.useful_bytes += n
            if not missed and not n:
                self._demand_hits += w.wanted[j]
        if watching:
            self.expected.pop((bucket, name), None)
        size = tr.sizes[index]
        off = tr.offsets[index] if tr.offsets is not None else 0
        length = tr.lengths[index] if tr.lengths is not None else None
        end = size - 1 if length is None else off + length - 1
        access = Access(tr.times[index], bucket, name, off, max(off, end), size, "miss" if missed else "hit")
        if self.listings is not None:
            self.listings.observe(access)
        self.tracker.observe(access)

    def tick(self, replay: Replay, now: float) -> None:
        from ..predict.loop import choose, demand_yield, prefetch_budget  # noqa: PLC0415

        c0 = time.thread_time()
        space = replay.space
        cs = self.chunk_size
        cached_bytes: dict[tuple[str, str], int] = {}
        chunks: dict[tuple[str, str], list[Hashable]] = {}
        retain = self.retention_weight > 0
        for key, n in space.sizes.items():
            obj = _locate(key)
            cached_bytes[obj] = cached_bytes.get(obj, 0) + n
            if retain:
                chunks.setdefault(obj, []).append(key)
        tracker = self.tracker
        cached = {}
        displaceable = []
        for obj, n in cached_bytes.items():
            size = tracker.size(obj)
            cached[obj] = min(1.0, n / size) if size else 1.0
            rule = self.rules.match(*obj)
            if rule.qos is not QoSClass.GUARANTEED and not rule.pin:
                displaceable.append((obj, n))
        # Prefetched, not yet read: as hot as the probability it was fetched at, so that the next
        # run does not push it out for something no likelier.
        expected = self.expected
        for obj in [o for o in expected if o not in cached_bytes]:
            del expected[obj]
        free = space.capacity - space.used - space.reserved
        admitted = space.policy.admitted_bytes
        budget = prefetch_budget(space.capacity, space.policy.credited_bytes, admitted - self._admitted,
                                 self.max_bytes)
        earned = demand_yield(self._demand_hits, self.interval, space.capacity)
        self._demand_hits = 0
        self._admitted = admitted
        chosen, report = choose(tracker, self.predictor, now, cached, free, displaceable, self.rules,
                                threshold=self.threshold, max_bytes=budget, limit=self.limit,
                                expected=expected,
                                known=self.listings.known if self.listings is not None else None,
                                interval=self.interval, demand_yield=earned,
                                retain_threshold=self.retention_threshold if retain else None)
        if report.confident:
            space.policy.boost([k for obj in report.confident for k in chunks.get(obj, ())],
                               self.retention_weight)
        st = self.stats
        st.runs += 1
        st.candidates += report.candidates
        st.inference_s += report.inference_s
        st.planned_objects += len(chosen.items)
        until = now + self.credit if self.credit > 0 else None
        for item in chosen.items:
            expected[item.obj] = item.probability
            bucket, name = item.obj
            key = f"{bucket}/{name}"
            size = tracker.size(item.obj) or 0
            if cs:
                layout = ChunkLayout(cs)
                for index in range(layout.count(size)):
                    ikey = (key, index)
                    if ikey in space:
                        continue
                    n = layout.length(index, size)
                    if replay.prefetch(ikey, n, now, until):
                        self.watching[ikey] = n
                        st.prefetched_bytes += n
            elif key not in space and replay.prefetch(key, size, now, until):
                self.watching[key] = size
                st.prefetched_bytes += size
        st.cpu_s += time.thread_time() - c0


@dataclasses.dataclass
class Comparison:
    """One workload at one cache size, without and with prefetch."""

    name: str
    capacity: int
    unique_bytes: int
    train_requests: int
    eval_requests: int
    without: ReplayResult
    with_prefetch: ReplayResult
    prefetch: PrefetchStats
    interval: float
    model: dict

    def figures(self) -> dict[str, float]:
        a, b = self.without, self.with_prefetch
        return {"object_hit_without": 1 - a.object_miss_ratio, "object_hit_with": 1 - b.object_miss_ratio,
                "byte_hit_without": 1 - a.byte_miss_ratio, "byte_hit_with": 1 - b.byte_miss_ratio,
                "prefetched_bytes": self.prefetch.prefetched_bytes,
                "prefetched_read_share": self.prefetch.useful_share,
                "cpu_per_run_s": self.prefetch.cpu_s / self.prefetch.runs if self.prefetch.runs else 0.0}


def split(accesses: Sequence[Any], train_fraction: float) -> tuple[list[Any], list[Any]]:
    """By time: the first ``train_fraction`` of the span trains, the rest is evaluated."""
    if not accesses:
        return [], []
    t0, t1 = accesses[0].t, accesses[-1].t
    cut = t0 + (t1 - t0) * train_fraction
    i = next((i for i, a in enumerate(accesses) if a.t >= cut), len(accesses))
    return list(accesses[:i]), list(accesses[i:])


def compare(accesses: Sequence[Any], *, capacity: int | str = "10%", chunk_size: int | None = DEFAULT_CHUNK,
            train_fraction: float = 0.5, interval: float = 30.0, threshold: float = 0.7,
            model: Path | None = None, rules: RuleSet | None = None, lru_k: int = 2,
            max_bytes: int | None = 1024**3, name: str = "", horizon: float = 300.0,
            seed: int = 0, retention_weight: float = 0.0, retention_threshold: float = 0.85) -> Comparison:
    """Train on the first part (unless ``model``), replay the rest without and with prefetch.
    ``capacity``: bytes, or a percentage of the evaluated part's unique bytes."""
    from ..predict.features import FeatureTracker  # noqa: PLC0415
    from ..predict.model import Predictor  # noqa: PLC0415
    from ..predict.train import Listings  # noqa: PLC0415

    rules = rules or RuleSet()
    train_part, eval_part = split(sorted(accesses, key=lambda a: a.t), train_fraction)
    if not eval_part:
        raise ValueError("nothing left to evaluate after the training part")
    metrics: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = model
        if path is None:
            from ..predict.train import train  # noqa: PLC0415

            if not train_part:
                raise ValueError("no accesses to train on")
            path = Path(tmp) / "predictor.onnx"
            metrics = train(train_part, path, horizon=horizon, progress=False, seed=seed)
        predictor = Predictor.load(path)
    workload = Workload.build(accesses_to_trace(eval_part, name), chunk_size)
    unique = workload.unique_bytes()
    if isinstance(capacity, str):
        capacity = parse_capacity(capacity, unique)

    def policy() -> QoSPolicy:
        return QoSPolicy(rules, lambda: LRUKPolicy(lru_k), locate=_locate)

    without = Replay(workload, capacity, policy(), tick=interval, label="without prefetch").run()
    tracker = FeatureTracker()
    listings = Listings(accesses)
    for a in train_part:
        listings.observe(a)
        tracker.observe(a)
    hook = PrefetchHook(predictor, tracker, rules, chunk_size, threshold=threshold, max_bytes=max_bytes,
                        retention_weight=retention_weight, retention_threshold=retention_threshold,
                        listings=listings, interval=interval)
    replay = Replay(workload, capacity, _Watched(policy(), hook.on_remove), hooks=[hook], tick=interval,
                    label="with prefetch")
    with_prefetch = replay.run()
    return Comparison(name, capacity, unique, len(train_part), len(eval_part), without, with_prefetch,
                      hook.stats, interval, metrics)


def print_comparison(c: Comparison, out=None) -> None:
    import sys  # noqa: PLC0415

    from ..config import format_size  # noqa: PLC0415

    out = out or sys.stdout
    f = c.figures()
    print(f"{c.name}: trained on {c.train_requests:,} requests, evaluated on {c.eval_requests:,}; "
          f"cache {format_size(c.capacity)} ({100 * c.capacity / c.unique_bytes:.1f}% of "
          f"{format_size(c.unique_bytes)} unique), predictor every {c.interval:g} s", file=out)
    if c.model:
        print("  model on held-out data: " + ", ".join(f"{k} {v:.3f}" for k, v in c.model.items()
                                                    if isinstance(v, float)), file=out)
    print(f"  {'':<18} {'object hit':>10} {'byte hit':>9}", file=out)
    print(f"  {'without prefetch':<18} {f['object_hit_without']:10.4f} {f['byte_hit_without']:9.4f}", file=out)
    print(f"  {'with prefetch':<18} {f['object_hit_with']:10.4f} {f['byte_hit_with']:9.4f}", file=out)
    p = c.prefetch
    print(f"  byte hit ratio change: {100 * (f['byte_hit_with'] - f['byte_hit_without']):+.2f} points", file=out)
    demand = c.with_prefetch.wanted_bytes
    print(f"  prefetched {format_size(p.prefetched_bytes)} in {p.runs} runs ({p.planned_objects:,} objects "
          f"planned); read later: {100 * p.useful_share:.1f}%, evicted unread: {format_size(p.wasted_bytes)}; "
          f"{100 * p.prefetched_bytes / demand if demand else 0.0:.2f}% of the demand bytes", file=out)
    print(f"  predictor CPU: {1e3 * f['cpu_per_run_s']:.1f} ms per run "
          f"({100 * f['cpu_per_run_s'] / c.interval:.3f}% of a core at a {c.interval:g} s interval)", file=out)


def workload_accesses(kind: str, seed: int = 0, duration: float | None = None) -> list[Any]:
    from ..predict.workload import generate  # noqa: PLC0415

    return generate(kind, seed=seed, **({"duration": duration} if duration else {}))


def run_cli(args: Any) -> int:
    """``sidecar sim [TRACE] --prefetch``: one comparison per ``--sizes`` entry."""
    import sys  # noqa: PLC0415

    from ..config import ConfigError, parse_size  # noqa: PLC0415
    from .trace import TraceError, read_trace  # noqa: PLC0415

    if args.workload:
        accesses = workload_accesses(args.workload, seed=args.seed, duration=args.duration)
        name = f"{args.workload} workload (seed {args.seed})"
    elif args.trace:
        try:
            trace = read_trace(args.trace, args.format, args.limit)
        except TraceError as e:
            print(f"sidecar sim: {e}", file=sys.stderr)
            return 2
        accesses, name = trace_to_accesses(trace), trace.name or str(args.trace)
    else:
        print("sidecar sim: a trace file or --workload KIND is required", file=sys.stderr)
        return 2
    if not accesses:
        print("sidecar sim: no requests", file=sys.stderr)
        return 2
    if not 0 < args.train_fraction < 1:
        print("sidecar sim: --train-fraction must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        chunk = parse_size(args.chunk_size) if args.chunk_size else DEFAULT_CHUNK
        rules = load_rules(args.rules)
    except (ConfigError, ValueError) as e:
        print(f"sidecar sim: {e}", file=sys.stderr)
        return 2
    model = Path(args.model) if args.model else None
    trained: Path | None = model
    with tempfile.TemporaryDirectory() as tmp:
        metrics: dict = {}
        if trained is None:
            # Train once for every size.
            from ..predict.train import train  # noqa: PLC0415

            part, _ = split(sorted(accesses, key=lambda a: a.t), args.train_fraction)
            trained = Path(tmp) / "predictor.onnx"
            try:
                metrics = train(part, trained, progress=not args.no_progress, seed=args.seed)
            except ValueError as e:  # too little to train on: the input's fault, said in one line
                print(f"sidecar sim: {e}", file=sys.stderr)
                return 2
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            try:
                c = compare(accesses, capacity=size, chunk_size=chunk, train_fraction=args.train_fraction,
                            interval=args.tick, threshold=args.threshold, model=trained, rules=rules,
                            lru_k=args.lru_k, name=name, retention_weight=args.retention_weight,
                            retention_threshold=args.retention_threshold)
            except ConfigError as e:
                print(f"sidecar sim: {e}", file=sys.stderr)
                return 2
            c.model = metrics
            print_comparison(c)
    return 0
