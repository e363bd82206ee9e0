"""The lean hit path: plain GET/HEAD cache hits answered on the raw connection, everything else
handed to aiohttp's server on the same connection.

aiohttp's web layer costs about two thirds of a small request's budget before the sidecar does
anything. A connection starts here, on a bare protocol: each request head is parsed (httptools)
and, when it is a plain GetObject/HeadObject whose version the catalog knows fresh and whose
bytes are all cached, answered directly — headers prepared once per object version, the body
from the RAM tier in one write, or from chunk files with ``os.sendfile``. The first request this
path is not sure of (a write, a miss, a 304 or 412, ``partNumber``, ``response-*``, signatures that
do not verify, anything odd in the HTTP) makes the connection aiohttp's for good: its request handler
is attached to the transport and fed the bytes already received, so the answer is exactly what
the S3 face gives. What this path does answer is what the face would answer, byte for byte but
for the order of headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from email.utils import formatdate
from typing import TYPE_CHECKING

import httptools

from ..errors import ObjectChanged, S3Error
from ..cache.disk import VerifiedChunk
from ..reader import ReadStats, Segment
from ..telemetry import get_logger
from . import conditions
from .face import new_request_id
from .ranges import ByteRange, parse_range, resolve
from .sendfile import BodySender, ClientGone, sendfile_until_full
from .target import UNCACHEABLE_READ_HEADERS, Target, is_cacheable_read, parse_target

if TYPE_CHECKING:
    from ..objects import ObjectMeta
    from .face import S3Face
    from .limits import S3Server

log = get_logger("sidecar.s3")

# Request headers after which the answer is not a plain cached read, or not one this path can
# reproduce exactly (framing, connection handling: aiohttp and the face decide).
_HAND_OFF_HEADERS = frozenset({
    "content-length", "transfer-encoding", "expect", "upgrade", "connection", "te", "trailer",
})
# ... and those after which the cache cannot answer at all (SSE-C, owner or payer checks): one
# set, so a request's lower-case header names are checked against both in one call
_NOT_PLAIN = _HAND_OFF_HEADERS | UNCACHEABLE_READ_HEADERS
_ODD_HEAD = re.compile(rb"[^\x00-\x7f]|(?:^|[^\r])\n|\n[ \t]")
MAX_HEAD = 8190  # a request head longer than this goes to aiohttp (whose limits then apply)
MAX_PENDING = 256 * 1024  # bytes pipelined behind a response being sent before reading pauses
_RANGE_LINE = b"\r\nRange: bytes="  # as clients send it; any other spelling is parsed in full
# Header lines an SDK sets afresh on every request (the signature, its time, its invocation id),
# as the AWS SDKs spell them, which change nothing in an answer while signatures are not
# checked: a head's shape keeps their names, in place, and drops their values when these are
# printable ASCII (other values stay, so such a head matches no shape and is parsed).
_SIGNING_LINES = (b"\r\nAuthorization:", b"\r\nX-Amz-Date:", b"\r\nX-Amz-Security-Token:",
                  b"\r\namz-sdk-invocation-id:", b"\r\namz-sdk-request:")
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


def _shape(head: bytes, at: int, end: int) -> bytes:
    """``head`` without its Range line (from ``at`` to the line end at ``end``) and without the
    values of its signing headers: what every head of one reader of one object shares. (A
    header sent twice keeps its second value, so matches no head the parser accepted.)"""
    shape = head[:at] + head[end:]
    for name in _SIGNING_LINES:
        i = shape.find(name)
        if i >= 0:
            v = i + len(name)
            j = shape.find(b"\r\n", v)
            if _NOT_PRINTABLE.search(shape, v, j) is None:
                shape = shape[:v] + shape[j:]
    return shape


class RequestHead:
    """A parsed request head: method, raw target, and headers (lower-case names, each once)."""

    __slots__ = ("method", "raw_path", "headers", "_complete", "_url", "_duplicate")

    def __init__(self) -> None:
        self.method = ""
        self.raw_path = ""
        self.headers: dict[str, str] = {}
        self._complete = 0
        self._url = b""
        self._duplicate = False

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.decode("ascii").lower()
        if lname in self.headers:
            self._duplicate = True
        self.headers[lname] = value.decode("ascii")

    def on_message_complete(self) -> None:
        self._complete += 1


def parse_head(head: bytes, max_headers: int = 100) -> RequestHead | None:
    """The request in ``head`` (exactly one request head, ending with an empty line), or None
    when it is anything but a simple, well-formed HTTP/1.1 request without a body: then aiohttp's
    parser and the face decide what it is and how to answer."""
    # non-ASCII bytes, bare LF line ends and obsolete line folding are left to aiohttp's
    # stricter parser (one scan finds any of them)
    if len(head) > MAX_HEAD or not head.endswith(b"\r\n\r\n") or _ODD_HEAD.search(head) is not None:
        return None
    req = RequestHead()
    parser = httptools.HttpRequestParser(req)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade, UnicodeError):
        return None
    if req._complete != 1 or req._duplicate or len(req.headers) > max_headers:
        return None
    if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
        return None
    req.method = parser.get_method().decode("ascii")
    req.raw_path = req._url.decode("ascii")
    return req


class PreparedHeaders:
    """The response headers of one object version that do not change from request to request,
    built once by the face's own ``_object_headers`` (so both paths send the same headers) and
    encoded: for whole-object and ranged answers, to a GET and to a HEAD."""

    __slots__ = ("meta", "whole_get", "whole_head", "ranged_get", "ranged_head")

    def __init__(self, face: "S3Face", meta: "ObjectMeta", checksum_mode: bool) -> None:
        self.meta = meta
        h = {"x-amz-checksum-mode": "ENABLED"} if checksum_mode else {}
        plain = Target(meta.bucket, meta.key, ())
        # a whole-object answer replays the checksums of its own kind of request (GET or HEAD)
        self.whole_get = _encoded(face._object_headers(meta, plain, None, 200, (), h, "", kind="GET"))[0]
        self.whole_head = _encoded(face._object_headers(meta, plain, None, 200, (), h, "", kind="HEAD"))[1]
        ranged = face._object_headers(meta, plain, ByteRange(0, 0), 206, (), h, "")
        self.ranged_get, self.ranged_head = _encoded(ranged)


def _encoded(headers) -> tuple[bytes, bytes]:
    """(GET, HEAD) header lines of a face answer, without its per-request ones."""
    lines = [(k, v) for k, v in headers.items() if k.lower() not in ("x-amz-request-id", "content-range")]
    text = "".join(f"{k}: {v}\r\n" for k, v in lines)
    if "\n" in text.replace("\r\n", "") or "\r" in text.replace("\r\n", ""):
        raise ValueError("header value with a line break")  # aiohttp refuses these: the face answers
    head = text.encode("utf-8")
    # aiohttp gives a body without a type application/octet-stream; a HEAD (StreamResponse) none
    has_type = any(k.lower() == "content-type" for k, _ in lines)
    return (head if has_type else head + b"Content-Type: application/octet-stream\r\n"), head


class ObjectPlan:
    """What a GetObject or HeadObject of one object version resolves to under the current
    rules, whatever its Range: the target, the entry and version it answers from, the prepared
    headers, the rule's read policy and label, and the request's metric records. Each request's
    ``HitPlan`` adds its range to it (a reader of a columnar file sends a new range every time,
    and builds none of this again)."""

    __slots__ = ("method", "target", "entry", "meta", "prepared", "checksum_mode", "operation", "fresh_until",
                 "keep", "label", "vid", "read_totals", "tallies", "whole", "ranges", "ranged_lines", "full_in_ram",
                 "_log", "_log_parts")

    RANGES_MAX = 64  # plans of ranges asked again (a file's footer), per object

    def __init__(self, fast: "FastPath", method: str, target: Target, entry, prepared: PreparedHeaders,
                 checksum_mode: bool) -> None:
        face = fast.face
        meta = entry.meta
        self.method, self.target, self.entry, self.meta = method, target, entry, meta
        self.prepared, self.checksum_mode = prepared, checksum_mode
        self.operation = "GetObject" if method == "GET" else "HeadObject"
        self.fresh_until = face.catalog.fresh_until(entry)
        self.keep, self.label = face.read_policy(target.bucket, target.key, meta.size)
        self.vid = face.reader.store.version_for(meta).vid if method == "GET" else ""
        self.read_totals = face.metrics.read_totals(self.label)
        self.tallies = {status: face.metrics.request_tally(self.operation, status, "hit") for status in (200, 206)}
        self.whole: HitPlan | None = None
        self.ranges: dict[str, HitPlan] = {}
        # what every ranged answer shares: its status line and prepared header lines
        self.ranged_lines = b"HTTP/1.1 206 Partial Content\r\n" + (
            prepared.ranged_get if method == "GET" else prepared.ranged_head)
        self.full_in_ram = fast.holds_in_ram(fast.chunk_size)  # whether a whole chunk is small enough
        self._log = face.access_log
        self._log_parts: tuple[str, str] | None = None

    def log_parts(self) -> tuple[str, str]:
        """The access-log fields of this object's ranged hits, around the range (``AccessLog.parts``)."""
        parts = self._log_parts
        if parts is None:
            parts = self._log_parts = self._log.parts(self.method, self.operation, self.target.bucket,
                                                      self.target.key, 206, "hit")
        return parts

    def for_range(self, fast: "FastPath", range_header: str | None) -> "HitPlan | None":
        """The plan of this object's request with ``range_header``; None when the face answers
        it (a range it refuses or reads oddly, a whole object's checksums it must ask for)."""
        if range_header is None:
            if self.whole is None:
                if self.checksum_mode and self.meta.checksums_for(self.method) is None:
                    return None  # the face asks the upstream for this kind's checksums
                self.whole = HitPlan(fast, self, None, None)
            return self.whole
        plan = self.ranges.get(range_header)
        if plan is None:
            try:
                rng = resolve(parse_range(range_header), self.meta.size)
            except Exception:  # noqa: BLE001 - 416 and anything odd: the face answers it
                return None
            plan = self.ranged(fast, rng, range_header)
        return plan

    def ranged(self, fast: "FastPath", rng: ByteRange | None, range_header: str) -> "HitPlan":
        """The plan of this object's request for ``rng`` (resolved from ``range_header``)."""
        plan = self.ranges.get(range_header)
        if plan is None:
            plan = HitPlan(fast, self, rng, range_header)
            if len(self.ranges) < self.RANGES_MAX:
                self.ranges[range_header] = plan
        return plan


