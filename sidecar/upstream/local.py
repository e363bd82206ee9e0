"""The local-directory upstream: a directory tree served as an S3 store (``--upstream file:///dir``).

Buckets are the top-level directories of ``root``; key ``a/b/c`` of bucket ``bk`` is the file
``root/bk/a/b/c``, so an existing dataset directory can be served as it is. Everything the file
system cannot hold lives in a hidden area, ``root/.sidecar/``:

- ``odd/<bucket>/<sha256(key)>``: objects whose key cannot be a path (``a//b``, ``x/../y``, a
  trailing ``/``, NUL, over-long segments, or a file/directory clash such as ``a`` and ``a/b``);
  listings merge them in key order. No key ever becomes a path outside ``root``.
- ``meta/<bucket>/<h[:2]>/<h>.json``: object metadata (headers, ETag, checksums, part sizes, tags)
  as records tied to the data file's (size, mtime_ns, inode). A record that no longer matches its
  file is ignored, so a file replaced by hand is simply a hand-placed file again.
- ``meta/.../<h>.etag``: the lazily computed MD5 ETag of a hand-placed file, same tie.
- ``uploads/<bucket>/<upload id>/``: multipart uploads in progress.
- ``tmp/``: files being written; every write is temp file + rename.

Errors are ``S3Error``; XML, statuses and headers follow S3 as boto3 and awscli parse them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import errno
import hashlib
import heapq
import json
import logging
import mimetypes
import os
import re
import secrets
import shutil
import stat
import threading
import time
import urllib.parse
import weakref
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from xml.sax.saxutils import escape as _escape

from sortedcontainers import SortedList

from sidecar.errors import NotModified, S3Error

from . import awschunked, checksums
from .base import ForwardRequest, ForwardResponse, ObjectMeta, PartInfo, http_date_to_ts

log = logging.getLogger(__name__)

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MiB = 1024 * 1024
MAX_OBJECT_SIZE = 5 * 1024 * MiB * 1024  # 5 TiB
MAX_PUT_SIZE = 5 * 1024 * MiB  # 5 GiB: PutObject, UploadPart and CopyObject sources
MAX_KEY_BYTES = 1024
MAX_XML_BODY = 4 * MiB
IO_BLOCK = 1 * MiB
OWNER_ID = hashlib.sha256(b"sidecar-local-owner").hexdigest()
OWNER_NAME = "sidecar"
TMP_PREFIX = ".sidecar-tmp-"

# Headers stored with an object and returned on GET/HEAD.
STORED_HEADERS = ("content-type", "content-encoding", "content-disposition", "content-language",
                  "cache-control", "expires", "x-amz-website-redirect-location", "x-amz-storage-class")
RESPONSE_OVERRIDES = {
    "response-content-type": "content-type", "response-content-language": "content-language",
    "response-expires": "expires", "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition", "response-content-encoding": "content-encoding",
}
# Sub-resources this backend does not implement: a request naming one gets 501 NotImplemented.
UNSUPPORTED_SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "cors", "encryption", "intelligent-tiering", "inventory",
    "legal-hold", "lifecycle", "logging", "metadataConfiguration", "metrics", "notification",
    "object-lock", "ownershipControls", "policy", "policyStatus", "publicAccessBlock", "replication",
    "requestPayment", "restore", "retention", "select", "session", "torrent", "versions", "website",
})
# Error codes not in sidecar.errors' table, with S3's statuses.
_EXTRA_STATUS = {"EntityTooSmall": 400, "InvalidPartNumber": 416, "XAmzContentSHA256Mismatch": 400,
                 "MaxMessageLengthExceeded": 400, "NoSuchVersion": 404, "MalformedTrailerError": 400,
                 "InvalidObjectState": 403, "InvalidTag": 400, "NoSuchTagSet": 404}

_BUCKET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")  # what may be served (hand-made dirs too)
_NEW_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # what CreateBucket accepts
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


def _err(code: str, message: str | None = None, **fields) -> S3Error:
    return S3Error(code, message, status=_EXTRA_STATUS.get(code), **fields)


def _not_implemented(what: str) -> S3Error:
    return S3Error("NotImplemented", f"{what} is not implemented by the local directory upstream.")


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _quote_etag(md5_hex: str) -> str:
    return f'"{md5_hex}"'


def _etag_core(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


def _etag_matches(header: str, etag: str) -> bool:
    want = _etag_core(etag)
    return any(t.strip() == "*" or _etag_core(t) == want for t in header.split(","))


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso(ts: float) -> str:
    ms = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{ms:03d}Z"


_XML_EXTRA = {"\r": "&#13;", "\n": "&#10;", "\t": "&#9;"}
_XML_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\r\n\t]")


def _x(value: object) -> str:
    """Text for an XML element, byte-exact after parsing (CR/LF/TAB as character references)."""
    text = _escape(str(value), {'"': "&quot;"})
    return _XML_BAD.sub(lambda m: _XML_EXTRA.get(m.group(), f"&#x{ord(m.group()):x};"), text)


def _el(name: str, value: object) -> str:
    return f"<{name}>{_x(value)}</{name}>"


def _xml_doc(root: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">{inner}</{root}>'.encode()


def _owner_xml() -> str:
    return f"<Owner><ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Owner>"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_xml(body: bytes) -> ET.Element:
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML")
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML") from None


def _child_text(el: ET.Element, name: str) -> str | None:
    for c in el:
        if _local(c.tag) == name:
            return c.text or ""
    return None


def _int_param(query: dict[str, str], name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer range",
                      ArgumentName=name, ArgumentValue=raw) from None
    if v < lo:
        raise S3Error("InvalidArgument", f"Argument {name} must be an integer between {lo} and 2147483647",
                      ArgumentName=name, ArgumentValue=raw)
    return min(v, hi) if hi is not None else v


def _url(value: str, encode: bool) -> str:
    return urllib.parse.quote(value, safe="/") if encode else value


class _Cursor:
    """Shared skip state of a listing: keys under ``skip`` are rolled up in a common prefix."""

    __slots__ = ("skip",)

    def __init__(self) -> None:
        self.skip: str | None = None


class _FileStream:
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


class _Sink:
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


class LocalUpstream:
    """An S3 store kept in a local directory: see the module docstring for the layout."""

    name = "local"

    def __init__(self, root: Path | str, *, min_part_size: int = 5 * MiB, region: str = "us-east-1",
                 durable: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.min_part_size = min_part_size
        self.region = region
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

    @classmethod
    def from_url(cls, url: str, **kw) -> "LocalUpstream":
        """``file:///abs/dir`` (the ``--upstream`` form) to an upstream on that directory."""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(f"not a file:/// URL: {url}")
        return cls(Path(urllib.parse.unquote(parsed.path)), **kw)

    async def close(self) -> None:
        return None

    # --- layout --------------------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> str:
        """The bucket's directory; NoSuchBucket unless it exists and its name is servable."""
        if not _BUCKET_NAME.fullmatch(bucket or ""):
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

    def _odd_path(self, bucket: str, key: str) -> str:
        return os.path.join(self.hidden, "odd", bucket, _sha(key))

    def _meta_path(self, bucket: str, key: str, suffix: str = ".json") -> str:
        h = _sha(key)
        return os.path.join(self.hidden, "meta", bucket, h[:2], h + suffix)

    def _new_tmp(self) -> str:
        os.makedirs(self._tmp, exist_ok=True)
        return os.path.join(self._tmp, secrets.token_hex(12))

    def _key_lock(self, bucket: str, key: str) -> asyncio.Lock:
        lock = self._locks.get((bucket, key))
        if lock is None:
            lock = asyncio.Lock()
            self._locks[(bucket, key)] = lock
        return lock

    # --- odd-key index -------------------------------------------------------------------------

    def _odd_keys(self, bucket: str) -> SortedList:
        with self._odd_lock:
            keys = self._odd.get(bucket)
            if keys is not None:
                return keys
            keys = SortedList()
            d = os.path.join(self.hidden, "odd", bucket)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for e in os.scandir(d):
                    meta = self._read_json(os.path.join(self.hidden, "meta", bucket, e.name[:2], e.name + ".json"))
                    if meta and isinstance(meta.get("key"), str) and _sha(meta["key"]) == e.name:
                        keys.add(meta["key"])
            self._odd[bucket] = keys
            return keys

    def _odd_update(self, bucket: str, key: str, present: bool) -> None:
        keys = self._odd_keys(bucket)
        with self._odd_lock:
            if present and key not in keys:
                keys.add(key)
            elif not present and key in keys:
                keys.remove(key)

    # --- metadata records ------------------------------------------------------------------------

    @staticmethod
    def _read_json(path: str) -> dict | None:
        try:
            with open(path, "rb") as f:
                value = json.load(f)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _write_json(self, path: str, value: dict, durable: bool = False) -> None:
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

    def _find(self, bucket: str, key: str) -> tuple[str, os.stat_result, bool] | None:
        """(data path, stat, odd) of the object, or None. Raises NoSuchBucket."""
        self._bucket_dir(bucket)
        plain = self._plain_path(bucket, key)
        if plain is not None:
            try:
                st = os.stat(plain)
            except OSError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode):
                return plain, st, False
        odd = self._odd_path(bucket, key)
        try:
            st = os.stat(odd)
        except OSError:
            return None
        return odd, st, True

    def _stored_record(self, bucket: str, key: str, st: os.stat_result) -> dict | None:
        meta = self._read_json(self._meta_path(bucket, key))
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
        c = self._read_json(self._meta_path(bucket, key, ".etag"))
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

    def _hash_file_etag(self, bucket: str, key: str, path: str, st: os.stat_result) -> str:
        """MD5 ETag of a hand-placed file (blocking: call from a worker thread), cached on disk."""
        h = hashlib.md5()
        with open(path, "rb") as f:
            fst = os.fstat(f.fileno())
            while block := f.read(IO_BLOCK):
                h.update(block)
        etag = _quote_etag(h.hexdigest())
        if (fst.st_size, fst.st_mtime_ns, fst.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino):
            self._remember_etag((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), etag)
            with contextlib.suppress(OSError):  # a read-only dataset keeps the in-memory cache only
                self._write_json(self._meta_path(bucket, key, ".etag"),
                                 {"key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                  "ino": st.st_ino, "etag": etag})
        return etag

    def _hand_record(self, path: str, st: os.stat_result, etag: str) -> dict:
        guessed, encoding = mimetypes.guess_type(path)
        ctype = guessed if guessed and not encoding else "binary/octet-stream"
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "etag": etag,
                "headers": [["content-type", ctype]], "checksums": [], "parts": None, "tags": []}

    def _record_sync(self, bucket: str, key: str, path: str, st: os.stat_result) -> dict:
        rec = self._stored_record(bucket, key, st)
        if rec is not None:
            return rec
        etag = self._cached_etag(bucket, key, st) or self._hash_file_etag(bucket, key, path, st)
        return self._hand_record(path, st, etag)

    async def _record(self, bucket: str, key: str, path: str, st: os.stat_result) -> dict:
        rec = self._stored_record(bucket, key, st)
        if rec is not None:
            return rec
        etag = self._cached_etag(bucket, key, st)
        if etag is None:
            tie = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            fut = self._md5_inflight.get(tie)
            if fut is None:  # one hashing per file version, however many concurrent readers
                fut = asyncio.ensure_future(asyncio.to_thread(self._hash_file_etag, bucket, key, path, st))
                self._md5_inflight[tie] = fut
                fut.add_done_callback(lambda _f: self._md5_inflight.pop(tie, None))
            etag = await asyncio.shield(fut)
        return self._hand_record(path, st, etag)

    async def _describe(self, bucket: str, key: str) -> tuple[str, os.stat_result, dict]:
        found = self._find(bucket, key)
        if found is None:
            raise S3Error("NoSuchKey", Key=key)
        path, st, _odd = found
        return path, st, await self._record(bucket, key, path, st)

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

    async def _commit(self, bucket: str, key: str, tmp: str, rec: dict) -> dict:
        """Make temp file ``tmp`` the current version of ``key`` with metadata ``rec``."""
        async with self._key_lock(bucket, key):
            return await asyncio.to_thread(self._commit_sync, bucket, key, tmp, rec)

    def _commit_sync(self, bucket: str, key: str, tmp: str, rec: dict) -> dict:
        self._bucket_dir(bucket)
        st = os.stat(tmp)
        rec = dict(rec, size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino)
        meta_path = self._meta_path(bucket, key)
        old = self._read_json(meta_path)
        old_recs = old.get("records", [])[:1] if old and old.get("key") == key else []
        # the new record goes in before the data so a reader always finds the record of whichever
        # file it sees; the previous one stays until the rename has happened
        self._write_json(meta_path, {"key": key, "records": [rec, *old_recs]}, durable=self.durable)
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
            oddp = self._odd_path(bucket, key)
            os.makedirs(os.path.dirname(oddp), exist_ok=True)
            os.replace(tmp, oddp)
            plain = self._plain_path(bucket, key)
            if plain is not None and os.path.isfile(plain):
                self._unlink_plain(bucket, plain)
            self._odd_update(bucket, key, True)
        else:
            oddp = self._odd_path(bucket, key)
            if os.path.exists(oddp):
                os.unlink(oddp)
                self._odd_update(bucket, key, False)
        if self.durable:  # the rename itself survives a crash only once its directory is synced
            self._sync_dir(os.path.dirname(self._odd_path(bucket, key) if odd else target))
        self._write_json(meta_path, {"key": key, "records": [rec]})
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

    async def _delete(self, bucket: str, key: str) -> None:
        async with self._key_lock(bucket, key):
            await asyncio.to_thread(self._delete_sync, bucket, key)

    def _delete_sync(self, bucket: str, key: str) -> None:
        self._bucket_dir(bucket)
        plain = self._plain_path(bucket, key)
        if plain is not None and os.path.isfile(plain):
            self._unlink_plain(bucket, plain)
        oddp = self._odd_path(bucket, key)
        if os.path.exists(oddp):
            os.unlink(oddp)
            self._odd_update(bucket, key, False)
        for suffix in (".json", ".etag"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._meta_path(bucket, key, suffix))

    # --- the cache path: head, head_part, get_range ----------------------------------------------

    def _object_headers(self, rec: dict, st_mtime: float) -> list[tuple[str, str]]:
        h = [("etag", rec["etag"]), ("last-modified", _http_date(st_mtime))]
        h += [(n, v) for n, v in rec.get("headers", ())]
        if rec.get("tags"):
            h.append(("x-amz-tagging-count", str(len(rec["tags"]))))
        return h

    def _meta_from(self, bucket: str, key: str, st: os.stat_result, rec: dict) -> ObjectMeta:
        headers = self._object_headers(rec, st.st_mtime) + [("content-length", str(st.st_size))]
        headers += [(n, v) for n, v in rec.get("checksums", ())]
        # this store answers a whole-object GET and a HEAD with the same checksums
        return ObjectMeta.from_headers(bucket, key, headers, answers=("GET", "HEAD"))

    async def head(self, bucket: str, key: str, *, if_none_match: str | None = None) -> ObjectMeta:
        path, st, rec = await self._describe(bucket, key)
        if if_none_match and _etag_matches(if_none_match, rec["etag"]):
            raise NotModified()
        return self._meta_from(bucket, key, st, rec)

    async def head_part(self, bucket: str, key: str, part_number: int, etag: str) -> PartInfo:
        _path, st, rec = await self._describe(bucket, key)
        if etag and _etag_core(etag) != _etag_core(rec["etag"]):
            raise S3Error("PreconditionFailed", Condition="If-Match")
        return self._part_info(rec, st.st_size, part_number)

    def _part_info(self, rec: dict, size: int, part_number: int) -> PartInfo:
        if part_number < 1 or part_number > 10000:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                          ArgumentName="partNumber", ArgumentValue=str(part_number))
        parts = rec.get("parts")
        if not parts:
            if part_number != 1:
                raise _err("InvalidPartNumber", "The requested partnumber is not satisfiable",
                           PartNumberRequested=str(part_number), ActualPartCount="1")
            return PartInfo(1, 0, size - 1, 206 if size else 200, ())
        if part_number > len(parts):
            raise _err("InvalidPartNumber", "The requested partnumber is not satisfiable",
                       PartNumberRequested=str(part_number), ActualPartCount=str(len(parts)))
        start = sum(parts[:part_number - 1])
        headers = [("x-amz-mp-parts-count", str(len(parts)))]
        part_sums = rec.get("part_checksums") or []
        if part_number <= len(part_sums) and part_sums[part_number - 1]:
            headers += [(n, v) for n, v in part_sums[part_number - 1]]
        return PartInfo(part_number, start, start + parts[part_number - 1] - 1, 206, tuple(headers))

    @contextlib.asynccontextmanager
    async def get_range(self, bucket: str, key: str, start: int, end: int, *, if_match: str) -> AsyncIterator[_FileStream]:
        found = self._find(bucket, key)
        if found is None:
            raise S3Error("NoSuchKey", Key=key)
        path = found[0]
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise S3Error("NoSuchKey", Key=key) from None
        try:
            st = os.fstat(fd)  # the open file pins this version, whatever happens to the name
            rec = await self._record(bucket, key, path, st)
            if if_match and not _etag_matches(if_match, rec["etag"]):
                raise S3Error("PreconditionFailed", Condition="If-Match")
            if start < 0 or (end >= st.st_size and st.st_size) or (start > end and not (start == 0 and end == -1)):
                raise S3Error("InvalidRange", headers={"Content-Range": f"bytes */{st.st_size}"},
                              RangeRequested=f"bytes={start}-{end}", ActualObjectSize=str(st.st_size))
            yield _FileStream(fd, start, end)
        finally:
            os.close(fd)

    # --- pass-through: routing ------------------------------------------------------------------

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        try:
            return await self._route(request)
        except (S3Error, NotModified):
            raise
        except OSError as e:
            log.warning("local upstream I/O error on %s %s/%s: %s", request.method, request.bucket, request.key, e)
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise S3Error("AccessDenied", f"The local directory refused the operation: {e.strerror}.") from None
            if e.errno == errno.ENOSPC:
                raise S3Error("InternalError", "The local directory is full.") from None
            raise S3Error("InternalError") from None
        except Exception:
            log.exception("local upstream failed on %s %s/%s", request.method, request.bucket, request.key)
            raise S3Error("InternalError") from None

    async def _route(self, req: ForwardRequest) -> ForwardResponse:
        q = dict(req.query)
        h = _headers(req.headers)
        m = req.method.upper()
        bad = UNSUPPORTED_SUBRESOURCES.intersection(q)
        if req.bucket is None:
            if m == "GET":
                return self._list_buckets(q)
            raise S3Error("MethodNotAllowed")
        if bad:
            raise _not_implemented(f"The {sorted(bad)[0]} sub-resource")
        b = req.bucket
        if req.key is None:
            if m == "GET":
                if "uploads" in q:
                    return self._list_uploads(b, q)
                if "location" in q:
                    self._bucket_dir(b)
                    loc = "" if self.region == "us-east-1" else self.region
                    return _xml_response(200, _xml_doc("LocationConstraint", _x(loc)))
                if "versioning" in q:
                    self._bucket_dir(b)
                    return _xml_response(200, _xml_doc("VersioningConfiguration", ""))
                for flag in ("tagging", "attributes"):
                    if flag in q:
                        raise _not_implemented(f"Bucket {flag}")
                if q.get("list-type") == "2":
                    return await self._list_objects(b, q, v2=True)
                return await self._list_objects(b, q, v2=False)
            if m == "HEAD":
                self._bucket_dir(b)
                return _response(200, [("x-amz-bucket-region", self.region)])
            if m == "PUT":
                if "tagging" in q:
                    raise _not_implemented("Bucket tagging")
                return await self._create_bucket(b, req)
            if m == "DELETE":
                if "tagging" in q:
                    raise _not_implemented("Bucket tagging")
                return await self._delete_bucket(b)
            if m == "POST" and "delete" in q:
                return await self._delete_objects(b, req, h)
            raise _not_implemented(f"{m} on a bucket")
        k = req.key
        if m in ("GET", "HEAD"):
            if "uploadId" in q and m == "GET":
                return self._list_parts(b, k, q)
            if "tagging" in q and m == "GET":
                return await self._get_tagging(b, k)
            if "attributes" in q and m == "GET":
                return await self._get_attributes(b, k, h)
            return await self._get_object(b, k, q, h, head=(m == "HEAD"))
        if m == "PUT":
            if "tagging" in q:
                return await self._put_tagging(b, k, req, h)
            if "uploadId" in q or "partNumber" in q:
                if "x-amz-copy-source" in h:
                    return await self._upload_part_copy(b, k, q, h)
                return await self._upload_part(b, k, q, h, req)
            if "x-amz-copy-source" in h:
                return await self._copy_object(b, k, h)
            return await self._put_object(b, k, h, req)
        if m == "POST":
            if "uploads" in q:
                return await self._create_upload(b, k, h)
            if "uploadId" in q:
                return await self._complete_upload(b, k, q, h, req)
            raise _not_implemented(f"POST on an object with query {sorted(q)}")
        if m == "DELETE":
            if "uploadId" in q:
                return await self._abort_upload(b, k, q)
            if "tagging" in q:
                return await self._delete_tagging(b, k)
            self._check_version(q)
            await self._delete(b, k)
            return _response(204, [])
        raise S3Error("MethodNotAllowed")

    @staticmethod
    def _check_version(q: dict[str, str]) -> None:
        v = q.get("versionId")
        if v is not None and v != "null":
            raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="versionId", ArgumentValue=v)

    # --- buckets ---------------------------------------------------------------------------------

    def _bucket_created(self, name: str, st: os.stat_result) -> float:
        rec = self._read_json(os.path.join(self.hidden, "buckets", name + ".json"))
        return float(rec["created"]) if rec and "created" in rec else st.st_mtime

    def _list_buckets(self, q: dict[str, str]) -> ForwardResponse:
        prefix = q.get("prefix", "")
        after = _decode_token(q.get("continuation-token")) if q.get("continuation-token") else ""
        limit = _int_param(q, "max-buckets", 10000, 1, 10000)
        names = []
        for e in os.scandir(self.root):
            if _BUCKET_NAME.fullmatch(e.name) and e.is_dir() and e.name.startswith(prefix) and e.name > after:
                names.append((e.name, e.stat()))
        names.sort()
        more = len(names) > limit
        names = names[:limit]
        inner = _owner_xml() + "<Buckets>" + "".join(
            f"<Bucket>{_el('Name', n)}{_el('CreationDate', _iso(self._bucket_created(n, st)))}"
            f"{_el('BucketRegion', self.region)}</Bucket>" for n, st in names) + "</Buckets>"
        if more:
            inner += _el("ContinuationToken", _encode_token(names[-1][0]))
        if prefix:
            inner += _el("Prefix", prefix)
        return _xml_response(200, _xml_doc("ListAllMyBucketsResult", inner))

    async def _create_bucket(self, bucket: str, req: ForwardRequest) -> ForwardResponse:
        await _read_small(req, MAX_XML_BODY)  # CreateBucketConfiguration: nothing to configure here
        if not _NEW_BUCKET_NAME.fullmatch(bucket) or ".." in bucket or re.fullmatch(r"[\d.]+", bucket):
            raise S3Error("InvalidBucketName", BucketName=bucket)
        d = os.path.join(self.root, bucket)
        try:
            os.mkdir(d)
        except FileExistsError:
            if self.region == "us-east-1" and os.path.isdir(d):
                return _response(200, [("Location", f"/{bucket}")])  # S3's legacy us-east-1 answer
            raise S3Error("BucketAlreadyOwnedByYou", BucketName=bucket) from None
        with contextlib.suppress(OSError):
            self._write_json(os.path.join(self.hidden, "buckets", bucket + ".json"), {"created": time.time()})
        return _response(200, [("Location", f"/{bucket}")])

    async def _delete_bucket(self, bucket: str) -> ForwardResponse:
        d = self._bucket_dir(bucket)

        def has_files(path: str) -> bool:
            for _dirpath, _dirs, files in os.walk(path):
                if files:
                    return True
            return False
        if await asyncio.to_thread(has_files, d) or len(self._odd_keys(bucket)):
            raise S3Error("BucketNotEmpty", BucketName=bucket)

        def remove() -> None:
            shutil.rmtree(d)
            for area in ("odd", "meta", "uploads"):
                shutil.rmtree(os.path.join(self.hidden, area, bucket), ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.hidden, "buckets", bucket + ".json"))
        await asyncio.to_thread(remove)
        with self._odd_lock:
            self._odd.pop(bucket, None)
        return _response(204, [])

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
        keys = self._odd_keys(bucket)
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
            yield k, self._odd_path(bucket, k)

    def _collect(self, bucket: str, prefix: str, delimiter: str, after: str, max_keys: int):
        """One page: ([(key, path, st, record)], [common prefixes], truncated, last item)."""
        d = self._bucket_dir(bucket)
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
            contents.append((key, st, self._record_sync(bucket, key, path, st)))
        last = items[-1][0] if items else None
        return contents, prefixes, truncated, last

    async def _list_objects(self, bucket: str, q: dict[str, str], v2: bool) -> ForwardResponse:
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        enc = q.get("encoding-type")
        if enc is not None and enc != "url":
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                          ArgumentName="encoding-type", ArgumentValue=enc)
        url = enc == "url"
        max_keys = _int_param(q, "max-keys", 1000, 0, 1000)
        if v2:
            token = q.get("continuation-token")
            start_after = q.get("start-after", "")
            if token is not None:
                if token == "":
                    raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                                  ArgumentName="continuation-token")
                after = _decode_token(token)
            else:
                after = start_after
        else:
            after = q.get("marker", "")
        contents, prefixes, truncated, last = await asyncio.to_thread(
            self._collect, bucket, prefix, delimiter, after, max_keys)
        out = [_el("Name", bucket), _el("Prefix", _url(prefix, url))]
        if v2:
            if "continuation-token" in q:
                out.append(_el("ContinuationToken", q["continuation-token"]))
            if "start-after" in q:
                out.append(_el("StartAfter", _url(q["start-after"], url)))
            out.append(_el("KeyCount", len(contents) + len(prefixes)))
            if truncated and last is not None:
                out.append(_el("NextContinuationToken", _encode_token(last)))
        else:
            out.append(_el("Marker", _url(after, url)))
            if truncated and delimiter and last is not None:
                out.append(_el("NextMarker", _url(last, url)))
        out.append(_el("MaxKeys", max_keys))
        if delimiter:
            out.append(_el("Delimiter", _url(delimiter, url)))
        if url:
            out.append(_el("EncodingType", "url"))
        out.append(_el("IsTruncated", "true" if truncated else "false"))
        owner = (not v2) or q.get("fetch-owner") == "true"
        for key, st, rec in contents:
            entry = [_el("Key", _url(key, url)), _el("LastModified", _iso(st.st_mtime)), _el("ETag", rec["etag"]),
                     _el("Size", st.st_size)]
            if owner:
                entry.append(_owner_xml())
            algs = [n[len("x-amz-checksum-"):].upper() for n, _ in rec.get("checksums", ())
                    if checksums.algorithm_of(n)]
            entry += [_el("ChecksumAlgorithm", a) for a in algs]
            sums = dict(rec.get("checksums", ()))
            if "x-amz-checksum-type" in sums:
                entry.append(_el("ChecksumType", sums["x-amz-checksum-type"]))
            entry.append(_el("StorageClass", dict(rec.get("headers", ())).get("x-amz-storage-class", "STANDARD")))
            out.append("<Contents>" + "".join(entry) + "</Contents>")
        for p in prefixes:
            out.append("<CommonPrefixes>" + _el("Prefix", _url(p, url)) + "</CommonPrefixes>")
        return _xml_response(200, _xml_doc("ListBucketResult", "".join(out)))

    # --- GET / HEAD object through forward ---------------------------------------------------------

    async def _get_object(self, bucket: str, key: str, q: dict[str, str], h: dict[str, str],
                          head: bool) -> ForwardResponse:
        self._check_version(q)
        found = self._find(bucket, key)
        if found is None:
            raise S3Error("NoSuchKey", Key=key)
        path = found[0]
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise S3Error("NoSuchKey", Key=key) from None
        try:
            st = os.fstat(fd)
            rec = await self._record(bucket, key, path, st)
            _check_conditions(h, rec["etag"], st.st_mtime)
            size = st.st_size
            headers = [(_canon(n), v) for n, v in self._object_headers(rec, st.st_mtime)]
            headers.append(("Accept-Ranges", "bytes"))
            status, start, end = 200, 0, size - 1
            whole = True
            if "partNumber" in q:
                part = self._part_info(rec, size, _int_param(q, "partNumber", 1, 1))
                start, end, status = part.start, part.end, part.status
                headers += list(part.headers)
                whole = not rec.get("parts")
                if status == 206:
                    headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            elif "range" in h:
                rng = _parse_range(h["range"], size)
                if rng is not None:
                    start, end = rng
                    status, whole = 206, False
                    headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            if whole and h.get("x-amz-checksum-mode", "").upper() == "ENABLED":
                headers += list(rec.get("checksums", ()))
            for param, name in RESPONSE_OVERRIDES.items():
                if param in q:
                    headers = [(n, v) for n, v in headers if n.lower() != name] + [(_canon(name), q[param])]
            length = max(0, end - start + 1)
            headers.append(("Content-Length", str(length)))
        except BaseException:
            os.close(fd)
            raise
        if head:
            os.close(fd)
            return _response(status, headers)

        async def body() -> AsyncIterator[bytes]:
            try:
                stream = _FileStream(fd, start, end)
                while chunk := await stream.read(IO_BLOCK):
                    yield chunk
            finally:
                os.close(fd)
        return ForwardResponse(status, _with_request_id(headers), body())

    # --- writing objects --------------------------------------------------------------------------

    def _check_key(self, key: str) -> None:
        if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise S3Error("KeyTooLongError", MaxSizeAllowed=str(MAX_KEY_BYTES), Size=str(len(key.encode("utf-8", "surrogatepass"))))

    async def _receive(self, req: ForwardRequest, h: dict[str, str], max_size: int) -> tuple[str, int, str, list[list[str]]]:
        """Stream the request body to a temp file, verifying every digest the client sent.
        Returns (temp path, size, md5 hex, stored checksum headers)."""
        chunked = awschunked.is_aws_chunked(h.items())
        decoder = None
        if chunked:
            decoder = awschunked.AwsChunkedDecoder.from_headers(h.items())
            declared = decoder.decoded_length
            if declared is None:
                raise S3Error("MissingContentLength", "x-amz-decoded-content-length is required for aws-chunked uploads")
        else:
            declared = req.content_length
        if declared is not None and declared > max_size:
            raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size), ProposedSize=str(declared))
        header_sums = {a: h[n] for n in h if (a := checksums.algorithm_of(n))}
        trailer_algs = [a for t in (decoder.trailer_names or []) if (a := checksums.algorithm_of(t))] if decoder else []
        if len(header_sums) + len(trailer_algs) > 1:
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
        algorithm = next(iter(header_sums), None) or (trailer_algs[0] if trailer_algs else None)
        if algorithm is None and h.get("x-amz-sdk-checksum-algorithm"):
            algorithm = h["x-amz-sdk-checksum-algorithm"].strip().lower()
            if algorithm not in checksums.ALGORITHMS:
                raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported.")
        for a, v in header_sums.items():
            if not checksums.is_well_formed(a, v):
                raise S3Error("InvalidRequest", f"Value for x-amz-checksum-{a} header is invalid.")
        md5_expected = None
        if "content-md5" in h:
            try:
                md5_expected = base64.b64decode(h["content-md5"], validate=True)
            except (binascii.Error, ValueError):
                md5_expected = b""
            if len(md5_expected) != 16:
                raise S3Error("InvalidDigest")
        sha_expected = h.get("x-amz-content-sha256", "").lower()
        sha_check = not chunked and re.fullmatch(r"[0-9a-f]{64}", sha_expected) is not None
        md5 = hashlib.md5()
        hashers: list = [md5]
        summer = checksums.new(algorithm) if algorithm else None
        if summer is not None:
            hashers.append(summer)
        sha = hashlib.sha256() if sha_check else None
        if sha is not None:
            hashers.append(sha)
        sink = _Sink(self._new_tmp(), hashers)
        try:
            source = decoder.stream(_body(req)) if decoder is not None else _body(req)
            try:
                async for piece in source:
                    if sink.size + len(piece) > max_size:
                        raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size))
                    await sink.write(piece)
            except (S3Error, NotModified):
                raise
            except (ConnectionError, asyncio.IncompleteReadError, EOFError) as e:
                raise S3Error("IncompleteBody", f"The request body terminated unexpectedly: {e}.") from None
            except OSError:
                raise
            except Exception as e:  # the face's body iterator failing (client gone, payload error)
                if type(e).__module__.startswith("aiohttp"):
                    raise S3Error("IncompleteBody", f"The request body terminated unexpectedly: {e}.") from None
                raise
            await sink.finish(self.durable)
            if declared is not None and sink.size != declared:
                raise S3Error("IncompleteBody")
            if md5_expected is not None and md5.digest() != md5_expected:
                raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.",
                              ExpectedDigest=h["content-md5"], CalculatedDigest=base64.b64encode(md5.digest()).decode())
            if sha is not None and sha.hexdigest() != sha_expected:
                raise _err("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.",
                           ClientComputedContentSHA256=sha_expected, S3ComputedContentSHA256=sha.hexdigest())
            stored: list[list[str]] = []
            if algorithm:
                given = header_sums.get(algorithm)
                if given is None and decoder is not None:
                    given = dict(decoder.trailers).get(f"x-amz-checksum-{algorithm}")
                    if given is not None and not checksums.is_well_formed(algorithm, given):
                        raise _err("MalformedTrailerError", f"Value for x-amz-checksum-{algorithm} trailing header is invalid.")
                computed = checksums.encode(summer.digest()) if summer is not None else None
                if given is not None and computed is not None and given != computed:
                    raise S3Error("BadDigest", f"The {algorithm.upper()} you specified did not match the calculated checksum.")
                value = given or computed
                if value:
                    stored = [[f"x-amz-checksum-{algorithm}", value], ["x-amz-checksum-type", "FULL_OBJECT"]]
            return sink.path, sink.size, md5.hexdigest(), stored
        except BaseException:
            sink.abort()
            raise

    async def _put_object(self, bucket: str, key: str, h: dict[str, str], req: ForwardRequest) -> ForwardResponse:
        self._bucket_dir(bucket)
        self._check_key(key)
        headers = _stored_headers(h)
        tags = _parse_tagging_header(h.get("x-amz-tagging"))
        tmp, _size, md5_hex, sums = await self._receive(req, h, MAX_PUT_SIZE)
        try:
            rec = await self._commit(bucket, key, tmp, {"etag": _quote_etag(md5_hex), "headers": headers,
                                                        "checksums": sums, "parts": None, "tags": tags})
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return _response(200, [("ETag", rec["etag"])] + [(n, v) for n, v in sums])

    # --- copy -----------------------------------------------------------------------------------

    def _copy_source(self, value: str) -> tuple[str, str]:
        raw, _, query = value.partition("?")
        version = urllib.parse.parse_qs(query).get("versionId", [None])[0] if query else None
        if version is not None and version != "null":
            raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="x-amz-copy-source",
                          ArgumentValue=value)
        path = urllib.parse.unquote(raw)
        if path.startswith("/"):
            path = path[1:]
        bucket, _, key = path.partition("/")
        if not bucket or not key:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                          ArgumentName="x-amz-copy-source", ArgumentValue=value)
        return bucket, key

    async def _open_source(self, h: dict[str, str]) -> tuple[str, str, int, os.stat_result, dict]:
        sb, sk = self._copy_source(h["x-amz-copy-source"])
        found = self._find(sb, sk)
        if found is None:
            raise S3Error("NoSuchKey", Key=sk)
        fd = os.open(found[0], os.O_RDONLY)
        try:
            st = os.fstat(fd)
            rec = await self._record(sb, sk, found[0], st)
            _check_conditions({k[len("x-amz-copy-source-"):]: v for k, v in h.items()
                               if k.startswith("x-amz-copy-source-if-")}, rec["etag"], st.st_mtime, copy=True)
        except BaseException:
            os.close(fd)
            raise
        return sb, sk, fd, st, rec

    def _copy_range(self, fd: int, start: int, end: int, algorithm: str | None) -> tuple[str, str, str | None]:
        """Copy bytes start..end of fd to a new temp file (blocking). (temp, md5 hex, checksum)."""
        tmp = self._new_tmp()
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

    async def _copy_object(self, bucket: str, key: str, h: dict[str, str]) -> ForwardResponse:
        self._bucket_dir(bucket)
        self._check_key(key)
        directive = h.get("x-amz-metadata-directive", "COPY").upper()
        tag_directive = h.get("x-amz-tagging-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE") or tag_directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.", ArgumentName="x-amz-metadata-directive",
                          ArgumentValue=directive)
        sb, sk, fd, st, src = await self._open_source(h)
        try:
            if (sb, sk) == (bucket, key) and directive == "COPY" and "x-amz-storage-class" not in h \
                    and "x-amz-website-redirect-location" not in h and "x-amz-server-side-encryption" not in h:
                raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object "
                              "to itself without changing the object's metadata, storage class, website redirect "
                              "location or encryption attributes.")
            if st.st_size > MAX_PUT_SIZE:
                raise S3Error("InvalidRequest", "The specified copy source is larger than the maximum allowable size "
                              f"for a copy source: {MAX_PUT_SIZE}")
            algorithm = (h.get("x-amz-checksum-algorithm") or "").lower() or next(
                (a for n, _ in src.get("checksums", ()) if (a := checksums.algorithm_of(n))), None)
            if algorithm and algorithm not in checksums.ALGORITHMS:
                raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported.")
            tmp, md5_hex, value = await asyncio.to_thread(self._copy_range, fd, 0, st.st_size - 1, algorithm)
        finally:
            os.close(fd)
        if directive == "REPLACE":
            headers = _stored_headers(h)
        else:
            headers = [list(x) for x in src.get("headers", ())]
            if "x-amz-storage-class" in h:
                headers = [x for x in headers if x[0] != "x-amz-storage-class"] + \
                    ([["x-amz-storage-class", h["x-amz-storage-class"]]] if h["x-amz-storage-class"] != "STANDARD" else [])
        tags = _parse_tagging_header(h.get("x-amz-tagging")) if tag_directive == "REPLACE" else list(src.get("tags") or [])
        sums = [[f"x-amz-checksum-{algorithm}", value], ["x-amz-checksum-type", "FULL_OBJECT"]] if value else []
        try:
            rec = await self._commit(bucket, key, tmp, {"etag": _quote_etag(md5_hex), "headers": headers,
                                                        "checksums": sums, "parts": None, "tags": tags})
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        inner = _el("LastModified", _iso(rec["mtime_ns"] / 1e9)) + _el("ETag", rec["etag"])
        if value:
            inner += _el("ChecksumType", "FULL_OBJECT") + _el(f"Checksum{algorithm.upper()}", value)
        return _xml_response(200, _xml_doc("CopyObjectResult", inner), [(n, v) for n, v in sums[:1]])

    # --- delete objects ---------------------------------------------------------------------------

    async def _delete_objects(self, bucket: str, req: ForwardRequest, h: dict[str, str]) -> ForwardResponse:
        self._bucket_dir(bucket)
        body = await _read_small(req, MAX_XML_BODY, h)
        _verify_small(body, h)
        root = _parse_xml(body)
        if _local(root.tag) != "Delete":
            raise S3Error("MalformedXML")
        quiet = (_child_text(root, "Quiet") or "").strip().lower() == "true"
        objects = [c for c in root if _local(c.tag) == "Object"]
        if not objects or len(objects) > 1000:
            raise S3Error("MalformedXML")
        out = []
        for obj in objects:
            key = _child_text(obj, "Key")
            version = _child_text(obj, "VersionId")
            if key is None:
                raise S3Error("MalformedXML")
            if version not in (None, "null"):
                out.append(f"<Error>{_el('Key', key)}{_el('VersionId', version)}<Code>NoSuchVersion</Code>"
                           "<Message>The specified version does not exist.</Message></Error>")
                continue
            try:
                if key:
                    await self._delete(bucket, key)
            except S3Error as e:
                out.append(f"<Error>{_el('Key', key)}{_el('Code', e.code)}{_el('Message', e.message)}</Error>")
                continue
            if not quiet:
                out.append(f"<Deleted>{_el('Key', key)}" + (_el("VersionId", version) if version else "") + "</Deleted>")
        return _xml_response(200, _xml_doc("DeleteResult", "".join(out)))

    # --- tagging and attributes ---------------------------------------------------------------------

    async def _update_record(self, bucket: str, key: str, change) -> dict:
        async with self._key_lock(bucket, key):
            path, st, rec = await self._describe(bucket, key)
            rec = dict(rec)
            change(rec)
            await asyncio.to_thread(self._write_json, self._meta_path(bucket, key), {"key": key, "records": [rec]})
            return rec

    async def _get_tagging(self, bucket: str, key: str) -> ForwardResponse:
        _path, _st, rec = await self._describe(bucket, key)
        tags = "".join(f"<Tag>{_el('Key', k)}{_el('Value', v)}</Tag>" for k, v in rec.get("tags") or [])
        return _xml_response(200, _xml_doc("Tagging", f"<TagSet>{tags}</TagSet>"))

    async def _put_tagging(self, bucket: str, key: str, req: ForwardRequest, h: dict[str, str]) -> ForwardResponse:
        body = await _read_small(req, MAX_XML_BODY, h)
        _verify_small(body, h)
        root = _parse_xml(body)
        tags = []
        for el in root.iter():
            if _local(el.tag) == "Tag":
                k, v = _child_text(el, "Key"), _child_text(el, "Value")
                if k is None or v is None:
                    raise S3Error("MalformedXML")
                tags.append([k, v])
        _validate_tags(tags)
        await self._update_record(bucket, key, lambda rec: rec.__setitem__("tags", tags))
        return _response(200, [])

    async def _delete_tagging(self, bucket: str, key: str) -> ForwardResponse:
        await self._update_record(bucket, key, lambda rec: rec.__setitem__("tags", []))
        return _response(204, [])

    async def _get_attributes(self, bucket: str, key: str, h: dict[str, str]) -> ForwardResponse:
        _path, st, rec = await self._describe(bucket, key)
        wanted = {a.strip() for a in h.get("x-amz-object-attributes", "").split(",") if a.strip()}
        if not wanted:
            raise S3Error("InvalidArgument", "Invalid attribute name specified.", ArgumentName="x-amz-object-attributes")
        inner = []
        if "ETag" in wanted:
            inner.append(_el("ETag", _etag_core(rec["etag"])))
        sums = [(n, v) for n, v in rec.get("checksums", ()) if checksums.algorithm_of(n)]
        if "Checksum" in wanted and sums:
            ctype = dict(rec.get("checksums", ())).get("x-amz-checksum-type", "FULL_OBJECT")
            inner.append("<Checksum>" + "".join(_el(f"Checksum{n[15:].upper()}", v) for n, v in sums)
                         + _el("ChecksumType", ctype) + "</Checksum>")
        if "ObjectParts" in wanted and rec.get("parts"):
            inner.append(f"<ObjectParts>{_el('TotalPartsCount', len(rec['parts']))}</ObjectParts>")
        if "StorageClass" in wanted:
            inner.append(_el("StorageClass", dict(rec.get("headers", ())).get("x-amz-storage-class", "STANDARD")))
        if "ObjectSize" in wanted:
            inner.append(_el("ObjectSize", st.st_size))
        return _xml_response(200, _xml_doc("GetObjectAttributesResponse", "".join(inner)),
                             [("Last-Modified", _http_date(st.st_mtime))])

    # --- multipart --------------------------------------------------------------------------------

    def _upload_dir(self, bucket: str, key: str, upload_id: str) -> tuple[str, dict]:
        self._bucket_dir(bucket)
        if not _UPLOAD_ID.fullmatch(upload_id or ""):
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        d = os.path.join(self.hidden, "uploads", bucket, upload_id)
        info = self._read_json(os.path.join(d, "upload.json"))
        if info is None or info.get("key") != key:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        return d, info

    async def _create_upload(self, bucket: str, key: str, h: dict[str, str]) -> ForwardResponse:
        self._bucket_dir(bucket)
        self._check_key(key)
        algorithm = (h.get("x-amz-checksum-algorithm") or "").lower() or None
        if algorithm and algorithm not in checksums.ALGORITHMS:
            raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported.")
        ctype = (h.get("x-amz-checksum-type") or ("COMPOSITE" if algorithm in ("sha1", "sha256") else
                                                 "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE")).upper()
        if algorithm is None and h.get("x-amz-checksum-type"):
            raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.")
        upload_id = secrets.token_urlsafe(36)
        d = os.path.join(self.hidden, "uploads", bucket, upload_id)
        info = {"key": key, "initiated": time.time(), "headers": _stored_headers(h),
                "tags": _parse_tagging_header(h.get("x-amz-tagging")), "algorithm": algorithm, "checksum_type": ctype}
        await asyncio.to_thread(self._write_json, os.path.join(d, "upload.json"), info)
        resp_headers = []
        if algorithm:
            resp_headers = [("x-amz-checksum-algorithm", algorithm.upper()), ("x-amz-checksum-type", ctype)]
        inner = _el("Bucket", bucket) + _el("Key", key) + _el("UploadId", upload_id)
        return _xml_response(200, _xml_doc("InitiateMultipartUploadResult", inner), resp_headers)

    def _part_number(self, q: dict[str, str]) -> int:
        raw = q.get("partNumber", "")
        if not raw.isdigit() or not 1 <= int(raw) <= 10000:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                          ArgumentName="partNumber", ArgumentValue=raw)
        return int(raw)

    async def _store_part(self, d: str, number: int, tmp: str, md5_hex: str, sums: list) -> dict:
        def store() -> dict:
            st = os.stat(tmp)
            part = {"etag": _quote_etag(md5_hex), "md5": md5_hex, "size": st.st_size, "ino": st.st_ino,
                    "mtime_ns": st.st_mtime_ns, "checksums": sums, "last_modified": time.time()}
            os.replace(tmp, os.path.join(d, f"{number}.part"))
            self._write_json(os.path.join(d, f"{number}.json"), part)
            return part
        return await asyncio.to_thread(store)

    async def _upload_part(self, bucket: str, key: str, q: dict[str, str], h: dict[str, str],
                           req: ForwardRequest) -> ForwardResponse:
        number = self._part_number(q)
        d, info = self._upload_dir(bucket, key, q.get("uploadId", ""))
        tmp, _size, md5_hex, sums = await self._receive(req, h, MAX_PUT_SIZE)
        try:
            sums = [s for s in sums if s[0] != "x-amz-checksum-type"]
            part = await self._store_part(d, number, tmp, md5_hex, sums)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return _response(200, [("ETag", part["etag"])] + [(n, v) for n, v in sums])

    async def _upload_part_copy(self, bucket: str, key: str, q: dict[str, str], h: dict[str, str]) -> ForwardResponse:
        number = self._part_number(q)
        d, info = self._upload_dir(bucket, key, q.get("uploadId", ""))
        _sb, _sk, fd, st, _src = await self._open_source(h)
        try:
            start, end = 0, st.st_size - 1
            if "x-amz-copy-source-range" in h:
                m = re.fullmatch(r"bytes=(\d+)-(\d+)", h["x-amz-copy-source-range"].strip())
                if not m or int(m.group(1)) > int(m.group(2)) or int(m.group(2)) >= st.st_size:
                    raise S3Error("InvalidArgument", "Range specified is not valid for source object of size: "
                                  f"{st.st_size}", ArgumentName="x-amz-copy-source-range",
                                  ArgumentValue=h["x-amz-copy-source-range"])
                start, end = int(m.group(1)), int(m.group(2))
            if end - start + 1 > MAX_PUT_SIZE:
                raise S3Error("InvalidRequest", "The specified copy range is larger than the maximum part size.")
            tmp, md5_hex, value = await asyncio.to_thread(self._copy_range, fd, start, end, info.get("algorithm"))
        finally:
            os.close(fd)
        sums = [[f"x-amz-checksum-{info['algorithm']}", value]] if value else []
        try:
            part = await self._store_part(d, number, tmp, md5_hex, sums)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        inner = _el("LastModified", _iso(part["last_modified"])) + _el("ETag", part["etag"])
        if value:
            inner += _el(f"Checksum{info['algorithm'].upper()}", value)
        return _xml_response(200, _xml_doc("CopyPartResult", inner))

    def _parts(self, d: str) -> dict[int, dict]:
        parts = {}
        for e in os.scandir(d):
            if e.name.endswith(".json") and e.name[:-5].isdigit():
                p = self._read_json(e.path)
                if p is not None:
                    parts[int(e.name[:-5])] = p
        return parts

    async def _complete_upload(self, bucket: str, key: str, q: dict[str, str], h: dict[str, str],
                               req: ForwardRequest) -> ForwardResponse:
        upload_id = q.get("uploadId", "")
        d, info = self._upload_dir(bucket, key, upload_id)
        body = await _read_small(req, MAX_XML_BODY, h)
        root = _parse_xml(body)
        if _local(root.tag) != "CompleteMultipartUpload":
            raise S3Error("MalformedXML")
        requested = []
        for el in root:
            if _local(el.tag) != "Part":
                continue
            num = (_child_text(el, "PartNumber") or "").strip()
            etag = _child_text(el, "ETag")
            if not num.isdigit() or etag is None:
                raise S3Error("MalformedXML")
            given = {_local(c.tag)[len("Checksum"):].lower(): (c.text or "").strip() for c in el
                     if _local(c.tag).startswith("Checksum") and _local(c.tag) != "ChecksumType"}
            requested.append((int(num), etag, given))
        if not requested:
            raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                          "our published schema")
        numbers = [n for n, _, _ in requested]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise S3Error("InvalidPartOrder")
        stored = self._parts(d)
        chosen = []
        for i, (num, etag, given) in enumerate(requested):
            part = stored.get(num)
            if part is None or _etag_core(etag) != part["md5"]:
                raise S3Error("InvalidPart", PartNumber=str(num), ETag=etag, UploadId=upload_id)
            part_sums = {checksums.algorithm_of(n): v for n, v in part.get("checksums", ())}
            for alg, value in given.items():
                if alg in part_sums and part_sums[alg] != value:
                    raise S3Error("InvalidPart", PartNumber=str(num), ETag=etag, UploadId=upload_id)
            if i < len(requested) - 1 and part["size"] < self.min_part_size:
                raise _err("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size",
                           ProposedSize=str(part["size"]), MinSizeAllowed=str(self.min_part_size),
                           PartNumber=str(num), ETag=part["etag"])
            chosen.append((num, part))
        total = sum(p["size"] for _, p in chosen)
        if total > MAX_OBJECT_SIZE:
            raise S3Error("EntityTooLarge")
        algorithm = info.get("algorithm")
        ctype = info.get("checksum_type", "COMPOSITE")
        full = algorithm if algorithm and ctype == "FULL_OBJECT" else None
        tmp, full_value = await asyncio.to_thread(self._concat_parts, d, chosen, full)
        etag = '"' + hashlib.md5(b"".join(bytes.fromhex(p["md5"]) for _, p in chosen)).hexdigest() + f'-{len(chosen)}"'
        sums: list[list[str]] = []
        part_sums = [[list(x) for x in p.get("checksums", ())] for _, p in chosen]
        if algorithm:
            name = f"x-amz-checksum-{algorithm}"
            if full_value:
                sums = [[name, full_value], ["x-amz-checksum-type", "FULL_OBJECT"]]
            else:
                values = [dict(map(tuple, ps)).get(name) for ps in part_sums]
                if all(values):
                    value = checksums.composite(algorithm, values)  # type: ignore[arg-type]
                    if value:
                        sums = [[name, value], ["x-amz-checksum-type", "COMPOSITE"]]
        try:
            rec = await self._commit(bucket, key, tmp, {
                "etag": etag, "headers": info.get("headers", []), "checksums": sums,
                "parts": [p["size"] for _, p in chosen], "part_checksums": part_sums, "tags": info.get("tags", [])})
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        await asyncio.to_thread(shutil.rmtree, d, True)
        inner = (_el("Location", f"/{bucket}/{urllib.parse.quote(key)}") + _el("Bucket", bucket) + _el("Key", key)
                 + _el("ETag", rec["etag"]))
        if sums:
            inner += _el(f"Checksum{algorithm.upper()}", sums[0][1]) + _el("ChecksumType", sums[1][1])
        return _xml_response(200, _xml_doc("CompleteMultipartUploadResult", inner))

    def _concat_parts(self, d: str, chosen: list[tuple[int, dict]], algorithm: str | None) -> tuple[str, str | None]:
        tmp = self._new_tmp()
        summer = checksums.new(algorithm) if algorithm else None
        try:
            with open(tmp, "wb") as out:
                for num, part in chosen:
                    with open(os.path.join(d, f"{num}.part"), "rb") as f:
                        st = os.fstat(f.fileno())
                        if (st.st_size, st.st_ino, st.st_mtime_ns) != (part["size"], part["ino"], part["mtime_ns"]):
                            raise S3Error("InvalidPart", PartNumber=str(num))
                        if summer is None:
                            shutil.copyfileobj(f, out, IO_BLOCK)
                        else:
                            while block := f.read(IO_BLOCK):
                                out.write(block)
                                summer.update(block)
                out.flush()
                if self.durable:
                    os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp, checksums.encode(summer.digest()) if summer is not None else None

    async def _abort_upload(self, bucket: str, key: str, q: dict[str, str]) -> ForwardResponse:
        d, _info = self._upload_dir(bucket, key, q.get("uploadId", ""))
        await asyncio.to_thread(shutil.rmtree, d, True)
        return _response(204, [])

    def _list_parts(self, bucket: str, key: str, q: dict[str, str]) -> ForwardResponse:
        upload_id = q.get("uploadId", "")
        d, info = self._upload_dir(bucket, key, upload_id)
        max_parts = _int_param(q, "max-parts", 1000, 0, 1000)
        marker = _int_param(q, "part-number-marker", 0, 0)
        parts = sorted((n, p) for n, p in self._parts(d).items() if n > marker)
        page, truncated = parts[:max_parts], len(parts) > max_parts
        out = [_el("Bucket", bucket), _el("Key", key), _el("UploadId", upload_id),
               _el("PartNumberMarker", marker),
               _el("NextPartNumberMarker", page[-1][0] if page else 0), _el("MaxParts", max_parts),
               _el("IsTruncated", "true" if truncated else "false"),
               f"<Initiator>{_el('ID', OWNER_ID)}{_el('DisplayName', OWNER_NAME)}</Initiator>", _owner_xml(),
               _el("StorageClass", "STANDARD")]
        if info.get("algorithm"):
            out.append(_el("ChecksumAlgorithm", info["algorithm"].upper()))
            out.append(_el("ChecksumType", info.get("checksum_type", "COMPOSITE")))
        for n, p in page:
            sums = "".join(_el(f"Checksum{name[15:].upper()}", v) for name, v in p.get("checksums", ()))
            out.append(f"<Part>{_el('PartNumber', n)}{_el('LastModified', _iso(p['last_modified']))}"
                       f"{_el('ETag', p['etag'])}{_el('Size', p['size'])}{sums}</Part>")
        return _xml_response(200, _xml_doc("ListPartsResult", "".join(out)))

    def _list_uploads(self, bucket: str, q: dict[str, str]) -> ForwardResponse:
        self._bucket_dir(bucket)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        max_uploads = _int_param(q, "max-uploads", 1000, 0, 1000)
        url = q.get("encoding-type") == "url"
        uploads = []
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(os.path.join(self.hidden, "uploads", bucket)):
                info = self._read_json(os.path.join(e.path, "upload.json"))
                if info and info.get("key", "").startswith(prefix):
                    uploads.append((info["key"], info["initiated"], e.name))
        uploads.sort()
        items: list[tuple] = []
        seen_prefixes = set()
        truncated = False
        for key, initiated, uid in uploads:
            if key < key_marker or (key == key_marker and (not id_marker or uid <= id_marker)):
                continue
            if delimiter and (i := key.find(delimiter, len(prefix))) >= 0:
                cp = key[:i + len(delimiter)]
                if cp in seen_prefixes or cp <= key_marker:
                    continue
                if len(items) >= max_uploads:
                    truncated = True
                    break
                seen_prefixes.add(cp)
                items.append(("p", cp))
                continue
            if len(items) >= max_uploads:
                truncated = True
                break
            items.append(("u", key, uid, initiated))
        out = [_el("Bucket", bucket), _el("KeyMarker", _url(key_marker, url)), _el("UploadIdMarker", id_marker)]
        last = items[-1] if items else None
        out.append(_el("NextKeyMarker", _url(last[1], url) if last else ""))
        out.append(_el("NextUploadIdMarker", last[2] if last and last[0] == "u" else ""))
        if delimiter:
            out.append(_el("Delimiter", _url(delimiter, url)))
        out.append(_el("Prefix", _url(prefix, url)))
        out.append(_el("MaxUploads", max_uploads))
        if url:
            out.append(_el("EncodingType", "url"))
        out.append(_el("IsTruncated", "true" if truncated else "false"))
        for item in items:
            if item[0] == "u":
                out.append(f"<Upload>{_el('Key', _url(item[1], url))}{_el('UploadId', item[2])}"
                           f"<Initiator>{_el('ID', OWNER_ID)}{_el('DisplayName', OWNER_NAME)}</Initiator>"
                           f"{_owner_xml()}{_el('StorageClass', 'STANDARD')}{_el('Initiated', _iso(item[3]))}</Upload>")
        for item in items:
            if item[0] == "p":
                out.append(f"<CommonPrefixes>{_el('Prefix', _url(item[1], url))}</CommonPrefixes>")
        return _xml_response(200, _xml_doc("ListMultipartUploadsResult", "".join(out)))


