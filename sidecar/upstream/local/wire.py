"""S3's wire format as the local directory upstream speaks it: limits, XML, headers, errors,
request bodies read whole, responses."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence
from xml.sax.saxutils import escape as _escape

from ...errors import S3Error
from ...objects import http_date
from ...s3 import conditions
from .. import awschunked, checksums
from ..base import ForwardRequest, ForwardResponse, PartInfo

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
EXTRA_STATUS = {"EntityTooSmall": 400, "InvalidPartNumber": 416, "XAmzContentSHA256Mismatch": 400,
                "MaxMessageLengthExceeded": 400, "NoSuchVersion": 404, "MalformedTrailerError": 400,
                "InvalidObjectState": 403, "InvalidTag": 400, "NoSuchTagSet": 404}

BUCKET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")  # what may be served (hand-made dirs too)
NEW_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # what CreateBucket accepts
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


def s3_error(code: str, message: str | None = None, **fields) -> S3Error:
    return S3Error(code, message, status=EXTRA_STATUS.get(code), **fields)


def not_implemented(what: str) -> S3Error:
    return S3Error("NotImplemented", f"{what} is not implemented by the local directory upstream.")


def check_key(key: str) -> None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", MaxSizeAllowed=str(MAX_KEY_BYTES),
                      Size=str(len(key.encode("utf-8", "surrogatepass"))))


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def quote_etag(md5_hex: str) -> str:
    return f'"{md5_hex}"'


def iso_time(ts: float) -> str:
    ms = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{ms:03d}Z"


_XML_EXTRA = {"\r": "&#13;", "\n": "&#10;", "\t": "&#9;"}
_XML_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\r\n\t]")


def xml_text(value: object) -> str:
    """Text for an XML element, byte-exact after parsing (CR/LF/TAB as character references)."""
    text = _escape(str(value), {'"': "&quot;"})
    return _XML_BAD.sub(lambda m: _XML_EXTRA.get(m.group(), f"&#x{ord(m.group()):x};"), text)


def element(name: str, value: object) -> str:
    return f"<{name}>{xml_text(value)}</{name}>"


def xml_doc(root: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">{inner}</{root}>'.encode()


def owner_xml() -> str:
    return f"<Owner><ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Owner>"


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes) -> ET.Element:
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML")
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML") from None


def child_text(el: ET.Element, name: str) -> str | None:
    for c in el:
        if local_name(c.tag) == name:
            return c.text or ""
    return None


def int_param(query: dict[str, str], name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
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


def url_encoded(value: str, encode: bool) -> str:
    return urllib.parse.quote(value, safe="/") if encode else value


# --- request and response helpers -------------------------------------------------------------------

def header_dict(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def canonical_name(name: str) -> str:
    """S3's spelling of a response header name (HTTP does not care; some clients' logs do)."""
    special = {"etag": "ETag", "last-modified": "Last-Modified", "content-type": "Content-Type",
               "content-encoding": "Content-Encoding", "content-disposition": "Content-Disposition",
               "content-language": "Content-Language", "cache-control": "Cache-Control", "expires": "Expires"}
    return special.get(name, name)


def stored_headers(h: dict[str, str]) -> list[list[str]]:
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


def parse_tagging_header(value: str | None) -> list[list[str]]:
    if not value:
        return []
    tags = [[k, v] for k, v in urllib.parse.parse_qsl(value, keep_blank_values=True)]
    validate_tags(tags)
    return tags


def validate_tags(tags: list[list[str]]) -> None:
    if len(tags) > 10 or len({k for k, _ in tags}) != len(tags):
        raise s3_error("InvalidTag", "Object tags cannot be greater than 10 or have duplicate keys")
    for k, v in tags:
        if not 1 <= len(k) <= 128 or len(v) > 256:
            raise s3_error("InvalidTag", "The TagKey or TagValue you have provided is too long or empty")


def encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode("utf-8", "surrogatepass")).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      ArgumentName="continuation-token", ArgumentValue=token) from None


# S3's spelling of each condition header in a PreconditionFailed error's Condition field
_CONDITION_NAMES = {"if-match": "If-Match", "if-unmodified-since": "If-Unmodified-Since",
                    "if-none-match": "If-None-Match", "if-modified-since": "If-Modified-Since"}


def check_conditions(h: dict[str, str], etag: str, mtime: float, copy: bool = False) -> None:
    """The If-* headers as the S3 face evaluates them (``s3/conditions.py``): 412 PreconditionFailed
    or 304 NotModified. ``h`` uses the plain header names (the copy-source ones are passed
    stripped); for a copy source every failed condition is 412."""
    failed = conditions.failed_condition(h, etag, mtime)
    if failed is None:
        return
    status, header = failed
    if status == conditions.PRECONDITION_FAILED:
        raise S3Error("PreconditionFailed", Condition=_CONDITION_NAMES[header])
    if copy:
        raise S3Error("PreconditionFailed", Condition="x-amz-copy-source-" + _CONDITION_NAMES[header])
    raise S3Error("NotModified", headers={"ETag": etag})


async def request_body(req: ForwardRequest) -> AsyncIterator[bytes]:
    if req.body is None:
        return
    async for chunk in req.body:
        if chunk:
            yield bytes(chunk)


async def read_small(req: ForwardRequest, limit: int, h: dict[str, str] | None = None) -> bytes:
    """A whole (small, XML) request body, aws-chunked framing removed."""
    source = request_body(req)
    if h is not None and awschunked.is_aws_chunked(h.items()):
        source = awschunked.AwsChunkedDecoder.from_headers(h.items()).stream(source)
    buf = bytearray()
    async for piece in source:
        buf += piece
        if len(buf) > limit:
            raise s3_error("MaxMessageLengthExceeded", "Your request was too big.")
    return bytes(buf)


def verify_small(body: bytes, h: dict[str, str]) -> None:
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


def request_id() -> str:
    return secrets.token_hex(8).upper()


def with_request_id(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return headers + [("x-amz-request-id", request_id())]


async def _one(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body


def response(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> ForwardResponse:
    if not any(n.lower() == "content-length" for n, _ in headers):
        headers = headers + [("Content-Length", str(len(body)))]
    return ForwardResponse(status, with_request_id(headers), _one(body))


def xml_response(status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> ForwardResponse:
    return response(status, [("Content-Type", "application/xml"), *headers], body)


def object_headers(rec: dict, st_mtime: float) -> list[tuple[str, str]]:
    """The headers GET and HEAD answer for an object with record ``rec`` (lower-case names)."""
    h = [("etag", rec["etag"]), ("last-modified", http_date(st_mtime))]
    h += [(n, v) for n, v in rec.get("headers", ())]
    if rec.get("tags"):
        h.append(("x-amz-tagging-count", str(len(rec["tags"]))))
    return h


def part_info(rec: dict, size: int, part_number: int) -> PartInfo:
    """Where part ``part_number`` of an object lies, as a GET or HEAD with ?partNumber answers."""
    if part_number < 1 or part_number > 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      ArgumentName="partNumber", ArgumentValue=str(part_number))
    parts = rec.get("parts")
    if not parts:
        if part_number != 1:
            raise s3_error("InvalidPartNumber", "The requested partnumber is not satisfiable",
                           PartNumberRequested=str(part_number), ActualPartCount="1")
        return PartInfo(1, 0, size - 1, 206 if size else 200, ())
    if part_number > len(parts):
        raise s3_error("InvalidPartNumber", "The requested partnumber is not satisfiable",
                       PartNumberRequested=str(part_number), ActualPartCount=str(len(parts)))
    start = sum(parts[:part_number - 1])
    headers = [("x-amz-mp-parts-count", str(len(parts)))]
    part_sums = rec.get("part_checksums") or []
    if part_number <= len(part_sums) and part_sums[part_number - 1]:
        headers += [(n, v) for n, v in part_sums[part_number - 1]]
    return PartInfo(part_number, start, start + parts[part_number - 1] - 1, 206, tuple(headers))
