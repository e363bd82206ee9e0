"""The shared tier over real HTTP: two sidecars (two pods), moto as the upstream and a second
moto server as the tier's store; faults injected by a tap in front of the tier."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from support.tap import Fault

CHUNK = 1024 * 1024


@pytest.fixture
def tier_bucket(tier_moto) -> str:
    name = "tier-" + uuid.uuid4().hex[:12]
    tier_moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def pods(make_sidecar, tier_bucket, tier_tap):
    """Start sidecars sharing one tier (each its own cache directory)."""
    def start(**flags):
        return make_sidecar(**{"shared_tier": f"s3://{tier_bucket}/job", "shared_tier_endpoint": tier_tap.url,
                               "chunk_size": "1MiB", "metadata_ttl": 60, "prefetch": "false", "readahead_chunks": 0,
                               **flags})
    return start


def blocks(tier_moto, tier_bucket) -> list[str]:
    """The tier's blocks (not the records of the version last seen, under ``.../latest/``)."""
    r = tier_moto.client().list_objects_v2(Bucket=tier_bucket)
    return sorted(o["Key"] for o in r.get("Contents", []) if "/latest/" not in o["Key"])


def hints(tier_moto, tier_bucket) -> list[str]:
    r = tier_moto.client().list_objects_v2(Bucket=tier_bucket)
    return sorted(o["Key"] for o in r.get("Contents", []) if "/latest/" in o["Key"])


def wait_blocks(tier_moto, tier_bucket, n: int) -> list[str]:
    """The tier is written in the background: wait (bounded) for ``n`` blocks to land."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = blocks(tier_moto, tier_bucket)
        if len(got) >= n:
            return got
        time.sleep(0.05)
    return blocks(tier_moto, tier_bucket)


def tier_reads(sc, result: str) -> float:
    """Block reads of the tier with this result, as ``sidecar admin stats`` shows them."""
    return float(sc.admin("/stats")["tier"]["reads"].get(result, 0.0))


def request_line(sc, key: str) -> dict:
    """The access log's line for the first GET of ``key`` (lines are written in batches)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [e for e in sc.log_events() if e.get("event") == "request" and e.get("key") == key
                 and e.get("method") == "GET"]
        if lines or time.monotonic() > deadline:
            assert lines, f"no request line for {key}"
            return lines[0]
        time.sleep(0.05)


def put(moto_s3, bucket: str, key: str, size: int) -> bytes:
    body = os.urandom(size)
    moto_s3.put_object(Bucket=bucket, Key=key, Body=body)
    return body


def filled_by_a_pod(pods, moto_s3, bucket: str, tier_moto, tier_bucket, key: str, chunks: int):
    """An object of ``chunks`` whole chunks that a first pod read, and the tier's blocks of it
    once that pod's background writes landed: (its bytes, the block keys)."""
    body = put(moto_s3, bucket, key, chunks * CHUNK)
    assert pods().client().get_object(Bucket=bucket, Key=key)["Body"].read() == body
    return body, wait_blocks(tier_moto, tier_bucket, chunks)


def test_second_pod_reads_from_the_tier_without_an_upstream_get(pods, moto_s3, bucket, tap, tier_moto,
                                                               tier_bucket):
    body = put(moto_s3, bucket, "data/shard-0", 3 * CHUNK + 1234)
    a, b = pods(), pods()
    assert a.client().get_object(Bucket=bucket, Key="data/shard-0")["Body"].read() == body
    assert len(wait_blocks(tier_moto, tier_bucket, 4)) == 4
    tap.clear()
    got = b.client().get_object(Bucket=bucket, Key="data/shard-0")
    assert got["Body"].read() == body
    # ranged reads across block boundaries, from the second pod's local cache now
    got_range = b.client().get_object(Bucket=bucket, Key="data/shard-0", Range=f"bytes={CHUNK - 10}-{2 * CHUNK + 9}")
    assert got_range["Body"].read() == body[CHUNK - 10:2 * CHUNK + 10]
    to_upstream = tap.requests(path_contains="shard-0")
    # metadata only: the bytes came from the tier, and so did the checksum headers of the GET's
    # answer (block 0 carries them), which boto3 (checksum mode on) checked against the body.
    assert [(s.method, "range" in s.headers) for s in to_upstream] == [("HEAD", False)]
    direct = moto_s3.get_object(Bucket=bucket, Key="data/shard-0", ChecksumMode="ENABLED")
    sums = {k: v for k, v in direct["ResponseMetadata"]["HTTPHeaders"].items() if k.startswith("x-amz-checksum-")}
    assert sums and {k: got["ResponseMetadata"]["HTTPHeaders"].get(k) for k in sums} == sums
    assert tier_reads(b, "hit") == 4
    assert b.admin("/stats")["upstream"]["bytes"] == 0
    # the tier's bytes are neither local hits nor upstream misses, in the log and the metrics
    line = request_line(b, "data/shard-0")
    assert (line["outcome"], line["bytes_tier"], line["bytes_upstream"], line["bytes_cache"]) == \
        ("tier", len(body), 0, 0)
    reads = b.admin("/stats")["reads"]
    assert (reads["tier_bytes"], reads["miss_bytes"], reads["hit_bytes"]) == (len(body), 0, CHUNK + 20)


