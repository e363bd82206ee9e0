"""Fuzzing the S3 face over raw HTTP: malformed requests, and what a correct answer to them is.

    .venv/bin/python bench/fuzz_face.py [--requests 100000] [--workers 8] [--seed 1] [--upstream-errors]

Starts moto and a sidecar in front of it, seeds a few objects, then sends random requests
built by ``build_request`` (random paths, bucket names, keys with bad percent-escapes, ``..``
and NUL, long keys, query strings, Range and If-* headers, huge and duplicated headers, bad
chunked and aws-chunked bodies, bad Content-Length) over raw sockets. Every answer is checked
by ``check_reply``. Prints requests sent, the status histogram, 5xx answers, tracebacks found
in answers and in the sidecar's log, files created outside the cache dir, and RSS before/after.

``--upstream-errors``: a fault-injecting proxy sits between the sidecar and moto and answers a
share of the sidecar's upstream requests itself with errors of every kind (411, 400, 403, 404,
409, 412, 416, 500, 503; with and without bodies, S3 XML, HTML or garbage; header values with
control characters), while the requests are POST, PUT, DELETE and GET/HEAD on buckets and keys
with known and unknown sub-resources. A 5xx is the sidecar's own when it is neither the
upstream's status relayed nor the S3 error naming an upstream failure (502/503).

The same grammar drives tests/test_fuzz_face.py through hypothesis (``random.Random`` drawn by
``st.randoms()``), so a failure found here can be reproduced there.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import random
import re
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# --- the grammar ----------------------------------------------------------------------------

METHODS = ("GET", "GET", "GET", "HEAD", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "get", "FOO", "")
NASTY = ("..", ".", "%", "%2", "%zz", "%ff", "%c3%28", "%ed%a0%80", "%00", "%2F", "%2e%2e", "//", "\\",
         "%80", "%fe%ff", "~", "+", " ", "%20", "?", "#", ";", "*", "é", "%e2%82", "\x7f", "%0d%0a",
         "a" * 300, "%41" * 400, "../" * 20)
QUERY_NAMES = ("acl", "tagging", "uploads", "uploadId", "partNumber", "versionId", "list-type", "prefix",
               "delimiter", "max-keys", "continuation-token", "x-id", "response-content-type", "delete",
               "X-Amz-Signature", "X-Amz-Expires", "Signature", "versions", "location", "start-after",
               "encoding-type", "fetch-owner", "attributes", "select", "select-type", "restore", "torrent")
QUERY_VALUES = ("", "0", "1", "2", "-1", "10001", "99999999999999999999999", "GetObject", "ListObjects",
                "%ff", "%", "url", "true", "null", "a b", "%00", "x" * 2000)
RANGES = ("bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=5-2", "bytes=0-1,3-4", "bytes=", "bytes=-",
          "items=0-1", "bytes=99999999999999999999-", "bytes=" + "9" * 600 + "-", "bytes=-" + "9" * 40,
          "bytes =1-2", "bytes=1-2 ", "BYTES=1-1", "bytes=0x10-", "bytes=1-2-3", "bytes=\u0660-1", "")
DATES = ("Tue, 01 Dec 2026 10:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
         "Mon, 00 Jan 2000 00:00:00 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
         "garbage", "", "0", "-1", "Tue, 01 Dec 99999 10:00:00 GMT", "Tue, 31 Feb 2026 25:61:61 GMT")
ETAGS = ('*', '"x"', 'W/"x"', '""', '"', ',', ',,,', 'W/', '"a", "b"', "*, *", "\"" * 100)
HEADER_NAMES = ("range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
                "x-amz-checksum-mode", "x-amz-content-sha256", "content-md5", "x-amz-decoded-content-length",
                "content-encoding", "x-amz-copy-source", "x-amz-copy-source-range", "x-amz-meta-a",
                "x-amz-server-side-encryption-customer-key", "expect", "x-amz-trailer", "content-type",
                "authorization", "x-amz-date", "host", "x-amz-tagging", "x-amz-acl", "transfer-encoding",
                "content-length", "connection", "x-amz-sdk-checksum-algorithm", "x-amz-checksum-crc32")


def _pick(r: random.Random, seq):
    return seq[r.randrange(len(seq))]


def _component(r: random.Random, known: list[str]) -> str:
    kind = r.randrange(6)
    if kind == 0 and known:
        return _pick(r, known)
    if kind == 1:
        return "".join(_pick(r, NASTY) for _ in range(r.randrange(1, 4)))
    if kind == 2:
        return "".join(chr(r.randrange(0x20, 0x7f)) for _ in range(r.randrange(0, 40)))
    if kind == 3:
        return "%" + "".join(r.choice("0123456789abcdefABCDEFxyz%") for _ in range(r.randrange(0, 6)))
    if kind == 4:
        return "k" * r.choice((1, 63, 64, 255, 1023, 1024, 1025, 4000, 15000))
    return uuid.UUID(int=r.getrandbits(128)).hex[: r.randrange(1, 33)]


def _path(r: random.Random, buckets: list[str], keys: list[str]) -> str:
    kind = r.randrange(8)
    if kind == 0:
        return _pick(r, ("/", "", "*", "http://h/x", "//", "/%", "?", "/?" + "&" * 10, "x"))
    parts = [_component(r, buckets)]
    for _ in range(r.randrange(0, 4)):
        parts.append(_component(r, keys))
    path = "/" + "/".join(parts)
    if r.random() < 0.4:
        q = []
        for _ in range(r.randrange(1, 5)):
            name = _pick(r, QUERY_NAMES) if r.random() < 0.8 else _component(r, [])
            q.append(name if r.random() < 0.2 else f"{name}={_pick(r, QUERY_VALUES)}")
        path += "?" + "&".join(q)
    return path


def _header_value(r: random.Random, name: str) -> str:
    if name == "range":
        return _pick(r, RANGES)
    if name in ("if-modified-since", "if-unmodified-since"):
        return _pick(r, DATES)
    if name in ("if-match", "if-none-match"):
        return _pick(r, ETAGS)
    if name == "content-length":
        return _pick(r, ("0", "-1", "1", "abc", "99999999999999999999", " 5", "5, 5", "0x10", "1e3"))
    if name == "transfer-encoding":
        return _pick(r, ("chunked", "gzip", "chunked, chunked", "identity", "chunked, gzip", "xchunked"))
    if name == "host":
        return _pick(r, ("", "localhost", "b.localhost", "..localhost", "%ff.localhost", "[::1]", "a:b:c",
                         "x" * 300 + ".localhost", "bucket.s3.amazonaws.com:99999"))
    if name == "content-encoding":
        return _pick(r, ("aws-chunked", "gzip", "aws-chunked,gzip"))
    if name == "x-amz-content-sha256":
        return _pick(r, ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                         "UNSIGNED-PAYLOAD", "0" * 64, "nope", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"))
    if name == "x-amz-decoded-content-length":
        return _pick(r, ("0", "5", "-3", "x", "99999999999999999999"))
    if name == "expect":
        return _pick(r, ("100-continue", "nonsense"))
    return _pick(r, ("", "x", "ENABLED", "\t", "a" * r.choice((10, 1000, 9000, 20000)), "é", "/b/k", "%ff"))


def _body(r: random.Random, headers: list[tuple[str, str]]) -> bytes:
    """A body, possibly inconsistent with the framing headers (which may be added here)."""
    kind = r.randrange(7)
    payload = r.randbytes(r.choice((0, 1, 10, 100, 5000)))
    if kind == 0:
        return b""
    if kind == 1:  # honest Content-Length
        headers.append(("Content-Length", str(len(payload))))
        return payload
    if kind == 2:  # Content-Length that lies either way
        headers.append(("Content-Length", str(max(0, len(payload) + r.choice((-5, -1, 1, 100))))))
        return payload
    if kind == 3:  # HTTP chunked, possibly malformed
        headers.append(("Transfer-Encoding", "chunked"))
        good = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
        return _pick(r, (good, b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n", b"ffffffffffffffff\r\nx",
                         b"3;ext=1\r\nabc\r\n0\r\n\r\n", b"-1\r\n\r\n", good[: len(good) // 2]))
    # aws-chunked, possibly malformed, with or without a trailer
    headers.append(("Content-Encoding", "aws-chunked"))
    headers.append(("x-amz-content-sha256", _pick(r, ("STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                                                     "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"))))
    headers.append(("x-amz-decoded-content-length", str(len(payload) + r.choice((0, 0, 1, -1)))))
    if r.random() < 0.5:
        headers.append(("x-amz-trailer", _pick(r, ("x-amz-checksum-crc32", "x-amz-checksum-nope", ""))))
    sig = ";chunk-signature=" + "0" * 64 if r.random() < 0.5 else ""
    good = f"{len(payload):x}{sig}\r\n".encode() + payload + f"\r\n0{sig}\r\n".encode()
    trailer = _pick(r, (b"", b"x-amz-checksum-crc32:AAAAAA==\r\n", b"x-amz-checksum-crc32:!!\r\n", b"junk\r\n"))
    body = _pick(r, (good + trailer + b"\r\n", good, b"zz\r\n", b"10\r\nshort\r\n0\r\n\r\n",
                     b"5;chunk-signature=\r\nabcde\r\n0\r\n\r\n", good[: len(good) // 2], payload))
    if r.random() < 0.5:
        headers.append(("Content-Length", str(len(body))))
    else:
        headers.append(("Transfer-Encoding", "chunked"))
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    return body


def build_request(r: random.Random, buckets: list[str], keys: list[str]) -> bytes:
    """One HTTP/1.1 request as bytes; it may break HTTP itself as well as S3."""
    method = _pick(r, METHODS)
    target = _path(r, buckets, keys)
    headers: list[tuple[str, str]] = [("Host", _pick(r, ("127.0.0.1", "localhost", "127.0.0.1:9")))]
    for _ in range(r.randrange(0, 5)):
        name = _pick(r, HEADER_NAMES)
        headers.append((name, _header_value(r, name)))
    if r.random() < 0.05:  # duplicated headers, many of them
        name = _pick(r, HEADER_NAMES)
        headers += [(name, _header_value(r, name))] * r.choice((2, 3, 50, 200))
    if r.random() < 0.03:  # one huge header
        headers.append(("x-amz-meta-big", "v" * r.choice((8000, 16000, 17000, 70000))))
    body = _body(r, headers) if method in ("PUT", "POST", "DELETE", "FOO") or r.random() < 0.1 else b""
    headers.append(("Connection", "close"))
    line = f"{method} {target} HTTP/1.1"
    if r.random() < 0.03:
        line = _pick(r, ("GET /x HTTP/9.9", "GET /x", "GET  /x HTTP/1.1", "\x00GET / HTTP/1.1", "GET /\x00 HTTP/1.1",
                         "GET /a\tb HTTP/1.1", "GET /" + "a" * 20000 + " HTTP/1.1", "\x16\x03\x01\x02\x00"))
    raw = line.encode("utf-8", "surrogateescape") + b"\r\n"
    for name, value in headers:
        raw += name.encode() + b": " + value.encode("utf-8", "surrogateescape") + b"\r\n"
    if r.random() < 0.02:  # a header line without a colon, or with a bare CR/NUL
        raw += _pick(r, (b"nocolon\r\n", b"x-a: b\rc\r\n", b"x-a: \x00\r\n", b" folded\r\n", b"x a: b\r\n"))
    return raw + b"\r\n" + body


# --- upstream errors (--upstream-errors) -------------------------------------------------------

FAULT_STATUSES = (411, 400, 403, 404, 409, 412, 416, 500, 503)
_REASONS = {200: "OK", 204: "No Content", 206: "Partial Content", 400: "Bad Request", 403: "Forbidden",
            404: "Not Found", 409: "Conflict", 411: "Length Required", 412: "Precondition Failed",
            416: "Range Not Satisfiable", 500: "Internal Server Error", 503: "Service Unavailable"}
SUBRESOURCES = ("", "", "acl", "tagging", "uploads", "uploadId=abc", "uploadId=abc&partNumber=1", "delete",
                "versioning", "policy", "cors", "lifecycle", "encryption", "website", "notification",
                "retention", "legal-hold", "object-lock", "attributes", "restore", "select&select-type=2",
                "torrent", "x-id=PutObject", "frobnicate", "frobnicate=1&x=y", "versionId=null",
                "response-content-type=text/plain", "partNumber=1")
ODD_VALUES = ("a\x01b", "\x7f", "x\x1b[31mred", "v\x0bw", "\x00", "é", "\t", "", " ", "a" * 9000)
FAULT_HEADERS = ("x-amz-request-id", "x-amz-id-2", "content-type", "x-amz-bucket-region", "retry-after",
                 "content-range", "etag", "last-modified", "x-amz-meta-a", "x-amz-checksum-crc32",
                 "x-amz-version-id", "x-amz-delete-marker", "location", "www-authenticate")


def build_fault(r: random.Random) -> bytes:
    """A raw upstream answer: an error status of every kind (now and then a success with odd
    headers), with or without a body, header values an HTTP library would refuse to write."""
    status = _pick(r, FAULT_STATUSES) if r.random() < 0.9 else _pick(r, (200, 204, 206))
    code = {411: "MissingContentLength", 400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchKey",
            409: "BucketNotEmpty", 412: "PreconditionFailed", 416: "InvalidRange", 500: "InternalError",
            503: "SlowDown"}.get(status, "")
    body = _pick(r, (b"", b"",
                     f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>m</Message>'
                     f"<RequestId>UP</RequestId></Error>".encode(),
                     b"<!doctype html><title>oops</title>", b"Content-Length required", b"<Error><Code>",
                     r.randbytes(r.choice((1, 100, 3000))), b"<Error><Code>\x01</Code></Error>"))
    headers = [("x-amz-request-id", f"FAULT{status}")]
    for _ in range(r.randrange(0, 4)):
        headers.append((_pick(r, FAULT_HEADERS), _pick(r, ODD_VALUES)))
    if body and r.random() < 0.7:
        headers.append(("Content-Type", _pick(r, ("application/xml", "text/html", "a\x01b"))))
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'X')}\r\n".encode()
    for name, value in headers:
        head += name.encode() + b": " + value.encode("utf-8", "surrogateescape") + b"\r\n"
    framing = r.randrange(4)
    if framing == 0 or status == 204:
        head += b"Content-Length: %d\r\n" % (len(body) if status != 204 else 0)
        body = body if status != 204 else b""
    elif framing == 1:  # chunked
        head += b"Transfer-Encoding: chunked\r\n"
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    elif framing == 2:  # a Content-Length that is larger than the body: cut short
        head += b"Content-Length: %d\r\n" % (len(body) + 10)
    # framing 3: no length, the body ends with the connection
    return head + b"Connection: close\r\n\r\n" + body


def build_write_request(r: random.Random, buckets: list[str], keys: list[str]) -> bytes:
    """A well-formed request the sidecar passes on (mostly): POST, PUT, DELETE, or a read, on a
    bucket or key, with known and unknown sub-resources, odd header values now and then."""
    method = _pick(r, ("POST", "POST", "PUT", "PUT", "DELETE", "DELETE", "GET", "HEAD"))
    bucket = _pick(r, buckets + ["fuzz-missing"])
    path = f"/{bucket}" + (f"/{quote(_pick(r, keys), safe='/')}" if r.random() < 0.6 else "")
    sub = _pick(r, SUBRESOURCES)
    target = path + (f"?{sub}" if sub else "")
    headers = [("Host", "127.0.0.1")]
    for _ in range(r.randrange(0, 3)):
        name = _pick(r, ("x-amz-meta-a", "content-type", "x-amz-checksum-mode", "if-match", "range",
                         "x-amz-copy-source", "x-amz-acl", "x-amz-tagging", "content-md5"))
        headers.append((name, _pick(r, ("x", "ENABLED", '"e"', "bytes=0-9", "/fuzz-a/k", "private", "a=b", "é"))))
    if r.random() < 0.05:
        headers.append(("x-amz-meta-odd", _pick(r, ("a\x01b", "\x7f", "\x1b[0m"))))
    body = b""
    kind = r.randrange(4)
    if method in ("POST", "PUT") or (method == "DELETE" and r.random() < 0.2):
        if kind == 0:
            pass  # no body and no Content-Length (curl -X POST)
        elif kind == 1:
            body = r.randbytes(r.choice((0, 10, 2000)))
            headers.append(("Content-Length", str(len(body))))
        elif kind == 2:
            body = b"<Delete><Object><Key>k</Key></Object></Delete>"
            headers.append(("Content-Length", str(len(body))))
        else:
            payload = r.randbytes(100)
            headers.append(("Transfer-Encoding", "chunked"))
            body = b"%x\r\n" % len(payload) + payload + b"\r\n0\r\n\r\n"
    headers.append(("Connection", "close"))
    raw = f"{method} {target} HTTP/1.1\r\n".encode()
    for name, value in headers:
        raw += name.encode() + b": " + value.encode("utf-8", "surrogateescape") + b"\r\n"
    return raw + b"\r\n" + body


class FaultyUpstream:
    """A proxy in front of moto that answers a share of requests itself with ``build_fault``:
    raw bytes written to the socket, since no HTTP library writes such header values."""

    def __init__(self, target: str, rate: float, seed: int) -> None:
        import asyncio  # noqa: PLC0415
        import threading  # noqa: PLC0415

        self.target, self.rate = target.rstrip("/"), rate
        self.random = random.Random(seed)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults: collections.Counter = collections.Counter()
        self.passed = 0
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("faulty upstream did not start")

    def _run(self, ready) -> None:
        import asyncio  # noqa: PLC0415

        import aiohttp  # noqa: PLC0415
        from aiohttp import web  # noqa: PLC0415

        asyncio.set_event_loop(self._loop)
        hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            data = await request.read()
            # the readiness probe and seeding pass; everything else may be faulted
            if request.method != "HEAD" or request.path != "/":
                if self.random.random() < self.rate:
                    raw = build_fault(self.random)
                    self.faults[int(raw.split(b" ", 2)[1])] += 1
                    request.transport.write(raw)
                    request.transport.close()
                    return web.Response()  # never written: the connection is closed
            self.passed += 1
            headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
            async with self._session.request(request.method, URL(self.target + request.raw_path, encoded=True),
                                             headers=headers, data=data or None, allow_redirects=False) as up:
                body = await up.read()
                out = {k: v for k, v in up.headers.items() if k.lower() not in hop and k.lower() != "content-length"}
                out["x-fuzz-upstream"] = "moto"  # tells the upstream's own answers, relayed, from the sidecar's
                return web.Response(status=up.status, body=body, headers=out)

        async def start() -> None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
            server = web.Server(handle, access_log=None)
            self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        from yarl import URL  # noqa: PLC0415

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        import asyncio  # noqa: PLC0415

        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sidecar_5xx(method: str, reply: "RawReply") -> bool:
    """A 5xx that is the sidecar's own doing: not the upstream's status relayed (its request id
    renamed), nor the S3 error the face gives for an upstream failure (502 BadGateway, 503)."""
    if reply.status is None or reply.status < 500:
        return False
    if reply.headers.get("x-sidecar-upstream-request-id", "").startswith("FAULT") or \
            "x-fuzz-upstream" in reply.headers or "x-amzn-requestid" in reply.headers:
        return False
    if reply.status not in (502, 503):
        return True
    # a HEAD's answer has no body to name the error: 502/503 are the face's upstream failures
    return method != "HEAD" and not re.search(rb"<Code>(BadGateway|ServiceUnavailable|SlowDown)</Code>", reply.body)


# --- sending and checking -----------------------------------------------------------------------


class RawReply:
    def __init__(self, status: int | None, headers: dict[str, str], body: bytes, closed_early: bool) -> None:
        self.status, self.headers, self.body, self.closed_early = status, headers, body, closed_early


def send(host: str, port: int, data: bytes, timeout: float = 5.0, idle: float = 1.5) -> RawReply:
    """Send ``data`` on a fresh connection and read the answer until the server closes it
    (half-closing our side when the server waits for a body we never finish)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before reading everything (a 400 on a bad line)
        chunks: list[bytes] = []
        s.settimeout(idle)
        half_closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                piece = s.recv(65536)
            except socket.timeout:
                if half_closed:
                    break
                half_closed = True
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    break
                continue
            except OSError:
                break
            if not piece:
                break
            chunks.append(piece)
    return parse_reply(b"".join(chunks))


