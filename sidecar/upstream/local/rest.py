"""The S3 REST calls the local directory upstream answers: the requests the S3 face passes
through (listings, writes, copies, deletes, tagging, multipart), routed by method, bucket, key
and sub-resource."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator

from ...errors import S3Error
from ...objects import http_date
from ...s3.conditions import opaque_tag
from ...s3.ranges import RangeNotSatisfiable, parse_range, resolve
from .. import checksums
from ..base import ForwardRequest, ForwardResponse
from .files import FileStream, ObjectFiles
from .multipart import MultipartUploads
from .sources import open_copy_source, receive
from .wire import (BUCKET_NAME, IO_BLOCK, MAX_PUT_SIZE, MAX_XML_BODY, NEW_BUCKET_NAME, RESPONSE_OVERRIDES,
                   UNSUPPORTED_SUBRESOURCES, canonical_name, check_conditions, check_key, child_text, decode_token,
                   element, encode_token, header_dict, int_param, iso_time, local_name, not_implemented,
                   object_headers, owner_xml, parse_tagging_header, parse_xml, part_info, quote_etag, read_small,
                   response, stored_headers, url_encoded, validate_tags, verify_small, with_request_id, xml_doc,
                   xml_response, xml_text)


class RestRoutes:
    """S3 REST requests on the objects of ``files``; multipart calls go to ``uploads``."""

    def __init__(self, files: ObjectFiles, uploads: MultipartUploads, *, region: str) -> None:
        self.files = files
        self.uploads = uploads
        self.region = region

    async def route(self, req: ForwardRequest) -> ForwardResponse:
        q = dict(req.query)
        h = header_dict(req.headers)
        m = req.method.upper()
        bad = UNSUPPORTED_SUBRESOURCES.intersection(q)
        if req.bucket is None:
            if m == "GET":
                return self._list_buckets(q)
            raise S3Error("MethodNotAllowed")
        if bad:
            raise not_implemented(f"The {sorted(bad)[0]} sub-resource")
        if req.key is None:
            return await self._route_bucket(req, m, req.bucket, q, h)
        return await self._route_object(req, m, req.bucket, req.key, q, h)

    async def _route_bucket(self, req: ForwardRequest, m: str, b: str, q: dict[str, str],
                            h: dict[str, str]) -> ForwardResponse:
        """Calls on a bucket: listings, location, versioning, create, delete, DeleteObjects."""
        if m == "GET":
            if "uploads" in q:
                return self.uploads.list_uploads(b, q)
            if "location" in q:
                self.files.bucket_dir(b)
                loc = "" if self.region == "us-east-1" else self.region
                return xml_response(200, xml_doc("LocationConstraint", xml_text(loc)))
            if "versioning" in q:
                self.files.bucket_dir(b)
                return xml_response(200, xml_doc("VersioningConfiguration", ""))
            for flag in ("tagging", "attributes"):
                if flag in q:
                    raise not_implemented(f"Bucket {flag}")
            if q.get("list-type") == "2":
                return await self._list_objects(b, q, v2=True)
            return await self._list_objects(b, q, v2=False)
        if m == "HEAD":
            self.files.bucket_dir(b)
            return response(200, [("x-amz-bucket-region", self.region)])
        if m == "PUT":
            if "tagging" in q:
                raise not_implemented("Bucket tagging")
            return await self._create_bucket(b, req)
        if m == "DELETE":
            if "tagging" in q:
                raise not_implemented("Bucket tagging")
            return await self._delete_bucket(b)
        if m == "POST" and "delete" in q:
            return await self._delete_objects(b, req, h)
        raise not_implemented(f"{m} on a bucket")

    async def _route_object(self, req: ForwardRequest, m: str, b: str, k: str, q: dict[str, str],
                            h: dict[str, str]) -> ForwardResponse:
        """Calls on an object: GET/HEAD, PUT (plain, copy, part, tagging), POST (multipart), DELETE."""
        if m in ("GET", "HEAD"):
            if "uploadId" in q and m == "GET":
                return self.uploads.list_parts(b, k, q)
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
                    return await self.uploads.upload_part_copy(b, k, q, h)
                return await self.uploads.upload_part(b, k, q, h, req)
            if "x-amz-copy-source" in h:
                return await self._copy_object(b, k, h)
            return await self._put_object(b, k, h, req)
        if m == "POST":
            if "uploads" in q:
                return await self.uploads.create(b, k, h)
            if "uploadId" in q:
                return await self.uploads.complete(b, k, q, h, req)
            raise not_implemented(f"POST on an object with query {sorted(q)}")
        if m == "DELETE":
            if "uploadId" in q:
                return await self.uploads.abort(b, k, q)
            if "tagging" in q:
                return await self._delete_tagging(b, k)
            self._check_version(q)
            await self.files.delete(b, k)
            return response(204, [])
        raise S3Error("MethodNotAllowed")

    @staticmethod
    def _check_version(q: dict[str, str]) -> None:
        v = q.get("versionId")
        if v is not None and v != "null":
            raise S3Error("InvalidArgument", "Invalid version id specified", ArgumentName="versionId", ArgumentValue=v)

    # --- buckets ---------------------------------------------------------------------------------

    def _list_buckets(self, q: dict[str, str]) -> ForwardResponse:
        prefix = q.get("prefix", "")
        after = decode_token(q.get("continuation-token")) if q.get("continuation-token") else ""
        limit = int_param(q, "max-buckets", 10000, 1, 10000)
        names = []
        for e in os.scandir(self.files.root):
            if BUCKET_NAME.fullmatch(e.name) and e.is_dir() and e.name.startswith(prefix) and e.name > after:
                names.append((e.name, e.stat()))
        names.sort()
        more = len(names) > limit
        names = names[:limit]
        inner = owner_xml() + "<Buckets>" + "".join(
            f"<Bucket>{element('Name', n)}{element('CreationDate', iso_time(self.files.bucket_created(n, st)))}"
            f"{element('BucketRegion', self.region)}</Bucket>" for n, st in names) + "</Buckets>"
        if more:
            inner += element("ContinuationToken", encode_token(names[-1][0]))
        if prefix:
            inner += element("Prefix", prefix)
        return xml_response(200, xml_doc("ListAllMyBucketsResult", inner))

    async def _create_bucket(self, bucket: str, req: ForwardRequest) -> ForwardResponse:
        await read_small(req, MAX_XML_BODY)  # CreateBucketConfiguration: nothing to configure here
        if not NEW_BUCKET_NAME.fullmatch(bucket) or ".." in bucket or re.fullmatch(r"[\d.]+", bucket):
            raise S3Error("InvalidBucketName", BucketName=bucket)
        d = os.path.join(self.files.root, bucket)
        try:
            os.mkdir(d)
        except FileExistsError:
            if self.region == "us-east-1" and os.path.isdir(d):
                return response(200, [("Location", f"/{bucket}")])  # S3's legacy us-east-1 answer
            raise S3Error("BucketAlreadyOwnedByYou", BucketName=bucket) from None
        self.files.note_bucket_created(bucket)
        return response(200, [("Location", f"/{bucket}")])

    async def _delete_bucket(self, bucket: str) -> ForwardResponse:
        d = self.files.bucket_dir(bucket)

        def has_files(path: str) -> bool:
            for _dirpath, _dirs, files in os.walk(path):
                if files:
                    return True
            return False
        if await asyncio.to_thread(has_files, d) or len(self.files.odd_keys(bucket)):
            raise S3Error("BucketNotEmpty", BucketName=bucket)

        await asyncio.to_thread(self.files.remove_bucket, bucket)
        return response(204, [])

    async def _list_objects(self, bucket: str, q: dict[str, str], v2: bool) -> ForwardResponse:
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        enc = q.get("encoding-type")
        if enc is not None and enc != "url":
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                          ArgumentName="encoding-type", ArgumentValue=enc)
        url = enc == "url"
        max_keys = int_param(q, "max-keys", 1000, 0, 1000)
        if v2:
            token = q.get("continuation-token")
            start_after = q.get("start-after", "")
            if token is not None:
                if token == "":
                    raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                                  ArgumentName="continuation-token")
                after = decode_token(token)
            else:
                after = start_after
        else:
            after = q.get("marker", "")
        contents, prefixes, truncated, last = await asyncio.to_thread(
            self.files.collect, bucket, prefix, delimiter, after, max_keys)
        out = [element("Name", bucket), element("Prefix", url_encoded(prefix, url))]
        if v2:
            if "continuation-token" in q:
                out.append(element("ContinuationToken", q["continuation-token"]))
            if "start-after" in q:
                out.append(element("StartAfter", url_encoded(q["start-after"], url)))
            out.append(element("KeyCount", len(contents) + len(prefixes)))
            if truncated and last is not None:
                out.append(element("NextContinuationToken", encode_token(last)))
        else:
            out.append(element("Marker", url_encoded(after, url)))
            if truncated and delimiter and last is not None:
                out.append(element("NextMarker", url_encoded(last, url)))
        out.append(element("MaxKeys", max_keys))
        if delimiter:
            out.append(element("Delimiter", url_encoded(delimiter, url)))
        if url:
            out.append(element("EncodingType", "url"))
        out.append(element("IsTruncated", "true" if truncated else "false"))
        owner = (not v2) or q.get("fetch-owner") == "true"
        for key, st, rec in contents:
            entry = [element("Key", url_encoded(key, url)), element("LastModified", iso_time(st.st_mtime)), element("ETag", rec["etag"]),
                     element("Size", st.st_size)]
            if owner:
                entry.append(owner_xml())
            algs = [n[len("x-amz-checksum-"):].upper() for n, _ in rec.get("checksums", ())
                    if checksums.algorithm_of(n)]
            entry += [element("ChecksumAlgorithm", a) for a in algs]
            sums = dict(rec.get("checksums", ()))
            if "x-amz-checksum-type" in sums:
                entry.append(element("ChecksumType", sums["x-amz-checksum-type"]))
            entry.append(element("StorageClass", dict(rec.get("headers", ())).get("x-amz-storage-class", "STANDARD")))
            out.append("<Contents>" + "".join(entry) + "</Contents>")
        for p in prefixes:
            out.append("<CommonPrefixes>" + element("Prefix", url_encoded(p, url)) + "</CommonPrefixes>")
        return xml_response(200, xml_doc("ListBucketResult", "".join(out)))

    # --- GET / HEAD object through forward ---------------------------------------------------------

    async def _get_object(self, bucket: str, key: str, q: dict[str, str], h: dict[str, str],
                          head: bool) -> ForwardResponse:
        self._check_version(q)
        fd, st, rec = await self.files.open_version(bucket, key)
        try:
            check_conditions(h, rec["etag"], st.st_mtime)
            size = st.st_size
            headers = [(canonical_name(n), v) for n, v in object_headers(rec, st.st_mtime)]
            headers.append(("Accept-Ranges", "bytes"))
            status, start, end = 200, 0, size - 1
            whole = True
            if "partNumber" in q:
                part = part_info(rec, size, int_param(q, "partNumber", 1, 1))
                start, end, status = part.start, part.end, part.status
                headers += list(part.headers)
                whole = not rec.get("parts")
                if status == 206:
                    headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            elif "range" in h:
                try:
                    rng = resolve(parse_range(h["range"]), size)
                except RangeNotSatisfiable:
                    raise S3Error("InvalidRange", headers={"Content-Range": f"bytes */{size}"},
                                  RangeRequested=h["range"], ActualObjectSize=str(size)) from None
                if rng is not None:
                    start, end = rng.start, rng.end
                    status, whole = 206, False
                    headers.append(("Content-Range", rng.content_range(size)))
            if whole and h.get("x-amz-checksum-mode", "").upper() == "ENABLED":
                headers += list(rec.get("checksums", ()))
            for param, name in RESPONSE_OVERRIDES.items():
                if param in q:
                    headers = [(n, v) for n, v in headers if n.lower() != name] + [(canonical_name(name), q[param])]
            length = max(0, end - start + 1)
            headers.append(("Content-Length", str(length)))
        except BaseException:
            os.close(fd)
            raise
        if head:
            os.close(fd)
            return response(status, headers)

        async def body() -> AsyncIterator[bytes]:
            try:
                stream = FileStream(fd, start, end)
                while chunk := await stream.read(IO_BLOCK):
                    yield chunk
            finally:
                os.close(fd)
        return ForwardResponse(status, with_request_id(headers), body())

    # --- writing objects --------------------------------------------------------------------------

    async def _commit_whole(self, bucket: str, key: str, tmp: str, md5_hex: str, headers, sums, tags) -> dict:
        """Make a received or copied temp file the object's new version (one part, its MD5 as
        ETag); the temp file is gone afterwards either way. Returns the version's record."""
        try:
            return await self.files.commit(bucket, key, tmp, {"etag": quote_etag(md5_hex), "headers": headers,
                                                          "checksums": sums, "parts": None, "tags": tags})
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    async def _put_object(self, bucket: str, key: str, h: dict[str, str], req: ForwardRequest) -> ForwardResponse:
        self.files.bucket_dir(bucket)
        check_key(key)
        headers = stored_headers(h)
        tags = parse_tagging_header(h.get("x-amz-tagging"))
        tmp, _size, md5_hex, sums = await receive(self.files, req, h, MAX_PUT_SIZE)
        rec = await self._commit_whole(bucket, key, tmp, md5_hex, headers, sums, tags)
        return response(200, [("ETag", rec["etag"])] + [(n, v) for n, v in sums])

    # --- copy -----------------------------------------------------------------------------------
    async def _copy_object(self, bucket: str, key: str, h: dict[str, str]) -> ForwardResponse:
        self.files.bucket_dir(bucket)
        check_key(key)
        directive = h.get("x-amz-metadata-directive", "COPY").upper()
        tag_directive = h.get("x-amz-tagging-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE") or tag_directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.", ArgumentName="x-amz-metadata-directive",
                          ArgumentValue=directive)
        sb, sk, fd, st, src = await open_copy_source(self.files, h)
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
            tmp, md5_hex, value = await asyncio.to_thread(self.files.copy_range, fd, 0, st.st_size - 1, algorithm)
        finally:
            os.close(fd)
        if directive == "REPLACE":
            headers = stored_headers(h)
        else:
            headers = [list(x) for x in src.get("headers", ())]
            if "x-amz-storage-class" in h:
                headers = [x for x in headers if x[0] != "x-amz-storage-class"] + \
                    ([["x-amz-storage-class", h["x-amz-storage-class"]]] if h["x-amz-storage-class"] != "STANDARD" else [])
        tags = parse_tagging_header(h.get("x-amz-tagging")) if tag_directive == "REPLACE" else list(src.get("tags") or [])
        sums = [[f"x-amz-checksum-{algorithm}", value], ["x-amz-checksum-type", "FULL_OBJECT"]] if value else []
        rec = await self._commit_whole(bucket, key, tmp, md5_hex, headers, sums, tags)
        inner = element("LastModified", iso_time(rec["mtime_ns"] / 1e9)) + element("ETag", rec["etag"])
        if value:
            inner += element("ChecksumType", "FULL_OBJECT") + element(f"Checksum{algorithm.upper()}", value)
        return xml_response(200, xml_doc("CopyObjectResult", inner), [(n, v) for n, v in sums[:1]])

    # --- delete objects ---------------------------------------------------------------------------

    async def _delete_objects(self, bucket: str, req: ForwardRequest, h: dict[str, str]) -> ForwardResponse:
        self.files.bucket_dir(bucket)
        body = await read_small(req, MAX_XML_BODY, h)
        verify_small(body, h)
        root = parse_xml(body)
        if local_name(root.tag) != "Delete":
            raise S3Error("MalformedXML")
        quiet = (child_text(root, "Quiet") or "").strip().lower() == "true"
        objects = [c for c in root if local_name(c.tag) == "Object"]
        if not objects or len(objects) > 1000:
            raise S3Error("MalformedXML")
        out = []
        for obj in objects:
            key = child_text(obj, "Key")
            version = child_text(obj, "VersionId")
            if key is None:
                raise S3Error("MalformedXML")
            if version not in (None, "null"):
                out.append(f"<Error>{element('Key', key)}{element('VersionId', version)}<Code>NoSuchVersion</Code>"
                           "<Message>The specified version does not exist.</Message></Error>")
                continue
            try:
                if key:
                    await self.files.delete(bucket, key)
            except S3Error as e:
                out.append(f"<Error>{element('Key', key)}{element('Code', e.code)}{element('Message', e.message)}</Error>")
                continue
            if not quiet:
                out.append(f"<Deleted>{element('Key', key)}" + (element("VersionId", version) if version else "") + "</Deleted>")
        return xml_response(200, xml_doc("DeleteResult", "".join(out)))

    # --- tagging and attributes ---------------------------------------------------------------------

    async def _update_record(self, bucket: str, key: str, change) -> dict:
        async with self.files.key_lock(bucket, key):
            path, st, rec = await self.files.describe(bucket, key)
            rec = dict(rec)
            change(rec)
            await asyncio.to_thread(self.files.write_json, self.files.meta_path(bucket, key), {"key": key, "records": [rec]})
            return rec

    async def _get_tagging(self, bucket: str, key: str) -> ForwardResponse:
        _path, _st, rec = await self.files.describe(bucket, key)
        tags = "".join(f"<Tag>{element('Key', k)}{element('Value', v)}</Tag>" for k, v in rec.get("tags") or [])
        return xml_response(200, xml_doc("Tagging", f"<TagSet>{tags}</TagSet>"))

    async def _put_tagging(self, bucket: str, key: str, req: ForwardRequest, h: dict[str, str]) -> ForwardResponse:
        body = await read_small(req, MAX_XML_BODY, h)
        verify_small(body, h)
        root = parse_xml(body)
        tags = []
        for el in root.iter():
            if local_name(el.tag) == "Tag":
                k, v = child_text(el, "Key"), child_text(el, "Value")
                if k is None or v is None:
                    raise S3Error("MalformedXML")
                tags.append([k, v])
        validate_tags(tags)
        await self._update_record(bucket, key, lambda rec: rec.__setitem__("tags", tags))
        return response(200, [])

    async def _delete_tagging(self, bucket: str, key: str) -> ForwardResponse:
        await self._update_record(bucket, key, lambda rec: rec.__setitem__("tags", []))
        return response(204, [])

    async def _get_attributes(self, bucket: str, key: str, h: dict[str, str]) -> ForwardResponse:
        _path, st, rec = await self.files.describe(bucket, key)
        wanted = {a.strip() for a in h.get("x-amz-object-attributes", "").split(",") if a.strip()}
        if not wanted:
            raise S3Error("InvalidArgument", "Invalid attribute name specified.", ArgumentName="x-amz-object-attributes")
        inner = []
        if "ETag" in wanted:
            inner.append(element("ETag", opaque_tag(rec["etag"])))
        sums = [(n, v) for n, v in rec.get("checksums", ()) if checksums.algorithm_of(n)]
        if "Checksum" in wanted and sums:
            ctype = dict(rec.get("checksums", ())).get("x-amz-checksum-type", "FULL_OBJECT")
            inner.append("<Checksum>" + "".join(element(f"Checksum{n[15:].upper()}", v) for n, v in sums)
                         + element("ChecksumType", ctype) + "</Checksum>")
        if "ObjectParts" in wanted and rec.get("parts"):
            inner.append(f"<ObjectParts>{element('TotalPartsCount', len(rec['parts']))}</ObjectParts>")
        if "StorageClass" in wanted:
            inner.append(element("StorageClass", dict(rec.get("headers", ())).get("x-amz-storage-class", "STANDARD")))
        if "ObjectSize" in wanted:
            inner.append(element("ObjectSize", st.st_size))
        return xml_response(200, xml_doc("GetObjectAttributesResponse", "".join(inner)),
                             [("Last-Modified", http_date(st.st_mtime))])