def checksum_headers(answer) -> dict[str, str]:
    return {k: v for k, v in answer["ResponseMetadata"]["HTTPHeaders"].items() if k.startswith("x-amz-checksum-")}


def test_first_pod_reads_with_a_head_and_one_get_that_teaches_the_next_pods(pods, moto_s3, bucket, tap, tier_moto,
                                                                            tier_bucket):
    body = put(moto_s3, bucket, "obj", 3 * CHUNK + 5)
    direct = checksum_headers(moto_s3.get_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED"))
    assert direct
    a = pods()
    tap.clear()
    got = a.client().get_object(Bucket=bucket, Key="obj")  # boto3: checksum mode on
    assert got["Body"].read() == body and checksum_headers(got) == direct
    # The HEAD resolves the version (and names its blocks); the tier misses; then one GET of the
    # whole object, pinned to the HEAD's ETag, fills every chunk and its answer's headers are the
    # GET's checksum headers: no separate request for them.
    sent = tap.requests(path_contains="obj")
    assert [(s.method, "range" in s.headers) for s in sent] == [("HEAD", False), ("GET", False)]
    assert sent[1].headers.get("if-match") == got["ETag"]
    assert tier_reads(a, "miss") == 4
    # block 0 carries those headers to the next pods: a HEAD is all they ask the upstream
    wait_blocks(tier_moto, tier_bucket, 4)
    tap.clear()
    got = pods().client().get_object(Bucket=bucket, Key="obj")
    assert got["Body"].read() == body and checksum_headers(got) == direct
    assert [s.method for s in tap.requests(path_contains="obj")] == ["HEAD"]


def test_object_overwritten_between_the_head_and_the_fill_is_read_at_its_new_version(pods, moto_s3, bucket, tap):
    old = put(moto_s3, bucket, "obj", 2 * CHUNK)
    new = os.urandom(2 * CHUNK + 3)
    a = pods()
    overwritten = []

    def overwrite_before_the_fill(seen):
        # the GET that fills the object: the object changes just before it arrives
        if seen.method == "GET" and "obj" in seen.path and not overwritten:
            overwritten.append(moto_s3.put_object(Bucket=bucket, Key="obj", Body=new)["ETag"])
        return None

    tap.fault = overwrite_before_the_fill
    try:
        got = a.client().get_object(Bucket=bucket, Key="obj")
        body = got["Body"].read()
    finally:
        tap.fault = None
    assert overwritten and old != new
    # never the old version's metadata with the new bytes (nor the reverse)
    assert (body, got["ETag"]) == (new, overwritten[0])
    direct = checksum_headers(moto_s3.get_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED"))
    assert checksum_headers(got) == direct


def post_admin(sc, path: str, body: dict) -> dict:
    req = urllib.request.Request(sc.admin_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("tier", [False, True])
def test_warm_job_learns_the_gets_checksums_from_its_own_get(pods, make_sidecar, moto_s3, bucket, tap, tier):
    body = put(moto_s3, bucket, "w/obj", 2 * CHUNK + 7)
    direct = checksum_headers(moto_s3.get_object(Bucket=bucket, Key="w/obj", ChecksumMode="ENABLED"))
    sc = pods() if tier else make_sidecar(chunk_size="1MiB", prefetch="false", readahead_chunks=0)
    tap.clear()
    job = post_admin(sc, "/warm", {"bucket": bucket, "keys": ["w/obj"]})
    deadline = time.monotonic() + 20
    while (job := sc.admin(f"/warm/{job['id']}"))["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job["state"] == "done", job
    # a HEAD, then one whole-object GET pinned to its ETag: the fill and the checksum headers at once
    assert [(s.method, "range" in s.headers, bool(s.headers.get("if-match")))
            for s in tap.requests(path_contains="w/obj")] == [("HEAD", False, False), ("GET", False, True)]
    tap.clear()
    got = sc.client().get_object(Bucket=bucket, Key="w/obj")  # checksum mode on
    assert got["Body"].read() == body and checksum_headers(got) == direct
    assert tap.requests(path_contains="w/obj") == [], "a warmed object is a plain hit, checksum headers included"


def test_checksum_headers_learned_from_the_tier_are_kept_across_a_restart(pods, moto_s3, bucket, tap, tier_moto,
                                                                          tier_bucket):
    body, _ = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 2)
    b = pods()
    assert b.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == body
    b.restart()
    tap.clear()
    got = b.client().get_object(Bucket=bucket, Key="obj")
    assert got["Body"].read() == body
    assert any(k.startswith("x-amz-checksum-") for k in got["ResponseMetadata"]["HTTPHeaders"])
    # the restart revalidates the metadata (a HEAD); the GET's checksums were kept on disk
    assert [s.method for s in tap.requests(path_contains="obj")] == ["HEAD"]


def test_checksum_headers_come_with_block_0_to_a_ranged_read_too(pods, moto_s3, bucket, tap, tier_moto,
                                                                  tier_bucket):
    body, _ = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 2)
    b = pods()
    tap.clear()
    got = b.client().get_object(Bucket=bucket, Key="obj", Range="bytes=0-99")
    assert got["Body"].read() == body[:100]
    assert not any(k.startswith("x-amz-checksum-") for k in got["ResponseMetadata"]["HTTPHeaders"])
    got = b.client().get_object(Bucket=bucket, Key="obj")
    assert got["Body"].read() == body
    assert any(k.startswith("x-amz-checksum-") for k in got["ResponseMetadata"]["HTTPHeaders"])
    # chunk 0 was local by then, and the checksum headers its block carried were kept with it
    assert [s.method for s in tap.requests(path_contains="obj")] == ["HEAD"]


def test_pod_that_never_saw_the_gets_checksums_writes_none_and_the_reader_asks_upstream(
        pods, moto_s3, bucket, tap, tier_moto, tier_bucket):
    body = put(moto_s3, bucket, "obj", 2 * CHUNK)
    a = pods()
    # chunk by chunk, in ranged reads: pod a learns no whole-object checksums, so block 0 carries none
    for i in range(2):
        got = a.client().get_object(Bucket=bucket, Key="obj", Range=f"bytes={i * CHUNK}-{(i + 1) * CHUNK - 1}")
        assert got["Body"].read() == body[i * CHUNK:(i + 1) * CHUNK]
    wait_blocks(tier_moto, tier_bucket, 2)
    tap.clear()
    b = pods()
    got = b.client().get_object(Bucket=bucket, Key="obj")
    assert got["Body"].read() == body
    assert any(k.startswith("x-amz-checksum-") for k in got["ResponseMetadata"]["HTTPHeaders"])
    # the bytes from the tier; the GET's checksum headers from one GET whose body is not read
    assert [(s.method, "range" in s.headers) for s in tap.requests(path_contains="obj")] == \
        [("HEAD", False), ("GET", False)]
    assert tier_reads(b, "hit") == 2


def test_overwritten_object_never_gets_the_old_versions_blocks(pods, moto_s3, bucket, tier_moto, tier_bucket):
    old, _ = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 2)
    new = put(moto_s3, bucket, "obj", 2 * CHUNK)
    b = pods()
    assert b.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == new
    assert tier_reads(b, "hit") == 0


def _copy_block(tier_moto, tier_bucket, src: str, dst: str, body: bytes | None = None) -> None:
    """Rewrite block ``dst`` with ``src``'s metadata (and ``body``, else ``src``'s bytes)."""
    c = tier_moto.client()
    got = c.get_object(Bucket=tier_bucket, Key=src)
    c.put_object(Bucket=tier_bucket, Key=dst, Body=body if body is not None else got["Body"].read(),
                 Metadata=got["Metadata"])


def read_while_held(pod, bucket: str, key: str, tap, fault) -> tuple[bytes, str]:
    """A GET of ``key`` through ``pod`` while ``fault`` holds the upstream's answers: its bytes
    and ETag."""
    tap.fault = fault
    try:
        got = pod.client().get_object(Bucket=bucket, Key=key)
        return got["Body"].read(), got["ETag"]
    finally:
        tap.fault = None


def chunk_files(pod) -> list[Path]:
    """The chunk files in a pod's cache."""
    return [p for p in (pod.cache_dir / "v2").glob("??/*") if not p.name.endswith(".meta")]


def block_gets(tier_tap, tier_bucket) -> int:
    """Block GETs the tier has been asked for (not reads of the records of the version last seen)."""
    return len([s for s in tier_tap.requests("GET", tier_bucket) if "/latest/" not in s.path])


def head_held_until_block_gets(tier_tap, tier_bucket, n: int, seen_first: list[int], linger: float = 0.0):
    """A fault for the upstream tap: each HEAD of the object waits (at most 10 s) until the tier
    has been asked for ``n`` blocks (and ``linger`` seconds more, for their bytes to come), and
    records how many it had been asked for by then."""
    def hold(seen):
        if seen.method == "HEAD" and "/obj" in seen.path:
            deadline = time.monotonic() + 10
            while block_gets(tier_tap, tier_bucket) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_first.append(block_gets(tier_tap, tier_bucket))
            time.sleep(linger)
        return None
    return hold


def read_with_head_held(pod, bucket: str, tap, tier_tap, tier_bucket,
                        blocks: int = 3) -> tuple[bytes, str, list[int]]:
    """A GET of "obj" through ``pod`` whose upstream HEAD is held until the tier has been asked
    for ``blocks`` blocks (``head_held_until_block_gets``): its bytes, its ETag, and how many
    blocks had been asked for when each HEAD went on."""
    tier_tap.clear()
    asked: list[int] = []
    got, etag = read_while_held(pod, bucket, "obj", tap, head_held_until_block_gets(tier_tap, tier_bucket, blocks,
                                                                                    asked))
    return got, etag, asked


def test_expired_entry_reads_the_tier_while_the_head_revalidates(pods, moto_s3, bucket, tap, tier_moto,
                                                                 tier_bucket, tier_tap):
    body, _ = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 3)
    b = pods(metadata_ttl=1, upstream_answer_within="20s")  # a held HEAD is not an outage (stale-if-error)
    etag = b.client().head_object(Bucket=bucket, Key="obj")["ETag"]  # the version b knows
    time.sleep(1.2)  # ... whose metadata has expired
    tap.clear()
    got, _, asked = read_with_head_held(b, bucket, tap, tier_tap, tier_bucket)
    assert got == body
    # the revalidating HEAD was still unanswered when all three blocks had been asked for
    assert asked == [3]
    assert [(s.method, s.headers.get("if-none-match")) for s in tap.requests(path_contains="obj")] == [("HEAD", etag)]
    assert tier_reads(b, "hit") == 3 and b.admin("/stats")["upstream"]["bytes"] == 0
    line = request_line(b, "obj")
    assert (line["outcome"], line["bytes_tier"]) == ("tier", len(body))