def parse_reply(raw: bytes) -> RawReply:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not raw:
        return RawReply(None, {}, b"", True)
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    status = int(m.group(1)) if m else None
    headers: dict[str, str] = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            try:
                n = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return RawReply(status, headers, body, not sep)


_CODE = re.compile(rb"<Error>.*<Code>[A-Za-z0-9.]+</Code>", re.S)


def check_reply(method: str, reply: RawReply) -> list[str]:
    """What is wrong with an answer to input the upstream is healthy for; [] when nothing."""
    problems = []
    # moto names its request id x-amzn-requestid; S3's x-amz-request-id is renamed by the face
    # and the face never answers HTML: an HTML page is moto's (werkzeug's) own error page
    forwarded = ("x-sidecar-upstream-request-id" in reply.headers or "x-amzn-requestid" in reply.headers
                 or reply.body.lstrip().lower().startswith(b"<!doctype html"))
    whose = " (upstream's answer)" if forwarded else ""
    if reply.status is None:
        if (reply.body or not reply.closed_early) and not _CODE.search(reply.body):
            problems.append("not an HTTP answer")  # (an HTTP/0.9 request gets a bare S3 XML body)
        return problems  # a closed connection without an answer (a client-gone abort) is allowed
    if reply.status >= 500:
        problems.append(f"status {reply.status}{whose}")
    if b"Traceback" in reply.body or b"File \"" in reply.body:
        problems.append("traceback in body")
    if reply.status >= 400 and method.upper() != "HEAD" and reply.body and not _CODE.search(reply.body):
        problems.append(f"{reply.status} body is not S3 error XML{whose}: {reply.body[:80]!r}")
    return problems