class HitPlan:
    """A request this path answers: its object's plan and its range, resolved to everything
    about the answer but its request id, date and bytes. A head sent again while the version
    stays current and fresh is answered from its plan (``FastProtocol._answer_planned``)."""

    __slots__ = ("method", "target", "entry", "meta", "rng", "range_header", "start", "end", "status", "head",
                 "operation", "fresh_until", "keep", "label", "vid", "chunk", "key", "lo", "hi", "in_ram", "tally",
                 "read_totals", "_log_fields", "sent", "_log")

    def __init__(self, fast: "FastPath", obj: ObjectPlan, rng: ByteRange | None, range_header: str | None) -> None:
        meta = obj.meta
        method = self.method = obj.method
        self.target, self.entry, self.meta = obj.target, obj.entry, meta
        self.operation, self.fresh_until, self.keep, self.label = obj.operation, obj.fresh_until, obj.keep, obj.label
        self.read_totals = obj.read_totals
        self.rng, self.range_header = rng, range_header
        if rng is None:
            start, end, status = 0, meta.size - 1, 200
            prepared = obj.prepared
            head = b"HTTP/1.1 200 OK\r\n" + (prepared.whole_get if method == "GET" else prepared.whole_head)
        else:
            start, end, status = rng.start, rng.end, 206
            head = obj.ranged_lines + b"Content-Range: bytes %d-%d/%d\r\n" % (start, end, meta.size)
        self.start, self.end, self.status = start, end, status
        self.tally = obj.tallies[status]
        nbytes = end - start + 1
        # the head up to the request id, which (with the date) is added per request
        self.head = head + b"Content-Length: %d\r\nx-amz-request-id: " % nbytes
        # a GET within one chunk: where its bytes are
        self.chunk = -1
        self.vid = obj.vid
        self.lo = self.hi = 0
        self.in_ram = False  # whether the chunk is small enough for the RAM tier
        if method == "GET" and nbytes > 0:
            cs = fast.chunk_size
            chunk = start // cs
            if chunk == end // cs:
                self.chunk = chunk
                c0 = chunk * cs
                self.lo, self.hi = start - c0, end - c0
                self.in_ram = obj.full_in_ram or fast.holds_in_ram(min(cs, meta.size - c0))
        self.key = (self.vid, self.chunk)  # the chunk's key in the store
        self.sent = nbytes if method == "GET" else 0
        self._log = fast.face.access_log
        self._log_fields = None

    @property
    def log_fields(self) -> str:
        """The request's access-log fields but its id and time (built when first logged)."""
        fields = self._log_fields
        if fields is None:
            fields = self._log_fields = self._log.prepare(
                self.method, self.operation, self.target.bucket, self.target.key, self.range_header, self.status,
                "hit", self.sent, self.sent, 0)
        return fields


