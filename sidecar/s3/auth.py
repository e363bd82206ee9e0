"""Verification of clients' AWS Signature Version 4: the Authorization header, presigned query
strings, the body's declared SHA-256 and the chunk signatures of streaming aws-chunked uploads.

Canonicalisation follows the SigV4 specification as S3 applies it: the canonical URI is the
decoded raw path re-encoded (RFC 3986 unreserved characters kept, ``/`` kept, nothing
normalised: ``a//b`` and ``x/../y`` stay as they are), the canonical query the decoded
parameters re-encoded and sorted. A client that signed its path or query exactly as it sent
them, with an encoding of its own, is accepted too: both forms name the same key.

Depends on the error type, the key store and the aws-chunked codec; nothing of the cache.
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from urllib.parse import quote, unquote_to_bytes

from ..errors import S3Error
from ..upstream import awschunked
from .keys import KeyStore

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
MAX_SKEW = 15 * 60  # seconds, as S3 allows
MAX_EXPIRES = 7 * 24 * 3600
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = awschunked.EMPTY_SHA256

_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UNSUPPORTED = ("The authorization mechanism you have provided is not supported. "
                "Please use AWS4-HMAC-SHA256.")
_QUERY_PARAMS_MISSING = ("Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
                         "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.")
# x-amz-* request headers a client may leave unsigned (S3 requires every other one to be signed).
_MAY_BE_UNSIGNED = frozenset({"x-amz-user-agent"})


def uri_encode(data: bytes, safe: str = "") -> str:
    """SigV4's UriEncode: every byte but A-Z a-z 0-9 - . _ ~ (and ``safe``) as %XY, upper-case."""
    return quote(data, safe="-_.~" + safe)


def canonical_uri(raw_path: str) -> str:
    return uri_encode(unquote_to_bytes(raw_path), safe="/")


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded (name, value) pairs, re-encoded and sorted by name, then value."""
    enc = sorted((uri_encode(k.encode()), uri_encode(v.encode())) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in enc)


def raw_query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """The query's (name, value) pairs exactly as sent (still encoded)."""
    out = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            out.append((name, value))
    return out


