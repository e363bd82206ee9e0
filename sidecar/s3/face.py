"""The S3 face: answers S3 REST requests, object reads from the cache, the rest passed through.

Runs on aiohttp's low-level server (no router): S3 routing needs the raw request target,
and every answer, including malformed requests, must be S3 error XML.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict

from ..catalog import Catalog, Entry
from ..errors import ObjectChanged, S3Error, UpstreamUnavailable, client_fault
from ..objects import ObjectMeta
from ..reader import Reader, ReadStats, Segment
from ..telemetry import AccessLog, Metrics, get_logger
from ..upstream.base import ForwardRequest, ForwardResponse, Upstream
from . import conditions
from .auth import Payload, SigV4Verifier
from .headers import check_client_values, upstream_values
from .ranges import ByteRange, RangeNotSatisfiable, RangeSpec, parse_range, resolve
from .sendfile import BodySender, ClientGone
from .target import RESPONSE_OVERRIDES, Target, changes_object_data, is_cacheable_read, parse_target

log = get_logger("sidecar.s3")

# Client request headers that never go upstream: hop-by-hop, the client's own signing, and
# framing the upstream request sets itself.
_DROP_REQUEST_HEADERS = frozenset({
    "host", "authorization", "x-amz-date", "x-amz-security-token", "connection", "keep-alive",
    "proxy-authorization", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect",
    "content-length",
})
_DROP_RESPONSE_HEADERS = frozenset({"server", "date", "connection", "keep-alive", "transfer-encoding",
                                    "content-length"})
DELETE_OBJECTS_MAX_BODY = 4 * 1024 * 1024
S3_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"})
_BODY_HEADERS = frozenset({"content-encoding", "content-md5", "x-amz-content-sha256", "x-amz-decoded-content-length",
                           "x-amz-trailer"})
# as S3 accepts them; another value is answered 400 before it reaches an upstream
CHECKSUM_ALGORITHMS = frozenset({"CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"})
SERVER = "sidecar"


_ID_PREFIX = secrets.token_hex(4).upper()
_ids = itertools.count(1)


def new_request_id() -> str:
    """Unique per request: a random per-process prefix and a counter (cheaper than randomness)."""
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFF:08X}"


class S3Face:
    def __init__(self, *, upstream: Upstream, catalog: Catalog, reader: Reader, metrics: Metrics,
                 virtual_host_suffixes: tuple[str, ...],
                 executor: concurrent.futures.Executor | None = None,
                 read_policy: Callable[[str, str, int], tuple[bool, str]] | None = None,
                 on_read: Callable[[str, str, ObjectMeta, ByteRange | None, ReadStats], None] | None = None) -> None:
        self.upstream = upstream
        self.catalog = catalog
        self.reader = reader
        self.metrics = metrics
        self.suffixes = virtual_host_suffixes
        self.on_read = on_read
        # reads the lean path answered as planned, recorded together after a turn of the loop:
        # [(bucket, key, meta, range, hit bytes, bytes of prefetched chunks read first, Unix time)]
        self.on_hits: Callable[[list[tuple]], None] | None = None
        # (method, bucket, key, query, status) -> a sink for a listing's body, or None (predict/known.py)
        self.listing_tap: Callable[..., Callable[[bytes | None], None] | None] | None = None
        self.executor = executor
        # (bucket, key, size) -> (may be cached, metrics label): the cache rules, seen from here
        self.read_policy = read_policy or (lambda bucket, key, size: (True, ""))
        self.in_flight = 0
        self.access_log = AccessLog()  # the daemon sets its own (key hashing per settings)
        self.auth: SigV4Verifier | None = None  # the daemon sets one when client signatures are verified

    # --- entry point --------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rid = new_request_id()
        t0 = time.monotonic()
        self.in_flight += 1
        op, outcome, target = "Unknown", "-", None
        stats = ReadStats()
        resp: web.StreamResponse | None = None
        try:
            target = parse_target(request.raw_path, request.headers.get("host"), self.suffixes)
            check_client_values(target, request.headers)
            payload = None
            if self.auth is not None:
                payload = self.auth.verify(request.method, request.raw_path, request.headers)
                if not request.body_exists:
                    payload.check_empty()
            if is_cacheable_read(request.method, target, request.headers):
                op = "GetObject" if request.method == "GET" else "HeadObject"
                resp = await self._read_object(request, target, rid, stats)
                outcome = stats.outcome
                if request.method == "GET" and resp.status in (200, 206):
                    self._count_read(stats, stats.label)
            else:
                op = operation_name(request.method, target)
                outcome = "pass"
                if request.method not in S3_METHODS:  # an upstream may fail on them (moto: 500)
                    raise S3Error("MethodNotAllowed", Method=request.method,
                                  ResourceType="OBJECT" if target.key is not None else "BUCKET")
                resp = await self._forward(request, target, rid, payload)
        except S3Error as e:
            resp = self._error(request, e, rid, target)
        except ClientGone:
            outcome = "client-gone"
            if request.transport is not None:
                request.transport.abort()  # whatever was sent so far, the response is over
            resp = web.Response(status=499)  # never sent: the connection is gone
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:  # noqa: BLE001 - no traceback ever reaches a client
            log.exception("request_failed", request_id=rid, method=request.method)
            resp = self._error(request, S3Error("InternalError"), rid, target)
        finally:
            self.in_flight -= 1
            status = resp.status if resp is not None else 0
            elapsed = time.monotonic() - t0
            self.metrics.observe_request(op, status, outcome, elapsed)
            if self.access_log.enabled:
                body = stats.hit_bytes + stats.miss_bytes + stats.tier_bytes
                if not body and resp is not None and request.method != "HEAD" and outcome == "pass":
                    body = resp.content_length or 0
                self.access_log.emit(rid, request.method, op, target.bucket if target else None,
                                     target.key if target else None, request.headers.get("range"), status,
                                     outcome, body, stats.hit_bytes, stats.miss_bytes, elapsed,
                                     bytes_tier=stats.tier_bytes)
        return resp

    def _count_read(self, stats: ReadStats, label: str = "") -> None:
        self.metrics.count_read(label, stats.hit_bytes, stats.miss_bytes, stats.tier_bytes)

    def reject(self, request: web.BaseRequest, e: S3Error) -> web.Response:
        """An error answer to a request refused before routing (HTTP it cannot parse, limits)."""
        resp = self._error(request, e, new_request_id(), None)
        self.metrics.observe_request("Unknown", resp.status, "rejected", 0.0)
        return resp

    def _error(self, request: web.BaseRequest, e: S3Error, rid: str, target: Target | None) -> web.Response:
        headers = {"x-amz-request-id": rid, "Server": SERVER, **e.headers}
        if request.method == "HEAD":
            return web.Response(status=e.status, headers=headers)
        resource = target.resource if target is not None else ""
        return web.Response(status=e.status, body=e.to_xml(resource, rid),
                            headers={**headers, "Content-Type": "application/xml"})

    # --- cached object reads ------------------------------------------------------------

    async def _read_object(self, request: web.BaseRequest, target: Target, rid: str,
                           stats: ReadStats) -> web.StreamResponse:
        """GetObject/HeadObject from the cache: metadata from the catalog, bytes from the reader."""
        assert target.bucket is not None and target.key is not None
        h = request.headers
        part_number = _part_number(target, h)
        checksum_mode = h.get("x-amz-checksum-mode", "").upper() == "ENABLED"
        # A cold GET opens the object upstream at once; with a shared tier, a HEAD then the tier.
        if request.method == "GET" and part_number is None and self.catalog.peek(target.bucket, target.key) is None \
                and self.reader.tier is None and not any(c in h for c in conditions.HEADERS):
            spec = parse_range(h.get("range"))
            if spec is None or spec.first is not None:
                resp = await self._read_cold(request, target, rid, stats, spec, checksum_mode)
                if resp is not None:
                    return resp
        if request.method == "GET" and part_number is None and self.reader.tier is not None:
            self._speculate(target, h)
        for attempt in range(3):
            try:
                entry = await self.catalog.lookup(target.bucket, target.key)
            except S3Error as e:
                if e.status == 404 and request.method == "GET":
                    # A HEAD's 404 cannot tell a missing key from a missing bucket; the
                    # upstream's own answer to the GET can (and is right if the key just appeared).
                    return await self._forward(request, target, rid)
                raise
            meta = entry.meta
            not_modified = _precondition_answer(h, meta, rid)
            if not_modified is not None:
                return not_modified
            selected = await self._selected_bytes(entry, part_number, h)
            if selected is _FORWARD:
                return await self._forward(request, target, rid)
            if selected is _CHANGED:
                continue
            status, rng, extra = selected
            kind = "HEAD" if request.method == "HEAD" else "GET"
            if checksum_mode and rng is None and meta.checksums_for(kind) is None:
                try:
                    # (a version served stale-if-error is not one to take from the shared tier)
                    carried = None if entry.stale else self._carried_checksums
                    meta = (await self.catalog.with_checksums(entry, kind, carried=carried)).meta
                except ObjectChanged:
                    continue
            headers = self._object_headers(meta, target, rng, status, extra, h, rid, kind=kind)
            resp = await self._answer_read(request, target, meta, rng, status, headers, stats, tier=not entry.stale)
            if resp is not None:
                return resp
        raise S3Error("ServiceUnavailable", "The object kept changing while being read; retry.")

    def _speculate(self, target: Target, h) -> None:
        """A GET, with a shared tier, of an object whose version is about to be resolved by the
        catalog's lookup (a HEAD): the tier blocks of a guessed version are read meanwhile, and
        released only if the upstream confirms that version (Reader.speculate). The guess: the
        version last known, when the metadata expired; for an object never resolved here, the
        tier's record of the version another pod last saw (Reader.guess)."""
        assert target.bucket is not None and target.key is not None
        entry = self.catalog.peek(target.bucket, target.key)
        if entry is None:
            self.reader.guess(target.bucket, target.key, lambda meta: self._speculative_span(meta, h))
            return
        if self.catalog.fresh(target.bucket, target.key) is not None:
            return
        span = self._speculative_span(entry.meta, h)
        if span is not None:
            self.reader.speculate(entry.meta, *span)

    def _speculative_span(self, meta: ObjectMeta, h) -> tuple[int, int] | None:
        """The bytes a GET would read of ``meta``'s version; None: none to read ahead of the
        verdict (a range it does not satisfy, an object not kept, whose read starts its own fills)."""
        try:
            rng = resolve(parse_range(h.get("range")), meta.size)
        except (RangeNotSatisfiable, S3Error):
            return None
        if not self.read_policy(meta.bucket, meta.key, meta.size)[0]:
            return None
        return (rng.start, rng.end) if rng is not None else (0, meta.size - 1)

    def _carried_checksums(self, meta: ObjectMeta):
        """A whole GET's checksum headers as the fill of chunk 0 learns them: from the shared
        tier's block 0, or from the whole-object upstream GET filling it (the read of the object
        starts meanwhile, under the object's caching rule)."""
        return self.reader.carried_checksums(meta, keep=self.read_policy(meta.bucket, meta.key, meta.size)[0])

    async def _selected_bytes(self, entry: Entry, part_number: int | None, h):
        """(status, range or None for the whole object, extra headers) that the request selects;
        _FORWARD: the upstream answers it; _CHANGED: the object changed since it was looked up."""
        meta = entry.meta
        if part_number is not None:
            info = await self.catalog.part(entry, part_number)
            if info.status != 206:
                return _FORWARD
            if info.etag and info.etag != meta.etag:
                self.catalog.invalidate(meta.bucket, meta.key)
                return _CHANGED  # the object changed since its metadata was cached
            return 206, ByteRange(info.start, info.end), info.headers
        try:
            rng = resolve(parse_range(h.get("range")), meta.size)
        except RangeNotSatisfiable:
            raise S3Error("InvalidRange", headers={"Content-Range": f"bytes */{meta.size}"},
                          RangeRequested=h.get("range", ""), ActualObjectSize=str(meta.size)) from None
        return (206 if rng is not None else 200), rng, ()

    async def _answer_read(self, request: web.BaseRequest, target: Target, meta: ObjectMeta, rng: ByteRange | None,
                           status: int, headers: CIMultiDict, stats: ReadStats, *,
                           tier: bool = True) -> web.StreamResponse | None:
        """The answer with the selected bytes (none for a HEAD); None: the object changed
        upstream before anything was sent, look it up again."""
        start, end = (rng.start, rng.end) if rng is not None else (0, meta.size - 1)
        length = end - start + 1
        if request.method == "HEAD":
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = length
            return resp
        keep, stats.label = self.read_policy(meta.bucket, meta.key, meta.size)
        small = self.reader.read_small(meta, start, end, stats) if length else b""
        if small is not None:
            resp = web.Response(status=status, headers=headers, body=bytes(small))
            if self.on_read is not None:
                self.on_read(target.bucket, target.key, meta, rng, stats)
            return resp
        # (bytes not kept are never written to the shared tier: not asked of it either)
        segments = self.reader.read(meta, start, end, stats, keep=keep, tier=tier and keep)
        try:
            first = await anext(segments, None)
        except ObjectChanged:  # the reader has told the catalog
            await segments.aclose()
            return None
        try:
            resp = await self._send_body(request, status, headers, length, first, segments)
        finally:
            await segments.aclose()
            self._drop_if_replaced(meta, stats)
        if self.on_read is not None:
            self.on_read(target.bucket, target.key, meta, rng, stats)
        return resp

    async def _read_cold(self, request: web.BaseRequest, target: Target, rid: str, stats: ReadStats,
                         spec: RangeSpec | None, checksum_mode: bool) -> web.StreamResponse | None:
        """A GET of an object the catalog does not know, answered from a single upstream GET that
        also yields its metadata. None: the key became known meanwhile; use the normal path."""
        assert target.bucket is not None and target.key is not None
        if spec is None:
            start = end = None
        else:
            assert spec.first is not None
            start, end = self.reader.cold_window(spec.first, spec.last)
        try:
            got = await self.catalog.open_cold(target.bucket, target.key, start=start, end=end,
                                               checksum_mode=checksum_mode and spec is None)
        except S3Error as e:
            if e.code == "InvalidRange":
                return None  # the normal path answers with the object's size
            raise
        if got is None:
            return None
        entry, opened = got
        meta = entry.meta
        try:
            rng = resolve(spec, meta.size)
            headers = self._object_headers(meta, target, rng, 206 if rng is not None else 200, (), request.headers,
                                           rid)
        except RangeNotSatisfiable:
            await opened.close()
            return None
        except BaseException:  # headers that cannot be written (502): the opened GET is not read
            await opened.close()
            raise
        first, last = (rng.start, rng.end) if rng is not None else (0, meta.size - 1)
        keep, stats.label = self.read_policy(target.bucket, target.key, meta.size)
        segments = self.reader.read_opened(meta, first, last, stats, opened, keep=keep)
        try:
            seg = await anext(segments, None)
            resp = await self._send_body(request, 206 if rng is not None else 200, headers, last - first + 1,
                                         seg, segments)
        except ObjectChanged:
            raise S3Error("ServiceUnavailable", "The object changed while being read; retry.") from None
        finally:
            await segments.aclose()
            self._drop_if_replaced(meta, stats)
        if self.on_read is not None:
            self.on_read(target.bucket, target.key, meta, rng, stats)
        return resp

    def _drop_if_replaced(self, meta: ObjectMeta, stats: ReadStats) -> None:
        """A read that was already under way when a write through the sidecar replaced or
        deleted its object finishes on the old version, and the chunks it fetched (from the
        upstream or the shared tier) were kept: the catalog retires them if that version is no
        longer current."""
        if stats.miss_bytes or stats.tier_bytes:
            self.catalog.settle(meta)

    def _object_headers(self, meta: ObjectMeta, target: Target, rng: ByteRange | None, status: int,
                        extra, h, rid: str, *, kind: str = "GET") -> CIMultiDict:
        """Response headers of a read answered from the cache. ``kind``: "GET" or "HEAD", whose
        own checksum answer from the upstream a whole-object response replays."""
        out: CIMultiDict[str] = CIMultiDict(meta.headers)
        out["Accept-Ranges"] = "bytes"
        if rng is not None:
            out["Content-Range"] = rng.content_range(meta.size)
        checksum_mode = h.get("x-amz-checksum-mode", "").upper() == "ENABLED"
        for name, value in extra:
            if checksum_mode or not name.startswith("x-amz-checksum-"):
                out[name] = value
        if checksum_mode and status == 200 and not extra:
            # Whole-object checksums only on whole-object answers: a client validating a
            # ranged body against them would fail the read.
            for name, value in meta.checksums_for(kind) or ():
                out[name] = value
        for param, header in RESPONSE_OVERRIDES.items():
            value = target.param(param)
            if value is not None:
                out[header] = value
        out["x-amz-request-id"] = rid
        out["Server"] = SERVER
        return upstream_values(out)  # the client's values were checked on arrival

    async def _send_body(self, request: web.BaseRequest, status: int, headers: CIMultiDict, length: int,
                         first: Segment | None, segments: AsyncIterator[Segment]) -> web.StreamResponse:
        if first is None or (first.data is not None and first.length == length):
            # Small body in memory: one write for headers and body.
            body = bytes(first.data) if first is not None and first.data is not None else b""
            return web.Response(status=status, headers=headers, body=body)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length
        try:
            await resp.prepare(request)
        except ConnectionError as e:  # the client left before the headers went out
            raise ClientGone() from e
        sender = BodySender(request.transport, resp.write, self.executor)
        try:
            await sender.send_segments(first, segments, self.reader.unreadable)
            await resp.write_eof()
        except ClientGone:
            raise
        except (S3Error, ObjectChanged, OSError, RuntimeError) as e:
            # Headers are gone: the only honest signal left is an aborted connection,
            # never a short body that looks complete.
            log.warning("response_aborted", error=repr(e), sent=sender.sent, length=length)
            if request.transport is not None:
                request.transport.abort()
            raise ClientGone() from e
        finally:
            sender.close()
        return resp

    # --- pass-through -------------------------------------------------------------------

    async def _forward(self, request: web.BaseRequest, target: Target, rid: str,
                       payload: Payload | None = None) -> web.StreamResponse:
        method = request.method
        if request.headers.get("expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        client_body = ClientBody(request)
        headers, body, length, deleted_keys = await self._outgoing(request, target, client_body, payload)
        writes = method in ("PUT", "POST", "DELETE")
        if writes:
            self._invalidate(method, target, request.headers, deleted_keys)
        upstream_resp = await self._send_upstream(ForwardRequest(
            method=method, bucket=target.bucket, key=target.key, query=target.query, headers=headers,
            body=body, content_length=length), client_body, payload)
        if payload is not None and payload.failure is not None:
            await upstream_resp.close()
            raise payload.failure
        try:
            if writes:  # again: lookups that started while the write was in flight are void
                self._invalidate(method, target, request.headers, deleted_keys)
            return await self._relay(request, target, rid, upstream_resp)
        finally:
            await upstream_resp.close()

    async def _outgoing(self, request: web.BaseRequest, target: Target, client_body: "ClientBody",
                        payload: Payload | None) -> tuple[list[tuple[str, str]], AsyncIterator[bytes] | None,
                                                          int | None, list[str]]:
        """The headers, body and length a pass-through sends upstream, and the keys a
        DeleteObjects body names (read whole here, to invalidate them)."""
        method = request.method
        headers = [(k.lower(), v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST_HEADERS]
        body: AsyncIterator[bytes] | None = None
        length = request.content_length
        if method in ("GET", "HEAD"):
            # S3 reads take no body: none goes upstream, nor headers describing one (an upstream
            # told of an aws-chunked body it does not get may fail on it: moto answers 500)
            headers = [(k, v) for k, v in headers if k not in _BODY_HEADERS]
            length = None
        elif request.body_exists:
            body = client_body.pieces(256 * 1024)
        for name in ("x-amz-sdk-checksum-algorithm", "x-amz-checksum-algorithm"):
            algorithm = request.headers.get(name)
            if algorithm is not None and algorithm.upper() not in CHECKSUM_ALGORITHMS:
                raise S3Error("InvalidRequest", f"Value for {name} header is invalid.")
        deleted_keys: list[str] = []
        if method == "POST" and target.key is None and target.has("delete") and body is not None:
            data = await self._read_limited(client_body, DELETE_OBJECTS_MAX_BODY)
            if payload is not None:
                payload.check_bytes(data)
            deleted_keys = delete_objects_keys(data)
            body, length = _once(data), len(data)
        elif body is not None and payload is not None:  # hash or chunk signatures checked as it streams
            headers, body, length = payload.wrap(headers, body, length)
        return headers, body, length, deleted_keys

    async def _send_upstream(self, forward: ForwardRequest, client_body: "ClientBody",
                             payload: Payload | None) -> ForwardResponse:
        try:
            return await self.upstream.forward(forward)
        except Exception as e:
            # However the upstream layers wrapped it, a broken or abandoned body is the client's.
            if client_body.error is not None:
                raise client_body.error from None
            if payload is not None and payload.failure is not None:
                raise payload.failure from None
            cause = client_fault(e)
            if cause is not None:
                raise cause from None
            raise

    async def _relay(self, request: web.BaseRequest, target: Target, rid: str,
                     upstream_resp: ForwardResponse) -> web.StreamResponse:
        """The upstream's answer to the client: its headers (our request id in front of its
        own) and its body as it arrives."""
        method = request.method
        out = CIMultiDict((k, v) for k, v in upstream_resp.headers if k not in _DROP_RESPONSE_HEADERS)
        if "x-amz-request-id" in out:
            out["x-sidecar-upstream-request-id"] = out.pop("x-amz-request-id")
        out["x-amz-request-id"] = rid
        out["Server"] = SERVER
        resp = web.StreamResponse(status=upstream_resp.status, headers=upstream_values(out, upstream_resp.status))
        clen = next((v for k, v in upstream_resp.headers if k == "content-length"), None)
        if clen is not None and clen.isdigit():
            resp.content_length = int(clen)
        try:
            await resp.prepare(request)
        except ConnectionError as e:  # the client left before the headers went out
            raise ClientGone() from e
        if method != "HEAD":
            # An object's bytes passed through are a client's read: they count against the
            # upstream cap like demand fills (the token bucket), so background leaves them room.
            spend = self.reader.spend_demand if method == "GET" and target.key is not None else None
            # A listing passing through tells the prefetcher which keys exist.
            tap = self.listing_tap and self.listing_tap(method, target.bucket, target.key, target.query,
                                                        upstream_resp.status)
            try:
                async for piece in upstream_resp.body:
                    if spend is not None:
                        spend(len(piece))
                    if tap:
                        tap(piece)
                    await resp.write(piece)
                if tap:
                    tap(None)
            except (S3Error, OSError) as e:
                log.warning("response_aborted", error=repr(e))
                if request.transport is not None:
                    request.transport.abort()
                raise ClientGone() from e
        await resp.write_eof()
        return resp

    async def _read_limited(self, client_body: "ClientBody", limit: int) -> bytes:
        parts, n = [], 0
        async for piece in client_body.pieces(64 * 1024):
            n += len(piece)
            if n > limit:
                raise S3Error("MalformedXML", "The DeleteObjects request body is too large.")
            parts.append(piece)
        return b"".join(parts)

    def _invalidate(self, method: str, target: Target, headers, deleted_keys: list[str]) -> None:
        if target.bucket is None:
            return
        if target.key is not None:
            kind = "data" if changes_object_data(method, target, headers) else "metadata"
            self.catalog.invalidate(target.bucket, target.key, retire=kind == "data")
            self.metrics.invalidations.labels(kind).inc()
        elif deleted_keys:
            for key in deleted_keys:
                self.catalog.invalidate(target.bucket, key, retire=True)
            self.metrics.invalidations.labels("data").inc(len(deleted_keys))
        elif method == "DELETE" or method == "POST":
            # DeleteBucket, or a browser-form upload whose key is inside the body.
            self.catalog.invalidate_bucket(target.bucket, retire=method == "DELETE")
            self.metrics.invalidations.labels("bucket").inc()


_FORWARD = object()  # _selected_bytes: the upstream answers this read
_CHANGED = object()  # _selected_bytes: the object changed since it was looked up


def _part_number(target: Target, h) -> int | None:
    """The ``partNumber`` a read asks for, validated as S3 does."""
    part_param = target.param("partNumber")
    if part_param is None:
        return None
    if not part_param.isdigit() or not 1 <= int(part_param) <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      ArgumentName="partNumber", ArgumentValue=part_param)
    if "range" in h:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter")
    return int(part_param)


def _precondition_answer(h, meta: ObjectMeta, rid: str) -> web.Response | None:
    """304 for If-None-Match/If-Modified-Since that hold; raises 412 PreconditionFailed; None: serve."""
    verdict = conditions.evaluate(h, meta.etag, meta.last_modified_ts)
    if verdict == conditions.PRECONDITION_FAILED:
        raise S3Error("PreconditionFailed", Condition="If-Match" if "if-match" in h else "If-Unmodified-Since")
    if verdict == conditions.NOT_MODIFIED:
        return web.Response(status=304, headers=upstream_values(
            [("ETag", meta.etag), ("Last-Modified", meta.last_modified), ("x-amz-request-id", rid), ("Server", SERVER)]))
    return None


class ClientBody:
    """A client's request body as the upstream reads it. Bad framing (chunked, Content-Length,
    Content-Encoding) is the client's error, 400, and a client that goes away mid-body is
    ClientGone; ``error`` keeps it, as layers between may wrap it in an upstream failure."""

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.error: Exception | None = None

    async def pieces(self, size: int) -> AsyncIterator[bytes]:
        try:
            async for piece in self.request.content.iter_chunked(size):
                yield piece
        except RequestPayloadError as e:
            self.error = S3Error("IncompleteBody") if "Not enough data" in str(e) else \
                S3Error("InvalidRequest", "The request body does not match its Transfer-Encoding or Content-Length.")
            raise self.error from None
        except ConnectionError:
            self.error = ClientGone()
            raise self.error from None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def delete_objects_keys(body: bytes) -> list[str]:
    """Keys named in a DeleteObjects request body."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML") from None
    keys = []
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Key" and el.text is not None:
            keys.append(el.text)
    return keys


def operation_name(method: str, t: Target) -> str:
    """A readable S3 operation name for metrics and logs."""
    if t.bucket is None:
        return "ListBuckets" if method == "GET" else "Service" + method.title()
    names = {k.lower() for k, _ in t.query}
    if t.key is None:
        if method == "GET":
            if "uploads" in names:
                return "ListMultipartUploads"
            if "versions" in names:
                return "ListObjectVersions"
            if names & {"acl", "policy", "cors", "lifecycle", "tagging", "location", "versioning", "website",
                        "encryption", "notification", "replication", "logging", "ownershipcontrols"}:
                return "GetBucketConfig"
            return "ListObjectsV2" if t.param("list-type") == "2" else "ListObjects"
        return {"HEAD": "HeadBucket", "PUT": "PutBucket", "DELETE": "DeleteBucket",
                "POST": "DeleteObjects" if "delete" in names else "PostBucket"}.get(method, method)
    if method == "PUT":
        if "partnumber" in names:
            return "UploadPart"
        return "PutObject" if not names - {"x-id"} else "PutObjectConfig"
    if method == "POST":
        if "uploads" in names:
            return "CreateMultipartUpload"
        if "uploadid" in names:
            return "CompleteMultipartUpload"
        return "PostObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadid" in names else "DeleteObject"
    if method == "GET" and "uploadid" in names:
        return "ListParts"
    return {"GET": "GetObjectConfig", "HEAD": "HeadObject"}.get(method, method)


__all__ = ["S3Face", "UpstreamUnavailable"]
