"""Byte-exact signed S3 requests: the same request can be sent to the sidecar and to moto."""

from __future__ import annotations

import dataclasses
import http.client
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

CREDENTIALS = Credentials("testing", "testing")


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def request(endpoint: str, method: str, target: str, headers: dict[str, str] | None = None,
            body: bytes = b"", sign: bool = True, host: str | None = None) -> Reply:
    """Send ``method target`` (raw, already percent-encoded) to ``endpoint`` over one connection."""
    parts = urlsplit(endpoint)
    headers = dict(headers or {})
    if host is not None:
        headers["Host"] = host
    if sign:
        req = AWSRequest(method=method, url=f"{endpoint}{target}", headers=headers, data=body)
        S3SigV4Auth(CREDENTIALS, "s3", "us-east-1").add_auth(req)
        headers = dict(req.headers.items())
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_host="Host" in headers, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body or method in ("PUT", "POST"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body if body else None)
        r = conn.getresponse()
        data = r.read()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()
