"""Multipart uploads of the local directory upstream: parts kept under
``.sidecar/uploads/<bucket>/<upload id>/`` until completed into one object or aborted."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import time
import urllib.parse

from ...errors import S3Error
from ...s3.conditions import opaque_tag
from .. import checksums
from ..base import ForwardRequest, ForwardResponse
from .files import ObjectFiles
from .sources import open_copy_source, receive
from .wire import (IO_BLOCK, MAX_OBJECT_SIZE, MAX_PUT_SIZE, MAX_XML_BODY, OWNER_ID, OWNER_NAME, UPLOAD_ID, check_key,
                   child_text, element, int_param, iso_time, local_name, owner_xml, parse_tagging_header, parse_xml,
                   quote_etag, read_small, response, s3_error, stored_headers, url_encoded, xml_doc, xml_response)


class MultipartUploads:
    """CreateMultipartUpload, UploadPart(Copy), CompleteMultipartUpload, AbortMultipartUpload,
    ListParts and ListMultipartUploads over the objects of ``files``."""

    def __init__(self, files: ObjectFiles, *, min_part_size: int) -> None:
        self.files = files
        self.min_part_size = min_part_size

    def _upload_dir(self, bucket: str, key: str, upload_id: str) -> tuple[str, dict]:
        self.files.bucket_dir(bucket)
        if not UPLOAD_ID.fullmatch(upload_id or ""):
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        d = os.path.join(self.files.hidden, "uploads", bucket, upload_id)
        info = self.files.read_json(os.path.join(d, "upload.json"))
        if info is None or info.get("key") != key:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        return d, info

    async def create(self, bucket: str, key: str, h: dict[str, str]) -> ForwardResponse:
        self.files.bucket_dir(bucket)
        check_key(key)
        algorithm = (h.get("x-amz-checksum-algorithm") or "").lower() or None
        if algorithm and algorithm not in checksums.ALGORITHMS:
            raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported.")
        ctype = (h.get("x-amz-checksum-type") or ("COMPOSITE" if algorithm in ("sha1", "sha256") else
                                                 "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE")).upper()
        if algorithm is None and h.get("x-amz-checksum-type"):
            raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.")
        upload_id = secrets.token_urlsafe(36)
        d = os.path.join(self.files.hidden, "uploads", bucket, upload_id)
        info = {"key": key, "initiated": time.time(), "headers": stored_headers(h),
                "tags": parse_tagging_header(h.get("x-amz-tagging")), "algorithm": algorithm, "checksum_type": ctype}
        await asyncio.to_thread(self.files.write_json, os.path.join(d, "upload.json"), info)
        resp_headers = []
        if algorithm:
            resp_headers = [("x-amz-checksum-algorithm", algorithm.upper()), ("x-amz-checksum-type", ctype)]
        inner = element("Bucket", bucket) + element("Key", key) + element("UploadId", upload_id)
        return xml_response(200, xml_doc("InitiateMultipartUploadResult", inner), resp_headers)

    async def _store_part(self, d: str, number: int, tmp: str, md5_hex: str, sums: list) -> dict:
        def store() -> dict:
            st = os.stat(tmp)
            part = {"etag": quote_etag(md5_hex), "md5": md5_hex, "size": st.st_size, "ino": st.st_ino,
                    "mtime_ns": st.st_mtime_ns, "checksums": sums, "last_modified": time.time()}
            os.replace(tmp, os.path.join(d, f"{number}.part"))
            self.files.write_json(os.path.join(d, f"{number}.json"), part)
            return part
        return await asyncio.to_thread(store)

    async def upload_part(self, bucket: str, key: str, q: dict[str, str], h: dict[str, str],
                          req: ForwardRequest) -> ForwardResponse:
        number = _part_number(q)
        d, info = self._upload_dir(bucket, key, q.get("uploadId", ""))
        tmp, _size, md5_hex, sums = await receive(self.files, req, h, MAX_PUT_SIZE)
        try:
            sums = [s for s in sums if s[0] != "x-amz-checksum-type"]
            part = await self._store_part(d, number, tmp, md5_hex, sums)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return response(200, [("ETag", part["etag"])] + [(n, v) for n, v in sums])

    async def upload_part_copy(self, bucket: str, key: str, q: dict[str, str], h: dict[str, str]) -> ForwardResponse:
        number = _part_number(q)
        d, info = self._upload_dir(bucket, key, q.get("uploadId", ""))
        _sb, _sk, fd, st, _src = await open_copy_source(self.files, h)
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
            tmp, md5_hex, value = await asyncio.to_thread(self.files.copy_range, fd, start, end, info.get("algorithm"))
        finally:
            os.close(fd)
        sums = [[f"x-amz-checksum-{info['algorithm']}", value]] if value else []
        try:
            part = await self._store_part(d, number, tmp, md5_hex, sums)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        inner = element("LastModified", iso_time(part["last_modified"])) + element("ETag", part["etag"])
        if value:
            inner += element(f"Checksum{info['algorithm'].upper()}", value)
        return xml_response(200, xml_doc("CopyPartResult", inner))

    def _parts(self, d: str) -> dict[int, dict]:
        parts = {}
        for e in os.scandir(d):
            if e.name.endswith(".json") and e.name[:-5].isdigit():
                p = self.files.read_json(e.path)
                if p is not None:
                    parts[int(e.name[:-5])] = p
        return parts

    async def complete(self, bucket: str, key: str, q: dict[str, str], h: dict[str, str],
                       req: ForwardRequest) -> ForwardResponse:
        upload_id = q.get("uploadId", "")
        d, info = self._upload_dir(bucket, key, upload_id)
        requested = _requested_parts(await read_small(req, MAX_XML_BODY, h))
        chosen = self._chosen_parts(requested, self._parts(d), upload_id)
        algorithm = info.get("algorithm")
        ctype = info.get("checksum_type", "COMPOSITE")
        full = algorithm if algorithm and ctype == "FULL_OBJECT" else None
        tmp, full_value = await asyncio.to_thread(self._concat_parts, d, chosen, full)
        etag = '"' + hashlib.md5(b"".join(bytes.fromhex(p["md5"]) for _, p in chosen)).hexdigest() + f'-{len(chosen)}"'
        part_sums = [[list(x) for x in p.get("checksums", ())] for _, p in chosen]
        sums = _object_checksum(algorithm, full_value, part_sums)
        try:
            rec = await self.files.commit(bucket, key, tmp, {
                "etag": etag, "headers": info.get("headers", []), "checksums": sums,
                "parts": [p["size"] for _, p in chosen], "part_checksums": part_sums, "tags": info.get("tags", [])})
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        await asyncio.to_thread(shutil.rmtree, d, True)
        inner = (element("Location", f"/{bucket}/{urllib.parse.quote(key)}") + element("Bucket", bucket)
                 + element("Key", key) + element("ETag", rec["etag"]))
        if sums:
            inner += element(f"Checksum{algorithm.upper()}", sums[0][1]) + element("ChecksumType", sums[1][1])
        return xml_response(200, xml_doc("CompleteMultipartUploadResult", inner))

    def _chosen_parts(self, requested: list[tuple[int, str, dict[str, str]]], stored: dict[int, dict],
                      upload_id: str) -> list[tuple[int, dict]]:
        """The stored parts a CompleteMultipartUpload names, checked as S3 checks them: in
        order, each with its ETag and checksums, all but the last at least the minimum size."""
        numbers = [n for n, _, _ in requested]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise S3Error("InvalidPartOrder")
        chosen = []
        for i, (num, etag, given) in enumerate(requested):
            part = stored.get(num)
            if part is None or opaque_tag(etag) != part["md5"]:
                raise S3Error("InvalidPart", PartNumber=str(num), ETag=etag, UploadId=upload_id)
            part_sums = {checksums.algorithm_of(n): v for n, v in part.get("checksums", ())}
            for alg, value in given.items():
                if alg in part_sums and part_sums[alg] != value:
                    raise S3Error("InvalidPart", PartNumber=str(num), ETag=etag, UploadId=upload_id)
            if i < len(requested) - 1 and part["size"] < self.min_part_size:
                raise s3_error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size",
                               ProposedSize=str(part["size"]), MinSizeAllowed=str(self.min_part_size),
                               PartNumber=str(num), ETag=part["etag"])
            chosen.append((num, part))
        if sum(p["size"] for _, p in chosen) > MAX_OBJECT_SIZE:
            raise S3Error("EntityTooLarge")
        return chosen

    def _concat_parts(self, d: str, chosen: list[tuple[int, dict]], algorithm: str | None) -> tuple[str, str | None]:
        tmp = self.files.new_tmp()
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
                if self.files.durable:
                    os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp, checksums.encode(summer.digest()) if summer is not None else None

    async def abort(self, bucket: str, key: str, q: dict[str, str]) -> ForwardResponse:
        d, _info = self._upload_dir(bucket, key, q.get("uploadId", ""))
        await asyncio.to_thread(shutil.rmtree, d, True)
        return response(204, [])

    def list_parts(self, bucket: str, key: str, q: dict[str, str]) -> ForwardResponse:
        upload_id = q.get("uploadId", "")
        d, info = self._upload_dir(bucket, key, upload_id)
        max_parts = int_param(q, "max-parts", 1000, 0, 1000)
        marker = int_param(q, "part-number-marker", 0, 0)
        parts = sorted((n, p) for n, p in self._parts(d).items() if n > marker)
        page, truncated = parts[:max_parts], len(parts) > max_parts
        out = [element("Bucket", bucket), element("Key", key), element("UploadId", upload_id),
               element("PartNumberMarker", marker),
               element("NextPartNumberMarker", page[-1][0] if page else 0), element("MaxParts", max_parts),
               element("IsTruncated", "true" if truncated else "false"),
               f"<Initiator>{element('ID', OWNER_ID)}{element('DisplayName', OWNER_NAME)}</Initiator>", owner_xml(),
               element("StorageClass", "STANDARD")]
        if info.get("algorithm"):
            out.append(element("ChecksumAlgorithm", info["algorithm"].upper()))
            out.append(element("ChecksumType", info.get("checksum_type", "COMPOSITE")))
        for n, p in page:
            sums = "".join(element(f"Checksum{name[15:].upper()}", v) for name, v in p.get("checksums", ()))
            out.append(f"<Part>{element('PartNumber', n)}{element('LastModified', iso_time(p['last_modified']))}"
                       f"{element('ETag', p['etag'])}{element('Size', p['size'])}{sums}</Part>")
        return xml_response(200, xml_doc("ListPartsResult", "".join(out)))

    def list_uploads(self, bucket: str, q: dict[str, str]) -> ForwardResponse:
        self.files.bucket_dir(bucket)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        max_uploads = int_param(q, "max-uploads", 1000, 0, 1000)
        url = q.get("encoding-type") == "url"
        uploads = []
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(os.path.join(self.files.hidden, "uploads", bucket)):
                info = self.files.read_json(os.path.join(e.path, "upload.json"))
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
        out = [element("Bucket", bucket), element("KeyMarker", url_encoded(key_marker, url)), element("UploadIdMarker", id_marker)]
        last = items[-1] if items else None
        out.append(element("NextKeyMarker", url_encoded(last[1], url) if last else ""))
        out.append(element("NextUploadIdMarker", last[2] if last and last[0] == "u" else ""))
        if delimiter:
            out.append(element("Delimiter", url_encoded(delimiter, url)))
        out.append(element("Prefix", url_encoded(prefix, url)))
        out.append(element("MaxUploads", max_uploads))
        if url:
            out.append(element("EncodingType", "url"))
        out.append(element("IsTruncated", "true" if truncated else "false"))
        for item in items:
            if item[0] == "u":
                out.append(f"<Upload>{element('Key', url_encoded(item[1], url))}{element('UploadId', item[2])}"
                           f"<Initiator>{element('ID', OWNER_ID)}{element('DisplayName', OWNER_NAME)}</Initiator>"
                           f"{owner_xml()}{element('StorageClass', 'STANDARD')}{element('Initiated', iso_time(item[3]))}</Upload>")
        for item in items:
            if item[0] == "p":
                out.append(f"<CommonPrefixes>{element('Prefix', url_encoded(item[1], url))}</CommonPrefixes>")
        return xml_response(200, xml_doc("ListMultipartUploadsResult", "".join(out)))


def _part_number(q: dict[str, str]) -> int:
    raw = q.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      ArgumentName="partNumber", ArgumentValue=raw)
    return int(raw)


def _requested_parts(body: bytes) -> list[tuple[int, str, dict[str, str]]]:
    """(part number, ETag, {algorithm: checksum}) of each Part of a CompleteMultipartUpload body."""
    root = parse_xml(body)
    if local_name(root.tag) != "CompleteMultipartUpload":
        raise S3Error("MalformedXML")
    requested = []
    for el in root:
        if local_name(el.tag) != "Part":
            continue
        num = (child_text(el, "PartNumber") or "").strip()
        etag = child_text(el, "ETag")
        if not num.isdigit() or etag is None:
            raise S3Error("MalformedXML")
        given = {local_name(c.tag)[len("Checksum"):].lower(): (c.text or "").strip() for c in el
                 if local_name(c.tag).startswith("Checksum") and local_name(c.tag) != "ChecksumType"}
        requested.append((int(num), etag, given))
    if not requested:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                      "our published schema")
    return requested


def _object_checksum(algorithm: str | None, full_value: str | None,
                     part_sums: list[list[list[str]]]) -> list[list[str]]:
    """The completed object's checksum headers: the full-object value computed while the parts
    were joined, or the composite of the parts' checksums (when every part has one)."""
    if not algorithm:
        return []
    name = f"x-amz-checksum-{algorithm}"
    if full_value:
        return [[name, full_value], ["x-amz-checksum-type", "FULL_OBJECT"]]
    values = [dict(map(tuple, ps)).get(name) for ps in part_sums]
    if all(values):
        value = checksums.composite(algorithm, values)  # type: ignore[arg-type]
        if value:
            return [[name, value], ["x-amz-checksum-type", "COMPOSITE"]]
    return []
