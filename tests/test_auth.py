"""Client SigV4 verification: the canonicalisation against botocore's signer (the reference), and a
sidecar with ``auth: sigv4`` over real HTTP with boto3, raw signed requests and streaming uploads."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import boto3
import botocore.auth
import pytest
from botocore import UNSIGNED
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from sidecar.errors import S3Error
from sidecar.s3 import auth
from sidecar.s3.keys import KeyStore
from sidecar.upstream import awschunked
from support import raw
from support.procs import Sidecar

AK = "AKIDSIDECARTEST1"
SK = "client-secret-" + uuid.uuid4().hex  # distinctive, so a leak is found by grep
UPSTREAM_SK = "upstream-secret-" + uuid.uuid4().hex
REGION = "us-east-1"
HOST = "127.0.0.1:9400"
ODD_KEYS = ["a//b", "x/../y", "p+q", "p%2Fq", "with space", "ünï/cødé ✓", "t\tab?#&=", "~tilde*!'()"]


@pytest.fixture
def keys_dir(tmp_path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    (d / AK).write_text(SK + "\n")
    return d


def verifier(keys_dir, now: float | None = None) -> auth.SigV4Verifier:
    return auth.SigV4Verifier(KeyStore(keys_dir), REGION, clock=(lambda: now) if now is not None else time.time)


def botocore_signed(method: str, url: str, headers=None, body=b"", secret=SK, region=REGION,
                    signer=S3SigV4Auth) -> CIMultiDict:
    """Headers of a request signed by botocore. S3SigV4Auth always signs the body's own hash;
    SigV4Auth signs the x-amz-content-sha256 given (the seed of a streaming upload)."""
    req = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
    signer(Credentials(AK, secret), "s3", region).add_auth(req)
    out = CIMultiDict(req.headers.items())
    out["Host"] = HOST
    return out


def target_of(url: str) -> str:
    return url.split(HOST, 1)[1]


def code_of(fn) -> str:
    with pytest.raises(S3Error) as e:
        fn()
    return e.value.code


# --- the canonicalisation, against botocore --------------------------------------------------

key_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
query_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=key_text, params=st.lists(st.tuples(st.text("abcxyz-_.", min_size=1, max_size=6), query_text),
                                     max_size=4),
       method=st.sampled_from(["GET", "PUT", "HEAD", "DELETE", "POST"]))
def test_botocore_signatures_verify_and_any_change_breaks_them(keys_dir, key, params, method):
    from urllib.parse import quote
    path = "/bkt/" + quote(key.encode(), safe="/~")
    query = "&".join(quote(k, safe="-_.~") + "=" + quote(v, safe="-_.~") for k, v in params)
    url = f"http://{HOST}{path}" + (f"?{query}" if query else "")
    h = botocore_signed(method, url, {"x-amz-meta-a": "  two  spaces ", "Content-Type": "text/plain"})
    v = verifier(keys_dir)
    payload = v.verify(method, target_of(url), h)
    assert payload.mode == h["x-amz-content-sha256"]
    # the path, a header value, the method: each is covered by the signature
    other = path + "x" + (f"?{query}" if query else "")
    assert code_of(lambda: v.verify(method, other, h)) == "SignatureDoesNotMatch"
    bad = CIMultiDict(h)
    bad["x-amz-meta-a"] = "changed"
    assert code_of(lambda: v.verify(method, target_of(url), bad)) == "SignatureDoesNotMatch"
    assert code_of(lambda: v.verify("PATCH", target_of(url), h)) == "SignatureDoesNotMatch"


@pytest.mark.parametrize("key", ODD_KEYS)
def test_presigned_urls_verify_until_they_expire(keys_dir, key):
    from urllib.parse import quote
    url = f"http://{HOST}/bkt/{quote(key.encode(), safe='/~')}?versionId=v%2B1"
    req = AWSRequest(method="GET", url=url, headers={})
    S3SigV4QueryAuth(Credentials(AK, SK), "s3", REGION, expires=60).add_auth(req)
    target = target_of(req.url)
    headers = CIMultiDict({"Host": HOST})
    now = time.time()
    assert verifier(keys_dir, now).verify("GET", target, headers).mode == "UNSIGNED-PAYLOAD"
    with pytest.raises(S3Error) as e:
        verifier(keys_dir, now + 120).verify("GET", target, headers)
    assert (e.value.code, e.value.status, e.value.message) == ("AccessDenied", 403, "Request has expired")
    assert code_of(lambda: verifier(keys_dir, now).verify("GET", target.replace("v%2B1", "v%2B2"), headers)) \
        == "SignatureDoesNotMatch"
    assert code_of(lambda: verifier(keys_dir, now - 3600).verify("GET", target, headers)) == "AccessDenied"


def test_presigned_expiry_is_at_most_seven_days(keys_dir):
    for expires, ok in ((604800, True), (604801, False)):
        req = AWSRequest(method="GET", url=f"http://{HOST}/bkt/k", headers={})
        S3SigV4QueryAuth(Credentials(AK, SK), "s3", REGION, expires=expires).add_auth(req)
        call = lambda: verifier(keys_dir).verify("GET", target_of(req.url), CIMultiDict({"Host": HOST}))  # noqa: E731
        if ok:
            call()
        else:
            assert code_of(call) == "AuthorizationQueryParametersError"


def test_header_errors_have_s3s_codes(keys_dir):
    url = f"http://{HOST}/bkt/key"
    v = verifier(keys_dir)
    good = botocore_signed("GET", url)
    assert code_of(lambda: v.verify("GET", "/bkt/key", CIMultiDict({"Host": HOST}))) == "AccessDenied"
    assert code_of(lambda: v.verify("GET", "/bkt/key", botocore_signed("GET", url, secret="wrong"))) \
        == "SignatureDoesNotMatch"
    e = pytest.raises(S3Error, v.verify, "GET", "/bkt/key", botocore_signed("GET", url, region="eu-west-1")).value
    assert (e.code, e.status, e.fields.get("Region")) == ("AuthorizationHeaderMalformed", 400, REGION)
    unknown = CIMultiDict(good)
    unknown["Authorization"] = good["Authorization"].replace(AK, "AKIDNOBODY")
    assert code_of(lambda: v.verify("GET", "/bkt/key", unknown)) == "InvalidAccessKeyId"
    skewed = verifier(keys_dir, time.time() + 16 * 60)
    assert code_of(lambda: skewed.verify("GET", "/bkt/key", good)) == "RequestTimeTooSkewed"
    assert verifier(keys_dir, time.time() + 14 * 60).verify("GET", "/bkt/key", good)
    extra = CIMultiDict(good)
    extra["x-amz-meta-added"] = "after signing"
    e = pytest.raises(S3Error, v.verify, "GET", "/bkt/key", extra).value
    assert e.code == "AccessDenied" and "x-amz-meta-added" in e.fields["HeadersNotSigned"]
    v2 = CIMultiDict(good)
    v2["Authorization"] = "AWS " + AK + ":c2lnbmF0dXJl"
    assert code_of(lambda: v.verify("GET", "/bkt/key", v2)) == "InvalidRequest"
    garbled = CIMultiDict(good)
    garbled["Authorization"] = "AWS4-HMAC-SHA256 Credential=nonsense"
    assert code_of(lambda: v.verify("GET", "/bkt/key", garbled)) == "AuthorizationHeaderMalformed"


def test_signing_keys_are_derived_once_per_day_and_region():
    auth.signing_key.cache_clear()
    for _ in range(5):
        auth.signing_key(SK, "20250101", REGION)
    auth.signing_key(SK, "20250102", REGION)
    info = auth.signing_key.cache_info()
    assert (info.misses, info.hits) == (2, 4)


def test_key_directory_is_reread_when_it_changes(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    (d / "AKID1").write_text("s1\n")
    (d / "..data").mkdir()  # what a Secret volume holds besides the keys
    now = [0.0]
    ks = KeyStore(d, check_interval=5, clock=lambda: now[0])
    assert ks.secret("AKID1") == "s1" and ks.secret("..data") is None and len(ks) == 1
    (d / "AKID2").write_text("s2")
    assert ks.secret("AKID2") is None  # not looked at again before the interval
    now[0] = 6
    assert ks.secret("AKID2") == "s2"
    with pytest.raises(Exception):
        KeyStore(tmp_path / "missing")


# --- streaming signed bodies -----------------------------------------------------------------

def streaming_body(payload: bytes, chunk: int, seed: str, key: bytes, stamp: str, scope: str,
                   trailers=(), tamper_at: int | None = None) -> bytes:
    """aws-chunked with chunk signatures, written from the SigV4 streaming specification;
    ``tamper_at``: that payload byte is flipped on the wire after signing."""
    def sig(prev: str, data: bytes) -> str:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, prev, hashlib.sha256(b"").hexdigest(),
                         hashlib.sha256(data).hexdigest()])
        return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    prev, out = seed, []
    pieces = [payload[i:i + chunk] for i in range(0, len(payload), chunk)] + [b""]
    for i, data in enumerate(pieces):
        prev = sig(prev, data)
        if tamper_at is not None and i == tamper_at // chunk:
            data = bytearray(data)
            data[tamper_at % chunk] ^= 0x01
            data = bytes(data)
        out.append(f"{len(data):x};chunk-signature={prev}\r\n".encode() + data + (b"\r\n" if data else b""))
    if trailers:
        block = "".join(f"{n}:{v}\n" for n, v in trailers).encode()
        sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", stamp, scope, prev, hashlib.sha256(block).hexdigest()])
        out += [f"{n}:{v}\r\n".encode() for n, v in trailers]
        out.append(f"x-amz-trailer-signature:{hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()}\r\n".encode())
    out.append(b"\r\n")
    return b"".join(out)


def signed_streaming_put(endpoint: str, target: str, payload: bytes, chunk: int = 65536,
                         tamper_at: int | None = None, crc32_trailer: bool = False) -> raw.Reply:
    mode = awschunked.STREAMING_SIGNED_TRAILER if crc32_trailer else awschunked.STREAMING_SIGNED
    headers = {"x-amz-content-sha256": mode, "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(payload))}
    trailers = []
    if crc32_trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
        trailers = [("x-amz-checksum-crc32", base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode())]
    h = botocore_signed("PUT", endpoint + target, headers, signer=botocore.auth.SigV4Auth)
    fields = dict(p.strip().split("=", 1) for p in h["Authorization"].split(" ", 1)[1].split(","))
    stamp = h["x-amz-date"]
    scope = fields["Credential"].split("/", 1)[1]
    key = auth.signing_key(SK, stamp[:8], REGION)
    body = streaming_body(payload, chunk, fields["Signature"], key, stamp, scope, trailers=trailers,
                          tamper_at=tamper_at)
    h.pop("Host")
    return raw.request(endpoint, "PUT", target, headers=dict(h.items()), body=body, sign=False)


async def _pieces(parts):
    for p in parts:
        yield p


@pytest.mark.parametrize("broken", ["final-signature", "last-chunk", "trailer-signature"])
def test_a_failing_stream_never_hands_over_its_whole_payload(broken):
    import asyncio
    payload = bytes(range(256)) * 64  # 16 KiB in 4 KiB chunks
    key, stamp, scope, seed = b"k" * 32, "20260101T000000Z", f"20260101/{REGION}/s3/aws4_request", "0" * 64
    trailers = [("x-amz-checksum-crc32", "AAAAAA==")] if broken == "trailer-signature" else []
    body = streaming_body(payload, 4096, seed, key, stamp, scope, trailers=trailers,
                          tamper_at=len(payload) - 1 if broken == "last-chunk" else None)
    if broken == "final-signature":
        at = body.rindex(b"0;chunk-signature=") + len(b"0;chunk-signature=")
        body = body[:at] + (b"0" if body[at:at + 1] != b"0" else b"1") + body[at + 1:]
    if broken == "trailer-signature":
        at = body.rindex(b"x-amz-trailer-signature:") + len(b"x-amz-trailer-signature:")
        body = body[:at] + (b"0" if body[at:at + 1] != b"0" else b"1") + body[at + 1:]
    mode = awschunked.STREAMING_SIGNED_TRAILER if trailers else awschunked.STREAMING_SIGNED
    headers = [("x-amz-content-sha256", mode), ("x-amz-decoded-content-length", str(len(payload)))]
    if trailers:
        headers.append(("x-amz-trailer", "x-amz-checksum-crc32"))
    p = auth.Payload(mode, key, stamp, scope, seed)
    # each piece of framing arrives on its own, so the payload is complete before the failure shows
    cut = body.index(b"\r\n0;") + 2
    _, out, _ = p.wrap(headers, _pieces([body[:cut], body[cut:]]), None)
    got = bytearray()

    async def drain():
        async for piece in out:
            got.extend(piece)
    with pytest.raises(S3Error) as e:
        asyncio.run(drain())
    assert e.value.code == "SignatureDoesNotMatch" and p.failure is e.value
    if trailers:  # re-framed with its checksum trailer: the frame that ends the body never goes out
        assert b"x-amz-checksum-crc32:" not in bytes(got)
    else:
        assert len(got) < len(payload)


# --- a sidecar with auth: sigv4, over real HTTP ------------------------------------------------

@pytest.fixture(scope="module")
def authed(tap, tmp_path_factory, logs_dir):
    d = tmp_path_factory.mktemp("keys")
    (d / AK).write_text(SK)
    (d / "..2026_01_01").mkdir()
    sc = Sidecar(tap.url, tmp_path_factory.mktemp("cache"), logs_dir, env={"AWS_SECRET_ACCESS_KEY": UPSTREAM_SK},
                 auth="sigv4", auth_keys_dir=d, chunk_size="1MiB", log_level="debug")
    yield sc
    sc.stop()


@pytest.fixture(scope="module")
def seen_errors():
    """Every error body the tests received, for the leak check at the end."""
    return []


def s3(sc, secret=SK, region=REGION, **cfg):
    return boto3.client("s3", endpoint_url=sc.url, aws_access_key_id=AK, aws_secret_access_key=secret,
                        region_name=region,
                        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}, **cfg))


def client_error(fn, seen) -> tuple[int, str]:
    with pytest.raises(ClientError) as e:
        fn()
    r = e.value.response
    seen.append(json.dumps(r, default=str))
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


def xml_code(reply: raw.Reply, seen) -> tuple[int, str]:
    seen.append(reply.body.decode(errors="replace"))
    return reply.status, ET.fromstring(reply.body).findtext("Code")


def test_signed_requests_pass_for_every_kind_of_call(authed, bucket, moto_s3):
    c = s3(authed)
    for i, key in enumerate(ODD_KEYS):
        c.put_object(Bucket=bucket, Key=key, Body=f"body {i}".encode())
        assert c.get_object(Bucket=bucket, Key=key)["Body"].read() == f"body {i}".encode()
        assert c.get_object(Bucket=bucket, Key=key, Range="bytes=1-3")["Body"].read() == f"body {i}".encode()[1:4]
        assert c.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(f"body {i}")
    assert sorted(o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]) == sorted(ODD_KEYS)
    assert sorted(o["Key"] for o in c.list_objects(Bucket=bucket, Prefix="p")["Contents"]) == ["p%2Fq", "p+q"]
    part = b"m" * (5 * 1024 * 1024)
    up = c.create_multipart_upload(Bucket=bucket, Key="multi/part ü")
    e1 = c.upload_part(Bucket=bucket, Key="multi/part ü", UploadId=up["UploadId"], PartNumber=1, Body=part)
    e2 = c.upload_part(Bucket=bucket, Key="multi/part ü", UploadId=up["UploadId"], PartNumber=2, Body=b"end")
    c.complete_multipart_upload(Bucket=bucket, Key="multi/part ü", UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1["ETag"]}, {"PartNumber": 2, "ETag": e2["ETag"]}]})
    assert moto_s3.get_object(Bucket=bucket, Key="multi/part ü")["Body"].read() == part + b"end"
    c.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "p+q"})
    gone = c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ODD_KEYS]})
    assert sorted(d["Key"] for d in gone["Deleted"]) == sorted(ODD_KEYS)
    assert [o["Key"] for o in moto_s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["copied", "multi/part ü"]
    # presigned: a plain HTTP client with nothing but the URL (boto3 presigns with SigV2 unless told)
    url = s3(authed, signature_version="s3v4").generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "copied"}, ExpiresIn=60)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == b"body 2"
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{url}: {e.read()!r}") from None


def test_wrong_credentials_get_s3s_answers(authed, bucket, seen_errors, monkeypatch):
    boto3.client("s3", endpoint_url=authed.upstream, region_name=REGION, aws_access_key_id="x",
                 aws_secret_access_key="x").put_object(Bucket=bucket, Key="k", Body=b"v")
    assert client_error(lambda: s3(authed, secret="not-the-secret").get_object(Bucket=bucket, Key="k"),
                        seen_errors) == (403, "SignatureDoesNotMatch")
    h = botocore_signed("GET", f"{authed.url}/{bucket}/k", region="eu-west-1")
    h.pop("Host")
    r = raw.request(authed.url, "GET", f"/{bucket}/k", headers=dict(h.items()), sign=False)
    assert xml_code(r, seen_errors) == (400, "AuthorizationHeaderMalformed")
    assert ET.fromstring(r.body).findtext("Region") == REGION
    # ...which is how botocore learns the region and re-signs for it, as with S3 itself
    assert s3(authed, region="eu-west-1").get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    stranger = boto3.client("s3", endpoint_url=authed.url, aws_access_key_id="AKIDSTRANGER",
                            aws_secret_access_key=SK, region_name=REGION, config=Config(retries={"max_attempts": 1}))
    assert client_error(lambda: stranger.head_bucket(Bucket=bucket), seen_errors)[0] == 403
    assert client_error(lambda: stranger.list_objects_v2(Bucket=bucket), seen_errors) == (403, "InvalidAccessKeyId")
    anonymous = boto3.client("s3", endpoint_url=authed.url, region_name=REGION,
                             config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
    assert client_error(lambda: anonymous.get_object(Bucket=bucket, Key="k"), seen_errors) == (403, "AccessDenied")
    c = s3(authed, signature_version="s3v4")
    v2 = s3(authed).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    with _http_error(v2) as (status, body):
        assert (status, ET.fromstring(body).findtext("Code")) == (400, "InvalidRequest")
    url = c.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1)
    with _http_error(url.replace("/k?", "/j?")) as (status, body):
        seen_errors.append(body)
        assert (status, ET.fromstring(body).findtext("Code")) == (403, "SignatureDoesNotMatch")
    time.sleep(2.1)
    with _http_error(url) as (status, body):
        seen_errors.append(body)
        assert (status, ET.fromstring(body).findtext("Code"), ET.fromstring(body).findtext("Message")) == \
            (403, "AccessDenied", "Request has expired")
    skewed = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: skewed)
    assert client_error(lambda: c.get_object(Bucket=bucket, Key="k"), seen_errors) == (403, "RequestTimeTooSkewed")
    metrics = authed.metrics_text()
    for code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "RequestTimeTooSkewed",
                 "AuthorizationHeaderMalformed"):
        assert f'sidecar_auth_rejections_total{{code="{code}"}}' in metrics


class _http_error:
    """urlopen that expects an HTTP error; yields (status, body)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self):
        try:
            urllib.request.urlopen(self.url, timeout=10)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        raise AssertionError("the request succeeded")

    def __exit__(self, *exc):
        return False


