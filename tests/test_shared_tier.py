"""The shared tier over real HTTP: two sidecars (two pods), moto as the upstream and a second
moto server as the tier's store; faults injected by a tap in front of the tier."""

from __future__ import annotations

import os
import time
import uuid

import pytest

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
        return make_sidecar(shared_tier=f"s3://{tier_bucket}/job", shared_tier_endpoint=tier_tap.url,
                            chunk_size="1MiB", metadata_ttl=60, prefetch="false", readahead_chunks=0, **flags)
    return start


def blocks(tier_moto, tier_bucket) -> list[str]:
    r = tier_moto.client().list_objects_v2(Bucket=tier_bucket)
    return sorted(o["Key"] for o in r.get("Contents", []))


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


def put(moto_s3, bucket: str, key: str, size: int) -> bytes:
    body = os.urandom(size)
    moto_s3.put_object(Bucket=bucket, Key=key, Body=body)
    return body


def test_second_pod_reads_from_the_tier_without_an_upstream_get(pods, moto_s3, bucket, tap, tier_moto,
                                                               tier_bucket):
    body = put(moto_s3, bucket, "data/shard-0", 3 * CHUNK + 1234)
    a, b = pods(), pods()
    assert a.client().get_object(Bucket=bucket, Key="data/shard-0")["Body"].read() == body
    assert len(wait_blocks(tier_moto, tier_bucket, 4)) == 4
    tap.clear()
    assert b.client().get_object(Bucket=bucket, Key="data/shard-0")["Body"].read() == body
    # ranged reads across block boundaries, from the second pod's local cache now
    got = b.client().get_object(Bucket=bucket, Key="data/shard-0", Range=f"bytes={CHUNK - 10}-{2 * CHUNK + 9}")
    assert got["Body"].read() == body[CHUNK - 10:2 * CHUNK + 10]
    to_upstream = tap.requests(path_contains="shard-0")
    assert [s.method for s in to_upstream] == ["HEAD"]  # metadata only: the bytes came from the tier
    assert tier_reads(b, "hit") == 4


def test_overwritten_object_never_gets_the_old_versions_blocks(pods, moto_s3, bucket, tier_moto, tier_bucket):
    old = put(moto_s3, bucket, "obj", 2 * CHUNK)
    a = pods()
    assert a.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == old
    wait_blocks(tier_moto, tier_bucket, 2)
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


def test_corrupt_and_misbound_blocks_are_never_served(pods, moto_s3, bucket, tap, tier_moto, tier_bucket):
    body = put(moto_s3, bucket, "obj", 3 * CHUNK)
    a = pods()
    assert a.client().get_object(Bucket=bucket, Key="obj")["Body"].read() == body
    keys = wait_blocks(tier_moto, tier_bucket, 3)
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
    results = {r: tier_reads(b, r) for r in ("timeout", "error", "breaker_open")}
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
