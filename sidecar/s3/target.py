"""What an S3 request addresses: bucket, key and sub-resources, read from the raw request target.

Routing uses the raw path exactly as the client sent it: keys such as ``a//b``, ``x/../y``
and ``p%2Fq`` must reach the upstream byte for byte, so nothing here normalises paths.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote_to_bytes

from ..errors import S3Error

MAX_KEY_BYTES = 1024

# Query parameters of query-string (presigned) authentication; they are never forwarded.
PRESIGN_PARAMS = frozenset({
    "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
    "x-amz-signature", "x-amz-security-token", "awsaccesskeyid", "signature", "expires",
})

# Query parameters a plain GetObject/HeadObject may carry and still be served from the cache.
RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}
_CACHEABLE_READ_PARAMS = frozenset({"partnumber", "x-id"}) | frozenset(RESPONSE_OVERRIDES)

# Request headers whose presence means the read cannot be answered from shared cached bytes.
_UNCACHEABLE_READ_HEADERS = (
    "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-customer-key",
    "x-amz-expected-bucket-owner",
    "x-amz-request-payer",
)
UNCACHEABLE_READ_HEADERS = frozenset(_UNCACHEABLE_READ_HEADERS)  # for header dicts with lower-case names


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    bucket: str | None
    key: str | None
    query: tuple[tuple[str, str], ...]  # decoded, in order, presign parameters removed
    presigned: bool = False

    def param(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.query:
            if k.lower() == lname:
                return v
        return None

    def has(self, name: str) -> bool:
        return self.param(name) is not None

    @property
    def resource(self) -> str:
        if self.bucket is None:
            return "/"
        return f"/{self.bucket}" + (f"/{self.key}" if self.key is not None else "")


def _decode(component: str, what: str) -> str:
    try:
        return unquote_to_bytes(component).decode("utf-8")
    except UnicodeError:  # undecodable escapes, or raw bytes that were not UTF-8 (lone surrogates)
        raise S3Error("InvalidURI", f"The {what} is not valid UTF-8.") from None


def split_query(raw_query: str) -> list[tuple[str, str]]:
    """Decode ``a=1&b&c=x%20y`` into pairs; ``+`` stays a plus sign, as S3 clients encode it."""
    pairs: list[tuple[str, str]] = []
    if not raw_query:
        return pairs
    for part in raw_query.split("&"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        pairs.append((_decode(name, "query string"), _decode(value, "query string") if sep else ""))
    return pairs


def parse_target(raw_path: str, host: str | None, virtual_host_suffixes: tuple[str, ...]) -> Target:
    """Split a raw request target into bucket, key and query.

    Virtual-hosted style when the Host is ``<bucket>.<suffix>`` for a configured suffix,
    path style otherwise.
    """
    path, _, raw_query = raw_path.partition("?")
    if not path.startswith("/"):
        raise S3Error("InvalidURI", "The request target must be an absolute path.")
    query = split_query(raw_query)
    presigned = any(k.lower() == "x-amz-signature" or k == "Signature" for k, _ in query)
    query = [(k, v) for k, v in query if k.lower() not in PRESIGN_PARAMS]

    bucket: str | None = None
    rest = path[1:]
    hostname = (host or "").rsplit(":", 1)[0].lower() if host and not host.startswith("[") else ""
    for suffix in virtual_host_suffixes:
        if hostname.endswith("." + suffix) and len(hostname) > len(suffix) + 1:
            bucket = hostname[: -len(suffix) - 1]
            break
    key: str | None
    if bucket is None:
        if rest == "":
            return Target(None, None, tuple(query), presigned)
        raw_bucket, slash, raw_key = rest.partition("/")
        bucket = _decode(raw_bucket, "bucket name")
        key = _decode(raw_key, "key") if slash and raw_key != "" else None
    else:
        key = _decode(rest, "key") if rest != "" else None
    if not bucket or "/" in bucket:
        raise S3Error("InvalidBucketName", BucketName=bucket or "")
    if key is not None and len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", Size=str(len(key.encode("utf-8"))), MaxSizeAllowed=str(MAX_KEY_BYTES))
    return Target(bucket, key, tuple(query), presigned)


def is_cacheable_read(method: str, target: Target, headers) -> bool:
    """A GetObject/HeadObject the cache can answer: no sub-resource, no per-caller semantics."""
    if method not in ("GET", "HEAD") or target.key is None:
        return False
    for name, _ in target.query:
        if name.lower() not in _CACHEABLE_READ_PARAMS:
            return False
    x_id = target.param("x-id")
    if x_id is not None and x_id not in ("GetObject", "HeadObject"):
        return False
    return not asks_uncacheable(headers)


def asks_uncacheable(headers) -> bool:
    """Whether a read's headers make it one the cache cannot answer (SSE-C, owner or payer checks)."""
    return any(h in headers for h in _UNCACHEABLE_READ_HEADERS)


def changes_object_data(method: str, target: Target, headers) -> bool:
    """Whether a write replaces or removes the object's bytes (so its cached chunks are dead)."""
    if target.key is None:
        return False
    names = {k.lower() for k, _ in target.query} - {"x-id"}
    if method == "PUT":
        return not names  # PutObject or CopyObject (uploadId/partNumber mean UploadPart)
    if method == "DELETE":
        return not (names - {"versionid"})
    if method == "POST":
        return "uploadid" in names  # CompleteMultipartUpload
    return False
