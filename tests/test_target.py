"""Reading bucket, key and sub-resources from raw request targets."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from urllib.parse import quote

from sidecar.errors import S3Error
from sidecar.s3.target import changes_object_data, is_cacheable_read, parse_target

SUFFIXES = ("localhost", "s3.amazonaws.com")


@given(st.text(min_size=1, max_size=300).filter(lambda k: "\x00" not in k and len(k.encode("utf-8", "surrogatepass")) <= 1024))
def test_any_key_survives_encoding(key):
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return
    t = parse_target("/bkt/" + quote(key, safe="/~"), "127.0.0.1:9400", SUFFIXES)
    assert (t.bucket, t.key) == ("bkt", key)


@pytest.mark.parametrize("raw,host,want", [
    ("/", None, (None, None)),
    ("/b", None, ("b", None)), ("/b/", None, ("b", None)), ("/b/k", None, ("b", "k")),
    ("/b/a//b", None, ("b", "a//b")), ("/b/x/../y", None, ("b", "x/../y")), ("/b/p%2Fq", None, ("b", "p/q")),
    ("/b/p+q", None, ("b", "p+q")), ("/b/k?x=1", None, ("b", "k")),
    ("/k/v", "mybucket.localhost:9400", ("mybucket", "k/v")), ("/", "my.bucket.s3.amazonaws.com", ("my.bucket", None)),
    ("/b/k", "localhost:9400", ("b", "k")), ("/b/k", "127.0.0.1", ("b", "k")),
])
def test_targets(raw, host, want):
    t = parse_target(raw, host, SUFFIXES)
    assert (t.bucket, t.key) == want


def test_presign_parameters_are_removed():
    t = parse_target("/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc&X-Amz-Credential=x&partNumber=2",
                     None, SUFFIXES)
    assert t.presigned and t.query == (("partNumber", "2"),)


@pytest.mark.parametrize("raw,code", [("/b/%FF", "InvalidURI"), ("/b/" + "k" * 1025, "KeyTooLongError"),
                                      ("relative", "InvalidURI")])
def test_bad_targets(raw, code):
    with pytest.raises(S3Error) as e:
        parse_target(raw, None, SUFFIXES)
    assert e.value.code == code


@pytest.mark.parametrize("method,raw,headers,want", [
    ("GET", "/b/k", {}, True), ("HEAD", "/b/k", {}, True), ("GET", "/b/k?partNumber=1", {}, True),
    ("GET", "/b/k?response-content-type=x", {}, True), ("GET", "/b/k?x-id=GetObject", {}, True),
    ("GET", "/b/k?tagging", {}, False), ("GET", "/b/k?versionId=3", {}, False), ("GET", "/b/k?uploadId=1", {}, False),
    ("GET", "/b", {}, False), ("PUT", "/b/k", {}, False),
    ("GET", "/b/k", {"x-amz-server-side-encryption-customer-key": "x"}, False),
])
def test_cacheable_reads(method, raw, headers, want):
    assert is_cacheable_read(method, parse_target(raw, None, SUFFIXES), headers) is want


@pytest.mark.parametrize("method,raw,want", [
    ("PUT", "/b/k", True), ("PUT", "/b/k?x-id=PutObject", True), ("PUT", "/b/k?tagging", False),
    ("PUT", "/b/k?partNumber=1&uploadId=x", False), ("DELETE", "/b/k", True), ("DELETE", "/b/k?uploadId=x", False),
    ("DELETE", "/b/k?tagging", False), ("POST", "/b/k?uploadId=x", True), ("POST", "/b/k?uploads", False),
])
def test_data_changing_writes(method, raw, want):
    assert changes_object_data(method, parse_target(raw, None, SUFFIXES), {}) is want


def test_raw_bytes_that_are_not_utf8_are_an_invalid_uri():
    # aiohttp hands raw non-UTF-8 bytes of a request line over as lone surrogates
    with pytest.raises(S3Error) as e:
        parse_target("/\udcff", None, ("localhost",))
    assert e.value.code == "InvalidURI" and e.value.status == 400
    with pytest.raises(S3Error):
        parse_target("/bkt/k\udcff", None, ("localhost",))
