"""What the cache guarantees, observed from outside: boto3 against the sidecar process, and a
recording tap between the sidecar and a real S3 server (moto) showing what reached upstream."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from pathlib import Path

import pytest
import yaml
from botocore.exceptions import ClientError

from support.procs import free_port

MiB = 1024 * 1024


def _get(s3, bucket, key, **kw) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key, **kw)["Body"].read()


def _chunk_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "v2").glob("??/*") if not p.name.endswith(".meta"))


def test_second_read_is_served_without_the_upstream(sidecar, tap, moto_s3, bucket):
    data = os.urandom(3 * MiB + 17)
    moto_s3.put_object(Bucket=bucket, Key="obj", Body=data)
    s3 = sidecar.client()
    tap.clear()
    assert _get(s3, bucket, "obj") == data
    assert [(r.method, r.headers.get("range")) for r in tap.requests()] == [("GET", None)], \
        "a cold whole-object read is one upstream GET, its metadata learned from the answer"
    tap.clear()
    assert _get(s3, bucket, "obj", Range="bytes=5-10") == data[5:11]
    assert tap.requests() == []
    moto_s3.put_object(Bucket=bucket, Key="obj2", Body=data)
    assert _get(s3, bucket, "obj2", Range=f"bytes={MiB + 5}-{2 * MiB}") == data[MiB + 5:2 * MiB + 1]
    assert [(r.method, r.headers.get("range")) for r in tap.requests()] == [("GET", f"bytes={MiB}-{3 * MiB - 1}")], \
        "a cold ranged read is one chunk-aligned upstream GET"
    tap.clear()
    assert _get(s3, bucket, "obj2") == data
    # boto3 reads in checksum mode: the upstream GET's checksum headers, unknown after a ranged
    # first read, are asked once by a whole GET whose body is not read
    gets = [g for g in tap.object_gets(f"/{bucket}/obj2") if "range" in g.headers]
    assert len(tap.object_gets(f"/{bucket}/obj2")) == len(gets) + 1
    assert sorted(g.headers["range"] for g in gets) == [f"bytes=0-{MiB - 1}", f"bytes={3 * MiB}-{len(data) - 1}"]
    assert all(g.headers.get("if-match") for g in gets), "fills of a known version are pinned to its ETag"
    tap.clear()
    for _ in range(3):
        assert _get(s3, bucket, "obj") == data
        assert _get(s3, bucket, "obj", Range="bytes=1000-2500000") == data[1000:2500001]
    assert tap.requests() == [], "hits within the metadata TTL must not touch the upstream at all"


def test_checksum_mode_get_after_a_head_is_one_upstream_get(sidecar, tap, moto_s3, bucket):
    data = os.urandom(2 * MiB + 9)
    moto_s3.put_object(Bucket=bucket, Key="headfirst", Body=data)
    s3 = sidecar.client()
    tap.clear()
    assert s3.head_object(Bucket=bucket, Key="headfirst")["ContentLength"] == len(data)
    got = s3.get_object(Bucket=bucket, Key="headfirst")  # boto3: checksum mode on
    assert got["Body"].read() == data
    direct = moto_s3.get_object(Bucket=bucket, Key="headfirst", ChecksumMode="ENABLED")
    sums = {k: v for k, v in direct["ResponseMetadata"]["HTTPHeaders"].items() if k.startswith("x-amz-checksum-")}
    assert sums and {k: got["ResponseMetadata"]["HTTPHeaders"].get(k) for k in sums} == sums
    # the GET that fills the whole object, pinned to the HEAD's ETag, also tells its checksum headers
    sent = tap.requests(path_contains="headfirst")
    assert [(s.method, s.headers.get("range"), s.headers.get("if-match")) for s in sent] == \
        [("HEAD", None, None), ("GET", None, got["ETag"])]


@pytest.mark.parametrize("size", [MiB - 5, 3 * MiB + 5])
def test_checksum_mode_get_of_an_object_not_kept_fetches_its_bytes_once(make_sidecar, tap, moto_s3, bucket, tmp_path,
                                                                      size):
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "prefix": "nocache/", "cache": False}]}))
    sc = make_sidecar(chunk_size="1MiB", config=str(cfg), readahead_chunks=0, prefetch="false")
    data = os.urandom(size)
    moto_s3.put_object(Bucket=bucket, Key="nocache/o", Body=data, ChecksumAlgorithm="CRC32")
    s3 = sc.client()
    tap.clear()
    etag = s3.head_object(Bucket=bucket, Key="nocache/o")["ETag"]
    got = s3.get_object(Bucket=bucket, Key="nocache/o", ChecksumMode="ENABLED")
    assert got["Body"].read() == data  # (boto3 checks the body against the checksum header)
    assert got["ResponseMetadata"]["HTTPHeaders"].get("x-amz-checksum-crc32")
    # One GET of the whole object, pinned to the ETag: its headers are the checksums the answer
    # replays, its body the bytes, held for the read however soon their fill ends (before: a GET
    # for the headers alone, then a ranged GET for the bytes).
    sent = [(s.method, s.headers.get("range"), s.headers.get("if-match")) for s in tap.requests(path_contains="nocache/o")]
    assert sent == [("HEAD", None, None), ("GET", None, etag)]
    assert sc.admin("/stats")["cache"]["chunks"] == 0


def test_object_not_kept_read_while_another_reads_fill_is_in_flight_costs_no_request(make_sidecar, tap, moto_s3,
                                                                                     bucket, tmp_path):
    from support.tap import Fault

    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "prefix": "nocache/", "cache": False}]}))
    # (an answer held a second is not an outage)
    sc = make_sidecar(chunk_size="1MiB", config=str(cfg), readahead_chunks=0, prefetch="false",
                      upstream_answer_within="20s")
    data = os.urandom(3 * MiB + 5)
    moto_s3.put_object(Bucket=bucket, Key="nocache/o", Body=data, ChecksumAlgorithm="CRC32")
    s3 = sc.client(max_pool_connections=4)
    etag = s3.head_object(Bucket=bucket, Key="nocache/o")["ETag"]
    tap.clear()
    # the upstream holds its answer to the first read's GET: its fill of chunk 0 is in flight
    # when the second read comes
    tap.fault = lambda seen: Fault(delay=1.0) if seen.method == "GET" else None

    def read():
        got = s3.get_object(Bucket=bucket, Key="nocache/o", ChecksumMode="ENABLED")
        return got["Body"].read(), got["ResponseMetadata"]["HTTPHeaders"].get("x-amz-checksum-crc32")

    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(read)
            deadline = time.monotonic() + 10
            while not tap.requests("GET", "nocache/o") and time.monotonic() < deadline:
                time.sleep(0.01)
            second = pool.submit(read)
            got = [first.result(), second.result()]
    finally:
        tap.fault = None
    assert all(body == data and crc for body, crc in got)  # (boto3 checked each body against its crc)
    # The second read joined the first one's GET, for its answer's checksum headers and for its
    # bytes (held for it, though not kept): before, it sent a GET for the headers alone.
    sent = [(s.method, s.headers.get("range"), s.headers.get("if-match")) for s in tap.requests(path_contains="nocache/o")]
    assert sent == [("GET", None, etag)]
    assert sc.admin("/stats")["cache"]["chunks"] == 0


def test_object_not_kept_read_by_a_slow_client_is_fetched_once(make_sidecar, tap, moto_s3, bucket, tmp_path):
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "prefix": "nocache/", "cache": False}]}))
    sc = make_sidecar(chunk_size="1MiB", config=str(cfg), readahead_chunks=0, prefetch="false")
    data = os.urandom(24 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="nocache/slow", Body=data)
    s3 = sc.client()
    tap.clear()
    body = s3.get_object(Bucket=bucket, Key="nocache/slow", Range=f"bytes=0-{len(data) - 1}")["Body"]
    got = body.read(1)
    # The client stalls: its socket fills, and the span's one upstream GET runs on to the end,
    # its later chunks ending (not kept) long before the reader reaches them.
    deadline = time.monotonic() + 30
    while sc.admin("/stats")["upstream"]["bytes"] < len(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    got += body.read()
    assert got == data
    sent = [(s.method, s.headers.get("range")) for s in tap.requests(path_contains="nocache/slow")]
    assert sent == [("GET", f"bytes=0-{len(data) - 1}")], "each byte is fetched once, whenever the client reads it"


@pytest.mark.parametrize("strict", [False, True])
def test_chunks_a_read_fetched_are_sent_as_written_not_read_back(make_sidecar, moto_s3, bucket, strict):
    sc = make_sidecar(chunk_size="1MiB", readahead_chunks=0, prefetch="false", ram_cache_size=0,
                      chunk_verification="every-read" if strict else "when-changed")
    data = os.urandom(6 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="slow", Body=data)
    body = sc.client().get_object(Bucket=bucket, Key="slow", Range=f"bytes=0-{len(data) - 1}")["Body"]
    got = body.read(1)
    # The client stalls: its span's fills all end (kept) before it reaches their chunks.
    deadline = time.monotonic() + 30
    while sc.admin("/stats")["cache"]["chunks"] < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    got += body.read()
    assert got == data
    # Its chunks are sent from the files the fills wrote (their pieces checked as they came),
    # not read back and checked again; strict mode reads every kept chunk back from its file.
    checked = sc.admin("/stats")["cache"]["checked_bytes"]
    assert (checked > 0) if strict else checked == 0


def test_concurrent_readers_share_one_upstream_fetch(sidecar, tap, moto_s3, bucket):
    data = os.urandom(5 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="shared", Body=data)
    tap.clear()
    s3 = sidecar.client(max_pool_connections=16)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        bodies = list(pool.map(lambda _: _get(s3, bucket, "shared"), range(12)))
    assert all(b == data for b in bodies)
    gets = tap.object_gets(f"/{bucket}/shared")
    heads = tap.requests("HEAD", f"/{bucket}/shared")
    assert heads == [] and len(gets) >= 1, "readers wait for the first GET's metadata instead of asking"
    fetched = 0
    for g in gets:
        a, b = g.headers.get("range", f"bytes=0-{len(data) - 1}").removeprefix("bytes=").split("-")
        fetched += int(b) - int(a) + 1
    assert fetched == len(data), f"each byte fetched once, fetched {fetched} for {len(data)}"


def test_partial_cache_fills_only_the_missing_span(sidecar, tap, moto_s3, bucket):
    data = os.urandom(6 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="partial", Body=data)
    s3 = sidecar.client()
    assert _get(s3, bucket, "partial", Range=f"bytes={2 * MiB}-{3 * MiB - 1}") == data[2 * MiB:3 * MiB]
    tap.clear()
    assert _get(s3, bucket, "partial") == data
    gets = tap.object_gets(f"/{bucket}/partial")
    ranges = sorted(g.headers["range"] for g in gets if "range" in g.headers)
    assert len(gets) == len(ranges) + 1  # and one whole GET asking the checksums (boto3 reads in checksum mode)
    # chunks 0-1 and 3-5 are missing; 2 is cached. Two spans, each one request.
    assert ranges == [f"bytes=0-{2 * MiB - 1}", f"bytes={3 * MiB}-{6 * MiB - 1}"]


def test_overwrite_through_sidecar_is_visible_at_once(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(metadata_ttl="indefinite")
    s3 = sc.client()
    s3.put_object(Bucket=bucket, Key="k", Body=b"version one")
    assert _get(s3, bucket, "k") == b"version one"
    assert _get(s3, bucket, "k") == b"version one"
    s3.put_object(Bucket=bucket, Key="k", Body=b"version two, longer")
    assert _get(s3, bucket, "k") == b"version two, longer"
    s3.put_object(Bucket=bucket, Key="src", Body=b"copied bytes")
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "src"})
    assert _get(s3, bucket, "k") == b"copied bytes"
    s3.delete_object(Bucket=bucket, Key="k")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key="k")
    s3.put_object(Bucket=bucket, Key="k", Body=b"three")
    assert _get(s3, bucket, "k") == b"three"
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]})
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key="k")


def test_multipart_completion_invalidates(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(metadata_ttl="indefinite")
    s3 = sc.client()
    s3.put_object(Bucket=bucket, Key="mp", Body=b"old")
    assert _get(s3, bucket, "mp") == b"old"
    part1, part2 = os.urandom(5 * MiB), os.urandom(1234)
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=1, Body=part1)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=2, Body=part2)["ETag"]
    assert _get(s3, bucket, "mp") == b"old", "an upload in progress does not change the object"
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert _get(s3, bucket, "mp") == part1 + part2


def test_external_change_is_seen_after_the_metadata_ttl(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(metadata_ttl=1)
    s3 = sc.client()
    moto_s3.put_object(Bucket=bucket, Key="ttl", Body=b"before")
    assert _get(s3, bucket, "ttl") == b"before"
    moto_s3.put_object(Bucket=bucket, Key="ttl", Body=b"after!")
    assert _get(s3, bucket, "ttl") == b"before", "within the TTL the cached version answers"
    time.sleep(1.2)
    tap.clear()
    assert _get(s3, bucket, "ttl") == b"after!"
    heads = tap.requests("HEAD", f"/{bucket}/ttl")
    assert heads and heads[0].headers.get("if-none-match"), "revalidation is a conditional HEAD"
    tap.clear()
    time.sleep(1.2)
    assert _get(s3, bucket, "ttl") == b"after!"
    assert [s.status for s in tap.requests()] == [304], "an unchanged object costs one 304 and no GET"


def test_restart_keeps_the_cache_warm(make_sidecar, tap, moto_s3, bucket, tmp_path):
    data = os.urandom(2 * MiB + 5)
    moto_s3.put_object(Bucket=bucket, Key="warm", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / "persist", chunk_size="1MiB")
    assert _get(sc.client(), bucket, "warm") == data
    sc.restart()
    assert sc.admin("/stats")["cache"]["restored_chunks"] == 3
    tap.clear()
    assert _get(sc.client(), bucket, "warm") == data
    assert tap.object_gets() == [], "restored chunks are served from disk"
    assert [s.method for s in tap.requests()] == ["HEAD"], "restored metadata is revalidated once"


def test_kill_during_writes_leaves_no_partial_chunks(make_sidecar, moto_s3, bucket, tmp_path):
    data = os.urandom(8 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="crash", Body=data)
    cache = tmp_path / "crash"
    sc = make_sidecar(cache_dir=cache, chunk_size="1MiB")
    s3 = sc.client()
    assert _get(s3, bucket, "crash") == data
    sc.kill()
    leftovers = list((cache / "v2" / "tmp").iterdir())
    sc.start()
    assert not list((cache / "v2" / "tmp").iterdir()), f"temp files are cleared at start ({len(leftovers)})"
    assert _get(sc.client(), bucket, "crash") == data


@pytest.mark.parametrize("verification", ["every-read", "when-changed"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_chunk_files_are_never_served(make_sidecar, tap, moto_s3, bucket, tmp_path, damage, verification):
    data = os.urandom(3 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="rot", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / damage, chunk_size="1MiB", ram_cache_size=0,
                      chunk_verification=verification)
    s3 = sc.client()
    assert _get(s3, bucket, "rot") == data
    assert _get(s3, bucket, "rot") == data  # a verified hit: when-changed remembers the file
    time.sleep(0.05)  # file times have a coarse clock; a change must land on a later tick
    files = _chunk_files(tmp_path / damage)
    assert len(files) == 3
    victim = files[1]
    if damage == "flip":
        with open(victim, "r+b") as f:
            f.seek(12345)
            b = f.read(1)
            f.seek(12345)
            f.write(bytes([b[0] ^ 0x01]))
    elif damage == "truncate":
        os.truncate(victim, 1000)
    else:
        victim.unlink()
    tap.clear()
    assert hashlib.sha256(_get(s3, bucket, "rot")).digest() == hashlib.sha256(data).digest()
    assert len(tap.object_gets(f"/{bucket}/rot")) == 1, "the damaged chunk is refetched"
    if damage != "delete":
        assert sc.admin("/stats")["cache"]["crc_failures"] == 1
    tap.clear()
    assert _get(s3, bucket, "rot") == data
    assert tap.object_gets() == []


def test_byte_budget_is_enforced(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(cache_size="4MiB", chunk_size="1MiB")
    s3 = sc.client()
    blobs = {f"o{i}": os.urandom(MiB + 1000) for i in range(6)}
    for k, v in blobs.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
    for k, v in blobs.items():
        assert _get(s3, bucket, k) == v
        stats = sc.admin("/stats")["cache"]
        assert stats["used_bytes"] <= 4 * MiB
    assert stats["evictions"] > 0
    for k, v in blobs.items():  # evicted objects are simply fetched again
        assert _get(s3, bucket, k) == v


def test_object_larger_than_the_cache_streams_through(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(cache_size="2MiB", chunk_size="1MiB")
    data = os.urandom(5 * MiB + 3)
    moto_s3.put_object(Bucket=bucket, Key="huge", Body=data)
    assert _get(sc.client(), bucket, "huge") == data
    assert sc.admin("/stats")["cache"]["used_bytes"] <= 2 * MiB


def test_sequential_readers_get_readahead(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(chunk_size="1MiB", readahead_chunks=3)
    data = os.urandom(8 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="seq", Body=data)
    s3 = sc.client()
    part = 512 * 1024
    out = b""
    for off in range(0, 2 * MiB, part):  # two chunks read in order, piece by piece
        out += _get(s3, bucket, "seq", Range=f"bytes={off}-{off + part - 1}")
    assert out == data[: 2 * MiB]
    deadline = time.time() + 5
    while time.time() < deadline and sc.admin("/stats")["reads"]["readahead_bytes"] < 3 * MiB:
        time.sleep(0.05)
    assert sc.admin("/stats")["reads"]["readahead_bytes"] >= 3 * MiB
    time.sleep(0.3)
    tap.clear()
    assert _get(s3, bucket, "seq", Range=f"bytes={2 * MiB}-{4 * MiB - 1}") == data[2 * MiB:4 * MiB]
    fetched = [tuple(map(int, g.headers["range"].removeprefix("bytes=").split("-")))
               for g in tap.object_gets(f"/{bucket}/seq")]
    assert not [r for r in fetched if r[0] < 4 * MiB], f"chunks read ahead are already cached: {fetched}"
    assert all(r[0] >= 5 * MiB for r in fetched), "the reader keeps reading ahead of itself"


def test_random_reads_get_no_readahead(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(chunk_size="1MiB", readahead_chunks=3)
    data = os.urandom(8 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="rnd", Body=data)
    s3 = sc.client()
    for off in (5 * MiB, 1 * MiB, 7 * MiB, 3 * MiB):
        assert _get(s3, bucket, "rnd", Range=f"bytes={off}-{off + 100}") == data[off:off + 101]
    assert sc.admin("/stats")["reads"]["readahead_bytes"] == 0


def test_upstream_bytes_are_counted_once(sidecar, moto_s3, bucket):
    data = os.urandom(2 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="count", Body=data)
    before = sidecar.admin("/stats")
    s3 = sidecar.client()
    for _ in range(4):
        assert _get(s3, bucket, "count") == data
    after = sidecar.admin("/stats")
    assert after["upstream"]["bytes"] - before["upstream"]["bytes"] == len(data)
    assert after["reads"]["hit_bytes"] - before["reads"]["hit_bytes"] == 3 * len(data)
    assert after["reads"]["miss_bytes"] - before["reads"]["miss_bytes"] == len(data)


def test_read_overtaken_by_a_write_leaves_no_old_chunks(make_sidecar, tap, moto_s3, bucket, tmp_path):
    """A cold read whose upstream answer (the old version) arrives only after a PUT through the
    sidecar replaced the object is served as it began, but none of it is kept: after a restart
    with the upstream gone, stale-if-error must not bring the replaced version back."""
    from support.tap import Fault

    old, new = os.urandom(300 * 1024), os.urandom(200 * 1024)
    moto_s3.put_object(Bucket=bucket, Key="race", Body=old)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="64KiB", metadata_ttl="indefinite",
                      prefetch="false", readahead_chunks=0)
    s3 = sc.client()
    tap.fault = lambda seen: Fault(answer_delay=1.2) if seen.method == "GET" and "/race" in seen.path else None
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reading = pool.submit(_get, s3, bucket, "race")
            # the upstream has answered with the old version; the tap holds the answer 1.2 s
            deadline = time.monotonic() + 20
            while not any(s.status for s in tap.object_gets(f"/{bucket}/race")):
                assert time.monotonic() < deadline, "the sidecar never asked the upstream"
                time.sleep(0.02)
            s3.put_object(Bucket=bucket, Key="race", Body=new)
            assert reading.result(timeout=30) == old, "a read that began before the write ends on what it began"
    finally:
        tap.fault = None
    # The read is settled (its chunks retired) once its answer is sent, which the client may
    # see complete a moment before the sidecar gets there.
    deadline = time.monotonic() + 10
    while [p for p in (tmp_path / "c" / "v2").glob("??/*") if p.name.endswith(".meta")]:
        assert time.monotonic() < deadline, "the replaced version's chunks and metadata are gone"
        time.sleep(0.02)
    sc.stop()
    gone = make_sidecar(upstream=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path / "c")
    with pytest.raises(ClientError) as err:  # the new version was never read, so nothing may answer
        _get(gone.client(), bucket, "race")
    assert err.value.response["Error"]["Code"] == "ServiceUnavailable"


def test_a_restart_keeps_the_version_stored_last_and_deletes_the_other(make_sidecar, tmp_path):
    """Two versions of one object on disk at start (a kill between storing the new one and
    dropping the old): the catalog's choice, the one stored last, is served while the upstream
    is out of reach, and the other version's files are deleted."""
    from sidecar.cache.policy import LRUPolicy
    from sidecar.cache.store import ChunkStore
    from sidecar.objects import ObjectMeta

    cs, old, new = 64 * 1024, os.urandom(100 * 1024), os.urandom(90 * 1024)
    planted = ChunkStore(tmp_path / "c", chunk_size=cs, capacity=MiB, policy=LRUPolicy())
    planted.open()
    for etag, body in (('"old"', old), ('"new"', new)):
        v = planted.version_for(ObjectMeta("b", "k", etag, len(body), "Tue, 14 Nov 2023 22:13:20 GMT", ()))
        for i in range(planted.layout.count(v.meta.size)):
            w = planted.begin_write(v, i)
            w.write(body[i * cs:(i + 1) * cs])
            assert planted.commit(w)
            w.close()
        time.sleep(0.01)  # stored later
    assert len(_chunk_files(tmp_path / "c")) == 4
    sc = make_sidecar(upstream=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path / "c", chunk_size="64KiB")
    assert _get(sc.client(), "b", "k") == new
    assert len(_chunk_files(tmp_path / "c")) == 2, "the version stored first is gone from disk"


