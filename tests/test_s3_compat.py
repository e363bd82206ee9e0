"""The sidecar answers like the upstream: each request is sent byte-for-byte to both the
sidecar and the S3 server behind it, and status, the headers that matter and the body are
compared. Requests go twice through the sidecar so that cold (miss) and warm (hit) answers
are both checked."""

from __future__ import annotations

import gzip
import os
import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest

from support import raw

MiB = 1024 * 1024
SIZE = 2 * MiB + 512 * 1024 + 7  # 3 chunks of 1 MiB, the last one short

COMPARED = ("etag", "last-modified", "content-length", "content-range", "accept-ranges", "content-type",
            "content-encoding", "content-disposition", "content-language", "cache-control", "expires",
            "x-amz-mp-parts-count", "x-amz-version-id", "x-amz-storage-class")


def _view(reply: raw.Reply, *, checksums: bool = True) -> dict:
    h = {k: v for k, v in reply.headers.items()
         if k in COMPARED or k.startswith("x-amz-meta-") or (checksums and k.startswith("x-amz-checksum-"))}
    return {"status": reply.status, "headers": h, "body": reply.body}


def _error_code(reply: raw.Reply) -> str | None:
    if not reply.body:
        return None
    return ET.fromstring(reply.body).findtext("Code")


@pytest.fixture(scope="module")
def obj(moto, sidecar):
    s3 = moto.client()
    bucket = "compat-" + os.urandom(4).hex()
    s3.create_bucket(Bucket=bucket)
    data = os.urandom(SIZE)
    s3.put_object(Bucket=bucket, Key="data.bin", Body=data, ContentType="application/octet-stream",
                  Metadata={"owner": "team-a", "k2": "v2"}, CacheControl="max-age=60",
                  ContentDisposition='attachment; filename="data.bin"', ContentLanguage="en",
                  ChecksumAlgorithm="CRC32")
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    return bucket, data


def both(moto, sidecar, method, target, headers=None, *, host=None):
    up = raw.request(moto.url, method, target, headers)
    cold = raw.request(sidecar.url, method, target, headers, host=host)
    warm = raw.request(sidecar.url, method, target, headers, host=host)
    return up, cold, warm


def assert_same(up, *answers, checksums=True):
    want = _view(up, checksums=checksums)
    for a in answers:
        got = _view(a, checksums=checksums)
        if up.status >= 300:
            assert (a.status, _error_code(a)) == (up.status, _error_code(up))
        else:
            assert got == want


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_whole_object(moto, sidecar, obj, method):
    bucket, data = obj
    up, cold, warm = both(moto, sidecar, method, f"/{bucket}/data.bin")
    assert up.status == 200
    assert_same(up, cold, warm)
    if method == "GET":
        assert cold.body == data


@pytest.mark.parametrize("rng", [
    "bytes=0-0", "bytes=0-99", "bytes=1048575-1048576", "bytes=100-", f"bytes={MiB}-", "bytes=-100", "bytes=-1",
    f"bytes=0-{SIZE - 1}", "bytes=0-99999999", f"bytes={SIZE - 1}-", "bytes=-99999999", "bytes=2000000-2200000",
    f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0",   # unsatisfiable: 416
    "bytes=0-1,5-6", "bytes=abc", "bytes=5-2", "bytes=", "bytes=--1",   # unusable: the whole object
])
def test_range(moto, sidecar, obj, rng):
    bucket, data = obj
    up, cold, warm = both(moto, sidecar, "GET", f"/{bucket}/data.bin", {"Range": rng})
    # S3 never attaches a whole-object checksum to a 206; moto does when the range covers it all.
    assert_same(up, cold, warm, checksums=up.status == 200)
    if up.status == 416:
        assert cold.headers.get("content-range") == f"bytes */{SIZE}"
        assert _error_code(cold) == "InvalidRange"
    if up.status == 206:
        assert not any(k.startswith("x-amz-checksum-") for k in cold.headers)


def test_range_on_empty_object(moto, sidecar, obj):
    bucket, _ = obj
    for rng in ("bytes=0-", "bytes=-1", "bytes=0-0"):
        up, cold, warm = both(moto, sidecar, "GET", f"/{bucket}/empty", {"Range": rng})
        assert_same(up, cold, warm)


