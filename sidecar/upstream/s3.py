"""The S3 upstream: any S3-compatible endpoint, reached with the pod's own credentials.

Object reads for the cache (HEAD, ranged GET) go through an aiobotocore client. Every other
request is passed through as raw HTTP and re-signed with SigV4: the client's signature covers
its own ``host`` and can never be valid upstream, so it is dropped, never forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit

import aiohttp
import botocore
from yarl import URL
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from ..config import Settings
from ..errors import NotModified, S3Error, UpstreamUnavailable
from ..objects import ObjectMeta
from . import awschunked
from .base import ForwardRequest, ForwardResponse, OpenedObject, PartInfo

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
SMALL_BODY = 1024 * 1024  # bodies up to this size are buffered and their SHA-256 signed

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

_STATUS_CODES = {301: "PermanentRedirect", 307: "TemporaryRedirect", 400: "InvalidRequest", 403: "AccessDenied",
                 405: "MethodNotAllowed", 409: "OperationAborted", 411: "MissingContentLength",
                 412: "PreconditionFailed", 416: "InvalidRange", 501: "NotImplemented"}


def _answer_error(status: int, code: str | None, message: str | None, bucket: str | None,
                  key: str | None) -> Exception:
    """The client-facing error for an upstream's error answer. ``code`` is None when the answer
    had no body (HEAD): the status alone then names it, in S3's own words. 5xx other than
    SlowDown mean the upstream is failing: UpstreamUnavailable (503 to the client)."""
    if code == "SlowDown":
        return S3Error("SlowDown", message)
    if status >= 500:
        return UpstreamUnavailable(f"The upstream answered {status} {code or ''}".strip() + ".")
    if code is None:
        code = ("NoSuchKey" if key is not None else "NoSuchBucket") if status == 404 else \
            _STATUS_CODES.get(status, "InvalidRequest")
        message = None
    fields = {}
    if code == "NoSuchKey" and key is not None:
        fields["Key"] = key
    elif code == "NoSuchBucket" and bucket is not None:
        fields["BucketName"] = bucket
    return S3Error(code, message, status=status, **fields)


def _unusable_answer(method: str) -> S3Error:
    """A success answer the cache cannot use (no length, say): the upstream's fault, 502."""
    return S3Error("BadGateway", f"The upstream's answer to a {method} could not be used.", status=502)


class _Signer(SigV4Auth):
    """SigV4 for S3 with the payload hash we choose (a body hash, UNSIGNED-PAYLOAD or a
    streaming mode) and the path used as sent, as S3 canonicalises it."""

    def payload(self, request: AWSRequest) -> str:
        return request.headers["X-Amz-Content-SHA256"]

    def _normalize_url_path(self, path: str) -> str:
        return path


class _Body:
    """A GET body read as the transport delivered it (no joining of buffers: every byte is
    copied once less); transport failures surface as UpstreamUnavailable."""

    __slots__ = ("_content", "_rest")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._rest: memoryview | None = None

    async def read(self, n: int) -> bytes | memoryview:
        rest = self._rest
        if rest is None:
            try:
                data = await self._content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                raise UpstreamUnavailable(f"upstream body interrupted: {type(e).__name__}") from e
            if len(data) <= n:
                return data
            rest = memoryview(data)
        self._rest = rest[n:] if len(rest) > n else None
        return rest[:n]