# --- request and response helpers -------------------------------------------------------------------

def _headers(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def _canon(name: str) -> str:
    """S3's spelling of a response header name (HTTP does not care; some clients' logs do)."""
    special = {"etag": "ETag", "last-modified": "Last-Modified", "content-type": "Content-Type",
               "content-encoding": "Content-Encoding", "content-disposition": "Content-Disposition",
               "content-language": "Content-Language", "cache-control": "Cache-Control", "expires": "Expires"}
    return special.get(name, name)


def _stored_headers(h: dict[str, str]) -> list[list[str]]:
    out = []
    for name in STORED_HEADERS:
        if name in h:
            value = h[name]
            if name == "content-encoding":
                value = awschunked.strip_aws_chunked(value)
                if value is None:
                    continue
            if name == "x-amz-storage-class" and value == "STANDARD":
                continue
            out.append([name, value])
    if not any(n == "content-type" for n, _ in out):
        out.insert(0, ["content-type", "binary/octet-stream"])
    out += sorted([n, v] for n, v in h.items() if n.startswith("x-amz-meta-"))
    return out


def _parse_tagging_header(value: str | None) -> list[list[str]]:
    if not value:
        return []
    tags = [[k, v] for k, v in urllib.parse.parse_qsl(value, keep_blank_values=True)]
    _validate_tags(tags)
    return tags


def _validate_tags(tags: list[list[str]]) -> None:
    if len(tags) > 10 or len({k for k, _ in tags}) != len(tags):
        raise _err("InvalidTag", "Object tags cannot be greater than 10 or have duplicate keys")
    for k, v in tags:
        if not 1 <= len(k) <= 128 or len(v) > 256:
            raise _err("InvalidTag", "The TagKey or TagValue you have provided is too long or empty")


def _encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass")).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token", ArgumentValue=token) from None


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as S3 reads it; None to serve the whole object (unparseable or
    multiple ranges); InvalidRange when nothing of it is inside the object."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    first, last = m.group(1), m.group(2)
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            raise S3Error("InvalidRange", headers={"Content-Range": f"bytes */{size}"},
                          RangeRequested=value, ActualObjectSize=str(size))
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if end < start:
        return None
    if start >= size:
        raise S3Error("InvalidRange", headers={"Content-Range": f"bytes */{size}"},
                      RangeRequested=value, ActualObjectSize=str(size))
    return start, min(end, size - 1)