@pytest.mark.parametrize("mode", ["ENABLED", None])
def test_checksum_mode(moto, sidecar, obj, mode):
    bucket, _ = obj
    headers = {"x-amz-checksum-mode": mode} if mode else {}
    up, cold, warm = both(moto, sidecar, "GET", f"/{bucket}/data.bin", headers)
    assert_same(up, cold, warm)
    if mode:
        assert cold.headers.get("x-amz-checksum-crc32") == up.headers["x-amz-checksum-crc32"]
    ranged = raw.request(sidecar.url, "GET", f"/{bucket}/data.bin", {**headers, "Range": "bytes=0-9"})
    assert not any(k.startswith("x-amz-checksum-") for k in ranged.headers)


def _conditional_cases(etag: str, lm: str):
    past, future = "Mon, 01 Jan 2001 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"
    return [
        {"If-Match": etag}, {"If-Match": '"0000"'}, {"If-Match": "*"}, {"If-Match": f'"x", {etag}'},
        {"If-None-Match": etag}, {"If-None-Match": '"0000"'}, {"If-None-Match": "*"},
        {"If-Modified-Since": past}, {"If-Modified-Since": future}, {"If-Modified-Since": lm},
        {"If-Unmodified-Since": past}, {"If-Unmodified-Since": future},
        {"If-Match": etag, "If-Unmodified-Since": past},       # S3: If-Match wins, 200
        {"If-None-Match": etag, "If-Modified-Since": past},    # S3: 304
        {"If-None-Match": '"0000"', "If-Modified-Since": future},
        {"If-Match": '"0000"', "If-None-Match": etag},
        {"If-Match": etag, "Range": "bytes=0-9"},              # s3fs and awscli ranged reads
    ]


# Where the S3 test double departs from RFC 9110 (which S3 follows): case -> status we answer.
# If-Match: * and If-None-Match: * select any existing object; a list of tags matches if any does;
# If-Match true makes If-Unmodified-Since moot (S3 documents 200); If-None-Match present makes
# If-Modified-Since moot. moto answers these otherwise.
RFC_OVER_MOTO = {2: 200, 3: 200, 6: 304, 12: 200, 14: 200}


@pytest.mark.parametrize("case", range(17))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_conditional_requests(moto, sidecar, obj, case, method):
    bucket, _ = obj
    head = raw.request(moto.url, "HEAD", f"/{bucket}/data.bin")
    headers = _conditional_cases(head.headers["etag"], head.headers["last-modified"])[case]
    up, cold, warm = both(moto, sidecar, method, f"/{bucket}/data.bin", headers)
    if case in RFC_OVER_MOTO:
        assert (cold.status, warm.status) == (RFC_OVER_MOTO[case],) * 2
        return
    assert (cold.status, warm.status) == (up.status, up.status)
    if up.status in (200, 206):
        assert_same(up, cold, warm, checksums=up.status == 200)
    if up.status == 304:
        assert cold.headers["etag"] == up.headers["etag"] and cold.body == b""


def test_conditional_precedence_as_s3_documents(sidecar, obj):
    """S3's documented outcomes, independent of any test double."""
    bucket, _ = obj
    etag = raw.request(sidecar.url, "HEAD", f"/{bucket}/data.bin").headers["etag"]
    past = "Mon, 01 Jan 2001 00:00:00 GMT"
    t = f"/{bucket}/data.bin"
    assert raw.request(sidecar.url, "GET", t, {"If-Match": etag, "If-Unmodified-Since": past}).status == 200
    assert raw.request(sidecar.url, "GET", t, {"If-None-Match": etag, "If-Modified-Since": past}).status == 304
    r = raw.request(sidecar.url, "GET", t, {"If-Match": '"nope"'})
    assert r.status == 412 and _error_code(r) == "PreconditionFailed"


def test_response_overrides(moto, sidecar, obj):
    bucket, _ = obj
    q = "response-content-type=text%2Fplain&response-cache-control=no-cache&" \
        "response-content-disposition=inline&response-content-language=fr&response-expires=" + \
        quote("Thu, 01 Dec 2094 16:00:00 GMT", safe="")
    up, cold, warm = both(moto, sidecar, "GET", f"/{bucket}/data.bin?{q}")
    assert_same(up, cold, warm)
    assert cold.headers["content-type"] == "text/plain" and cold.headers["content-language"] == "fr"


