"""The sidecar on its embedded default upstream (a local directory), driven by boto3."""

from __future__ import annotations

import os
import time

import pytest

from support.procs import Sidecar
from support import raw

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def local(tmp_path_factory, logs_dir):
    root = tmp_path_factory.mktemp("upstream")
    (root / "data").mkdir()
    (root / "data" / "hand-placed.txt").write_bytes(b"put here by hand\n")
    sc = Sidecar(f"file://{root}", tmp_path_factory.mktemp("cache"), logs_dir, chunk_size="1MiB")
    yield sc, root
    sc.stop()


def test_directory_files_are_objects(local):
    sc, root = local
    s3 = sc.client()
    assert s3.get_object(Bucket="data", Key="hand-placed.txt")["Body"].read() == b"put here by hand\n"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="data")["Contents"]] == ["hand-placed.txt"]


def test_write_read_and_cache(local):
    sc, root = local
    s3 = sc.client()
    data = os.urandom(3 * MiB + 1)
    s3.put_object(Bucket="data", Key="dir/obj.bin", Body=data, Metadata={"m": "1"})
    assert (root / "data" / "dir" / "obj.bin").read_bytes() == data
    before = sc.admin("/stats")
    for _ in range(3):
        r = s3.get_object(Bucket="data", Key="dir/obj.bin")
        assert r["Body"].read() == data and r["Metadata"] == {"m": "1"}
    after = sc.admin("/stats")
    assert after["upstream"]["bytes"] - before["upstream"]["bytes"] == len(data)
    s3.delete_object(Bucket="data", Key="dir/obj.bin")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="data", Key="dir/obj.bin")


def test_part_reads_are_served_from_the_cache(local):
    sc, _ = local
    s3 = sc.client()
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(777)]
    up = s3.create_multipart_upload(Bucket="data", Key="mp.bin")
    done = [{"PartNumber": i, "ETag": s3.upload_part(Bucket="data", Key="mp.bin", UploadId=up["UploadId"],
                                                      PartNumber=i, Body=p)["ETag"]}
            for i, p in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket="data", Key="mp.bin", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": done})
    assert s3.get_object(Bucket="data", Key="mp.bin")["Body"].read() == b"".join(parts)
    before = sc.admin("/stats")["upstream"]["bytes"]
    for i, p in enumerate(parts, 1):
        r = s3.get_object(Bucket="data", Key="mp.bin", PartNumber=i)
        assert r["Body"].read() == p
        assert r["PartsCount"] == 3 and r["ResponseMetadata"]["HTTPStatusCode"] == 206
        start = sum(len(x) for x in parts[: i - 1])
        assert r["ContentRange"] == f"bytes {start}-{start + len(p) - 1}/{sum(map(len, parts))}"
    assert sc.admin("/stats")["upstream"]["bytes"] == before, "parts come from cached chunks"
    bad = raw.request(sc.url, "GET", "/data/mp.bin?partNumber=4")
    assert bad.status == 416 and b"InvalidPartNumber" in bad.body


@pytest.mark.parametrize("key", ["a//b", "x/../y", "../../etc/passwd", "trailing/", "p%2Fq", "tab\tkey"])
def test_odd_keys_stay_inside_the_root(local, key):
    sc, root = local
    s3 = sc.client()
    s3.put_object(Bucket="data", Key=key, Body=key.encode())
    assert s3.get_object(Bucket="data", Key=key)["Body"].read() == key.encode()
    assert not (root.parent / "etc").exists()
    assert key in [o["Key"] for o in s3.list_objects_v2(Bucket="data")["Contents"]]


def test_simulated_distance(tmp_path, logs_dir):
    (tmp_path / "up" / "b").mkdir(parents=True)
    (tmp_path / "up" / "b" / "k").write_bytes(os.urandom(2 * MiB))
    sc = Sidecar(f"file://{tmp_path / 'up'}?latency=50ms&bandwidth=20MiB", tmp_path / "c", logs_dir)
    try:
        s3 = sc.client()
        t0 = time.perf_counter()
        s3.get_object(Bucket="b", Key="k")["Body"].read()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        s3.get_object(Bucket="b", Key="k")["Body"].read()
        warm = time.perf_counter() - t0
        assert cold >= 0.05 + 0.09, cold  # a request's latency plus 2 MiB at 20 MiB/s
        assert warm < cold
    finally:
        sc.stop()