def test_a_version_found_replaced_mid_read_is_retired(make_sidecar, tap, moto_s3, bucket, tmp_path):
    """An object replaced behind the sidecar's back is found out by the next fill (its If-Match
    on the cached ETag fails): the read is answered with the new version after one new lookup,
    and the old version's chunks are dropped, not left to wait for eviction."""
    old, new = os.urandom(3 * 64 * 1024), os.urandom(3 * 64 * 1024)
    moto_s3.put_object(Bucket=bucket, Key="swap", Body=old)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="64KiB", metadata_ttl="indefinite",
                      prefetch="false", readahead_chunks=0)
    s3 = sc.client()
    assert _get(s3, bucket, "swap", Range="bytes=0-99") == old[:100]
    assert len(_chunk_files(tmp_path / "c")) == 1
    moto_s3.put_object(Bucket=bucket, Key="swap", Body=new)  # behind the sidecar's back
    tap.clear()
    tail = 2 * 64 * 1024  # a chunk not cached yet: its fill asks for the old ETag
    assert _get(s3, bucket, "swap", Range=f"bytes={tail}-{tail + 99}") == new[tail:tail + 100]
    assert len(tap.requests("HEAD", "/swap")) == 1, "the catalog was asked once for the new version"
    metas = [p for p in (tmp_path / "c" / "v2").glob("??/*") if p.name.endswith(".meta")]
    assert len(metas) == 1 and len(_chunk_files(tmp_path / "c")) == 1, "only the new version is cached"
    assert _get(s3, bucket, "swap", Range="bytes=0-99") == new[:100]