@pytest.fixture(scope="module")
def multipart(moto):
    s3 = moto.client()
    bucket = "mpart-" + os.urandom(4).hex()
    s3.create_bucket(Bucket=bucket)
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="CRC32")
    etags = []
    for i, p in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=i, Body=p,
                           ChecksumAlgorithm="CRC32")
        etags.append({"PartNumber": i, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up["UploadId"], MultipartUpload={"Parts": etags})
    return bucket, parts


@pytest.mark.parametrize("part", ["1", "2", "3", "4"])
def test_part_number(moto, sidecar, multipart, part):
    # moto answers part requests on multipart objects unlike S3 (200 with the whole object), so
    # the sidecar passes them through; part reads from the cache are tested on the local upstream.
    bucket, parts = multipart
    up, cold, warm = both(moto, sidecar, "GET", f"/{bucket}/mp?partNumber={part}")
    assert_same(up, cold, warm, checksums=False)


@pytest.mark.parametrize("part", ["0", "x", "10001"])
def test_invalid_part_number(sidecar, multipart, part):
    bucket, _ = multipart
    r = raw.request(sidecar.url, "GET", f"/{bucket}/mp?partNumber={part}")
    assert r.status == 400 and _error_code(r) == "InvalidArgument"


def test_part_number_of_single_part_object(moto, sidecar, obj):
    bucket, _ = obj
    up, cold, warm = both(moto, sidecar, "GET", f"/{bucket}/data.bin?partNumber=1")
    assert_same(up, cold, warm, checksums=False)


def test_whole_multipart_object_with_checksum_mode(moto, sidecar, multipart):
    bucket, parts = multipart
    up, cold, warm = both(moto, sidecar, "GET", f"/{bucket}/mp", {"x-amz-checksum-mode": "ENABLED"})
    assert_same(up, cold, warm)
    assert cold.body == b"".join(parts)
    # moto's HEAD gives a multipart object's composite checksum without its -N and no type, its
    # GET with them: each kind of request gets the upstream's answer to that kind.
    head = raw.request(moto.url, "HEAD", f"/{bucket}/mp", {"x-amz-checksum-mode": "ENABLED"})
    got = raw.request(sidecar.url, "HEAD", f"/{bucket}/mp", {"x-amz-checksum-mode": "ENABLED"})
    want = {k: v for k, v in head.headers.items() if k.startswith("x-amz-checksum-")}
    assert want and {k: v for k, v in got.headers.items() if k.startswith("x-amz-checksum-")} == want


def test_virtual_hosted_style(moto, sidecar, obj):
    bucket, data = obj
    host = f"{bucket}.localhost:{sidecar.port}"
    up = raw.request(moto.url, "GET", f"/{bucket}/data.bin", {"Range": "bytes=10-20"})
    vh = raw.request(sidecar.url, "GET", "/data.bin", {"Range": "bytes=10-20"}, host=host)
    assert _view(vh) == _view(up, checksums=False)
    listing = raw.request(sidecar.url, "GET", "/?list-type=2", host=host)
    assert listing.status == 200 and b"<Key>data.bin</Key>" in listing.body


ODD_KEYS = ["a//b", "x/../y", "p+q", "p%2Fq", "tab\there", "q?#frag", "spaces in key", "unicodé/日本/ключ",
            "../escape", "trailing/", "k" * 1000, "~tilde!*'()", "semi;colon,comma=eq&amp"]


@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_keys_round_trip_byte_exact(moto, sidecar, bucket, key):
    s3 = sidecar.client()
    body = key.encode("utf-8") * 3
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert moto.client().get_object(Bucket=bucket, Key=key)["Body"].read() == body
    target = f"/{bucket}/" + quote(key, safe="/~")
    up, cold, warm = both(moto, sidecar, "GET", target)
    assert_same(up, cold, warm)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [key]


def test_invalid_utf8_key_is_an_s3_error(sidecar, bucket):
    r = raw.request(sidecar.url, "GET", f"/{bucket}/bad%FF%FEkey")
    assert r.status == 400 and _error_code(r) == "InvalidURI"


def test_gzip_objects_are_returned_byte_for_byte(moto, sidecar, bucket):
    payload = gzip.compress(b"hello " * 10000)
    moto.client().put_object(Bucket=bucket, Key="z.txt", Body=payload, ContentEncoding="gzip",
                             ContentType="text/plain")
    up, cold, warm = both(moto, sidecar, "GET", f"/{bucket}/z.txt", {"Accept-Encoding": "gzip"})
    assert_same(up, cold, warm)
    assert cold.body == payload and cold.headers["content-encoding"] == "gzip"


@pytest.mark.parametrize("target,method", [
    ("/{bucket}/missing", "GET"), ("/{bucket}/missing", "HEAD"), ("/no-such-bucket-zz/k", "GET"),
    ("/no-such-bucket-zz/k", "HEAD"), ("/no-such-bucket-zz", "GET"),
])
def test_errors_match(moto, sidecar, bucket, target, method):
    t = target.format(bucket=bucket)
    up, cold, warm = both(moto, sidecar, method, t)
    assert up.status == 404
    assert (cold.status, _error_code(cold)) == (up.status, _error_code(up))
    assert cold.headers.get("x-amz-request-id")
    if method == "GET":
        assert cold.headers["content-type"] == "application/xml"


def test_listing_passes_through(moto, sidecar, bucket):
    s3 = moto.client()
    keys = ["a/1", "a/2", "a/b/3", "b/4", "c", "d e", "f+g", "h%i", "j\tk"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    for target in [f"/{bucket}?list-type=2", f"/{bucket}?list-type=2&delimiter=%2F",
                   f"/{bucket}?list-type=2&prefix=a%2F&delimiter=%2F", f"/{bucket}?list-type=2&encoding-type=url",
                   f"/{bucket}?list-type=2&max-keys=2", f"/{bucket}", f"/{bucket}?marker=b&max-keys=3",
                   f"/{bucket}?delimiter=%2F&encoding-type=url", "/"]:
        up = raw.request(moto.url, "GET", target)
        sc = raw.request(sidecar.url, "GET", target)
        assert up.status == sc.status == 200, target
        assert sc.body == up.body, target
    sc3 = sidecar_client = sidecar.client()
    pages = sc3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2})
    assert sorted(o["Key"] for p in pages for o in p.get("Contents", [])) == sorted(keys)
    pages = sidecar_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 3})
    assert sorted(o["Key"] for p in pages for o in p.get("Contents", [])) == sorted(keys)
    assert bucket in [b["Name"] for b in sidecar_client.list_buckets()["Buckets"]]