def _check_conditions(h: dict[str, str], etag: str, mtime: float, copy: bool = False) -> None:
    """If-Match / If-Unmodified-Since (412) and If-None-Match / If-Modified-Since (304), in S3's
    precedence. ``h`` uses the plain header names (the copy-source ones are passed stripped); for a
    copy source every failed condition is 412."""
    mtime = int(mtime)
    im, inm = h.get("if-match"), h.get("if-none-match")
    ims, ius = http_date_to_ts(h.get("if-modified-since")), http_date_to_ts(h.get("if-unmodified-since"))
    if im is not None and not _etag_matches(im, etag):
        raise S3Error("PreconditionFailed", Condition="If-Match")
    if im is None and ius is not None and mtime > ius:
        raise S3Error("PreconditionFailed", Condition="If-Unmodified-Since")
    if inm is not None and _etag_matches(inm, etag):
        if copy:
            raise S3Error("PreconditionFailed", Condition="x-amz-copy-source-If-None-Match")
        raise S3Error("NotModified", headers={"ETag": etag})
    if inm is None and ims is not None and mtime <= ims:
        if copy:
            raise S3Error("PreconditionFailed", Condition="x-amz-copy-source-If-Modified-Since")
        raise S3Error("NotModified", headers={"ETag": etag})