def test_blocks_read_for_an_expired_version_are_dropped_when_the_object_changed(pods, moto_s3, bucket, tap, tier_moto,
                                                                                tier_bucket, tier_tap):
    filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 3)
    b = pods(metadata_ttl=1, upstream_answer_within="20s")  # a held HEAD is not an outage (stale-if-error)
    old_etag = b.client().head_object(Bucket=bucket, Key="obj")["ETag"]
    new = put(moto_s3, bucket, "obj", 2 * CHUNK + 3)  # overwritten upstream, behind b's back
    time.sleep(1.2)
    got, etag, asked = read_with_head_held(b, bucket, tap, tier_tap, tier_bucket)
    assert got == new and etag != old_etag
    assert asked == [3], "the old version's blocks were read while the HEAD was out"
    # ... and went nowhere: neither to the client nor into the pod's cache (only the new
    # version's three chunks are there)
    assert len(chunk_files(b)) == 3
    assert b.admin("/stats")["upstream"]["bytes"] == len(new)


def wait_hint(tier_moto, tier_bucket, etag: str) -> dict:
    """The record of the version last seen, once it names ``etag`` (written in the background)."""
    deadline = time.monotonic() + 20
    while True:
        found = hints(tier_moto, tier_bucket)
        if found:
            meta = tier_moto.client().head_object(Bucket=tier_bucket, Key=found[0])["Metadata"]
            if base64.urlsafe_b64encode(etag.encode()).decode() in meta.get("sidecar-binding", ""):
                return meta
        assert time.monotonic() < deadline, f"no record of {etag} in the tier"
        time.sleep(0.05)


