"""Prefetch from a cold start in the running daemon: boto3 -> sidecar -> tap -> moto.

A fresh sidecar with the shipped model sees a client list a sharded dataset and read its
shards in order: it must fetch shards nobody has asked for yet ahead of the reader.
"""

from __future__ import annotations

import os
import time

from support.observe import fetched_keys, metric, wait_until

SHARDS = 60
SHARD_BYTES = 128 * 1024


def test_listed_dataset_read_in_order_is_prefetched_from_cold(make_sidecar, tap, moto_s3, bucket):
    names = [f"ds/shard-{i:05d}.tar" for i in range(SHARDS)]
    blobs = {}
    for n in names:
        blobs[n] = os.urandom(SHARD_BYTES)
        moto_s3.put_object(Bucket=bucket, Key=n, Body=blobs[n])
    sc = make_sidecar(chunk_size="1MiB", prefetch_interval="1s", readahead_chunks=0)
    s3 = sc.client()
    listed = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ds/")
              for o in page.get("Contents", [])]
    assert listed == names
    assert wait_until(lambda: metric(sc, "sidecar_known_keys") >= SHARDS), [e for e in sc.log_events() if e.get("logger") != "sidecar.access"]
    tap.clear()
    for n in names[:15]:
        assert s3.get_object(Bucket=bucket, Key=n)["Body"].read() == blobs[n]
        time.sleep(0.1)
    # Shards past what has been read are fetched without being asked for.
    assert wait_until(lambda: len(fetched_keys(tap, bucket, "ds/") - set(names[:15])) >= 3), \
        "no shard ahead of the reader was prefetched"
    assert metric(sc, "sidecar_prefetch_candidates_total") > 0
    ahead = sorted(fetched_keys(tap, bucket, "ds/") - set(names[:15]))
    tap.clear()
    for n in names[15:30]:
        assert s3.get_object(Bucket=bucket, Key=n)["Body"].read() == blobs[n]
    assert metric(sc, "sidecar_prefetch_useful_bytes_total") >= SHARD_BYTES
    # What was prefetched before the reader got there was not fetched again.
    assert not (fetched_keys(tap, bucket, "ds/") & set(ahead[:1]))


def _listed_model(make_sidecar, moto_s3, bucket, *, files: int, size: int):
    """A model's files under ``model/``, a sidecar whose interval is far off, and a client that
    has listed the prefix through it: (keys, sidecar, client)."""
    names = [f"model/weights-{i:02d}.safetensors" for i in range(files)]
    for n in names:
        moto_s3.put_object(Bucket=bucket, Key=n, Body=os.urandom(size))
    sc = make_sidecar(chunk_size="1MiB", prefetch_interval="30s", readahead_chunks=0)
    s3 = sc.client()
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix="model/")["Contents"]) == files
    return names, sc, s3


def test_first_file_of_a_small_listed_set_brings_the_rest(make_sidecar, tap, moto_s3, bucket):
    """A model load: a few large files listed, then read one after another. The reader has no
    rate yet after its first file, yet the rest of the set is fetched without being asked."""
    names, sc, s3 = _listed_model(make_sidecar, moto_s3, bucket, files=4, size=256 * 1024)
    tap.clear()
    s3.get_object(Bucket=bucket, Key=names[0])["Body"].read()
    # Well before the 30 s interval: the first read under the prefix runs the loop at once.
    assert wait_until(lambda: metric(sc, "sidecar_prefetch_bytes_total") >= 3 * 256 * 1024
                      and metric(sc, "sidecar_prefetch_fetches_total", event="completed") >= 3, timeout=15), \
        fetched_keys(tap, bucket, "model/")
    assert fetched_keys(tap, bucket, "model/") == set(names)
    tap.clear()
    for n in names[1:]:
        s3.get_object(Bucket=bucket, Key=n)["Body"].read()
    assert not fetched_keys(tap, bucket, "model/")
    assert metric(sc, "sidecar_prefetch_useful_bytes_total") > 0


def test_the_rest_of_a_small_set_comes_while_its_first_file_is_still_being_read(make_sidecar, tap, moto_s3, bucket):
    """A model load's first file takes as long as its other files need to come in alongside it:
    the loop hears of the reader when that read begins, not after its last byte is sent."""
    first = os.urandom(32 * 1024 * 1024)  # more than socket buffers hold: the sidecar waits on the client
    names, sc, s3 = _listed_model(make_sidecar, moto_s3, bucket, files=3, size=256 * 1024)
    moto_s3.put_object(Bucket=bucket, Key="model/weights-00.safetensors", Body=first)
    body = s3.get_object(Bucket=bucket, Key=names[0])["Body"]
    head = body.read(1024 * 1024)
    assert wait_until(lambda: metric(sc, "sidecar_prefetch_fetches_total", event="completed") >= 2, timeout=15), \
        "nothing was prefetched while the first file was being read"
    assert head + body.read() == first
    tap.clear()
    for n in names[1:]:
        s3.get_object(Bucket=bucket, Key=n)["Body"].read()
    assert not fetched_keys(tap, bucket, "model/")


def test_a_prefetched_file_costs_a_head_and_one_get(make_sidecar, tap, moto_s3, bucket):
    """A prefetch learns the GET's checksum headers (boto3 reads in checksum mode) from the GET
    that fetches the file, pinned to the HEAD's ETag, not from a request of their own."""
    names, sc, s3 = _listed_model(make_sidecar, moto_s3, bucket, files=3, size=300 * 1024)
    s3.get_object(Bucket=bucket, Key=names[0])["Body"].read()
    assert wait_until(lambda: metric(sc, "sidecar_prefetch_fetches_total", event="completed") >= 2, timeout=15)
    for n in names[1:]:
        sent = tap.requests(path_contains=n)
        assert [(s.method, "range" in s.headers, bool(s.headers.get("if-match"))) for s in sent] == \
            [("HEAD", False, False), ("GET", False, True)], n
    tap.clear()
    for n in names[1:]:
        got = s3.get_object(Bucket=bucket, Key=n)
        direct = moto_s3.get_object(Bucket=bucket, Key=n, ChecksumMode="ENABLED")
        sums = {k: v for k, v in direct["ResponseMetadata"]["HTTPHeaders"].items() if k.startswith("x-amz-checksum-")}
        assert sums and {k: got["ResponseMetadata"]["HTTPHeaders"].get(k) for k in sums} == sums
        got["Body"].read()
    assert tap.requests(path_contains="model/") == [], "prefetched files are plain hits, checksum headers included"


def test_heads_make_keys_known(make_sidecar, moto_s3, bucket):
    for i in range(5):
        moto_s3.put_object(Bucket=bucket, Key=f"heads/obj-{i}", Body=b"x" * 100)
    sc = make_sidecar(prefetch_interval="1s")
    s3 = sc.client()
    for i in range(5):
        assert s3.head_object(Bucket=bucket, Key=f"heads/obj-{i}")["ContentLength"] == 100
    assert wait_until(lambda: metric(sc, "sidecar_known_keys") >= 5), metric(sc, "sidecar_known_keys")
