"""Cost of client SigV4 verification, in this process: microseconds per request for a header-signed
and a presigned GET, and throughput of the body checks (hex SHA-256, signed aws-chunked chunks).

    .venv/bin/python bench/auth_verify.py [--requests 20000] [--mib 256]

Requests are signed by botocore (as clients sign them) and verified by ``sidecar.s3.auth`` with
a warm signing-key cache, which is the steady state of a running sidecar.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import tempfile
import time
from pathlib import Path

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from sidecar.s3 import auth
from sidecar.s3.keys import KeyStore
from sidecar.upstream import awschunked

AK, SK, HOST = "AKIDBENCH", "bench-secret", "127.0.0.1:9400"


def per_request_us(v: auth.SigV4Verifier, method: str, target: str, headers: CIMultiDict, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        v.verify(method, target, headers)
    return (time.perf_counter() - t0) / n * 1e6


async def _drain(it) -> int:
    n = 0
    async for piece in it:
        n += len(piece)
    return n


async def _source(data: bytes, piece: int):
    for i in range(0, len(data), piece):
        yield data[i:i + piece]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--mib", type=int, default=256)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / AK).write_text(SK)
        v = auth.SigV4Verifier(KeyStore(Path(d)), "us-east-1")
        url = f"http://{HOST}/bucket/some/key%20with%20space.parquet"
        req = AWSRequest(method="GET", url=url, headers={"Range": "bytes=0-262143", "x-amz-checksum-mode": "ENABLED"})
        S3SigV4Auth(Credentials(AK, SK), "s3", "us-east-1").add_auth(req)
        h = CIMultiDict(req.headers.items())
        h["Host"] = HOST
        print(f"header-signed GET: {per_request_us(v, 'GET', url.split(HOST)[1], h, a.requests):.1f} us/request")
        q = AWSRequest(method="GET", url=url, headers={})
        S3SigV4QueryAuth(Credentials(AK, SK), "s3", "us-east-1", expires=3600).add_auth(q)
        print(f"presigned GET:     {per_request_us(v, 'GET', q.url.split(HOST)[1], CIMultiDict(Host=HOST), a.requests):.1f} us/request")

        data = bytes(range(256)) * (a.mib * 4096)
        p = auth.Payload(hashlib.sha256(data).hexdigest())
        _, body, _ = p.wrap([], _source(data, 256 * 1024), len(data))
        t0 = time.perf_counter()
        asyncio.run(_drain(body))
        print(f"hex SHA-256 body check: {a.mib / (time.perf_counter() - t0):.0f} MiB/s")

        key, stamp, scope, seed = auth.signing_key(SK, "20260101", "us-east-1"), "20260101T000000Z", \
            "20260101/us-east-1/s3/aws4_request", "0" * 64
        chunk, prev, frames = 64 * 1024, seed, []
        for i in range(0, len(data) + 1, chunk):
            piece = data[i:i + chunk]
            sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, prev, auth.EMPTY_SHA256,
                             hashlib.sha256(piece).hexdigest()])
            prev = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
            frames.append(f"{len(piece):x};chunk-signature={prev}\r\n".encode() + piece + (b"\r\n" if piece else b""))
            if not piece:
                break
        else:
            sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, prev, auth.EMPTY_SHA256, auth.EMPTY_SHA256])
            prev = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
            frames.append(f"0;chunk-signature={prev}\r\n".encode())
        raw = b"".join(frames) + b"\r\n"
        headers = [("x-amz-content-sha256", awschunked.STREAMING_SIGNED),
                   ("x-amz-decoded-content-length", str(len(data)))]
        p = auth.Payload(awschunked.STREAMING_SIGNED, key, stamp, scope, seed)
        _, body, _ = p.wrap(headers, _source(raw, 256 * 1024), None)
        t0 = time.perf_counter()
        n = asyncio.run(_drain(body))
        assert n == len(data)
        print(f"signed aws-chunked (64 KiB chunks) verify + re-frame: {a.mib / (time.perf_counter() - t0):.0f} MiB/s")


if __name__ == "__main__":
    main()