def test_first_read_of_a_pod_reads_the_tier_while_its_head_is_out(pods, moto_s3, bucket, tap, tier_moto,
                                                                   tier_bucket, tier_tap):
    body, _ = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 3)
    etag = moto_s3.head_object(Bucket=bucket, Key="obj")["ETag"]
    wait_hint(tier_moto, tier_bucket, etag)  # the first pod recorded the version it resolved
    b = pods(upstream_answer_within="20s")  # a pod that never saw the object
    tap.clear()
    got, _, asked = read_with_head_held(b, bucket, tap, tier_tap, tier_bucket)
    assert got == body
    # its HEAD was still unanswered when all three blocks had been asked for: the record of the
    # version last seen was the guess, and the pod's own HEAD the verdict
    assert asked == [3]
    assert [s.method for s in tap.requests(path_contains="obj")] == ["HEAD"]
    tier = b.admin("/stats")["tier"]
    assert (tier["hints"].get("hit"), tier["speculations"], tier["reads"].get("hit")) == \
        (1.0, {"hint/confirmed": 1.0}, 3.0)
    assert b.admin("/stats")["upstream"]["bytes"] == 0
    # the chunks kept carry the object's own headers (not the record's ETag and size alone):
    # a restarted pod answers with them
    b.restart()
    head, direct = b.client().head_object(Bucket=bucket, Key="obj"), moto_s3.head_object(Bucket=bucket, Key="obj")
    assert [head.get(h) for h in ("ETag", "ContentType", "LastModified")] == \
        [direct.get(h) for h in ("ETag", "ContentType", "LastModified")]


def test_concurrent_first_reads_of_one_object_share_one_guess(pods, moto_s3, bucket, tap, tier_moto, tier_bucket):
    import concurrent.futures

    body, _ = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 3)
    wait_hint(tier_moto, tier_bucket, moto_s3.head_object(Bucket=bucket, Key="obj")["ETag"])
    b = pods()
    c = b.client(max_pool_connections=8)
    tap.clear()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda _: c.get_object(Bucket=bucket, Key="obj")["Body"].read(), range(6)))
    assert all(g == body for g in got)
    tier = b.admin("/stats")["tier"]
    # one record read and at most one speculation for the six; each block read once
    assert tier["hints"].get("hit", 0) <= 1 and sum(tier["speculations"].values()) <= 1
    assert tier["reads"].get("hit") == 3.0 and b.admin("/stats")["upstream"]["bytes"] == 0
    assert [s.method for s in tap.requests(path_contains="obj")] == ["HEAD"]


def test_a_record_naming_another_version_never_serves_its_bytes(pods, moto_s3, bucket, tap, tier_moto,
                                                                 tier_bucket, tier_tap):
    filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 3)
    old_etag = moto_s3.head_object(Bucket=bucket, Key="obj")["ETag"]
    wait_hint(tier_moto, tier_bucket, old_etag)
    new = put(moto_s3, bucket, "obj", 2 * CHUNK + 3)  # overwritten upstream: the record is stale
    b = pods(upstream_answer_within="20s")
    tier_tap.clear()
    asked: list[int] = []
    fault = head_held_until_block_gets(tier_tap, tier_bucket, 3, asked, linger=0.5)
    got, etag = read_while_held(b, bucket, "obj", tap, fault)
    assert got == new and etag != old_etag
    assert asked == [3], "the recorded version's blocks were read while the HEAD was out"
    # ... and went nowhere: neither to the client nor into the pod's cache; the waste is counted
    assert len(chunk_files(b)) == 3
    tier = b.admin("/stats")["tier"]
    assert tier["speculations"] == {"hint/dropped": 1.0}
    assert 0 < tier["speculative_dropped_bytes"] <= 3 * CHUNK
    assert b.admin("/stats")["upstream"]["bytes"] == len(new)
    # the pod recorded the version it resolved, for the next pods
    wait_hint(tier_moto, tier_bucket, etag)


