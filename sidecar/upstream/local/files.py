"""The local directory as a set of objects: paths, metadata records, commits, key listings."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import heapq
import json
import mimetypes
import os
import secrets
import shutil
import stat
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from sortedcontainers import SortedList

from ...errors import S3Error
from .. import checksums
from .wire import BUCKET_NAME, IO_BLOCK, TMP_PREFIX, key_hash, quote_etag


class _Cursor:
    """Shared skip state of a listing: keys under ``skip`` are rolled up in a common prefix."""

    __slots__ = ("skip",)

    def __init__(self) -> None:
        self.skip: str | None = None


class FileStream:
    """ByteStream over an open file descriptor, bytes start..end inclusive."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd = fd
        self._pos = start
        self._end = end + 1

    async def read(self, n: int = IO_BLOCK) -> bytes:
        if self._pos >= self._end:
            return b""
        want = min(n if n and n > 0 else IO_BLOCK, self._end - self._pos)
        data = await asyncio.to_thread(os.pread, self._fd, want, self._pos)
        if not data:
            raise S3Error("InternalError", "The object file became shorter while it was being read.")
        self._pos += len(data)
        return data


class Sink:
    """A temp file being written: buffers ~1 MiB, then writes and hashes it in a worker thread."""

    def __init__(self, path: str, hashers: list) -> None:
        self.path = path
        self.size = 0
        self._f = open(path, "wb")
        self._hashers = hashers
        self._buf = bytearray()

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        self._buf += data
        if len(self._buf) >= IO_BLOCK:
            await self._flush()

    async def _flush(self) -> None:
        data, self._buf = self._buf, bytearray()
        if data:
            await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        for h in self._hashers:
            h.update(data)

    async def finish(self, durable: bool) -> None:
        await self._flush()

        def close() -> None:
            self._f.flush()
            if durable:
                os.fsync(self._f.fileno())
            self._f.close()
        await asyncio.to_thread(close)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class ObjectFiles:
    """The objects of a directory tree (see the package docstring for the layout): finding,
    describing, writing and removing them, and listing keys in order. Blocking methods are
    called from worker threads; the async ones hop there themselves."""

    def __init__(self, root: Path | str, *, durable: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.durable = durable
        self.hidden = os.path.join(self.root, ".sidecar")
        self._tmp = os.path.join(self.hidden, "tmp")
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._odd: dict[str, SortedList] = {}
        self._odd_lock = threading.Lock()
        self._etags: OrderedDict[tuple, str] = OrderedDict()
        self._etag_lock = threading.Lock()
        self._md5_inflight: dict[tuple, asyncio.Future] = {}
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"upstream directory {self.root} does not exist")
        with contextlib.suppress(OSError):  # leftovers of a crash; nothing else writes here
            shutil.rmtree(self._tmp)

    # --- layout --------------------------------------------------------------------------------

    def bucket_dir(self, bucket: str) -> str:
        """The bucket's directory; NoSuchBucket unless it exists and its name is servable."""
        if not BUCKET_NAME.fullmatch(bucket or ""):
            raise S3Error("NoSuchBucket", BucketName=bucket)
        d = os.path.join(self.root, bucket)
        if not os.path.isdir(d):
            raise S3Error("NoSuchBucket", BucketName=bucket)
        return d

    def _rel_ok(self, bucket: str, key: str) -> bool:
        """Whether ``key`` can be an ordinary path under the bucket directory at all."""
        if not key or key.endswith("/") or "\x00" in key:
            return False
        try:
            total = len(os.path.join(self.root, bucket, key).encode("utf-8"))
        except UnicodeEncodeError:
            return False
        if total > 4000:
            return False
        for seg in key.split("/"):
            if seg in ("", ".", "..") or len(seg.encode("utf-8")) > 255 or seg.startswith(TMP_PREFIX):
                return False
        return True

    def _plain_path(self, bucket: str, key: str) -> str | None:
        return os.path.join(self.root, bucket, key) if self._rel_ok(bucket, key) else None

    def odd_path(self, bucket: str, key: str) -> str:
        return os.path.join(self.hidden, "odd", bucket, key_hash(key))

    def meta_path(self, bucket: str, key: str, suffix: str = ".json") -> str:
        h = key_hash(key)
        return os.path.join(self.hidden, "meta", bucket, h[:2], h + suffix)

    def new_tmp(self) -> str:
        os.makedirs(self._tmp, exist_ok=True)
        return os.path.join(self._tmp, secrets.token_hex(12))

    def key_lock(self, bucket: str, key: str) -> asyncio.Lock:
        lock = self._locks.get((bucket, key))
        if lock is None:
            lock = asyncio.Lock()
            self._locks[(bucket, key)] = lock
        return lock

    # --- odd-key index -------------------------------------------------------------------------

    def odd_keys(self, bucket: str) -> SortedList:
        with self._odd_lock:
            keys = self._odd.get(bucket)
            if keys is not None:
                return keys
            keys = SortedList()
            d = os.path.join(self.hidden, "odd", bucket)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for e in os.scandir(d):
                    meta = self.read_json(os.path.join(self.hidden, "meta", bucket, e.name[:2], e.name + ".json"))
                    if meta and isinstance(meta.get("key"), str) and key_hash(meta["key"]) == e.name:
                        keys.add(meta["key"])
            self._odd[bucket] = keys
            return keys

    def _odd_update(self, bucket: str, key: str, present: bool) -> None:
        keys = self.odd_keys(bucket)
        with self._odd_lock:
            if present and key not in keys:
                keys.add(key)
            elif not present and key in keys:
                keys.remove(key)

    # --- metadata records ------------------------------------------------------------------------

    @staticmethod
    def read_json(path: str) -> dict | None:
        try:
            with open(path, "rb") as f:
                value = json.load(f)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def write_json(self, path: str, value: dict, durable: bool = False) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{secrets.token_hex(6)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=True, separators=(",", ":"))
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def _sync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def find(self, bucket: str, key: str) -> tuple[str, os.stat_result, bool] | None:
        """(data path, stat, odd) of the object, or None. Raises NoSuchBucket."""
        self.bucket_dir(bucket)
        plain = self._plain_path(bucket, key)
        if plain is not None:
            try:
                st = os.stat(plain)
            except OSError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode):
                return plain, st, False
        odd = self.odd_path(bucket, key)
        try:
            st = os.stat(odd)
        except OSError:
            return None
        return odd, st, True

    def _stored_record(self, bucket: str, key: str, st: os.stat_result) -> dict | None:
        meta = self.read_json(self.meta_path(bucket, key))
        if not meta or meta.get("key") != key:
            return None
        tie = [st.st_size, st.st_mtime_ns, st.st_ino]
        for rec in meta.get("records", ()):
            if [rec.get("size"), rec.get("mtime_ns"), rec.get("ino")] == tie:
                return rec
        return None

    def _cached_etag(self, bucket: str, key: str, st: os.stat_result) -> str | None:
        tie = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._etag_lock:
            etag = self._etags.get(tie)
        if etag:
            return etag
        c = self.read_json(self.meta_path(bucket, key, ".etag"))
        if c and [c.get("size"), c.get("mtime_ns"), c.get("ino")] == [st.st_size, st.st_mtime_ns, st.st_ino]:
            self._remember_etag(tie, c["etag"])
            return c["etag"]
        return None

    def _remember_etag(self, tie: tuple, etag: str) -> None:
        with self._etag_lock:
            self._etags[tie] = etag
            self._etags.move_to_end(tie)
            while len(self._etags) > 100_000:
                self._etags.popitem(last=False)

    def hash_file_etag(self, bucket: str, key: str, path: str, st: os.stat_result) -> str:
        """MD5 ETag of a hand-placed file (blocking: call from a worker thread), cached on disk."""
        h = hashlib.md5()
        with open(path, "rb") as f:
            fst = os.fstat(f.fileno())
            while block := f.read(IO_BLOCK):
                h.update(block)
        etag = quote_etag(h.hexdigest())
        if (fst.st_size, fst.st_mtime_ns, fst.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino):
            self._remember_etag((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), etag)
            with contextlib.suppress(OSError):  # a read-only dataset keeps the in-memory cache only
                self.write_json(self.meta_path(bucket, key, ".etag"),
                                 {"key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                  "ino": st.st_ino, "etag": etag})
        return etag

    def _hand_record(self, path: str, st: os.stat_result, etag: str) -> dict:
        guessed, encoding = mimetypes.guess_type(path)
        ctype = guessed if guessed and not encoding else "binary/octet-stream"
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "etag": etag,
                "headers": [["content-type", ctype]], "checksums": [], "parts": None, "tags": []}

    def record_sync(self, bucket: str, key: str, path: str, st: os.stat_result) -> dict:
        rec = self._stored_record(bucket, key, st)
        if rec is not None:
            return rec
        etag = self._cached_etag(bucket, key, st) or self.hash_file_etag(bucket, key, path, st)
        return self._hand_record(path, st, etag)

    async def open_version(self, bucket: str, key: str) -> tuple[int, os.stat_result, dict]:
        """(descriptor, stat, record) of the object's current version, opened: the descriptor
        pins this version whatever happens to the name. The caller closes it. Raises NoSuchKey."""
        found = self.find(bucket, key)
        if found is None:
            raise S3Error("NoSuchKey", Key=key)
        try:
            fd = os.open(found[0], os.O_RDONLY)
        except FileNotFoundError:
            raise S3Error("NoSuchKey", Key=key) from None
        try:
            st = os.fstat(fd)
            return fd, st, await self.record(bucket, key, found[0], st)
        except BaseException:
            os.close(fd)
            raise

    async def record(self, bucket: str, key: str, path: str, st: os.stat_result) -> dict:
        rec = self._stored_record(bucket, key, st)
        if rec is not None:
            return rec
        etag = self._cached_etag(bucket, key, st)
        if etag is None:
            tie = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            fut = self._md5_inflight.get(tie)
            if fut is None:  # one hashing per file version, however many concurrent readers
                fut = asyncio.ensure_future(asyncio.to_thread(self.hash_file_etag, bucket, key, path, st))
                self._md5_inflight[tie] = fut
                fut.add_done_callback(lambda _f: self._md5_inflight.pop(tie, None))
            etag = await asyncio.shield(fut)
        return self._hand_record(path, st, etag)

    async def describe(self, bucket: str, key: str) -> tuple[str, os.stat_result, dict]:
        found = self.find(bucket, key)
        if found is None:
            raise S3Error("NoSuchKey", Key=key)
        path, st, _odd = found
        return path, st, await self.record(bucket, key, path, st)

    # --- committing and removing objects ------------------------------------------------------------

    def _place(self, bucket: str, key: str) -> str | None:
        """The ordinary path for a new version of ``key`` with its directories made, or None when
        it has to live in the odd area (unrepresentable key, or a file/directory clash)."""
        plain = self._plain_path(bucket, key)
        if plain is None:
            return None
        try:
            os.makedirs(os.path.dirname(plain), exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EEXIST):
                return None
            raise
        return None if os.path.isdir(plain) else plain

    async def commit(self, bucket: str, key: str, tmp: str, rec: dict) -> dict:
        """Make temp file ``tmp`` the current version of ``key`` with metadata ``rec``."""
        async with self.key_lock(bucket, key):
            return await asyncio.to_thread(self._commit_sync, bucket, key, tmp, rec)

    def _commit_sync(self, bucket: str, key: str, tmp: str, rec: dict) -> dict:
        self.bucket_dir(bucket)
        st = os.stat(tmp)
        rec = dict(rec, size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino)
        meta_path = self.meta_path(bucket, key)
        old = self.read_json(meta_path)
        old_recs = old.get("records", [])[:1] if old and old.get("key") == key else []
        # the new record goes in before the data so a reader always finds the record of whichever
        # file it sees; the previous one stays until the rename has happened
        self.write_json(meta_path, {"key": key, "records": [rec, *old_recs]}, durable=self.durable)
        target = self._place(bucket, key)
        odd = target is None
        if target is not None:
            try:
                os.replace(tmp, target)
            except (IsADirectoryError, NotADirectoryError):
                odd = True
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                target = self._cross_device_replace(tmp, target)
                st = os.stat(target)
                rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino)
        if odd:
            oddp = self.odd_path(bucket, key)
            os.makedirs(os.path.dirname(oddp), exist_ok=True)
            os.replace(tmp, oddp)
            plain = self._plain_path(bucket, key)
            if plain is not None and os.path.isfile(plain):
                self._unlink_plain(bucket, plain)
            self._odd_update(bucket, key, True)
        else:
            oddp = self.odd_path(bucket, key)
            if os.path.exists(oddp):
                os.unlink(oddp)
                self._odd_update(bucket, key, False)
        if self.durable:  # the rename itself survives a crash only once its directory is synced
            self._sync_dir(os.path.dirname(self.odd_path(bucket, key) if odd else target))
        self.write_json(meta_path, {"key": key, "records": [rec]})
        return rec

    def _cross_device_replace(self, tmp: str, target: str) -> str:
        # the bucket directory is another file system (a mount or symlink): stage the copy beside it
        staged = os.path.join(os.path.dirname(target), TMP_PREFIX + secrets.token_hex(8))
        shutil.copyfile(tmp, staged)
        os.replace(staged, target)
        os.unlink(tmp)
        return target

    def _unlink_plain(self, bucket: str, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        stop = os.path.join(self.root, bucket)
        d = os.path.dirname(path)
        while d != stop and d.startswith(stop + os.sep):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)

    async def delete(self, bucket: str, key: str) -> None:
        async with self.key_lock(bucket, key):
            await asyncio.to_thread(self._delete_sync, bucket, key)

    def _delete_sync(self, bucket: str, key: str) -> None:
        self.bucket_dir(bucket)
        plain = self._plain_path(bucket, key)
        if plain is not None and os.path.isfile(plain):
            self._unlink_plain(bucket, plain)
        oddp = self.odd_path(bucket, key)
        if os.path.exists(oddp):
            os.unlink(oddp)
            self._odd_update(bucket, key, False)
        for suffix in (".json", ".etag"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.meta_path(bucket, key, suffix))

    # --- buckets ---------------------------------------------------------------------------------

    def _bucket_record(self, name: str) -> str:
        return os.path.join(self.hidden, "buckets", name + ".json")

    def note_bucket_created(self, name: str) -> None:
        """Remember when a bucket was created (a directory's own times change with its content);
        best effort: without the record, its directory's mtime stands in."""
        with contextlib.suppress(OSError):
            self.write_json(self._bucket_record(name), {"created": time.time()})

    def bucket_created(self, name: str, st: os.stat_result) -> float:
        rec = self.read_json(self._bucket_record(name))
        return float(rec["created"]) if rec and "created" in rec else st.st_mtime

    def remove_bucket(self, bucket: str) -> None:
        """Remove an (empty) bucket's directory and everything of it in the hidden area (blocking)."""
        shutil.rmtree(self.bucket_dir(bucket))
        for area in ("odd", "meta", "uploads"):
            shutil.rmtree(os.path.join(self.hidden, area, bucket), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(self._bucket_record(bucket))
        with self._odd_lock:
            self._odd.pop(bucket, None)

    # --- listing ---------------------------------------------------------------------------------

    def _walk(self, bucket_dir: str, prefix: str, after: str, cur: _Cursor) -> Iterator[tuple[str, str]]:
        """(key, path) of the ordinary files, in key order, keys > after and starting with prefix.
        Directory entries sort as ``name/``, which makes a depth-first walk come out in key order."""

        def walk(dirpath: str, keyprefix: str) -> Iterator[tuple[str, str]]:
            try:
                entries = list(os.scandir(dirpath))
            except OSError:
                return
            items = []
            for e in entries:
                name = e.name
                if name.startswith(TMP_PREFIX):
                    continue
                try:
                    name.encode("utf-8")
                    if e.is_dir():
                        items.append((name + "/", e.path, True))
                    elif e.is_file():
                        items.append((name, e.path, False))
                except (OSError, UnicodeEncodeError):  # unreadable entry or a name that is not UTF-8
                    continue
            items.sort()
            for sortname, path, is_dir in items:
                k = keyprefix + sortname
                if not k.startswith(prefix) and not prefix.startswith(k):
                    if k > prefix:
                        return
                    continue
                if cur.skip and k.startswith(cur.skip):
                    continue
                if is_dir:
                    if after >= k and not after.startswith(k):
                        continue  # everything below sorts before the marker
                    yield from walk(path, k)
                elif k > after and k.startswith(prefix):
                    yield k, path

        return walk(bucket_dir, "")

    def _odd_iter(self, bucket: str, prefix: str, after: str, cur: _Cursor) -> Iterator[tuple[str, str]]:
        keys = self.odd_keys(bucket)
        lo = max(prefix, after)
        with self._odd_lock:
            snapshot = []
            for k in keys.irange(minimum=lo):
                if not k.startswith(prefix):
                    break
                if k > after:
                    snapshot.append(k)
        for k in snapshot:
            if cur.skip and k.startswith(cur.skip):
                continue
            yield k, self.odd_path(bucket, k)

    def collect(self, bucket: str, prefix: str, delimiter: str, after: str, max_keys: int):
        """One page: ([(key, path, st, record)], [common prefixes], truncated, last item)."""
        d = self.bucket_dir(bucket)
        cur = _Cursor()
        merged = heapq.merge(self._walk(d, prefix, after, cur), self._odd_iter(bucket, prefix, after, cur))
        items: list[tuple[str, str | None]] = []
        truncated = False
        seen_last = None
        for key, path in merged:
            if key == seen_last or (cur.skip and key.startswith(cur.skip)):
                continue
            seen_last = key
            if delimiter:
                i = key.find(delimiter, len(prefix))
                if i >= 0:
                    cp = key[:i + len(delimiter)]
                    cur.skip = cp
                    if cp <= after:
                        continue  # rolled up on an earlier page
                    if len(items) >= max_keys:
                        truncated = True
                        break
                    items.append((cp, None))
                    continue
            if len(items) >= max_keys:
                truncated = True
                break
            items.append((key, path))
        contents, prefixes = [], []
        for key, path in items:
            if path is None:
                prefixes.append(key)
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            contents.append((key, st, self.record_sync(bucket, key, path, st)))
        last = items[-1][0] if items else None
        return contents, prefixes, truncated, last

    # --- copying ---------------------------------------------------------------------------------

    def copy_range(self, fd: int, start: int, end: int, algorithm: str | None) -> tuple[str, str, str | None]:
        """Copy bytes start..end of fd to a new temp file (blocking). (temp, md5 hex, checksum)."""
        tmp = self.new_tmp()
        md5 = hashlib.md5()
        summer = checksums.new(algorithm) if algorithm else None
        try:
            with open(tmp, "wb") as out:
                pos = start
                while pos <= end:
                    block = os.pread(fd, min(IO_BLOCK, end - pos + 1), pos)
                    if not block:
                        raise S3Error("InternalError", "The copy source became shorter while it was being copied.")
                    out.write(block)
                    md5.update(block)
                    if summer is not None:
                        summer.update(block)
                    pos += len(block)
                out.flush()
                if self.durable:
                    os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp, md5.hexdigest(), checksums.encode(summer.digest()) if summer is not None else None
