"""Checksum headers per kind of request: a whole-object GET, a HEAD and a part each get what the
upstream gives that kind of request, also from the cache and after a restart."""

from __future__ import annotations

import os

import pytest
from boto3.s3.transfer import TransferConfig

from support import raw

MiB = 1024 * 1024
CHECKSUM = {"x-amz-checksum-mode": "ENABLED"}


def _sums(reply: raw.Reply) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k.startswith("x-amz-checksum-")}


@pytest.fixture(scope="module")
def multipart_object(moto, tmp_path_factory):
    """A 40 MiB object uploaded as boto3 does by default: 8 MiB parts with CRC32 checksums."""
    s3 = moto.client()
    bucket = "ck-" + os.urandom(4).hex()
    s3.create_bucket(Bucket=bucket)
    path = tmp_path_factory.mktemp("up") / "big"
    data = os.urandom(40 * MiB)
    path.write_bytes(data)
    s3.upload_file(str(path), bucket, "big", Config=TransferConfig(multipart_threshold=8 * MiB,
                                                                   multipart_chunksize=8 * MiB))
    return bucket, "big", data


def _kinds(endpoint: str, bucket: str, key: str) -> dict[str, dict[str, str]]:
    return {
        "GET": _sums(raw.request(endpoint, "GET", f"/{bucket}/{key}", CHECKSUM)),
        "HEAD": _sums(raw.request(endpoint, "HEAD", f"/{bucket}/{key}", CHECKSUM)),
        "GET part 1": _sums(raw.request(endpoint, "GET", f"/{bucket}/{key}?partNumber=1", CHECKSUM)),
        "HEAD part 2": _sums(raw.request(endpoint, "HEAD", f"/{bucket}/{key}?partNumber=2", CHECKSUM)),
    }


def test_multipart_checksums_per_request_kind(moto, make_sidecar, multipart_object):
    bucket, key, data = multipart_object
    want = _kinds(moto.url, bucket, key)
    sc = make_sidecar(metadata_ttl=60, chunk_size="1MiB")
    client = sc.client()  # boto3's defaults: it validates the checksums it is given
    # cold, then cached
    for _ in range(2):
        assert client.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["Body"].read() == data
    assert _kinds(sc.url, bucket, key) == want
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    part = client.get_object(Bucket=bucket, Key=key, PartNumber=1, ChecksumMode="ENABLED")["Body"].read()
    assert part == moto.client().get_object(Bucket=bucket, Key=key, PartNumber=1)["Body"].read()
    # a restart keeps each kind's answer apart
    sc.restart()
    assert _kinds(sc.url, bucket, key) == want
    assert sc.client().get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["Body"].read() == data


@pytest.mark.parametrize("first", ["HEAD", "range", "part"])
def test_whole_get_after_other_kinds_first(moto, make_sidecar, multipart_object, first):
    """The first thing the sidecar learns of the object is a HEAD, a ranged GET or a part; a
    whole-object GET afterwards still gets the upstream GET's checksums, and the reverse."""
    bucket, key, data = multipart_object
    want = _kinds(moto.url, bucket, key)
    sc = make_sidecar(metadata_ttl=60, chunk_size="1MiB")
    client = sc.client()
    if first == "HEAD":
        client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    elif first == "range":
        client.get_object(Bucket=bucket, Key=key, Range="bytes=0-99", ChecksumMode="ENABLED")["Body"].read()
        client.get_object(Bucket=bucket, Key=key, Range="bytes=9000000-9000099")["Body"].read()
    else:
        client.get_object(Bucket=bucket, Key=key, PartNumber=1, ChecksumMode="ENABLED")["Body"].read()
    assert client.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["Body"].read() == data
    assert _kinds(sc.url, bucket, key) == want
    got = _sums(raw.request(sc.url, "GET", f"/{bucket}/{key}", {**CHECKSUM, "Range": "bytes=0-99"}))
    assert not {k for k in got if k != "x-amz-checksum-type"} or got == _sums(
        raw.request(moto.url, "GET", f"/{bucket}/{key}", {**CHECKSUM, "Range": "bytes=0-99"}))