def test_a_revalidation_that_finds_a_new_version_records_it_for_the_next_pods(pods, moto_s3, bucket, tap, tier_moto,
                                                                             tier_bucket, tier_tap):
    filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 3)
    wait_hint(tier_moto, tier_bucket, moto_s3.head_object(Bucket=bucket, Key="obj")["ETag"])
    a = pods(metadata_ttl=1)
    a.client().head_object(Bucket=bucket, Key="obj")  # a knows the recorded version ...
    new = put(moto_s3, bucket, "obj", 2 * CHUNK + 3)  # ... which is then overwritten upstream
    time.sleep(1.2)
    got = a.client().get_object(Bucket=bucket, Key="obj")  # a's HEAD revalidates: a new version
    assert got["Body"].read() == new
    # a's revalidation, not only a pod's first read, records the version it found
    wait_hint(tier_moto, tier_bucket, got["ETag"])
    wait_blocks(tier_moto, tier_bucket, 3 + 3)  # and a wrote the new version's blocks
    b = pods(upstream_answer_within="20s")
    got, _, asked = read_with_head_held(b, bucket, tap, tier_tap, tier_bucket)
    assert got == new and asked == [3]
    # so the next pod's guess, read while its HEAD was out, is the new version: none of it wasted
    tier = b.admin("/stats")["tier"]
    assert (tier["speculations"], tier["speculative_dropped_bytes"]) == ({"hint/confirmed": 1.0}, 0)
    assert b.admin("/stats")["upstream"]["bytes"] == 0


def test_forged_record_is_ignored_with_a_shared_key(pods, moto_s3, bucket, tier_moto, tier_bucket, tmp_path):
    key_file = tmp_path / "tier.key"
    key_file.write_text("job-secret-1")
    body = put(moto_s3, bucket, "obj", 2 * CHUNK)
    a = pods(shared_tier_hmac_key_file=key_file)
    assert a.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == body
    wait_blocks(tier_moto, tier_bucket, 2)
    record = wait_hint(tier_moto, tier_bucket, moto_s3.head_object(Bucket=bucket, Key="obj")["ETag"])
    assert record.get("sidecar-binding-hmac")  # pods with the key sign their records
    # someone who can write the tier bucket, without the key, names another version
    forged = record["sidecar-binding"].rsplit(";e=", 1)[0] + ";e=" + \
        base64.urlsafe_b64encode(b'"0123456789abcdef0123456789abcdef"').decode() + f";s={2 * CHUNK}"
    from sidecar.cache.chunkfile import crc32c

    c = tier_moto.client()
    c.put_object(Bucket=tier_bucket, Key=hints(tier_moto, tier_bucket)[0], Body=b"",
                 Metadata={"sidecar-binding": forged, "sidecar-binding-crc": f"{crc32c(forged.encode()):08x}",
                           "sidecar-binding-hmac": record["sidecar-binding-hmac"]})
    b = pods(shared_tier_hmac_key_file=key_file)
    assert b.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == body
    tier = b.admin("/stats")["tier"]
    assert (tier["hints"].get("unsigned"), tier["speculations"]) == (1.0, {})
    assert tier["reads"].get("hit") == 2.0  # blocks read after the pod's own HEAD, as without a record


def test_speculative_blocks_evict_nothing_before_the_verdict(pods, moto_s3, bucket, tap, tier_moto, tier_bucket,
                                                             tier_tap):
    filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 3)
    b = pods(metadata_ttl=1, cache_size="4MiB", ram_cache_size=0, upstream_answer_within="20s")
    useful = put(moto_s3, bucket, "useful", 2 * CHUNK)
    assert b.client().get_object(Bucket=bucket, Key="useful")["Body"].read() == useful
    b.client().head_object(Bucket=bucket, Key="obj")  # the version b knows: three chunks
    new = put(moto_s3, bucket, "obj", CHUNK // 2)  # overwritten upstream with one of half a chunk
    time.sleep(1.2)
    tier_tap.clear()
    asked: list[int] = []
    tap.fault = head_held_until_block_gets(tier_tap, tier_bucket, 3, asked)
    try:
        assert b.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == new
    finally:
        tap.fault = None
    assert asked == [3]
    # three blocks of a version the upstream then denied were read into a 4 MiB cache holding
    # two useful chunks: they took no room from them
    assert b.admin("/stats")["cache"]["evictions"] == 0
    before = b.admin("/stats")["upstream"]["bytes"]
    b.client().get_object(Bucket=bucket, Key="useful", Range="bytes=0-1000")["Body"].read()
    assert b.admin("/stats")["upstream"]["bytes"] == before


def test_object_not_kept_costs_a_head_and_one_get_and_nothing_of_the_tier(pods, moto_s3, bucket, tap, tier_tap,
                                                                          tier_bucket, tmp_path):
    import yaml

    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "prefix": "nocache/", "cache": False}]}))
    b = pods(config=str(cfg))
    body = put(moto_s3, bucket, "nocache/obj", 3 * CHUNK + 7)
    tap.clear()
    tier_tap.clear()
    for _ in range(2):
        assert b.client().get_object(Bucket=bucket, Key="nocache/obj")["Body"].read() == body
    sent = [(s.method, s.headers.get("range")) for s in tap.requests(path_contains="nocache/obj")]
    # the HEAD resolves the version; one GET of the whole object tells the checksums and
    # carries the bytes (before: HEAD, a GET for the headers alone, then a ranged GET); the
    # second read, checksums known, is one GET
    assert sent[:2] == [("HEAD", None), ("GET", None)] and [m for m, _ in sent[2:]] == ["GET"]
    # blocks of objects not kept are never written to the tier, so never asked of it either
    assert block_gets(tier_tap, tier_bucket) == 0
    assert [s.method for s in tier_tap.requests() if s.method == "PUT"] == []