def test_tampered_requests_are_refused(authed, bucket, seen_errors):
    target = f"/{bucket}/t%20key"
    h = botocore_signed("PUT", authed.url + target, {"x-amz-meta-color": "blue"}, body=b"payload")
    h.pop("Host")
    signed = dict(h.items())
    ok = raw.request(authed.url, "PUT", target, headers=signed, body=b"payload", sign=False)
    assert ok.status == 200, ok.body
    changed_header = {**signed, "x-amz-meta-color": "red"}
    assert xml_code(raw.request(authed.url, "PUT", target, headers=changed_header, body=b"payload", sign=False),
                    seen_errors) == (403, "SignatureDoesNotMatch")
    assert xml_code(raw.request(authed.url, "PUT", target + "2", headers=signed, body=b"payload", sign=False),
                    seen_errors) == (403, "SignatureDoesNotMatch")
    assert xml_code(raw.request(authed.url, "PUT", target + "?tagging", headers=signed, body=b"payload",
                                sign=False), seen_errors) == (403, "SignatureDoesNotMatch")
    # the signature holds but the body is not the one hashed: refused, and nothing is written
    assert xml_code(raw.request(authed.url, "PUT", f"/{bucket}/swapped", headers=signed, body=b"PAYLOAD",
                                sign=False), seen_errors)[0] == 403
    h2 = botocore_signed("PUT", authed.url + f"/{bucket}/swapped", {}, body=b"payload")
    h2.pop("Host")
    assert xml_code(raw.request(authed.url, "PUT", f"/{bucket}/swapped", headers=dict(h2.items()), body=b"PAYLOAD",
                                sign=False), seen_errors) == (400, "XAmzContentSHA256Mismatch")
    assert s3(authed).list_objects_v2(Bucket=bucket, Prefix="swapped")["KeyCount"] == 0