def decoded_pairs(raw: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    try:
        return [(unquote_to_bytes(k).decode(), unquote_to_bytes(v).decode()) for k, v in raw]
    except UnicodeDecodeError:
        raise S3Error("InvalidURI", "The query string is not valid UTF-8.") from None


def header_values(headers, name: str) -> str | None:
    """The canonical value of header ``name``: each value trimmed, inner runs of spaces folded,
    repeated headers joined by commas. None if absent."""
    values = headers.getall(name, None) if hasattr(headers, "getall") else (
        [headers[name]] if name in headers else None)
    if not values:
        return None
    return ",".join(" ".join(v.split()) for v in values)


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """The derived SigV4 key; cached, since it only changes per (key, day, region)."""
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode(), hashlib.sha256).digest()
    k = hmac.new(k, service.encode(), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


def _hmac_hex(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def parse_amz_date(text: str) -> float | None:
    m = _AMZ_DATE.fullmatch(text or "")
    if m is None:
        return None
    y, mo, d, hh, mi, ss = (int(g) for g in m.groups())
    if not (1 <= mo <= 12 and 1 <= d <= 31 and hh < 24 and mi < 60 and ss < 61):
        return None
    try:
        return float(calendar.timegm(time.struct_time((y, mo, d, hh, mi, ss, 0, 0, 0))))
    except (OverflowError, ValueError):
        return None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclasses.dataclass
class Credential:
    access_key_id: str
    date: str
    region: str
    service: str
    terminator: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"

    @classmethod
    def parse(cls, text: str) -> "Credential | None":
        parts = text.rsplit("/", 4)
        if len(parts) != 5 or not all(parts):
            return None
        return cls(*parts)


@dataclasses.dataclass
class Payload:
    """What the request's signature says about its body, and the checks still due on it.

    ``failure`` keeps the first error a body check raised: the upstream backend may report a
    body that failed mid-stream as its own error, and the client must see this one instead.
    """

    mode: str  # a hex SHA-256, UNSIGNED-PAYLOAD or a STREAMING-* mode
    key: bytes = b""
    timestamp: str = ""
    scope: str = ""
    seed: str = ""
    failure: S3Error | None = None

    @property
    def streaming_signed(self) -> bool:
        return self.mode in (awschunked.STREAMING_SIGNED, awschunked.STREAMING_SIGNED_TRAILER)

    def check_empty(self) -> None:
        """The request has no body: a declared hash must be that of nothing."""
        if _HEX64.fullmatch(self.mode) and self.mode != EMPTY_SHA256:
            self._fail(_sha_mismatch(self.mode, EMPTY_SHA256))

    def check_bytes(self, data: bytes) -> None:
        """A body read whole: a declared hash must be its hash."""
        if _HEX64.fullmatch(self.mode):
            got = hashlib.sha256(data).hexdigest()
            if not hmac.compare_digest(got, self.mode):
                self._fail(_sha_mismatch(self.mode, got))

    def _fail(self, e: S3Error) -> None:
        if self.failure is None:
            self.failure = e
        raise e

    def wrap(self, headers: list[tuple[str, str]], body: AsyncIterable[bytes],
             content_length: int | None) -> tuple[list[tuple[str, str]], AsyncIterator[bytes], int | None]:
        """(headers, body, length) to forward. A hex hash is checked as the body streams; a signed
        stream has each chunk verified and is re-framed without signatures. The last bytes are
        held back until the whole body has passed, so a failed body never reaches the upstream
        complete (and so is never committed)."""
        if _HEX64.fullmatch(self.mode):
            return headers, self._hashed(body), content_length
        if self.streaming_signed:
            chain = ChunkChain(self.key, self.timestamp, self.scope, self.seed, self._fail)
            r = awschunked.reframe_unsigned(headers, body, on_chunk=chain.chunk, on_trailers=chain.trailers)
            return [(k, v) for k, v in r.headers if k != "content-length"], r.body, r.content_length
        return headers, body if isinstance(body, AsyncIterator) else _aiter(body), content_length

    async def _hashed(self, body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        h = hashlib.sha256()
        held: bytes | None = None
        async for piece in body:
            h.update(piece)
            if held is not None:
                yield held
            held = piece
        got = h.hexdigest()
        if not hmac.compare_digest(got, self.mode):
            self._fail(_sha_mismatch(self.mode, got))
        if held is not None:
            yield held


async def _aiter(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for piece in body:
        yield piece


def _sha_mismatch(client: str, computed: str) -> S3Error:
    return S3Error("XAmzContentSHA256Mismatch", ClientComputedContentSHA256=client,
                   S3ComputedContentSHA256=computed)


class ChunkChain:
    """The signature chain of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD(-TRAILER) body: each chunk's
    signature signs its payload hash and the previous signature, from the request's own."""

    def __init__(self, key: bytes, timestamp: str, scope: str, seed: str,
                 fail: Callable[[S3Error], None]) -> None:
        self.key, self.timestamp, self.scope, self.prev, self.fail = key, timestamp, scope, seed, fail

    def chunk(self, signature: str | None, payload_sha256: str) -> None:
        sts = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", self.timestamp, self.scope, self.prev, EMPTY_SHA256,
                         payload_sha256))
        want = _hmac_hex(self.key, sts)
        if signature is None or not hmac.compare_digest(want, signature.lower()):
            self.fail(S3Error("SignatureDoesNotMatch", "The chunk signature we calculated does not match "
                              "the signature you provided."))
        self.prev = want

    def trailers(self, trailers: list[tuple[str, str]], signature: str | None) -> None:
        sts = "\n".join(("AWS4-HMAC-SHA256-TRAILER", self.timestamp, self.scope, self.prev,
                         hashlib.sha256(awschunked.canonical_trailers(trailers)).hexdigest()))
        if signature is None or not hmac.compare_digest(_hmac_hex(self.key, sts), signature.lower()):
            self.fail(S3Error("SignatureDoesNotMatch", "The trailer signature we calculated does not "
                              "match the signature you provided."))


class SigV4Verifier:
    """Checks one request's signature against ``keys``; raises S3Error with S3's code, or returns
    the ``Payload`` whose body checks the face applies while forwarding."""

    def __init__(self, keys: KeyStore, region: str, *, clock: Callable[[], float] = time.time,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.keys = keys
        self.region = region
        self.clock = clock
        self.on_reject = on_reject

    def verify(self, method: str, raw_target: str, headers) -> Payload:
        try:
            return self._verify(method, raw_target, headers)
        except S3Error as e:
            if self.on_reject is not None:
                self.on_reject(e.code)
            raise

    def _verify(self, method: str, raw_target: str, headers) -> Payload:
        raw_path, _, raw_query = raw_target.partition("?")
        raw_pairs = raw_query_pairs(raw_query)
        pairs = decoded_pairs(raw_pairs)
        names = {k.lower() for k, _ in pairs}
        auth = headers.get("authorization")
        if auth is not None:
            if "x-amz-signature" in names:
                raise S3Error("InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                              "query parameter, Signature query string parameter or the Authorization header "
                              "should be specified", ArgumentName="Authorization", ArgumentValue="")
            return self._header_auth(method, raw_path, raw_pairs, pairs, headers, auth)
        if "x-amz-algorithm" in names or "x-amz-signature" in names or "x-amz-credential" in names:
            return self._query_auth(method, raw_path, raw_pairs, pairs, headers)
        if "awsaccesskeyid" in names and "signature" in names:
            raise S3Error("InvalidRequest", _UNSUPPORTED)
        raise S3Error("AccessDenied", "Access Denied: this endpoint requires signed requests.")

    # --- Authorization header ------------------------------------------------------------------

    def _header_auth(self, method, raw_path, raw_pairs, pairs, headers, auth: str) -> Payload:
        algorithm, _, rest = auth.strip().partition(" ")
        if algorithm != ALGORITHM:
            if algorithm in ("AWS", "AWS4-ECDSA-P256-SHA256"):
                raise S3Error("InvalidRequest", _UNSUPPORTED)
            raise S3Error("AuthorizationHeaderMalformed", "The authorization header is malformed; the "
                          f"authorization mechanism {algorithm[:40]!r} is not supported.")
        fields: dict[str, str] = {}
        for item in rest.split(","):
            k, eq, v = item.strip().partition("=")
            if eq:
                fields[k] = v.strip()
        missing = [f for f in ("Credential", "SignedHeaders", "Signature") if not fields.get(f)]
        if missing:
            raise S3Error("AuthorizationHeaderMalformed",
                          f"The authorization header is malformed; missing {', '.join(missing)}.")
        cred = Credential.parse(fields["Credential"])
        if cred is None:
            raise S3Error("AuthorizationHeaderMalformed",
                          "The authorization header is malformed; the Credential is mal-formed; "
                          "expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
        amz_date = headers.get("x-amz-date", "")
        t = parse_amz_date(amz_date)
        if t is None:
            raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
        self._check_scope(cred, amz_date, "AuthorizationHeaderMalformed",
                          "The authorization header is malformed; ")
        secret = self._secret(cred)
        now = self.clock()
        if abs(now - t) > MAX_SKEW:
            raise S3Error("RequestTimeTooSkewed", RequestTime=amz_date, ServerTime=_iso(now),
                          MaxAllowedSkewMilliseconds=str(MAX_SKEW * 1000))
        signed = fields["SignedHeaders"].split(";")
        self._check_signed_headers(signed, headers, presigned=False)
        mode = headers.get("x-amz-content-sha256")
        if mode is None:
            raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
        mode = mode.strip()
        if not (_HEX64.fullmatch(mode) or mode in (UNSIGNED_PAYLOAD, awschunked.STREAMING_SIGNED,
                                                    awschunked.STREAMING_SIGNED_TRAILER,
                                                    awschunked.STREAMING_UNSIGNED_TRAILER)):
            if mode in (awschunked.STREAMING_ECDSA, awschunked.STREAMING_ECDSA_TRAILER):
                raise S3Error("InvalidRequest", _UNSUPPORTED)
            raise S3Error("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                          "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, or a valid sha256 value.",
                          ArgumentName="x-amz-content-sha256", ArgumentValue=mode[:80])
        key = signing_key(secret, cred.date, cred.region)
        provided = fields["Signature"].lower()
        self._check_signature(key, method, raw_path, raw_pairs, pairs, headers, signed, mode, amz_date, cred,
                              provided)
        return Payload(mode, key, amz_date, cred.scope, provided)

    # --- presigned URL -------------------------------------------------------------------------

    def _query_auth(self, method, raw_path, raw_pairs, pairs, headers) -> Payload:
        q = {k.lower(): v for k, v in pairs}
        if q.get("x-amz-algorithm") != ALGORITHM:
            if "x-amz-algorithm" in q:
                raise S3Error("AuthorizationQueryParametersError",
                              "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
            raise S3Error("AuthorizationQueryParametersError", _QUERY_PARAMS_MISSING)
        if any(not q.get(p) for p in ("x-amz-credential", "x-amz-date", "x-amz-expires", "x-amz-signedheaders",
                                      "x-amz-signature")):
            raise S3Error("AuthorizationQueryParametersError", _QUERY_PARAMS_MISSING)
        cred = Credential.parse(q["x-amz-credential"])
        if cred is None:
            raise S3Error("AuthorizationQueryParametersError",
                          "Error parsing the X-Amz-Credential parameter; the Credential is mal-formed; "
                          "expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
        amz_date = q["x-amz-date"]
        t = parse_amz_date(amz_date)
        if t is None:
            raise S3Error("AuthorizationQueryParametersError",
                          "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
        expires_text = q["x-amz-expires"]
        if not expires_text.lstrip("-").isdigit():
            raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires should be a number")
        expires = int(expires_text)
        if expires < 0:
            raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires must be non-negative")
        if expires > MAX_EXPIRES:
            raise S3Error("AuthorizationQueryParametersError",
                          "X-Amz-Expires must be less than a week (in seconds) that is; the given X-Amz-Expires "
                          f"must be less than {MAX_EXPIRES} seconds")
        self._check_scope(cred, amz_date, "AuthorizationQueryParametersError",
                          "Error parsing the X-Amz-Credential parameter; ")
        secret = self._secret(cred)
        now = self.clock()
        if t - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet")
        if now > t + expires:
            raise S3Error("AccessDenied", "Request has expired", **{"X-Amz-Expires": str(expires)},
                          Expires=_iso(t + expires), ServerTime=_iso(now))
        signed = q["x-amz-signedheaders"].split(";")
        self._check_signed_headers(signed, headers, presigned=True)
        mode = headers.get("x-amz-content-sha256") if "x-amz-content-sha256" in signed else None
        mode = (mode or q.get("x-amz-content-sha256") or UNSIGNED_PAYLOAD).strip()
        key = signing_key(secret, cred.date, cred.region)
        provided = q["x-amz-signature"].lower()
        keep_raw = [(k, v) for k, v in raw_pairs if k.lower() != "x-amz-signature"]
        keep = [(k, v) for k, v in pairs if k.lower() != "x-amz-signature"]
        self._check_signature(key, method, raw_path, keep_raw, keep, headers, signed, mode, amz_date, cred,
                              provided)
        # A presigned body is not signed chunk by chunk; only a declared hex hash is checked.
        return Payload(mode if _HEX64.fullmatch(mode) else UNSIGNED_PAYLOAD)

    # --- shared steps --------------------------------------------------------------------------

    def _check_scope(self, cred: Credential, amz_date: str, code: str, prefix: str) -> None:
        if cred.date != amz_date[:8]:
            raise S3Error(code, prefix + "Invalid credential date. Date is not the same as X-Amz-Date.")
        if cred.region != self.region:
            raise S3Error(code, prefix + f"the region '{cred.region[:64]}' is wrong; expecting '{self.region}'",
                          Region=self.region)
        if cred.service != SERVICE:
            raise S3Error(code, prefix + f"incorrect service '{cred.service[:64]}'. This endpoint belongs to 's3'.")
        if cred.terminator != "aws4_request":
            raise S3Error(code, prefix + "incorrect terminal. This endpoint uses 'aws4_request'.")

    def _secret(self, cred: Credential) -> str:
        secret = self.keys.secret(cred.access_key_id)
        if secret is None:
            raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=cred.access_key_id[:128])
        return secret

    @staticmethod
    def _check_signed_headers(signed: list[str], headers, presigned: bool) -> None:
        if "host" not in signed:
            code = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
            raise S3Error(code, "The host header must be among the signed headers.")
        present = {k.lower() for k in headers.keys()}
        unsigned = sorted(h for h in present if h.startswith("x-amz-") and h not in signed
                          and h not in _MAY_BE_UNSIGNED)
        if unsigned:
            raise S3Error("AccessDenied", "There were headers present in the request which were not signed",
                          HeadersNotSigned=", ".join(unsigned))

    def _check_signature(self, key, method, raw_path, raw_pairs, pairs, headers, signed, mode, amz_date,
                         cred: Credential, provided: str) -> str:
        canon_headers = "".join(f"{h}:{header_values(headers, h) or ''}\n" for h in signed)
        tail = f"{canon_headers}\n{';'.join(signed)}\n{mode}"
        forms = [(canonical_uri(raw_path), canonical_query(pairs))]
        raw_form = (raw_path, "&".join(f"{k}={v}" for k, v in sorted(raw_pairs)))
        if raw_form != forms[0]:
            forms.append(raw_form)
        first_sts = ""
        for uri, query in forms:
            creq = f"{method}\n{uri}\n{query}\n{tail}"
            sts = f"{ALGORITHM}\n{amz_date}\n{cred.scope}\n{hashlib.sha256(creq.encode()).hexdigest()}"
            first_sts = first_sts or sts
            if hmac.compare_digest(_hmac_hex(key, sts), provided):
                return sts
        raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=cred.access_key_id, StringToSign=first_sts)


def from_settings(settings, metrics=None) -> SigV4Verifier | None:
    """The daemon's verifier, or None when ``auth`` is off. Raises ConfigError for a keys
    directory that cannot be read."""
    if settings.auth != "sigv4":
        return None
    on_reject = None if metrics is None else (lambda code: metrics.auth_rejections.labels(code).inc())
    return SigV4Verifier(KeyStore(settings.auth_keys_dir), settings.auth_region or settings.effective_region,
                         on_reject=on_reject)