def test_version_served_stale_if_error_is_never_read_from_the_tier(pods, moto_s3, bucket, tap, tier_moto, tier_bucket):
    filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 2)
    b = pods(metadata_ttl=1)
    b.client().head_object(Bucket=bucket, Key="obj")  # the version b resolved, 1 s ago
    time.sleep(1.2)
    tap.fault = lambda seen: Fault(drop=True)  # the upstream is out of reach
    try:
        with pytest.raises(ClientError) as got:
            b.client().get_object(Bucket=bucket, Key="obj")["Body"].read()
    finally:
        tap.fault = None
    # stale-if-error serves what the pod holds of a version it resolved before; blocks of the
    # shared tier are only for a version resolved within its metadata TTL: not these
    assert got.value.response["Error"]["Code"] == "ServiceUnavailable"


def test_corrupt_and_misbound_blocks_are_never_served(pods, moto_s3, bucket, tap, tier_moto, tier_bucket):
    body, keys = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 3)
    by_index = {int(k.rsplit("/", 1)[1]): k for k in keys}
    # block 0: bytes flipped under intact metadata; block 1: block 2's bytes and metadata
    # under block 1's key (bytes and binding agree, but bound to another chunk)
    flipped = bytearray(body[:CHUNK])
    flipped[1000] ^= 0xFF
    _copy_block(tier_moto, tier_bucket, by_index[0], by_index[0], bytes(flipped))
    _copy_block(tier_moto, tier_bucket, by_index[2], by_index[1])
    tap.clear()
    b = pods()
    assert b.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == body
    assert tier_reads(b, "corrupt") == 1
    assert tier_reads(b, "misbound") == 1
    assert tier_reads(b, "hit") == 1
    # chunks 0 and 1 came from the upstream in one ranged GET (one request per missing span)
    gets = [s for s in tap.requests("GET", "obj") if "range" in s.headers]
    assert [s.headers["range"] for s in gets] == [f"bytes=0-{2 * CHUNK - 1}"]


def test_block_corrupt_part_way_keeps_its_verified_head(pods, moto_s3, bucket, tap, tier_moto, tier_bucket):
    body, keys = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "obj", 2)
    # a byte flipped in block 0's third piece (pieces of 256 KiB in 1 MiB blocks)
    flipped = bytearray(body[:CHUNK])
    flipped[600_000] ^= 0xFF
    _copy_block(tier_moto, tier_bucket, keys[0], keys[0], bytes(flipped))
    tap.clear()
    b = pods()
    assert b.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == body
    assert (tier_reads(b, "corrupt"), tier_reads(b, "hit")) == (1, 1)
    # the two verified pieces were kept: the upstream is asked for the rest of chunk 0 only
    head = 2 * 256 * 1024
    gets = [s for s in tap.requests("GET", "obj") if "range" in s.headers]
    assert [s.headers["range"] for s in gets] == [f"bytes={head}-{CHUNK - 1}"]
    line = request_line(b, "obj")
    assert (line["outcome"], line["bytes_tier"], line["bytes_upstream"]) == ("miss", CHUNK + head, CHUNK - head)
    # and chunk 0, put together from both, is whole in the local cache
    tap.clear()
    assert b.client().get_object(Bucket=bucket, Key="obj", Range=f"bytes=0-{CHUNK - 1}")["Body"].read() == body[:CHUNK]
    assert tap.requests("GET", "obj") == []


def bucket_tokens(sc) -> float:
    line = next(li for li in sc.metrics_text().splitlines() if li.startswith("sidecar_bandwidth_tokens_bytes "))
    return float(line.split()[1])


