"""Verification of cached chunks against their checksums — one object version or the whole cache —
behind ``sidecar verify`` (offline, on a cache directory: ``verify_cli.py``) and the admin API's
``POST /verify`` (online: corrupt chunks are dropped and refetched, so "repaired" means correct
bytes are cached again). Each version's expected CRCs (from the index) and the CRCs of the bytes on disk form two
Merkle trees; their diff names the chunks that differ.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..objects import ObjectMeta
from ..telemetry import get_logger
from . import chunkfile
from .chunkfile import FORMAT
from .layout import ChunkLayout
from .merkle import MerkleTree
from .disk import read_dir
from .store import ChunkStore

log = get_logger("sidecar.verify")


def check_file(path: Path | str | None, length: int, digest: int) -> str | None:
    """None if the chunk file is good (every piece matches its CRC32C, the piece table matches
    the digest in its name), else what is wrong: missing, size, crc, io-error."""
    if path is None:
        return "missing"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "io-error"
    try:
        return chunkfile.check_file(fd, length, digest)
    except OSError:
        return "io-error"
    finally:
        os.close(fd)


@dataclasses.dataclass(slots=True)
class ObjectCheck:
    """One version's chunks checked: which differ from what the index recorded, and why."""

    bucket: str
    key: str
    etag: str
    chunks: int  # chunks the version has
    checked: int  # of those, cached and read
    nbytes: int
    root: str  # Merkle root of the recorded CRCs
    corrupt: dict[int, str]  # index -> crc | size | missing | io-error

    def as_json(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "etag": self.etag, "chunks": self.chunks,
                "checked": self.checked, "root": self.root,
                "corrupt": [{"index": i, "problem": p} for i, p in sorted(self.corrupt.items())]}


def check_version(meta: ObjectMeta, chunk_size: int, recorded: dict[int, int],
                  path_of: Callable[[int, int], Path | str | None]) -> ObjectCheck:
    """Read every recorded chunk of a version (blocking) and compare trees of CRCs."""
    layout = ChunkLayout(chunk_size)
    n = layout.count(meta.size)
    actual: dict[int, int] = {}
    problems: dict[int, str] = {}
    nbytes = 0
    for index, crc in sorted(recorded.items()):
        c0, c1 = layout.bounds(index, meta.size)
        problem = check_file(path_of(index, crc), c1 - c0 + 1, crc)
        nbytes += c1 - c0 + 1
        if problem is not None:
            problems[index] = problem
        else:
            actual[index] = crc
    expected = MerkleTree.of(recorded, n)
    found = MerkleTree.of(actual, n)
    corrupt = {i: problems.get(i, "crc") for i in expected.diff(found)} if expected.root != found.root else {}
    return ObjectCheck(meta.bucket, meta.key, meta.etag, n, len(recorded), nbytes, expected.root.hex(), corrupt)


@dataclasses.dataclass(slots=True)
class VerifyReport:
    objects: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    corrupt: int = 0
    dropped: int = 0
    repaired: int = 0
    seconds: float = 0.0
    details: list[ObjectCheck] = dataclasses.field(default_factory=list)  # objects with problems (or asked for)
    orphans: int = 0  # chunk files without metadata (offline scans)

    def add(self, check: ObjectCheck, keep: bool = False) -> None:
        self.objects += 1
        self.chunks_checked += check.checked
        self.bytes_checked += check.nbytes
        self.corrupt += len(check.corrupt)
        if check.corrupt or keep:
            self.details.append(check)

    @property
    def ok(self) -> bool:
        """No corruption left: none found, or every corrupt chunk holds correct bytes again."""
        return self.corrupt <= self.repaired

    def as_json(self) -> dict[str, Any]:
        return {"objects": self.objects, "chunks_checked": self.chunks_checked, "bytes_checked": self.bytes_checked,
                "corrupt": self.corrupt, "dropped": self.dropped, "repaired": self.repaired,
                "orphan_files": self.orphans, "seconds": round(self.seconds, 3), "ok": self.ok,
                "objects_with_problems": [c.as_json() for c in self.details]}


# --- online: the running daemon's store --------------------------------------------------------


