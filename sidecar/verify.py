"""Verification of cached chunks against their CRC32Cs — one object version or the whole cache —
shared by ``sidecar verify`` (offline, on a cache directory) and the admin API's ``POST /verify``
(online: corrupt chunks are dropped and refetched, so "repaired" means correct bytes are cached
again). Each version's expected CRCs (from the index) and the CRCs of the bytes on disk form two
Merkle trees; their diff names the chunks that differ.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache.layout import ChunkLayout
from .cache.merkle import MerkleTree
from .cache import chunkfile
from .cache.chunkfile import FORMAT
from .cache.store import ChunkStore, version_id
from .objects import ObjectMeta
from .telemetry import get_logger

if TYPE_CHECKING:
    from .reader import Reader

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


async def verify_online(store: ChunkStore, reader: "Reader", executor: concurrent.futures.Executor,
                        bucket: str | None = None, key: str | None = None, repair: bool = True) -> VerifyReport:
    """Check cached versions (all, a bucket's, or one key's) off the event loop; drop corrupt
    chunks and, with ``repair``, refetch them through the reader's one fetch path."""
    from .reader import Priority  # noqa: PLC0415 - the reader imports the store; keep this module light

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
        live = store.versions.get(v.vid) is v
        check.corrupt = {i: p for i, p in check.corrupt.items() if live and v.chunks.get(i) == recorded[i]}
        report.add(check, keep=key is not None)
        if not check.corrupt:
            continue
        for index in check.corrupt:
            store.drop_corrupt(v.vid, index)
            report.dropped += 1
        if repair:
            fetches = [reader.fetch(v.meta, index, index, Priority.WARM) for index in sorted(check.corrupt)]
            for fetch in fetches:
                await fetch  # ours, or a reader's that got there first
                if fetch.cached(fetch.first):
                    report.repaired += 1
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
    metas: dict[str, tuple[Path, ObjectMeta, int]] = {}
    chunks: dict[str, dict[int, tuple[int, Path]]] = {}
    stray: list[Path] = []
    for kind, vid, index, digest, name in sorted(chunkfile.scan(root)):
        entry = Path(name)
        if kind == "meta":
            try:
                d = json.loads(entry.read_bytes())
                metas[vid] = (entry, ObjectMeta.from_json(d["meta"]), int(d["chunk_size"]))
            except (OSError, ValueError, KeyError, TypeError):
                metas[vid] = (entry, None, 0)  # type: ignore[assignment]
        elif kind == "chunk":
            chunks.setdefault(vid, {})[index] = (digest, entry)
        else:
            stray.append(entry)
    out, orphans = [], stray
    for vid, (path, meta, cs) in metas.items():
        files = chunks.pop(vid, {})
        if meta is None or cs <= 0 or version_id(meta.bucket, meta.key, meta.etag, meta.size, cs) != vid:
            orphans.extend(p for _, p in files.values())
            orphans.append(path)  # damaged metadata: the daemon discards it and its chunks at start
            continue
        out.append((path, meta, cs, {i: crc for i, (crc, _) in files.items()}))
    for files in chunks.values():
        orphans.extend(p for _, p in files.values())
    return out, orphans


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
    if args.online or args.admin:
        from . import config  # noqa: PLC0415
        from .admin_cli import AdminClient, AdminError  # noqa: PLC0415

        address = args.admin or config.load({}).admin_listen
        if isinstance(address, str):
            try:
                address = config.parse_hostport(address)
            except ValueError:
                raise config.ConfigError("admin_listen", address, "host:port") from None
        body: dict[str, Any] = {"repair": not args.no_repair}
        if args.bucket:
            body["bucket"] = args.bucket
        if args.key:
            body["key"] = args.key
        try:
            out = AdminClient(address, timeout=3600).call("POST", "/verify", body)
        except AdminError as e:
            print(f"sidecar verify: {e}", file=sys.stderr)
            return 2
    else:
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
    p = sub.add_parser("verify", help="check cached chunks against their CRC32Cs (a cache dir, or a running sidecar)",
                       description="Offline (default): read every chunk under --cache-dir and report the corrupt "
                                   "ones; --repair deletes them (refetched on demand). --online: ask the running "
                                   "sidecar, which drops corrupt chunks and refetches them. Exit 1 when corruption "
                                   "was found and not repaired.")
    p.add_argument("--cache-dir", default=None, help="cache directory (default: the cache_dir setting)")
    p.add_argument("--bucket", default=None, help="only this bucket's objects")
    p.add_argument("--key", default=None, help="only this object (needs --bucket)")
    p.add_argument("--repair", action="store_true", help="offline: delete corrupt chunks and orphan files")
    p.add_argument("--online", action="store_true", help="verify through the running sidecar's admin API")
    p.add_argument("--admin", metavar="HOST:PORT", default=None,
                   help="admin endpoint for --online (default: the admin_listen setting); implies --online")
    p.add_argument("--no-repair", action="store_true", help="online: report and drop, but do not refetch")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)


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