def test_readahead_from_the_tier_waits_for_the_bandwidth_bucket(pods, moto_s3, bucket, tier_moto, tier_bucket):
    body, _ = filled_by_a_pod(pods, moto_s3, bucket, tier_moto, tier_bucket, "seq", 4)
    b = pods(readahead_chunks=2, bandwidth_cap="64KiB")
    c = b.client()
    full = bucket_tokens(b)
    for i in range(2):  # a sequential reader: chunks 2 and 3 are read ahead, at background priority
        got = c.get_object(Bucket=bucket, Key="seq", Range=f"bytes={i * CHUNK}-{(i + 1) * CHUNK - 1}")
        assert got["Body"].read() == body[i * CHUNK:(i + 1) * CHUNK]
    # the demand reads from the tier spent nothing; the read-ahead blocks take the bucket's tokens,
    # a whole block at a time: block 2 at once, into debt (it is 16 bursts of 64 KiB), and block 3
    # waits some 15 s until that debt is paid
    deadline = time.monotonic() + 10
    while bucket_tokens(b) >= 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert full > 0 > bucket_tokens(b)
    assert tier_reads(b, "hit") < 4
    # a client reading on joins the read-ahead at demand priority: never held by the bucket
    got = c.get_object(Bucket=bucket, Key="seq", Range=f"bytes={2 * CHUNK}-")
    assert got["Body"].read() == body[2 * CHUNK:]
    assert tier_reads(b, "hit") == 4 and b.admin("/stats")["upstream"]["bytes"] == 0


def test_unsigned_blocks_refused_with_a_shared_key(pods, moto_s3, bucket, tier_moto, tier_bucket, tmp_path):
    key_file = tmp_path / "tier.key"
    key_file.write_text("job-secret-1")
    body = put(moto_s3, bucket, "obj", CHUNK)
    a = pods()  # writes blocks without a key: an intruder's view
    assert a.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == body
    wait_blocks(tier_moto, tier_bucket, 1)
    b = pods(shared_tier_hmac_key_file=key_file)
    assert b.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == body
    assert tier_reads(b, "unsigned") == 1
    wait_blocks(tier_moto, tier_bucket, 1)
    # pods with the key sign what they write, and read what each other wrote
    c = pods(shared_tier_hmac_key_file=key_file)
    other = put(moto_s3, bucket, "other", CHUNK + 5)
    assert c.client().get_object(Bucket=bucket, Key="other")["Body"].read() == other
    wait_blocks(tier_moto, tier_bucket, 3)
    d = pods(shared_tier_hmac_key_file=key_file)
    assert d.client().get_object(Bucket=bucket, Key="other")["Body"].read() == other
    assert (tier_reads(d, "hit"), tier_reads(d, "unsigned")) == (2, 0)


@pytest.mark.parametrize("fault", ["down", "silent"])
def test_tier_outage_falls_through_to_the_upstream(pods, moto_s3, bucket, tier_tap, fault):
    bodies = {f"o{i}": put(moto_s3, bucket, f"o{i}", CHUNK // 2) for i in range(6)}
    b = pods(shared_tier_read_within="300ms")
    tier_tap.fault = (lambda s: Fault(drop=True)) if fault == "down" else (lambda s: Fault(delay=30))
    try:
        c = b.client()
        t0 = time.monotonic()
        for k, v in bodies.items():
            assert c.get_object(Bucket=bucket, Key=k)["Body"].read() == v
        elapsed = time.monotonic() - t0
    finally:
        tier_tap.fault = None
    # the tier is asked for blocks and, by a first read, for the record of the version last seen
    asked = [b.admin("/stats")["tier"][kind] for kind in ("reads", "hints")]
    results = {r: sum(float(a.get(r, 0.0)) for a in asked) for r in ("timeout", "error", "breaker_open")}
    assert results["breaker_open"] >= 1  # after a few failures the tier is not asked at all
    failed = results["timeout"] + results["error"]
    assert 1 <= failed <= 3
    print(f"tier {fault}: 6 reads in {elapsed:.2f} s, {results}")


# --- the simulator's sizing mode (sidecar/sim/tier.py): pure logic ---------------------------------

def _workload(keys: list[str], size: int = 100):
    from sidecar.sim.replay import Workload
    from sidecar.sim.trace import Trace

    return Workload.build(Trace([float(i) for i in range(len(keys))], keys, [size] * len(keys)))


def test_sim_pods_pay_once_with_a_tier_that_holds_the_dataset():
    from sidecar.cache.policy import LRUPolicy
    from sidecar.sim.tier import replay_pods

    w = _workload([f"k{i % 50}" for i in range(400)])  # 50 objects, each read 8 times
    for pods in (1, 2, 4):
        without, _ = replay_pods(w, pods, 1000, 0, LRUPolicy)  # local caches hold 10 of 50
        with_tier, tier_hits = replay_pods(w, pods, 1000, 50 * 100, LRUPolicy)
        assert with_tier == 50 * 100  # the dataset, once, whatever the number of pods
        assert without >= pods * 50 * 100
        assert with_tier + tier_hits == without


def test_sim_tier_expires_first_written_blocks_first():
    from sidecar.sim.tier import FIFOPolicy

    p = FIFOPolicy()
    for k in "abc":
        p.admit(k, 1, 0.0)
    p.touch("a", 1.0)  # a read does not extend a block's life
    assert p.victim() == "a"


def test_write_queue_full_drops_and_counts():
    import asyncio

    from sidecar.cache.tier import SharedTier
    from sidecar.objects import ObjectMeta
    from sidecar.telemetry import Metrics

    async def go() -> Metrics:
        m = Metrics()
        t = SharedTier("s3://tier-bucket/p", chunk_size=CHUNK, upstream_id="u", metrics=m, write_queue=2)
        t._client = object()  # started, but no writer drains the queue
        meta = ObjectMeta.from_headers("b", "k", [("etag", '"e"'), ("content-length", str(4 * CHUNK))])
        for i in range(4):
            t.offer(meta, i, lambda: b"")
        t.offer(meta, 0, lambda: b"")  # already queued: not offered twice
        return m

    m = asyncio.run(go())
    assert m.value("sidecar_tier_writes_total", {"result": "dropped"}) == 2
    assert m.value("sidecar_tier_write_queue_blocks") == 2


def test_unreadable_hmac_key_file_is_a_config_error(tmp_path):
    from sidecar.cache.tier import SharedTier
    from sidecar.config import ConfigError, settings_for_tests
    from sidecar.telemetry import Metrics

    settings = settings_for_tests(shared_tier="s3://tier-bucket/p", shared_tier_hmac_key_file=str(tmp_path / "none"))
    with pytest.raises(ConfigError):
        SharedTier.from_settings(settings, Metrics())


# --- block bindings (sidecar/cache/tier.py): pure logic ------------------------------------------


@given(st.integers(min_value=0, max_value=5 * 2**30))
def test_a_block_has_at_most_16_pieces_of_whole_64k_units(length):
    from sidecar.cache.tier import MAX_PIECES, MIN_PIECE, piece_size

    p = piece_size(length)
    assert p % 65536 == 0 and p >= MIN_PIECE
    assert -(-length // p) <= MAX_PIECES


_b64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_:", min_size=1,
               max_size=60)
_sums = st.lists(st.tuples(st.sampled_from(["x-amz-checksum-crc32", "x-amz-checksum-crc64nvme",
                                            "x-amz-checksum-sha256", "x-amz-checksum-type"]), _b64), max_size=3)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3 * 65536 + 7), index=st.integers(0, 3), sums=st.none() | _sums.map(tuple),
       key=st.text(max_size=40), etag=st.text(min_size=1, max_size=40))
