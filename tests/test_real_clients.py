"""Real S3 clients pointed at the sidecar, as applications use them: the AWS CLI, s3fs and
pyarrow (which uploads with aws-chunked bodies and trailing checksums)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import s3fs

from support.procs import CHILD_ENV

MiB = 1024 * 1024


def test_awscli_copy_list_and_sync(sidecar, moto_s3, bucket, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = {"a.bin": os.urandom(9 * MiB + 3), "dir/b.txt": b"hello", "dir/odd name+%.txt": b"odd"}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    env = {**CHILD_ENV, "AWS_ENDPOINT_URL": sidecar.url}
    aws = [sys.executable, "-m", "awscli"]

    def run(*args: str) -> str:
        r = subprocess.run(aws + list(args), env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    run("s3", "sync", str(src), f"s3://{bucket}/data")
    listing = run("s3", "ls", "--recursive", f"s3://{bucket}/data/")
    assert "odd name+%.txt" in listing and "a.bin" in listing
    out = tmp_path / "out"
    run("s3", "cp", "--recursive", f"s3://{bucket}/data", str(out))
    run("s3", "cp", "--recursive", f"s3://{bucket}/data", str(tmp_path / "out2"))  # from cache
    for name, data in files.items():
        assert (out / name).read_bytes() == data
        assert (tmp_path / "out2" / name).read_bytes() == data
        assert moto_s3.get_object(Bucket=bucket, Key=f"data/{name}")["Body"].read() == data
    meta = json.loads(run("s3api", "get-object", "--bucket", bucket, "--key", "data/dir/b.txt",
                          "--checksum-mode", "ENABLED", str(tmp_path / "b")))
    assert (tmp_path / "b").read_bytes() == b"hello"
    assert meta["ContentLength"] == 5 and "ChecksumCRC32" in meta, meta


def test_s3fs_ranged_reads_with_if_match(sidecar, tap, moto_s3, bucket):
    data = os.urandom(6 * MiB + 11)
    moto_s3.put_object(Bucket=bucket, Key="s3fs.bin", Body=data)
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": sidecar.url,
                                                                          "region_name": "us-east-1"},
                           default_block_size=MiB, use_listings_cache=False)
    with fs.open(f"{bucket}/s3fs.bin", "rb") as f:
        f.seek(1_500_000)
        assert f.read(2_000_000) == data[1_500_000:3_500_000]
        f.seek(5 * MiB)
        assert f.read() == data[5 * MiB:]
    with fs.open(f"{bucket}/s3fs.bin", "rb") as f:
        assert f.read() == data
    tap.clear()
    with fs.open(f"{bucket}/s3fs.bin", "rb") as f:
        f.seek(777)
        assert f.read(3 * MiB) == data[777:777 + 3 * MiB]
    assert tap.object_gets(f"/{bucket}/s3fs.bin") == [], "s3fs's If-Match ranged reads are served from cache"
    assert all(s.method == "HEAD" or "list" in s.path for s in tap.requests()), tap.requests()
    fs.pipe(f"{bucket}/written-by-s3fs", b"s3fs wrote this")
    assert moto_s3.get_object(Bucket=bucket, Key="written-by-s3fs")["Body"].read() == b"s3fs wrote this"
    assert fs.cat(f"{bucket}/written-by-s3fs") == b"s3fs wrote this"


@pytest.fixture
def arrow_fs(sidecar):
    return pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                             endpoint_override=sidecar.url.removeprefix("http://"), scheme="http")


def test_pyarrow_parquet_round_trip(arrow_fs, moto_s3, bucket, tap):
    table = pa.table({"id": pa.array(range(200_000)), "v": pa.array([float(i) / 7 for i in range(200_000)]),
                      "s": pa.array([f"row-{i}" for i in range(200_000)])})
    # pyarrow uploads with aws-chunked bodies (STREAMING-UNSIGNED-PAYLOAD-TRAILER) and trailing checksums
    pq.write_table(table, f"{bucket}/t/part-0.parquet", filesystem=arrow_fs, row_group_size=50_000)
    pq.write_table(table.slice(0, 1000), f"{bucket}/t/part-1.parquet", filesystem=arrow_fs)
    puts = tap.requests("PUT", f"/{bucket}/t/part-0.parquet")
    assert puts and puts[0].headers.get("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    raw = moto_s3.get_object(Bucket=bucket, Key="t/part-0.parquet")["Body"].read()
    assert raw[:4] == b"PAR1" and raw[-4:] == b"PAR1"
    dataset = ds.dataset(f"{bucket}/t", filesystem=arrow_fs, format="parquet")
    got = dataset.to_table()
    assert got.num_rows == 201_000
    tap.clear()
    again = ds.dataset(f"{bucket}/t", filesystem=arrow_fs, format="parquet").to_table(columns=["id", "s"])
    assert again.num_rows == 201_000
    assert tap.object_gets(f"/{bucket}/t/part-0.parquet") == [], "footer and column reads hit the cache"
    col = pq.read_table(f"{bucket}/t/part-0.parquet", filesystem=arrow_fs, columns=["v"])
    assert col.column("v").to_pylist()[:3] == [0.0, 1 / 7, 2 / 7]


def test_pyarrow_large_streamed_upload(arrow_fs, moto_s3, bucket):
    data = os.urandom(12 * MiB + 5)
    with arrow_fs.open_output_stream(f"{bucket}/big-upload.bin") as f:
        for i in range(0, len(data), MiB):
            f.write(data[i:i + MiB])
    got = moto_s3.get_object(Bucket=bucket, Key="big-upload.bin")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    with arrow_fs.open_input_file(f"{bucket}/big-upload.bin") as f:
        assert f.read() == data


@pytest.mark.parametrize("trailer", [False, True])
def test_signed_streaming_upload_is_reframed(sidecar, moto_s3, bucket, tap, trailer):
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD(-TRAILER) bodies (Java SDKs, minio-go) carry chunk
    signatures chained from the client's signature; they reach the upstream re-framed."""
    import base64
    import zlib

    from support import raw
    from test_awschunked import signed_body

    payload = os.urandom(300_000)
    trailers = [("x-amz-checksum-crc32", base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode())] \
        if trailer else []
    body, _ = signed_body(payload, 64 * 1024, trailers)
    headers = {"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else ""),
               "content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(payload))}
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    tap.clear()
    r = raw.request(sidecar.url, "PUT", f"/{bucket}/streamed", headers, body, sign=False)
    assert r.status == 200, r.body
    sent = tap.requests("PUT", f"/{bucket}/streamed")[0].headers
    # without a trailer the bare payload goes up; being small, it is hashed and signed
    assert sent["x-amz-content-sha256"] == ("STREAMING-UNSIGNED-PAYLOAD-TRAILER" if trailer
                                            else hashlib.sha256(payload).hexdigest())
    assert moto_s3.get_object(Bucket=bucket, Key="streamed")["Body"].read() == payload


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_presigned_urls_work_through_the_sidecar(sidecar, moto_s3, bucket, tap, version):
    """Query-string-authenticated requests: the presign parameters are the client's signature
    for 127.0.0.1 and never go upstream; the sidecar signs its own request."""
    import requests

    moto_s3.put_object(Bucket=bucket, Key="shared/report.csv", Body=b"a,b\n1,2\n")
    s3 = sidecar.client(signature_version=version)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared/report.csv"},
                                    ExpiresIn=300)
    assert ("X-Amz-Signature=" if version == "s3v4" else "Signature=") in url
    tap.clear()
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == b"a,b\n1,2\n"
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "upload.txt"}, ExpiresIn=300)
    assert requests.put(put_url, data=b"uploaded", timeout=10).status_code == 200
    assert moto_s3.get_object(Bucket=bucket, Key="upload.txt")["Body"].read() == b"uploaded"
    assert all("Signature" not in s.path and "AWSAccessKeyId" not in s.path for s in tap.requests())


@pytest.mark.parametrize("size", [1000, 3 * MiB])
def test_unsigned_payload_uploads_like_rclone(sidecar, moto_s3, bucket, tap, size):
    """rclone sends x-amz-content-sha256: UNSIGNED-PAYLOAD with a plain body; large bodies are
    streamed upstream unsigned, small ones hashed and signed."""
    from support import raw

    payload = os.urandom(size)
    tap.clear()
    r = raw.request(sidecar.url, "PUT", f"/{bucket}/rclone-{size}", {"x-amz-content-sha256": "UNSIGNED-PAYLOAD",
                                                                   "Accept-Encoding": "gzip"}, payload, sign=False)
    assert r.status == 200
    sent = tap.requests("PUT", f"/{bucket}/rclone-{size}")[0].headers["x-amz-content-sha256"]
    assert sent == (hashlib.sha256(payload).hexdigest() if size < MiB else "UNSIGNED-PAYLOAD")
    assert moto_s3.get_object(Bucket=bucket, Key=f"rclone-{size}")["Body"].read() == payload