async def _body(req: ForwardRequest) -> AsyncIterator[bytes]:
    if req.body is None:
        return
    async for chunk in req.body:
        if chunk:
            yield bytes(chunk)


async def _read_small(req: ForwardRequest, limit: int, h: dict[str, str] | None = None) -> bytes:
    """A whole (small, XML) request body, aws-chunked framing removed."""
    source = _body(req)
    if h is not None and awschunked.is_aws_chunked(h.items()):
        source = awschunked.AwsChunkedDecoder.from_headers(h.items()).stream(source)
    buf = bytearray()
    async for piece in source:
        buf += piece
        if len(buf) > limit:
            raise _err("MaxMessageLengthExceeded", "Your request was too big.")
    return bytes(buf)


def _verify_small(body: bytes, h: dict[str, str]) -> None:
    if "content-md5" in h:
        try:
            want = base64.b64decode(h["content-md5"], validate=True)
        except (binascii.Error, ValueError):
            raise S3Error("InvalidDigest") from None
        if want != hashlib.md5(body).digest():
            raise S3Error("BadDigest")
    for name, value in h.items():
        alg = checksums.algorithm_of(name)
        c = checksums.new(alg) if alg else None
        if c is not None:
            c.update(body)
            if checksums.encode(c.digest()) != value:
                raise S3Error("BadDigest", f"The {alg.upper()} you specified did not match the calculated checksum.")


def _request_id() -> str:
    return secrets.token_hex(8).upper()


def _with_request_id(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return headers + [("x-amz-request-id", _request_id())]


async def _one(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body


def _response(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> ForwardResponse:
    if not any(n.lower() == "content-length" for n, _ in headers):
        headers = headers + [("Content-Length", str(len(body)))]
    return ForwardResponse(status, _with_request_id(headers), _one(body))


def _xml_response(status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> ForwardResponse:
    return _response(status, [("Content-Type", "application/xml"), *headers], body)