def test_streaming_signed_upload_verifies_each_chunk(authed, bucket, moto_s3, seen_errors):
    payload = bytes(range(256)) * 1200  # 300 KiB: several 64 KiB chunks
    r = signed_streaming_put(authed.url, f"/{bucket}/streamed", payload)
    assert r.status == 200, r.body
    assert moto_s3.get_object(Bucket=bucket, Key="streamed")["Body"].read() == payload
    for where in (10, 3 * 65536 + 200, len(payload) - 1):  # first, middle, last chunk
        r = signed_streaming_put(authed.url, f"/{bucket}/tampered-{where}", payload, tamper_at=where)
        assert xml_code(r, seen_errors) == (403, "SignatureDoesNotMatch")
    left = moto_s3.list_objects_v2(Bucket=bucket, Prefix="tampered")
    assert left["KeyCount"] == 0  # nothing committed upstream
    r = signed_streaming_put(authed.url, f"/{bucket}/with-trailer", payload, crc32_trailer=True)
    assert r.status == 200, r.body
    assert moto_s3.get_object(Bucket=bucket, Key="with-trailer")["Body"].read() == payload
    r = signed_streaming_put(authed.url, f"/{bucket}/trailer-tampered", payload, crc32_trailer=True,
                             tamper_at=100)
    assert xml_code(r, seen_errors) == (403, "SignatureDoesNotMatch")


