"""Request traces for the simulator: libCacheSim's oracleGeneral binary format and CSV.

A ``Trace`` is columns, one entry per request: time (seconds), object key, object size, and
the requested byte range (``offset``, ``length``; the whole object when ``length`` is None).

oracleGeneral (github.com/1a1a11a/libCacheSim): little-endian records of 24 bytes,
``uint32 timestamp, uint64 obj_id, uint32 obj_size, int64 next_access_vtime``; the last field
is the virtual time of the next request to the object, counted from 1 (so request i's next
access at index j is stored as j + 1), or -1 for none. It is kept, as in the file, in
``next_access``; the simulator computes its own (``next_accesses``), which also covers chunks.

CSV: a header naming the columns ``time``, ``key``, ``size`` and optionally ``offset`` and
``length`` (the requested range; empty means the whole object), in any order; or no header
and the columns in that order. Keys are strings; an object's size is its full size.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ORACLE_GENERAL = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access", "<i8")])
CSV_COLUMNS = ("time", "key", "size", "offset", "length")


class TraceError(ValueError):
    """A trace file that cannot be read; ``str()`` says where and why."""


@dataclasses.dataclass
class Trace:
    times: list[float]
    keys: list
    sizes: list[int]
    offsets: list[int] | None = None  # None: every request reads whole objects
    lengths: list[int | None] | None = None
    next_access: list[int] | None = None  # the file's next_access_vtime (1-based), when it has them
    name: str = ""

    def __len__(self) -> int:
        return len(self.keys)

    def unique_bytes(self) -> int:
        """Bytes of all distinct objects (each at the largest size seen for it)."""
        return unique_bytes(self.keys, self.sizes)


def read_trace(path: str | Path, fmt: str = "auto", limit: int | None = None) -> Trace:
    """Read ``path`` as ``oracle`` (oracleGeneral), ``csv``, or ``auto`` (by name, then content)."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "oracle":
        return read_oracle_general(path, limit)
    if fmt == "csv":
        return read_csv(path, limit)
    raise TraceError(f"{path}: unknown trace format {fmt!r} (oracle or csv)")


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.txt")):
        return "csv"
    if "oraclegeneral" in name or name.endswith(".bin"):
        return "oracle"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror or e}") from None
    try:
        head.decode("utf-8")
        return "csv"
    except UnicodeDecodeError:
        return "oracle"


def read_oracle_general(path: str | Path, limit: int | None = None) -> Trace:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size % ORACLE_GENERAL.itemsize:
            raise TraceError(f"{path}: {size} bytes is not a whole number of "
                             f"{ORACLE_GENERAL.itemsize}-byte oracleGeneral records")
        records = np.fromfile(path, dtype=ORACLE_GENERAL, count=-1 if limit is None else limit)
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror or e}") from None
    return Trace(times=records["time"].astype(np.float64).tolist(), keys=records["obj_id"].tolist(),
                 sizes=records["obj_size"].tolist(), next_access=records["next_access"].tolist(), name=path.name)


def write_oracle_general(path: str | Path, times, keys, sizes, next_access=None) -> None:
    """Write records (for tests and for converting other traces)."""
    records = np.zeros(len(keys), dtype=ORACLE_GENERAL)
    records["time"], records["obj_id"], records["obj_size"] = times, keys, sizes
    if next_access is None:
        next_access = [j + 1 if j >= 0 else -1 for j in next_accesses(keys)]
    records["next_access"] = next_access
    records.tofile(path)


def read_csv(path: str | Path, limit: int | None = None) -> Trace:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    rows = csv.reader(io.StringIO(text))
    first = next(rows, None)
    if first is None:
        return Trace([], [], [], name=path.name)
    header = [c.strip().lower() for c in first]
    if "key" in header:
        missing = [c for c in CSV_COLUMNS[:3] if c not in header]
        if missing:
            raise TraceError(f"{path}: the header lacks column(s) {', '.join(missing)}")
        unknown = [c for c in header if c not in CSV_COLUMNS]
        if unknown:
            raise TraceError(f"{path}: unknown column(s) {', '.join(unknown)} (expected {', '.join(CSV_COLUMNS)})")
        where = {c: header.index(c) for c in header}
        data = rows
    else:
        if len(first) not in (3, 5):
            raise TraceError(f"{path}:1: without a header a row is time,key,size[,offset,length]")
        where = {c: i for i, c in enumerate(CSV_COLUMNS[:len(first)])}
        data = iter([first, *rows])
    trace = Trace([], [], [], name=path.name)
    offsets: list[int] = []
    lengths: list[int | None] = []
    ranged = "offset" in where or "length" in where
    for line, row in enumerate(data, start=2 if "key" in header else 1):
        if limit is not None and len(trace.keys) >= limit:
            break
        if not row or all(not c.strip() for c in row):
            continue
        try:
            t = float(row[where["time"]])
            key = row[where["key"]]
            size = int(row[where["size"]])
            offset = int(row[where["offset"]]) if "offset" in where and row[where["offset"]].strip() else 0
            length = int(row[where["length"]]) if "length" in where and row[where["length"]].strip() else None
        except (ValueError, IndexError):
            raise TraceError(f"{path}:{line}: expected time,key,size[,offset,length] numbers, got {row!r}") from None
        if size < 0 or offset < 0 or (length is not None and length < 0) or offset > size:
            raise TraceError(f"{path}:{line}: negative size or range, or a range past the object's end")
        trace.times.append(t)
        trace.keys.append(key)
        trace.sizes.append(size)
        offsets.append(offset)
        lengths.append(None if length is None else min(length, size - offset))
    if ranged:
        trace.offsets, trace.lengths = offsets, lengths
    return trace


def unique_bytes(keys: Sequence, sizes: Sequence[int]) -> int:
    """Bytes of the distinct keys, each at the largest size seen for it."""
    largest: dict = {}
    for key, size in zip(keys, sizes):
        if size > largest.get(key, -1):
            largest[key] = size
    return sum(largest.values())


def next_accesses(keys) -> list[int]:
    """For each request, the index of the next request to the same key, -1 if none."""
    out = [-1] * len(keys)
    seen: dict = {}
    for i in range(len(keys) - 1, -1, -1):
        key = keys[i]
        out[i] = seen.get(key, -1)
        seen[key] = i
    return out