def test_head_bucket_and_unknown_operations_pass_through(moto, sidecar, bucket):
    for method, target in [("HEAD", f"/{bucket}"), ("GET", f"/{bucket}?location"), ("GET", f"/{bucket}?versioning"),
                           ("GET", f"/{bucket}?acl")]:
        up = raw.request(moto.url, method, target)
        sc = raw.request(sidecar.url, method, target)
        assert sc.status == up.status, target
        if method == "GET":
            assert sc.body == up.body


def test_checksums_after_a_ranged_first_read(moto, sidecar, bucket):
    """Metadata learned from a ranged GET has no whole-object checksums; a later whole-object
    read in checksum mode still gets the upstream's."""
    moto.client().put_object(Bucket=bucket, Key="ck", Body=os.urandom(300_000), ChecksumAlgorithm="SHA256")
    assert raw.request(sidecar.url, "GET", f"/{bucket}/ck", {"Range": "bytes=0-99"}).status == 206
    headers = {"x-amz-checksum-mode": "ENABLED"}
    up = raw.request(moto.url, "GET", f"/{bucket}/ck", headers)
    got = raw.request(sidecar.url, "GET", f"/{bucket}/ck", headers)
    assert got.headers.get("x-amz-checksum-sha256") == up.headers["x-amz-checksum-sha256"]
    assert sidecar.client().get_object(Bucket=bucket, Key="ck", ChecksumMode="ENABLED")["Body"].read() == up.body