def test_unsigned_trailer_uploads_pass_on_their_header_signature(authed, bucket, moto_s3, seen_errors):
    import asyncio
    payload = b"unsigned chunks " * 5000
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()

    async def encode():
        out = awschunked.encode_unsigned(_pieces([payload]), trailers=[("x-amz-checksum-crc32", crc)])
        return b"".join([p async for p in out])
    body = asyncio.run(encode())
    target = f"/{bucket}/unsigned-trailer"
    h = botocore_signed("PUT", authed.url + target, {
        "x-amz-content-sha256": awschunked.STREAMING_UNSIGNED_TRAILER, "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(payload)), "x-amz-trailer": "x-amz-checksum-crc32"},
        signer=botocore.auth.SigV4Auth)
    h.pop("Host")
    r = raw.request(authed.url, "PUT", target, headers=dict(h.items()), body=body, sign=False)
    assert r.status == 200, r.body
    assert moto_s3.get_object(Bucket=bucket, Key="unsigned-trailer")["Body"].read() == payload
    forged = {**dict(h.items()), "x-amz-decoded-content-length": str(len(payload) - 1)}
    assert xml_code(raw.request(authed.url, "PUT", target, headers=forged, body=body, sign=False),
                    seen_errors) == (403, "SignatureDoesNotMatch")


def test_a_key_added_to_the_directory_works_after_a_reload(authed, bucket, seen_errors):
    keys = Path(authed.flags["auth_keys_dir"])
    newcomer = boto3.client("s3", endpoint_url=authed.url, aws_access_key_id="AKIDROTATED",
                            aws_secret_access_key=SK + "-2", region_name=REGION,
                            config=Config(retries={"max_attempts": 1}))
    assert client_error(lambda: newcomer.list_objects_v2(Bucket=bucket), seen_errors) == (403, "InvalidAccessKeyId")
    (keys / "AKIDROTATED").write_text(SK + "-2\n")
    try:
        req = urllib.request.Request(authed.admin_url + "/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        assert newcomer.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    finally:
        (keys / "AKIDROTATED").unlink()


def test_no_secret_reaches_logs_errors_or_metrics(authed, seen_errors):
    assert seen_errors  # the tests above ran and collected what clients were told
    log = authed.log_path.read_text(errors="replace")
    metrics = authed.metrics_text()
    shown = json.dumps(authed.admin("/config"))
    for secret in (SK, SK + "-2", UPSTREAM_SK):
        assert secret not in log
        assert secret not in metrics
        assert secret not in shown
        assert all(secret not in e for e in seen_errors)
    assert "auth_keys_loaded" in log
