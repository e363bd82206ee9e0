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

The package's parts: ``files.py`` (the directory as objects), ``rest.py`` (the S3 REST calls the
face passes through), ``multipart.py``, ``sources.py`` (request bodies and copy sources) and
``wire.py`` (XML, headers, errors). Range and If-* headers are evaluated by the S3 face's own
code (``sidecar/s3/ranges.py``, ``conditions.py``). Errors are ``S3Error``; XML, statuses and
headers follow S3 as boto3 and awscli parse them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ...errors import NotModified, S3Error
from ...objects import ObjectMeta
from ...s3.conditions import etag_matches, opaque_tag
from ..base import ForwardRequest, ForwardResponse, PartInfo
from .files import FileStream, ObjectFiles
from .multipart import MultipartUploads
from .rest import RestRoutes
from .wire import MiB, object_headers, part_info

log = logging.getLogger(__name__)


class LocalUpstream:
    """An S3 store kept in a local directory: the cache path (head, head_part, get_range) reads
    the files directly; everything else is an S3 REST call routed by ``rest.RestRoutes``."""

    name = "local"

    def __init__(self, root: Path | str, *, min_part_size: int = 5 * MiB, region: str = "us-east-1",
                 durable: bool = True) -> None:
        self.files = ObjectFiles(root, durable=durable)
        self.routes = RestRoutes(self.files, MultipartUploads(self.files, min_part_size=min_part_size), region=region)

    async def close(self) -> None:
        return None

    # --- the cache path: head, head_part, get_range ----------------------------------------------

    def _meta_from(self, bucket: str, key: str, st: os.stat_result, rec: dict) -> ObjectMeta:
        headers = object_headers(rec, st.st_mtime) + [("content-length", str(st.st_size))]
        headers += [(n, v) for n, v in rec.get("checksums", ())]
        # this store answers a whole-object GET and a HEAD with the same checksums
        return ObjectMeta.from_headers(bucket, key, headers, answers=("GET", "HEAD"))

    async def head(self, bucket: str, key: str, *, if_none_match: str | None = None) -> ObjectMeta:
        path, st, rec = await self.files.describe(bucket, key)
        if if_none_match and etag_matches(if_none_match, rec["etag"], weak=True):
            raise NotModified()
        return self._meta_from(bucket, key, st, rec)

    async def head_part(self, bucket: str, key: str, part_number: int, etag: str) -> PartInfo:
        _path, st, rec = await self.files.describe(bucket, key)
        if etag and opaque_tag(etag) != opaque_tag(rec["etag"]):
            raise S3Error("PreconditionFailed", Condition="If-Match")
        return part_info(rec, st.st_size, part_number)

    @contextlib.asynccontextmanager
    async def get_range(self, bucket: str, key: str, start: int, end: int, *, if_match: str) -> AsyncIterator[FileStream]:
        fd, st, rec = await self.files.open_version(bucket, key)
        try:
            if if_match and not etag_matches(if_match, rec["etag"], weak=False):
                raise S3Error("PreconditionFailed", Condition="If-Match")
            if start < 0 or (end >= st.st_size and st.st_size) or (start > end and not (start == 0 and end == -1)):
                raise S3Error("InvalidRange", headers={"Content-Range": f"bytes */{st.st_size}"},
                              RangeRequested=f"bytes={start}-{end}", ActualObjectSize=str(st.st_size))
            yield FileStream(fd, start, end)
        finally:
            os.close(fd)

    # --- pass-through -------------------------------------------------------------------------------

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        try:
            return await self.routes.route(request)
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