def _parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    m = re.match(r"^bytes (\d+)-(\d+)/(\d+)$", value or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


class S3Upstream:
    name = "s3"

    def __init__(self, settings: Settings) -> None:
        self.region = settings.effective_region
        self.custom_endpoint = settings.upstream is not None
        self.endpoint = settings.upstream or f"https://s3.{self.region}.amazonaws.com"
        parts = urlsplit(self.endpoint)
        self.scheme, self.netloc = parts.scheme, parts.netloc
        addressing = settings.upstream_addressing
        if addressing == "auto":
            addressing = "path" if self.custom_endpoint else "virtual"
        self.addressing = addressing
        self.settings = settings
        self._client = None
        self._client_cm = None
        self._http: aiohttp.ClientSession | None = None
        self._credentials = None
        self._bucket_regions: dict[str, str] = {}

    async def start(self, session=None) -> None:
        """Open the clients; ``session``: an aiobotocore session with its own credentials (the
        shared tier's), else the standard chain."""
        session = session or get_session()
        if self.settings.region:
            session.set_config_variable("region", self.settings.region)
        self._credentials = await session.get_credentials()
        s = self.settings
        config = AioConfig(
            region_name=self.region,
            signature_version=("s3v4" if self._credentials is not None else botocore.UNSIGNED),
            s3={"addressing_style": self.addressing},
            retries={"mode": "standard", "max_attempts": 1},  # ResilientUpstream retries, within a deadline
            connect_timeout=s.upstream_connect_timeout,
            read_timeout=s.upstream_read_timeout,
            max_pool_connections=s.upstream_max_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client_cm = session.create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint if self.custom_endpoint else None, config=config)
        self._client = await self._client_cm.__aenter__()
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.upstream_max_connections, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.upstream_connect_timeout,
                                          sock_read=s.upstream_read_timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding", "Accept"),
        )

    async def close(self) -> None:
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client_cm = self._client = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- errors -------------------------------------------------------------------------

    def _error(self, e: Exception, bucket: str | None, key: str | None) -> Exception:
        if isinstance(e, ClientError):
            meta = e.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 500)
            err = e.response.get("Error", {})
            code = str(err.get("Code") or status)
            message = err.get("Message") or None
            if status == 304:
                return NotModified()
            return _answer_error(status, None if code.isdigit() else code, message, bucket, key)
        if isinstance(e, ParamValidationError):
            return S3Error("InvalidBucketName" if "Bucket" in str(e) else "InvalidArgument",
                           str(e).splitlines()[0][:200], BucketName=bucket)
        return UpstreamUnavailable(f"The upstream could not be reached ({type(e).__name__}).")

    # --- cache path ---------------------------------------------------------------------

    async def head(self, bucket: str, key: str, *, if_none_match: str | None = None) -> ObjectMeta:
        """The object's metadata (checksum mode on). Sent as a plain signed request, like the
        GETs of the cache path: every read of an object whose metadata expired sends one, and the
        SDK's pipeline costs several times the CPU of the request itself."""
        headers = {"x-amz-checksum-mode": "ENABLED", "x-amz-content-sha256": EMPTY_SHA256}
        if if_none_match:
            headers["if-none-match"] = if_none_match
        resp = await self._send_signed("HEAD", bucket, key, (), headers)
        try:
            if resp.status == 304:
                raise NotModified()
            if resp.status != 200:
                raise _answer_error(resp.status, None, None, bucket, key)
            try:
                return ObjectMeta.from_headers(bucket, key, [(k.lower(), v) for k, v in resp.headers.items()])
            except ValueError:  # no usable Content-Length: nothing the cache can serve from
                raise _unusable_answer("HEAD") from None
        finally:
            resp.release()

    async def head_part(self, bucket: str, key: str, part_number: int, etag: str) -> PartInfo:
        try:
            r = await self._client.head_object(Bucket=bucket, Key=key, PartNumber=part_number,  # type: ignore
                                               ChecksumMode="ENABLED")
        except (ClientError, BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise self._error(e, bucket, key) from None
        headers = r["ResponseMetadata"]["HTTPHeaders"]
        status = r["ResponseMetadata"]["HTTPStatusCode"]
        cr = _parse_content_range(headers.get("content-range"))
        keep = tuple((k, v) for k, v in headers.items()
                     if k == "x-amz-mp-parts-count" or k.startswith("x-amz-checksum-"))
        if status != 206 or cr is None:
            # Not S3's answer to a part request (206 with the part's byte span): the upstream
            # does not serve parts the way S3 does, so the cache cannot map the part to bytes.
            return PartInfo(part_number, 0, -1, status, keep, headers.get("etag", ""))
        return PartInfo(part_number, cr[0], cr[1], 206, keep, headers.get("etag", ""))

    @contextlib.asynccontextmanager
    async def get_range(self, bucket: str, key: str, start: int, end: int, *,
                        if_match: str) -> AsyncIterator[_Body]:
        """A ranged GET pinned to an ETag. Sent as a plain signed request: on the miss path the
        SDK's request pipeline costs more CPU than the transfer of a small object."""
        headers = {"range": f"bytes={start}-{end}", "if-match": if_match, "x-amz-content-sha256": EMPTY_SHA256}
        resp = await self._send_signed("GET", bucket, key, (), headers)
        try:
            if resp.status not in (200, 206):
                raise await self._error_from_response(resp, bucket, key)
            cr = _parse_content_range(resp.headers.get("Content-Range"))
            if (cr is None and (start != 0 or resp.content_length != end + 1)) or \
                    (cr is not None and (cr[0], cr[1]) != (start, end)):
                raise UpstreamUnavailable("The upstream did not honour the requested byte range.")
            yield _Body(resp.content)
        finally:
            resp.release()

    async def open_object(self, bucket: str, key: str, *, start: int | None, end: int | None,
                          checksum_mode: bool, if_match: str | None = None) -> OpenedObject:
        headers = {"x-amz-content-sha256": EMPTY_SHA256}
        if start is not None:
            headers["range"] = f"bytes={start}-{'' if end is None else end}"
        if checksum_mode:
            headers["x-amz-checksum-mode"] = "ENABLED"
        if if_match is not None:
            headers["if-match"] = if_match
        resp = await self._send_signed("GET", bucket, key, (), headers)
        try:
            if resp.status not in (200, 206):
                raise await self._error_from_response(resp, bucket, key)
            cr = _parse_content_range(resp.headers.get("Content-Range"))
            if resp.status == 206 and cr is None or resp.content_length is None:
                raise UpstreamUnavailable("The upstream answered a GET without a usable length.")
            size = cr[2] if cr else resp.content_length
            try:
                meta = ObjectMeta.from_headers(bucket, key, [(k.lower(), v) for k, v in resp.headers.items()],
                                               size=size, answers=("GET",) if checksum_mode and cr is None else ())
            except ValueError:
                raise _unusable_answer("GET") from None
            first, last = (cr[0], cr[1]) if cr else (0, size - 1)
        except BaseException:
            resp.release()
            raise

        async def release() -> None:
            resp.release()

        return OpenedObject(meta, first, last, _Body(resp.content), release)

    async def _send_signed(self, method: str, bucket: str | None, key: str | None, query,
                           headers: dict[str, str], body=None) -> aiohttp.ClientResponse:
        """Sign and send; a bucket found in another region is re-signed for it once."""
        assert self._http is not None
        region = self._bucket_regions.get(bucket or "", self.region)
        for attempt in range(2):
            url = self._url(bucket, key, query, region)
            signed = await self._sign(method, url, dict(headers), region)
            try:
                # encoded=True: the path goes out exactly as signed (no dot-segment or slash folding)
                resp = await self._http.request(method, URL(url, encoded=True), headers=signed, data=body,
                                                allow_redirects=False)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                raise UpstreamUnavailable(f"The upstream could not be reached ({type(e).__name__}).") from e
            moved = resp.headers.get("x-amz-bucket-region")
            if (attempt == 0 and moved and moved != region and resp.status in (301, 307, 400)
                    and not self.custom_endpoint and bucket and not hasattr(body, "__aiter__")):
                resp.release()
                self._bucket_regions[bucket] = region = moved
                continue
            return resp
        raise AssertionError("unreachable")

    async def _error_from_response(self, resp: aiohttp.ClientResponse, bucket: str | None,
                                   key: str | None) -> Exception:
        """An S3Error (or UpstreamUnavailable for 5xx) from a raw error response."""
        code = message = None
        try:
            body = await resp.content.read(64 * 1024)
            root = ET.fromstring(body) if body else None
            if root is not None:
                code, message = root.findtext("Code"), root.findtext("Message")
        except (ET.ParseError, aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass
        return _answer_error(resp.status, code or None, message, bucket, key)

    # --- pass-through -------------------------------------------------------------------

    def _url(self, bucket: str | None, key: str | None, query, region: str) -> str:
        q = "&".join(quote(k, safe="-_.~") + ("=" + quote(v, safe="-_.~") if v != "" else "")
                     for k, v in query)
        netloc, path = self.netloc, "/"
        if region != self.region and not self.custom_endpoint:
            netloc = f"s3.{region}.amazonaws.com"
        if bucket is not None:
            virtual = self.addressing == "virtual" and _DNS_BUCKET.match(bucket) and \
                not (self.scheme == "https" and "." in bucket)
            if virtual:
                netloc = f"{bucket}.{netloc}"
                path = "/" + (quote(key, safe="/~") if key is not None else "")
            else:
                path = "/" + quote(bucket, safe="") + ("/" + quote(key, safe="/~") if key is not None else "")
        return f"{self.scheme}://{netloc}{path}" + (f"?{q}" if q else "")

    async def _sign(self, method: str, url: str, headers: dict[str, str], region: str) -> dict[str, str]:
        if self._credentials is None:
            return headers
        creds = await self._credentials.get_frozen_credentials()
        req = AWSRequest(method=method, url=url, headers=headers, data=b"")
        _Signer(creds, "s3", region).add_auth(req)
        return dict(req.headers.items())

    async def forward(self, request: ForwardRequest) -> ForwardResponse:
        assert self._http is not None
        pairs = [(k, v) for k, v in request.headers if k not in _HOP_BY_HOP]
        body: AsyncIterator[bytes] | bytes | None = request.body
        length = request.content_length
        client_sha = dict(pairs).get("x-amz-content-sha256", "")
        if client_sha.startswith("STREAMING-") and client_sha != UNSIGNED_TRAILER and body is not None:
            # A signed aws-chunked upload: its chunk signatures chain from the client's own
            # signature and cannot survive re-signing, so the payload is re-framed without them
            # (trailing checksums kept).
            reframed = awschunked.reframe_unsigned(pairs, body)
            pairs, body, length = reframed.headers, reframed.body, reframed.content_length
        headers = {k: v for k, v in pairs if k != "content-length"}
        client_sha = headers.pop("x-amz-content-sha256", "")
        if client_sha == UNSIGNED_TRAILER:
            sha = UNSIGNED_TRAILER  # no chunk signatures: the body passes through as it is
        elif body is None or length == 0:
            sha, body = EMPTY_SHA256, None
        elif length is not None and length <= SMALL_BODY:
            data = b"".join([piece async for piece in body])  # type: ignore[union-attr]
            if len(data) != length:
                raise S3Error("IncompleteBody")
            body, sha = data, hashlib.sha256(data).hexdigest()
        else:
            sha = UNSIGNED_PAYLOAD
        headers["x-amz-content-sha256"] = sha
        if length is not None:
            headers["content-length"] = str(length)
        resp = await self._send_signed(request.method, request.bucket, request.key, request.query, headers, body)
        out_headers = [(k.lower(), v) for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP]

        async def stream() -> AsyncIterator[bytes]:
            try:
                async for piece in resp.content.iter_chunked(256 * 1024):
                    yield piece
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                raise UpstreamUnavailable(f"upstream body interrupted: {type(e).__name__}") from e

        async def release() -> None:
            resp.release()

        return ForwardResponse(resp.status, out_headers, stream(), release)