async def verify_online(store: ChunkStore, executor: concurrent.futures.Executor,
                        refetch: Callable[[ObjectMeta, list[int]], Awaitable[int]] | None,
                        bucket: str | None = None, key: str | None = None) -> VerifyReport:
    """Check cached versions (all, a bucket's, or one key's) off the event loop; drop corrupt
    chunks and, given ``refetch`` (the reader's one fetch path: chunks of a version -> how many
    are cached again), fetch them again."""
    t0 = time.monotonic()
    report = VerifyReport()
    loop = asyncio.get_running_loop()
    versions = [v for v in store.iter_versions()
                if (bucket is None or v.meta.bucket == bucket) and (key is None or v.meta.key == key)]
    for v in versions:
        recorded = dict(v.chunks)
        check = await loop.run_in_executor(
            executor, check_version, v.meta, store.chunk_size, recorded,
            lambda index, crc, vid=v.vid: store.chunk_file(vid, index) if v.chunks.get(index) == crc else None)
        # A chunk evicted, replaced or invalidated while it was being read is not corrupt.
        live = store.holds(v)
        check.corrupt = {i: p for i, p in check.corrupt.items() if live and v.chunks.get(i) == recorded[i]}
        report.add(check, keep=key is not None)
        if not check.corrupt:
            continue
        for index in check.corrupt:
            store.drop_corrupt(v.vid, index)
            report.dropped += 1
        if refetch is not None:
            report.repaired += await refetch(v.meta, sorted(check.corrupt))
    report.seconds = time.monotonic() - t0
    (log.info if report.corrupt == 0 else log.warning)(
        "cache_verified", objects=report.objects, chunks=report.chunks_checked, corrupt=report.corrupt,
        dropped=report.dropped, repaired=report.repaired, seconds=round(report.seconds, 3))
    return report


# --- offline: a cache directory --------------------------------------------------------------


def scan_dir(cache_dir: Path) -> tuple[list[tuple[Path, ObjectMeta, int, dict[int, int]]], list[Path]]:
    """The versions on disk (meta file, metadata, chunk size, index -> CRC) and orphan chunk files."""
    root = Path(cache_dir) / FORMAT
    if not root.is_dir():
        raise FileNotFoundError(f"{cache_dir} holds no cache (no {FORMAT}/ directory)")
    # As the daemon reads it at start; what belongs to no version it deletes then.
    found, orphans = read_dir(root)
    return ([(Path(f.meta_path), f.meta, f.chunk_size, {i: crc for i, (crc, _) in f.chunks.items()})
             for f in found], [Path(p) for p in orphans])


def verify_dir(cache_dir: Path, bucket: str | None = None, key: str | None = None,
               repair: bool = False) -> VerifyReport:
    """Check a cache directory in place; with ``repair``, delete corrupt chunks and orphans
    (their bytes are fetched again on demand)."""
    t0 = time.monotonic()
    report = VerifyReport()
    versions, orphans = scan_dir(cache_dir)
    report.orphans = len(orphans) if bucket is None else 0
    for meta_path, meta, cs, recorded in versions:
        if (bucket is not None and meta.bucket != bucket) or (key is not None and meta.key != key):
            continue
        shard = meta_path.parent
        vid = meta_path.name.split(".")[0]
        check = check_version(meta, cs, recorded, lambda i, crc: shard / chunkfile.chunk_name(vid, i, crc))
        report.add(check, keep=key is not None)
        if repair:
            for index in check.corrupt:
                _unlink(shard / chunkfile.chunk_name(vid, index, recorded[index]))
                report.dropped += 1
    if repair and bucket is None:
        for p in orphans:
            _unlink(p)
    report.seconds = time.monotonic() - t0
    return report


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


# --- the command -----------------------------------------------------------------------------


def targets(data: dict[str, Any]) -> tuple[str | None, str | None, bool]:
    """bucket, key and repair from a ``POST /verify`` body; ValueError on bad input."""
    bucket, key, repair = data.get("bucket"), data.get("key"), data.get("repair", True)
    if bucket is not None and (not isinstance(bucket, str) or not bucket or "/" in bucket):
        raise ValueError("'bucket' must be a bucket name")
    if key is not None and (not isinstance(key, str) or not key or bucket is None):
        raise ValueError("'key' must be an object key, with 'bucket'")
    if isinstance(repair, str):
        repair = repair.lower() not in ("0", "false", "no")
    if not isinstance(repair, bool):
        raise ValueError("'repair' must be true or false")
    return bucket, key, repair