class RangeHit:
    """A ranged GET the shape lane answered (``FastProtocol._answer_shape``): what its records
    need (``FastPath.record_hits``), and nothing else of a ``HitPlan``. A columnar reader sends a
    new range every time, so this is built for every such hit."""

    __slots__ = ("obj", "rng", "range_header", "sent", "method", "operation", "status", "target", "meta", "tally",
                 "read_totals")

    def __init__(self, obj: ObjectPlan, rng: ByteRange, range_header: str, sent: int) -> None:
        self.obj, self.rng, self.range_header, self.sent = obj, rng, range_header, sent
        self.method, self.operation, self.status = "GET", obj.operation, 206
        self.target, self.meta = obj.target, obj.meta
        self.tally, self.read_totals = obj.tallies[206], obj.read_totals

    @property
    def log_fields(self) -> str:
        """As ``HitPlan.log_fields``. The range is digits only (the lane checked): its JSON string
        is itself in quotes."""
        before, after = self.obj.log_parts()
        return before + '"' + self.range_header + '"' + after % (self.sent, self.sent, 0, 0)


class FastPath:
    """Shared state of the lean path for one S3 listener: the face it answers for, its
    connections, and response headers prepared per object version."""

    PREPARED_MAX = 4096
    TARGETS_MAX = 16384
    HEADS_MAX = 4096
    HEAD_MEMO_BYTES = 1024  # at most 4 MiB of remembered heads
    PLANS_MAX = 4096

    def __init__(self, face: "S3Face", server: "S3Server", max_headers: int) -> None:
        self.face = face
        self.server = server
        self.max_headers = max_headers
        self.connections: set[FastProtocol] = set()
        self._prepared: dict[tuple[int, bool], PreparedHeaders] = {}
        self._targets: dict[tuple[str, str | None], Target] = {}
        self._by_head: dict[bytes, HitPlan] = {}  # plans by the very bytes of an unsigned head
        self._shapes: dict[bytes, ObjectPlan] = {}  # object plans by an unsigned head without its Range line
        self.plans: dict[tuple, ObjectPlan] = {}  # by what a request asks but its range (FastPath.plan)
        self.chunk_size = face.reader.chunk_size
        self.holds_in_ram = face.reader.store.ram.holds
        self.journal: list[tuple] = []  # answers sent as planned, to record (record_hits)
        self._date_sec = -1
        self._date = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_sec:
            self._date_sec = now
            self._date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date

    def target(self, raw_path: str, host: str | None) -> Target | None:
        """``parse_target``, remembered (clients read the same keys again and again); None: the
        face answers it with its error XML."""
        k = (raw_path, host)
        t = self._targets.get(k)
        if t is None:
            try:
                t = parse_target(raw_path, host, self.face.suffixes)
            except Exception:  # noqa: BLE001
                return None
            if len(self._targets) >= self.TARGETS_MAX:
                self._targets.clear()
            self._targets[k] = t
        return t

    def prepared(self, meta: "ObjectMeta", checksum_mode: bool) -> PreparedHeaders | None:
        key = (id(meta), checksum_mode)
        p = self._prepared.get(key)
        if p is not None and p.meta is meta:
            return p
        try:
            p = PreparedHeaders(self.face, meta, checksum_mode)
        except (ValueError, UnicodeError, S3Error):
            return None  # headers the face refuses (502) or cannot encode: the face answers
        if len(self._prepared) >= self.PREPARED_MAX:
            self._prepared.clear()
        self._prepared[key] = p
        return p

    def plan(self, head: bytes) -> "HitPlan | None":
        """What the request in ``head`` resolves to if this path answers it, else None (the face
        answers it). Without signature checks a plan depends only on what the request asks
        (method, target, host, If-*, checksum mode; then its Range) and the object's current
        version, so a request for the same thing again, signed afresh or not, reuses its object's
        plan for as long as the catalog holds that version fresh."""
        at = -1
        if self.face.auth is None:
            # a client that does not sign its requests sends the very same head again and again
            plan = self._by_head.get(head)
            if plan is not None:
                if self.current(plan):
                    return plan
                del self._by_head[head]
            # ... or the same head with another range
            at = head.find(_RANGE_LINE)
            if at >= 0:
                plan = self._by_shape(head, at)
                if plan is not None:
                    return plan
        req = parse_head(head, self.max_headers)
        if req is None or req.method not in ("GET", "HEAD"):
            return None
        h = req.headers
        if not _NOT_PLAIN.isdisjoint(h):
            return None
        if self.face.auth is not None:
            obj = self._object_plan(req)
            return obj.for_range(self, h.get("range")) if obj is not None else None
        asks = (req.method, req.raw_path, h.get("host"), h.get("if-match"), h.get("if-none-match"),
                h.get("if-modified-since"), h.get("if-unmodified-since"), h.get("x-amz-checksum-mode"))
        obj = self.plans.get(asks)
        if obj is not None and not self.current(obj):
            del self.plans[asks]
            obj = None
        if obj is None:
            obj = self._object_plan(req)
            if obj is None:
                return None
            if len(self.plans) >= self.PLANS_MAX:
                self.plans.clear()
            self.plans[asks] = obj
        plan = obj.for_range(self, h.get("range"))
        if plan is None:
            return None
        # a head signed in its headers never comes again byte for byte (its time, its invocation
        # id): only its shape is worth remembering (a presigned URL's head does come again)
        if len(head) <= self.HEAD_MEMO_BYTES and _SIGNING_LINES[0] not in head and _SIGNING_LINES[1] not in head:
            if len(self._by_head) >= self.HEADS_MAX:
                self._by_head.clear()
            self._by_head[head] = plan
        if at >= 0:
            shape = _shape(head, at, head.index(b"\r\n", at + 2))
            if len(shape) <= self.HEAD_MEMO_BYTES:  # (a long session token is not in the shape)
                if len(self._shapes) >= self.HEADS_MAX:
                    self._shapes.clear()
                self._shapes[shape] = obj
        return plan

    def _by_shape(self, head: bytes, at: int) -> "HitPlan | None":
        """The plan of ``head``, whose Range line starts at ``at``, when its shape was planned
        before (``shape_range``); None: ``plan`` parses it."""
        found = self.shape_range(head, at)
        if found is None:
            return None
        obj, start, stop, value = found
        return obj.ranged(self, ByteRange(start, stop), value)

    def shape_range(self, head: bytes, at: int) -> "tuple[ObjectPlan, int, int, str] | None":
        """When the same head as ``head`` (whose Range line starts at ``at``) with another range
        (its "shape", ``_shape``) was planned before and the range is a plain
        ``bytes=first-last`` within the object: that object's plan, the range's first and last
        byte (the last within the object) and the header's value; None: ``plan`` parses it.
        Every header but the range and the signing ones is the same bytes as in a head this
        path parsed and planned, those differ only in printable values, and the range is
        digits, so the answer is that object's with this range (``ranges.resolve`` of the same
        numbers). Only without signature checks, which are then the only use of the signing
        headers."""
        end = head.find(b"\r\n", at + 2)
        shape = _shape(head, at, end)
        obj = self._shapes.get(shape)
        if obj is None or len(head) > MAX_HEAD:
            return None
        if not self.current(obj):
            del self._shapes[shape]
            return None
        first, dash, last = head[at + len(_RANGE_LINE):end].partition(b"-")
        if not (dash and first.isdigit() and last.isdigit()) or len(first) > 18 or len(last) > 18:
            return None  # an open or suffix range, several, spaces, huge numbers: parsed in full
        start, stop = int(first), int(last)
        size = obj.meta.size
        if stop < start or start >= size:
            return None  # the whole object, or 416: the face's
        value = head[at + len(_RANGE_LINE) - len(b"bytes="):end].decode("ascii")  # the header's value
        return obj, start, min(stop, size - 1), value

    def note_hit(self, plan: HitPlan, rid: str, t0: float, prefetched: int, touched: tuple | None) -> None:
        """An answer sent as planned, into the hit journal (``touched``: its RAM-tier chunk, for
        the policy); the first of a loop turn asks for ``record_hits`` after the turn."""
        journal = self.journal
        journal.append((plan, rid, t0, time.monotonic(), prefetched, touched))
        if len(journal) == 1:
            asyncio.get_running_loop().call_soon(self.record_hits)

    def record_hits(self) -> None:
        """Record the answers in the hit journal, each as the face records a request: metrics,
        an access-log line (stamped with the time its answer went), and the read hook (one
        call for the lot); and tell the cache's policy of the RAM-tier chunks read, once per
        chunk. Done once per turn of the loop, after the answers are sent: per hit this costs
        a fraction of recording each alone. (Caffeine's read buffer does the same for the same
        reason: a policy replays reads in batches, and a burst of reads of one entry in the
        same instant is one reference to LRU-K, whose correlated period folds them anyway.)"""
        journal, self.journal = self.journal, []
        if not journal:
            return
        face = self.face
        touched = dict.fromkeys(e[5] for e in journal)
        touched.pop(None, None)
        if touched:
            face.reader.store.touched(touched)
        face.metrics.fast_path_hit(len(journal))
        wall = time.time() - time.monotonic()  # monotonic -> Unix time
        log = face.access_log
        lines = [] if log.enabled else None
        reads = []
        for p, rid, t0, t1, prefetched, _ in journal:
            elapsed = t1 - t0
            p.tally.add(elapsed)
            if lines is not None:
                lines.append((rid, p.log_fields, elapsed, wall + t1))
            if p.method == "GET":
                t = p.read_totals
                t[0] += 1
                t[2] += p.sent
                reads.append((p.target.bucket, p.target.key, p.meta, p.rng, p.sent, prefetched, wall + t1))
        if lines and not log.emit_prepared_many(lines):
            for (p, rid, *_), (_, _, elapsed, _) in zip(journal, lines):
                log.emit(rid, p.method, p.operation, p.target.bucket, p.target.key, p.range_header, p.status,
                         "hit", p.sent, p.sent, 0, elapsed)
        if reads and face.on_hits is not None:
            face.on_hits(reads)

    def current(self, plan: "ObjectPlan | HitPlan") -> bool:
        """Whether ``plan`` still answers its request: its object's catalog entry is the one it was
        made from, holds the same version and is fresh. (A reload of the rules forgets all plans.)"""
        return plan.entry.meta is plan.meta and self.face.catalog.still_fresh(plan.entry, plan.fresh_until)

    def forget_plans(self) -> None:
        self.plans.clear()
        self._by_head.clear()
        self._shapes.clear()

    def _object_plan(self, req: RequestHead) -> "ObjectPlan | None":
        face = self.face
        h = req.headers
        target = self.target(req.raw_path, h.get("host"))
        if target is None:
            return None
        if target.key is None or any(k.lower() != "x-id" for k, _ in target.query) \
                or not is_cacheable_read(req.method, target, h):
            return None
        if face.auth is not None:
            # A signature that does not verify is the face's to answer (and to count, once).
            try:
                face.auth._verify(req.method, req.raw_path, h).check_empty()
            except Exception:  # noqa: BLE001
                return None
        entry = face.catalog.fresh(target.bucket, target.key)
        if entry is None:
            return None
        meta = entry.meta
        # If-* that select the object (s3fs sends If-Match on every ranged read) are answered
        # here; a 304 or 412 is the face's
        if ("if-match" in h or "if-none-match" in h or "if-modified-since" in h or "if-unmodified-since" in h) \
                and conditions.evaluate(h, meta.etag, meta.last_modified_ts) is not None:
            return None
        checksum_mode = h.get("x-amz-checksum-mode", "").upper() == "ENABLED"
        prepared = self.prepared(meta, checksum_mode)
        if prepared is None:
            return None
        return ObjectPlan(self, req.method, target, entry, prepared, checksum_mode)

    def __call__(self) -> "FastProtocol":
        return FastProtocol(self)

    def take_back(self, handler, data: bytes) -> bool:
        """An idle connection aiohttp has: if ``data`` starts with a request this path answers,
        the connection comes back here (and True); else aiohttp keeps it."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        fp = FastProtocol(self)
        fp._attach(handler.transport)
        plan = self.plan(data[:end + 4])
        if plan is None or not fp._cached(plan) or not self.server.rate.allow(fp.remote):
            return False
        transport = handler.detach()
        self.face.metrics.fast_path_takebacks.inc()
        self.connections.add(fp)
        transport.set_protocol(fp)
        fp.buf += data
        fp._process(plan)
        return True

    async def shutdown(self, timeout: float | None) -> None:
        """Close the connections still on this path; an answer being sent gets ``timeout`` seconds."""
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        self.record_hits()
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()


class _Answer:
    """A request this path answers, once it has decided to."""

    __slots__ = ("plan", "head", "stats", "rid", "t0")


class FastProtocol(asyncio.Protocol):
    """One client connection while it is on the lean path."""

    def __init__(self, fast: FastPath) -> None:
        self.fast = fast
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.task: asyncio.Task | None = None
        self.remote = ""
        self._sock_fd = -1
        self._paused_reading = False
        self._writable: asyncio.Future | None = None  # set while the transport asks us to pause
        self._stats = ReadStats()  # the shape lane's, reset for each of its hits

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport) -> None:  # uvloop transports are no asyncio.Transport
        self._attach(transport)
        server = self.fast.server
        self.fast.connections.add(self)
        if len(server._connections) + len(self.fast.connections) - len(server._over) > server.max_connections:
            self.hand_off()  # over the connection limit: aiohttp's side answers SlowDown

    def _attach(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        sock = transport.get_extra_info("socket")
        # sendfile straight to the socket (never under TLS, whose bytes go through the transport)
        self._sock_fd = sock.fileno() if sock is not None and transport.get_extra_info("sslcontext") is None else -1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is not None:
            if len(self.buf) > MAX_PENDING and not self._paused_reading:
                self._paused_reading = True
                self.transport.pause_reading()
            return
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fast.connections.discard(self)
        if self.task is not None:
            self.task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- requests --------------------------------------------------------------------------

    def _process(self, admitted: HitPlan | None = None) -> None:
        """Answer the requests received, in order, while this path can; ``admitted``: the first
        one's plan, already found cached and within the client's rate."""
        fast = self.fast
        while self.buf and self.task is None and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.hand_off()
                return
            n = end + 4
            if admitted is None:
                head = bytes(self.buf[:n])
                if self._answer_shape(head, n):
                    continue
                plan = fast.plan(head)
                if plan is None or not self._cached(plan) or not fast.server.rate.allow(self.remote):
                    self.hand_off()  # the face answers it (SlowDown for a client over its rate)
                    return
            else:
                plan, admitted = admitted, None
            self._answer_admitted(plan, n)

    def _answer_admitted(self, plan: HitPlan, n: int) -> None:
        """Answer a request found cached and within its client's rate: from memory, from chunk
        files at once, or by a task reading through the reader."""
        if not self._answer_planned(plan, n) and not self._answer_from_file(plan, n):
            self.task = asyncio.ensure_future(self._answer_later(self._answer(plan), n))

    def _answer_shape(self, head: bytes, n: int) -> bool:
        """The shape lane: a ranged GET whose head has a known shape (``FastPath.shape_range``)
        and whose bytes lie in pieces of one chunk file checked since it last changed, answered
        with no ``HitPlan``, ``_Answer`` or ``ReadStats`` of its own (a columnar reader's ranges,
        each new). The same checks as ``plan``, ``_process`` and ``_answer_chunk_file``, in their
        order, and the same bytes on the wire. True: the request is taken (answered, handed
        off, or left to a task); False: nothing is done and ``plan`` decides."""
        fast = self.fast
        at = head.find(_RANGE_LINE)
        if at < 0 or self._sock_fd < 0 or fast.face.auth is not None:
            return False
        found = fast.shape_range(head, at)
        if found is None:
            return False
        obj, start, stop, value = found
        if obj.method != "GET" or obj.full_in_ram:
            return False
        size = obj.meta.size
        cs = fast.chunk_size
        chunk = start // cs
        c0 = chunk * cs
        if chunk != stop // cs or fast.holds_in_ram(min(cs, size - c0)):
            return False  # several chunks, or a chunk for the RAM tier: ``plan``'s
        reader = fast.face.reader
        if not reader.store.has(obj.vid, chunk):
            return False
        if not fast.server.rate.allow(self.remote):
            self.hand_off()  # the face answers SlowDown
            return True
        t0 = time.monotonic()
        lo, hi = start - c0, stop - c0
        rng = ByteRange(start, stop)
        stats = self._stats
        stats.hit_bytes = stats.prefetched = 0
        fd = reader.ready_fd(obj.vid, chunk, lo, hi, stats, keep=obj.keep)
        if fd < 0:  # pieces to check first: the reader's way
            self._answer_admitted(obj.ranged(fast, rng, value), n)
            return True
        nbytes = stop - start + 1
        rid = new_request_id()
        del self.buf[:n]
        head = b"".join((obj.ranged_lines, b"Content-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n"
                         b"x-amz-request-id: " % (start, stop, size, nbytes), rid.encode(), b"\r\n",
                         fast.date(), b"\r\n"))
        got = self._send_span(head, fd, lo, nbytes)
        if got == nbytes:
            fast.note_hit(RangeHit(obj, rng, value, nbytes), rid, t0, stats.prefetched, (obj.vid, chunk))
        else:  # only now a plan and an answer, for the usual way
            self._span_left(self._answered(obj.ranged(fast, rng, value), rid, t0, stats), fd, got)
        return True

    def _answer_planned(self, plan: HitPlan, n: int) -> bool:
        """Answer a HEAD, or a GET whose bytes are in memory, straight from its plan: one write,
        and the request's records from what the plan prepared. False (nothing sent): the bytes
        are in chunk files."""
        if plan.chunk >= 0 and not plan.in_ram:
            return False  # a chunk too large for memory: its file's
        t0 = time.monotonic()
        fast = self.fast
        face = fast.face
        stats = ReadStats()
        if plan.chunk >= 0:
            # the policy hears of the read with the records, after this turn of the loop
            body = face.reader.read_ram(plan.vid, plan.chunk, plan.lo, plan.hi, stats, touch=False)
            if body is None:  # not in memory: the chunk file
                return False
            touched = plan.key
        elif plan.method == "GET" and plan.end >= plan.start:
            return False  # several chunks
        else:
            body = b""
            touched = None
        rid = new_request_id()
        del self.buf[:n]
        self.transport.write(b"".join((plan.head, rid.encode(), b"\r\n", fast.date(), b"\r\n", body)))
        fast.note_hit(plan, rid, t0, stats.prefetched, touched)
        return True

    def _answer_from_file(self, plan: HitPlan, n: int) -> bool:
        """A GET whose bytes lie in a few cached chunks, in memory or in pieces checked since
        their files last changed: the head, then each span with ``sendfile`` on the loop right
        away; only what the socket does not take at once is left to a task. False (nothing
        sent): the reader's full read answers it."""
        if plan.method != "GET" or plan.end < plan.start or self._sock_fd < 0:
            return False
        a = self._answer(plan)
        # (a chunk small enough for memory is read whole into it instead, by ``read_now``: its
        # next hits are answered from there without a system call for the file)
        if plan.chunk >= 0 and not plan.in_ram and self._answer_chunk_file(a, n):
            return True
        got = self.fast.face.reader.read_now(plan.meta, plan.start, plan.end, a.stats, keep=plan.keep)
        if got is None:
            return False
        del self.buf[:n]
        transport = self.transport
        seg, chunk = got[0]
        if len(got) == 1 and seg.data is not None:
            chunk.close()
            transport.write(a.head + seg.data)
            self._finished(a, plan.status)
            return True
        transport.write(a.head)
        for i, (seg, chunk) in enumerate(got):
            if seg.data is not None:
                transport.write(seg.data)
                chunk.close()
                continue
            sent = 0
            try:
                # straight to the socket only behind nothing the transport still holds
                if not transport.get_write_buffer_size():
                    sent = sendfile_until_full(self._sock_fd, seg.fd, seg.offset, seg.length)
            except OSError as e:
                self._send_failed(a, seg, e)
                for _, c in got[i:]:
                    c.close()
                self._finished(a, 499)
                return True
            if sent < seg.length:
                self.fast.face.in_flight += 1
                self.task = asyncio.ensure_future(self._send_rest(a, got[i:], sent))
                return True
            chunk.close()
        self._finished(a, plan.status)
        return True

    def _answer_chunk_file(self, a: _Answer, n: int) -> bool:
        """A GET within one chunk file whose pieces were checked since it last changed: the head,
        then ``sendfile``, with no segment or chunk objects unless the socket leaves a rest to a
        task (a columnar reader's ranges land here). False (nothing sent): ``read_now`` decides."""
        plan = a.plan
        fd = self.fast.face.reader.ready_fd(plan.vid, plan.chunk, plan.lo, plan.hi, a.stats, keep=plan.keep)
        if fd < 0:
            return False
        del self.buf[:n]
        length = plan.hi - plan.lo + 1
        got = self._send_span(a.head, fd, plan.lo, length)
        if got == length:
            self.fast.note_hit(plan, a.rid, a.t0, a.stats.prefetched, plan.key)
        else:
            self._span_left(a, fd, got)
        return True

    def _send_span(self, head: bytes, fd: int, offset: int, length: int) -> "int | OSError":
        """Write ``head``, then ``sendfile`` ``length`` bytes of the chunk file ``fd`` from
        ``offset`` while the socket takes them: the bytes sent (``length``: all), or the error
        the send failed with (``_span_left`` finishes either)."""
        transport = self.transport
        transport.write(head)
        try:
            if not transport.get_write_buffer_size():
                return sendfile_until_full(self._sock_fd, fd, offset, length)
        except OSError as e:
            return e
        return 0

    def _span_left(self, a: _Answer, fd: int, got: "int | OSError") -> None:
        """A one-chunk answer whose send (``_send_span``) failed: recorded as 499. Or one the
        socket did not take whole (``got`` bytes went): the rest is sent by a task, after other
        callbacks ran, on a descriptor of its own (``fd`` is lent)."""
        plan = a.plan
        length = plan.hi - plan.lo + 1
        if isinstance(got, OSError):
            self._send_failed(a, Segment(length, fd=-1, offset=plan.lo, chunk=plan.key), got)
            self._finished(a, 499)
            return
        fd = os.dup(fd)
        self.fast.face.reader.store.touched((plan.key,))
        self.fast.face.in_flight += 1
        rest = [(Segment(length, fd=fd, offset=plan.lo, chunk=plan.key), VerifiedChunk(length, fd=fd))]
        self.task = asyncio.ensure_future(self._send_rest(a, rest, got))

    async def _send_rest(self, a: _Answer, rest: list, sent: int) -> None:
        """The rest of an answer the socket did not take at once: ``rest`` (segments, each
        with its open chunk), of which the first has ``sent`` bytes gone already."""
        face = self.fast.face
        status = 499
        sender = BodySender(self.transport, self._write, face.executor)
        i = 0
        try:
            for i, (seg, chunk) in enumerate(rest):
                if seg.data is not None:
                    await sender.send_bytes(seg.data)
                else:
                    await sender.send_file(seg.fd, seg.offset + sent, seg.length - sent)
                sent = 0
                chunk.close()
            status = a.plan.status
        except (ClientGone, OSError) as e:
            self._send_failed(a, rest[i][0], e)
        finally:
            sender.close()
            for _, chunk in rest[i:]:
                chunk.close()
            face.in_flight -= 1
            self._finished(a, status)
        self._resume(status == a.plan.status)

    def _send_failed(self, a: _Answer, seg, err: BaseException) -> None:
        """A file span could not be sent after the head went out: abort the connection (only
        that is honest now); a read error of the cache disk (EIO) also makes the next read of
        the chunk check it first."""
        if not isinstance(err, (ClientGone, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            self.fast.face.reader.unreadable(seg)
            log.warning("response_aborted", error=repr(err), request_id=a.rid)
        self._abort()

    def _resume(self, ok: bool) -> None:
        """After an answer sent by a task: read again, and answer what arrived meanwhile."""
        self.task = None
        if self._paused_reading and self.transport is not None and not self.transport.is_closing():
            self._paused_reading = False
            self.transport.resume_reading()
        if ok:
            self._process()

    def _cached(self, plan: HitPlan) -> bool:
        """Whether every byte the planned answer sends is in the cache."""
        if plan.method != "GET" or plan.end < plan.start:
            return True
        if plan.chunk >= 0:
            return self.fast.face.reader.store.has(plan.vid, plan.chunk)
        return self._all_cached(plan.meta, plan.start, plan.end)

    def _answer(self, plan: HitPlan) -> _Answer:
        """A planned request, to be answered from the chunk files."""
        a = _Answer()
        a.t0 = time.monotonic()
        a.plan = plan
        a.rid = rid = new_request_id()
        a.head = b"".join((plan.head, rid.encode(), b"\r\n", self.fast.date(), b"\r\n"))
        a.stats = ReadStats()
        a.stats.label = plan.label
        return a

    def _answered(self, plan: HitPlan, rid: str, t0: float, lane_stats: ReadStats) -> _Answer:
        """The ``_Answer`` of a request the shape lane began (its head sent with ``rid``), for
        what is left to do the usual way."""
        a = _Answer()
        a.plan, a.rid, a.t0, a.head = plan, rid, t0, b""
        a.stats = ReadStats(hit_bytes=lane_stats.hit_bytes, label=plan.label, prefetched=lane_stats.prefetched)
        return a

    def _all_cached(self, meta: "ObjectMeta", start: int, end: int) -> bool:
        reader = self.fast.face.reader
        store = reader.store
        cs = reader.chunk_size
        vid = store.version_for(meta).vid
        return all(store.has(vid, i) for i in range(start // cs, end // cs + 1))

    async def _answer_later(self, a: _Answer, n: int) -> None:
        p = a.plan
        face = self.fast.face
        face.in_flight += 1
        segments = face.reader.read(p.meta, p.start, p.end, a.stats, keep=p.keep)
        status = 0
        try:
            try:
                first = await anext(segments, None)
            except ObjectChanged:
                # nothing sent yet (the reader has told the catalog): the face looks again
                self.task = None
                self.hand_off()
                return
            del self.buf[:n]
            self.transport.write(a.head)
            sender = BodySender(self.transport, self._write, face.executor)
            try:
                await sender.send_segments(first, segments, face.reader.unreadable)
            finally:
                sender.close()
            status = p.status
        except ClientGone:
            status = 499
            self._abort()
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception as e:  # noqa: BLE001 - headers are gone: only an aborted connection is honest
            log.warning("response_aborted", error=repr(e), request_id=a.rid)
            status = 499
            self._abort()
        finally:
            face.in_flight -= 1
            with contextlib.suppress(Exception):
                await segments.aclose()
            if status:
                self._finished(a, status)
        self._resume(status == p.status)

    async def _write(self, data: bytes | memoryview) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ClientGone()
        self.transport.write(data)
        if self._writable is not None:
            await self._writable
            if self.transport.is_closing():
                raise ClientGone()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _finished(self, a: _Answer, status: int) -> None:
        self._record(a.plan, a.rid, a.t0, a.stats, status)

    def _record(self, p: HitPlan, rid: str, t0: float, stats: ReadStats, status: int) -> None:
        """The request log line, metrics and the read hook, as the face records every request.
        An answer that went as planned (every byte a cache hit) joins the hit journal, recorded
        in one pass after this turn of the loop (``FastPath.record_hits``); any other at once."""
        fast = self.fast
        if status == p.status and stats.hit_bytes == p.sent and not stats.miss_bytes:
            fast.note_hit(p, rid, t0, stats.prefetched, None)
            return
        face = fast.face
        face.metrics.fast_path_hit()
        elapsed = time.monotonic() - t0
        ok = status == p.status
        outcome = "hit" if ok else "client-gone"
        face.metrics.observe_request(p.operation, status, outcome, elapsed)
        if p.method == "GET" and ok:
            face.metrics.count_read(stats.label, stats.hit_bytes, stats.miss_bytes)
        if face.access_log.enabled:
            face.access_log.emit(rid, p.method, p.operation, p.target.bucket, p.target.key, p.range_header,
                                 status, outcome, stats.hit_bytes + stats.miss_bytes, stats.hit_bytes,
                                 stats.miss_bytes, elapsed)
        if p.method == "GET" and ok and face.on_read is not None:
            face.on_read(p.target.bucket, p.target.key, p.meta, p.rng, stats)

    def hand_off(self) -> None:
        """Make this connection aiohttp's: its request handler takes the transport and the bytes
        received so far, and answers everything from here on."""
        transport = self.transport
        self.fast.connections.discard(self)
        self.transport = None
        if transport is None or transport.is_closing():
            return
        self.fast.face.metrics.fast_path_handoffs.inc()
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        handler = self.fast.server.handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._writable is not None:  # the transport's buffer is full: tell the new protocol
            handler.pause_writing()
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            handler.data_received(data)