def test_a_binding_names_one_block_and_describes_its_bytes(data, index, sums, key, etag):
    from sidecar.cache.chunkfile import crc32c
    from sidecar.cache.tier import BlockNaming, BlockRejected, piece_crcs
    from sidecar.objects import ObjectMeta

    naming = BlockNaming("job", 65536 * 4, "http://up")
    meta = ObjectMeta("bkt", key, etag, 10 * 65536 * 4, "", (), get_checksums=sums)
    line = naming.binding(meta, index, data)
    assert line.isascii() and line.isprintable()
    got = naming.parse(line, meta, index, len(data))
    assert got.crc == crc32c(data) and got.pieces == piece_crcs(data, got.piece)
    assert got.checksums == (sums if index == 0 else None)  # only block 0 carries them
    for other in (dataclasses.replace(meta, etag=etag + "x"), dataclasses.replace(meta, key=key + "/"),
                  dataclasses.replace(meta, size=meta.size + 1)):
        with pytest.raises(BlockRejected, match="misbound"):
            naming.parse(line, other, index, len(data))
    with pytest.raises(BlockRejected, match="misbound"):
        naming.parse(line, meta, index + 1, len(data))
    with pytest.raises(BlockRejected):  # pieces cut short: the binding no longer describes the block
        naming.parse(line.split(";g=")[0][:-8] + (";g=" + line.split(";g=")[1] if ";g=" in line else ""),
                     meta, index, len(data))


@settings(max_examples=60, deadline=None)
@given(key=st.text(min_size=1, max_size=40), etag=st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                          min_size=1, max_size=40),
       size=st.integers(0, 2**40), other=st.text(min_size=1, max_size=40))
def test_a_version_record_names_one_object_and_is_read_back_as_it_was_written(key, etag, size, other):
    from sidecar.cache.tier import BLOCK_FORMAT, BlockNaming, BlockRejected
    from sidecar.objects import ObjectMeta

    naming = BlockNaming("job", 2**20, "http://up")
    meta = ObjectMeta("bkt", key, etag, size, "Mon, 01 Jan 2024 00:00:00 GMT", (("content-type", "x/y"),))
    line = naming.hint_binding(meta)
    assert line.isascii() and line.isprintable()
    got = naming.parse_hint(line, "bkt", key)
    assert (got.bucket, got.key, got.etag, got.size) == ("bkt", key, etag, size) and got.same_version(meta)
    assert (got.headers, got.last_modified) == ((), "")  # the pod's own HEAD tells those
    # the record of one object is never taken for another's, nor for another bucket's
    if other != key:
        with pytest.raises(BlockRejected, match="misbound"):
            naming.parse_hint(line, "bkt", other)
        assert naming.hint_key("bkt", key) != naming.hint_key("bkt", other)
    with pytest.raises(BlockRejected, match="misbound"):
        naming.parse_hint(line, "bkt2", key)
    # a record lives beside the blocks, never under a block's name
    assert naming.hint_key("bkt", key).split("/")[2] == "latest"
    assert naming.key(meta, 0).split("/")[2] != "latest"
    # a block's binding is not a record, nor a record cut short
    with pytest.raises(BlockRejected):
        naming.parse_hint(naming.binding(meta, 0, b"x"), "bkt", key)
    with pytest.raises(BlockRejected):
        naming.parse_hint(line.rsplit(";s=", 1)[0], "bkt", key)
    assert BLOCK_FORMAT not in line.split(";")[0]
