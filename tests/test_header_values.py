"""Values that cannot be written into a response header, from the upstream's answer or from the
client's request: a clean S3 error (the upstream's error relayed, 502 or 400), never a 500, a
traceback or an injected header."""

from __future__ import annotations

import http.client
import os
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from support import raw
from support.scripted import ScriptedUpstream, answer

MISSING_LENGTH = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>MissingContentLength</Code>'
                  b'<Message>You must provide the Content-Length HTTP header.</Message></Error>')
ODD = [b"a\x01b", b"a\x7f", b"x\x1b[31m", b"v\x0bw"]


def _script(method: str, path: str) -> bytes | None:
    if method == "POST" and path.startswith("/bkt"):
        n = int(path.rsplit("odd=", 1)[1]) if "odd=" in path else 0
        return answer("411 Length Required", [("Content-Type", "application/xml"), ("x-odd", ODD[n]),
                                              ("x-amz-request-id", "UP1")], MISSING_LENGTH)
    if method == "DELETE":
        return answer("403 Forbidden", [("x-amz-meta-bad", ODD[0])])  # an error without a body
    if path.startswith("/bkt/nolength"):  # a success the cache cannot use: no Content-Length
        return b'HTTP/1.1 200 OK\r\nETag: "e"\r\nx-amz-request-id: UP2\r\nConnection: close\r\n\r\n'
    if path.startswith("/bkt/odd"):
        return answer("200 OK", [("ETag", '"e"'), ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
                                 ("x-amz-meta-a", ODD[2])], b"hello")
    if path.startswith("/bkt?acl"):
        return answer("200 OK", [("Content-Type", "application/xml"), ("x-amz-meta-a", ODD[3])], b"<acl/>")
    return None


@pytest.fixture(scope="module")
def scripted():
    up = ScriptedUpstream(_script)
    yield up
    up.close()


def _no_tracebacks(sc) -> None:
    text = sc.log_path.read_text(errors="replace")
    assert "Traceback" not in text and "request_failed" not in text, text[-3000:]


def _post_without_length(endpoint: str, target: str) -> raw.Reply:
    """A signed POST with no body and no Content-Length (curl -X POST does this)."""
    req = AWSRequest(method="POST", url=endpoint + target, headers={}, data=b"")
    S3SigV4Auth(raw.CREDENTIALS, "s3", "us-east-1").add_auth(req)
    p = urlsplit(endpoint)
    conn = http.client.HTTPConnection(p.hostname, p.port, timeout=30)
    try:
        conn.putrequest("POST", target, skip_accept_encoding=True)
        for k, v in req.headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return raw.Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


@pytest.mark.parametrize("odd", range(len(ODD)))
def test_upstream_error_with_unwritable_header_is_relayed(scripted, make_sidecar, odd):
    sc = make_sidecar(upstream=scripted.url)
    r = _post_without_length(sc.url, f"/bkt?odd={odd}")
    assert r.status == 411
    assert r.body == MISSING_LENGTH
    assert "x-odd" not in r.headers and r.headers["x-sidecar-upstream-request-id"] == "UP1"
    d = raw.request(sc.url, "DELETE", "/bkt/k")
    assert d.status == 403 and "x-amz-meta-bad" not in d.headers
    _no_tracebacks(sc)


def test_upstream_success_with_unwritable_header_is_bad_gateway(scripted, make_sidecar):
    sc = make_sidecar(upstream=scripted.url)
    for method, target in [("GET", "/bkt?acl"), ("GET", "/bkt/odd"), ("GET", "/bkt/odd"), ("HEAD", "/bkt/odd"),
                           ("GET", "/bkt/odd2")]:
        r = raw.request(sc.url, method, target)
        assert r.status == 502, (method, target, r)
        if method == "GET":
            assert b"<Code>BadGateway</Code>" in r.body
        assert "x-amz-meta-a" not in r.headers
    _no_tracebacks(sc)


@pytest.mark.parametrize("value", ["text/plain%0D%0AX-Injected:%20yes", "a%01b", "a%7F", "x%0Ay"])
def test_response_override_that_cannot_be_a_header(moto, sidecar, bucket, value):
    moto.client().put_object(Bucket=bucket, Key="k", Body=os.urandom(100))
    for target in [f"/{bucket}/k?response-content-type={value}",
                   f"/{bucket}/k?response-content-disposition={value}&versionId=null"]:
        r = raw.request(sidecar.url, "GET", target)
        assert r.status == 400 and b"<Code>InvalidArgument</Code>" in r.body, r
        assert "x-injected" not in r.headers
    _no_tracebacks(sidecar)


@pytest.mark.parametrize("value", ["a\x01b", "a\x7f", "\x1b[0m"])
def test_request_header_that_cannot_be_passed_on(sidecar, bucket, value):
    r = raw.request(sidecar.url, "PUT", f"/{bucket}/meta", {"x-amz-meta-a": value}, body=b"data")
    assert r.status == 400 and b"<Error><Code>Invalid" in r.body, r  # the HTTP parser's or ours
    _no_tracebacks(sidecar)


def test_upstream_head_without_length_is_bad_gateway(scripted, make_sidecar):
    sc = make_sidecar(upstream=scripted.url)
    assert raw.request(sc.url, "HEAD", "/bkt/nolength").status == 502
    r = raw.request(sc.url, "GET", "/bkt/nolength", {"If-Match": '"e"'})
    assert r.status in (502, 503) and b"<Error><Code>" in r.body, r
    _no_tracebacks(sc)
