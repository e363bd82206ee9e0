"""Test fixture: an upstream served over HTTP the way the S3 face calls it, in a background thread.

Requests are split as the face splits them: the raw path into bucket and percent-decoded key
(no ``..``/``//`` normalisation), the query decoded into ordered pairs, headers lower-cased minus
auth/host/hop-by-hop ones, the body streamed. Cacheable GET/HEAD object requests go through
``head``/``head_part``/``get_range`` with simple Range and conditional handling; everything else
through ``forward``. This is a stand-in for the face until it lands, not a copy of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import tempfile
import threading
import urllib.parse
from pathlib import Path

from aiohttp import web

from sidecar.errors import NotModified, S3Error
from sidecar.upstream.base import ForwardRequest

DROP_HEADERS = frozenset({"authorization", "host", "connection", "keep-alive", "proxy-authorization",
                          "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"})
# query names that make a GET/HEAD object request something other than a plain cacheable read
NOT_CACHEABLE = frozenset({"uploadId", "tagging", "attributes", "acl", "versionId", "torrent", "retention",
                           "legal-hold", "restore", "select"})


def split_request(raw_path: str) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    path, _, query = raw_path.partition("?")
    path = path[1:] if path.startswith("/") else path
    bucket, slash, key = path.partition("/")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return (bucket or None), (urllib.parse.unquote(key) if key else None), pairs


def _error_response(e: S3Error, head: bool, resource: str) -> web.Response:
    headers = dict(e.headers)
    if head:
        return web.Response(status=e.status, headers=headers)
    return web.Response(status=e.status, body=e.to_xml(resource=resource), headers=headers,
                        content_type="application/xml")


class UpstreamServer:
    """Serve ``upstream`` on 127.0.0.1 in a thread; ``url`` once started. ``record=True`` keeps
    every request's (method, raw path, headers, raw body) in ``requests``."""

    def __init__(self, upstream, *, tls: bool = False, record: bool = False) -> None:
        self.upstream = upstream
        self.tls = tls
        self.record = record
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.errors: list[BaseException] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> "UpstreamServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def call(self, coro):
        """Run a coroutine on the server's loop (where the upstream lives) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    async def _start(self) -> None:
        # the low-level server: no router, so no path matching or normalisation of any kind
        self._runner = web.ServerRunner(web.Server(self._handle, access_log=None))
        await self._runner.setup()
        ctx = _self_signed_context() if self.tls else None
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.upstream.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Expect", "").lower() == "100-continue":  # as aiohttp's app router does
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        bucket, key, query = split_request(request.raw_path)
        head = request.method == "HEAD"
        headers = [(k.lower(), v) for k, v in request.headers.items() if k.lower() not in DROP_HEADERS]
        try:
            if self.record:
                raw = await request.content.read()
                self.requests.append((request.method, request.raw_path, {k: v for k, v in headers}, raw))

                async def body():
                    yield raw
            else:
                async def body():
                    async for chunk in request.content.iter_any():
                        yield chunk
            names = {n for n, _ in query}
            if key is not None and request.method in ("GET", "HEAD") and not names & NOT_CACHEABLE:
                return await self._read_object(request, bucket, key, dict(query), dict(headers), head)
            fwd = ForwardRequest(request.method, bucket, key, query, headers, body(),
                                 request.content_length)
            resp = await self.upstream.forward(fwd)
            out = web.StreamResponse(status=resp.status)
            for n, v in resp.headers:
                out.headers.add(n, v)
            if head:
                await out.prepare(request)
                await resp.close()
                return out
            await out.prepare(request)
            async for chunk in resp.body:
                await out.write(chunk)
            await out.write_eof()
            await resp.close()
            return out
        except S3Error as e:
            return _error_response(e, head, request.raw_path)
        except NotModified:
            return web.Response(status=304)
        except ConnectionError:  # the client went away mid-response (an unread body): not a bug
            raise
        except Exception as e:  # a bug in the upstream: make the test fail loudly
            self.errors.append(e)
            raise

    async def _read_object(self, request: web.BaseRequest, bucket: str, key: str, q: dict, h: dict,
                           head: bool) -> web.StreamResponse:
        from sidecar.s3.ranges import RangeNotSatisfiable, parse_range, resolve  # noqa: PLC0415
        meta = await self.upstream.head(bucket, key, if_none_match=h.get("if-none-match"))
        if "if-match" in h and h["if-match"].strip('"') != meta.etag.strip('"'):
            raise S3Error("PreconditionFailed", Condition="If-Match")
        start, end, status = 0, meta.size - 1, 200
        extra = [("Accept-Ranges", "bytes")]
        whole = True
        if "partNumber" in q:
            part = await self.upstream.head_part(bucket, key, int(q["partNumber"]), meta.etag)
            start, end, status = part.start, part.end, part.status
            extra += list(part.headers)
            if status == 206:
                extra.append(("Content-Range", f"bytes {start}-{end}/{meta.size}"))
                whole = start == 0 and end == meta.size - 1 and not any(
                    n == "x-amz-mp-parts-count" for n, _ in part.headers)
        elif "range" in h:
            try:
                rng = resolve(parse_range(h["range"]), meta.size)
            except RangeNotSatisfiable:
                raise S3Error("InvalidRange", headers={"Content-Range": f"bytes */{meta.size}"},
                              RangeRequested=h["range"], ActualObjectSize=str(meta.size)) from None
            if rng is not None:
                start, end, status, whole = rng.start, rng.end, 206, False
                extra.append(("Content-Range", f"bytes {start}-{end}/{meta.size}"))
        out = web.StreamResponse(status=status)
        for n, v in meta.headers:
            out.headers.add(n, v)
        if whole and h.get("x-amz-checksum-mode", "").upper() == "ENABLED":
            for n, v in meta.checksums_for("HEAD" if head else "GET") or ():
                out.headers.add(n, v)
        for n, v in extra:
            out.headers.add(n, v)
        out.content_length = max(0, end - start + 1)
        if head:
            await out.prepare(request)
            return out
        async with self.upstream.get_range(bucket, key, start, end, if_match=meta.etag) as stream:
            await out.prepare(request)
            while chunk := await stream.read(256 * 1024):
                await out.write(chunk)
        await out.write_eof()
        return out


def _self_signed_context() -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    d = Path(tempfile.mkdtemp(prefix="localserve-tls-"))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    with contextlib.suppress(OSError):
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    return ctx