def log_problems(log_text: str) -> list[str]:
    """Lines of the sidecar's log that show a crash: tracebacks and error-level records."""
    return [ln for ln in log_text.splitlines()
            if "Traceback" in ln or '"level": "error"' in ln or '"level": "critical"' in ln]


def tree_snapshot(root: Path, skip: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip:
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for f in filenames + dirnames:
            out.add(os.path.relpath(os.path.join(dirpath, f), root))
    return out


def rss_kib(pid: int) -> int:
    for ln in open(f"/proc/{pid}/status"):
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1])
    return 0


def seed(client, buckets: list[str], keys: list[str]) -> None:
    for b in buckets:
        client.create_bucket(Bucket=b)
        for k in keys:
            client.put_object(Bucket=b, Key=k, Body=os.urandom(3000))


SEED_BUCKETS = ["fuzz-a", "fuzz-b"]
SEED_KEYS = ["k", "d/e/f", "..", "a..b", "sp ace", "%41"]


def request_method(data: bytes) -> str:
    return data.split(b" ", 1)[0].decode("latin-1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--upstream-errors", action="store_true",
                    help="the upstream answers a share of requests with errors of every kind (see above)")
    ap.add_argument("--fault-rate", type=float, default=0.5, help="that share [0.5]")
    args = ap.parse_args()

    from support.procs import MotoServer, Sidecar  # noqa: PLC0415

    work = Path(tempfile.mkdtemp(prefix="fuzz-face-"))
    cache = work / "cache"
    logs = work / "logs"
    logs.mkdir()
    moto = MotoServer(logs)
    faulty = FaultyUpstream(moto.url, args.fault_rate, args.seed) if args.upstream_errors else None
    sc = Sidecar(faulty.url if faulty else moto.url, cache, logs, chunk_size="64KiB")
    build = build_write_request if faulty else build_request
    try:
        seed(moto.client(), SEED_BUCKETS, SEED_KEYS)
        log_start = len(sc.log_path.read_text(errors="replace"))  # the fuzz's lines only
        before_tree = tree_snapshot(work, cache) | {"cwd:" + p for p in os.listdir(os.getcwd())}
        rss0 = rss_kib(sc.proc.pid)
        statuses: collections.Counter = collections.Counter()
        problems: collections.Counter = collections.Counter()
        examples: dict[str, bytes] = {}
        t0 = time.monotonic()

        def one(i: int) -> tuple[int | None, list[str], bytes]:
            data = build(random.Random(args.seed * 1_000_003 + i), SEED_BUCKETS, SEED_KEYS)
            # well-formed requests are sent whole: wait out the sidecar's upstream deadline and
            # retries (a half-close would make it a client gone) before calling it unanswered
            reply = send("127.0.0.1", sc.port, data, timeout=15, idle=8) if faulty else send("127.0.0.1", sc.port, data)
            found = check_reply(request_method(data), reply)
            if faulty is not None:
                found = [p for p in found if not p.startswith("status ")]
                if reply.status is None:  # well-formed requests: each deserves an answer
                    found.append("closed without an answer")
                if sidecar_5xx(request_method(data), reply):
                    found.insert(0, f"sidecar's own {reply.status}; body {reply.body[:160]!r}")
                return reply.status, found, data
            if found and "upstream's" not in found[0]:
                # The same bytes straight to the upstream: a 5xx or non-XML error it gives too is its own.
                direct = send("127.0.0.1", moto.port, data)
                if direct.status == reply.status and not _CODE.search(direct.body):
                    found = [p + " (upstream's answer, moto gives it directly too)" for p in found]
                else:
                    found = [p + f"; body {reply.body[:160]!r}" for p in found]
            return reply.status, found, data

        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            for n, (status, found, data) in enumerate(pool.map(one, range(args.requests), chunksize=64), 1):
                statuses[status] += 1
                for p in found:
                    kind = p.split(":")[0].split(";")[0]
                    problems[kind] += 1
                    examples.setdefault(kind, data[:300] + b" -> " + p.encode()[:300])
                if n % 10000 == 0:
                    print(f"  {n} sent, {time.monotonic() - t0:.0f} s, rss {rss_kib(sc.proc.pid)} KiB", flush=True)
        elapsed = time.monotonic() - t0
        rss1 = rss_kib(sc.proc.pid)
        after_tree = tree_snapshot(work, cache) | {"cwd:" + p for p in os.listdir(os.getcwd())}
        new_files = sorted(after_tree - before_tree - {p for p in after_tree if p.startswith("logs")})
        bad_log = log_problems(sc.log_path.read_text(errors="replace")[log_start:])
    finally:
        sc.stop()
        if faulty is not None:
            faulty.close()
        moto.stop()
    fivexx = sum(c for s, c in statuses.items() if s is not None and s >= 500)
    print(f"requests sent: {args.requests} in {elapsed:.0f} s ({args.requests / elapsed:.0f}/s), "
          f"workers {args.workers}, seed {args.seed}")
    print("statuses: " + ", ".join(f"{s if s is not None else 'closed'}: {c}" for s, c in
                                   sorted(statuses.items(), key=lambda x: (x[0] is None, x[0] or 0))))
    print(f"5xx answers: {fivexx}")
    if faulty is not None:
        print(f"upstream answers injected: {sum(faulty.faults.values())} {dict(sorted(faulty.faults.items()))}; "
              f"passed to moto: {faulty.passed}")
        print(f"5xx caused by the sidecar: {sum(c for k, c in problems.items() if k.startswith('sidecar'))}")
    print(f"tracebacks in answers: {problems.get('traceback in body', 0)}; "
          f"tracebacks or error records in the sidecar log: {len(bad_log)}")
    print(f"problems: {dict(problems) or 'none'}")
    for p, data in examples.items():
        print(f"  e.g. {p}: {data!r}")
    for ln in bad_log[:5]:
        print(f"  log: {ln[:300]}")
    print(f"files created outside the cache dir: {len(new_files)} {new_files[:5]}")
    print(f"sidecar RSS: {rss0} KiB before, {rss1} KiB after")
    print(f"logs (the sidecar's access log tells passed-through answers, outcome pass): {logs}")
    return 0 if not problems and not bad_log and not new_files else 1


if __name__ == "__main__":
    sys.exit(main())
