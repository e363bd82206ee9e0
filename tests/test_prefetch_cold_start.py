"""Prefetch from a cold start in the running daemon: boto3 -> sidecar -> tap -> moto.

A fresh sidecar with the shipped model sees a client list a sharded dataset and read its
shards in order: it must fetch shards nobody has asked for yet ahead of the reader.
"""

from __future__ import annotations

import os
import re
import time

SHARDS = 60
SHARD_BYTES = 128 * 1024


def _metric(sc, name: str, **labels) -> float:
    total = 0.0
    for line in sc.metrics_text().splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _gets(tap, bucket: str, prefix: str) -> set[str]:
    return {s.path.split("/", 2)[2] for s in tap.object_gets(f"/{bucket}/{prefix}")}


def _wait(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


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
    assert _wait(lambda: _metric(sc, "sidecar_known_keys") >= SHARDS), [e for e in sc.log_events() if e.get("logger") != "sidecar.access"]
    tap.clear()
    for n in names[:15]:
        assert s3.get_object(Bucket=bucket, Key=n)["Body"].read() == blobs[n]
        time.sleep(0.1)
    # Shards past what has been read are fetched without being asked for.
    assert _wait(lambda: len(_gets(tap, bucket, "ds/") - set(names[:15])) >= 3), \
        "no shard ahead of the reader was prefetched"
    assert _metric(sc, "sidecar_prefetch_candidates_total") > 0
    ahead = sorted(_gets(tap, bucket, "ds/") - set(names[:15]))
    tap.clear()
    for n in names[15:30]:
        assert s3.get_object(Bucket=bucket, Key=n)["Body"].read() == blobs[n]
    assert _metric(sc, "sidecar_prefetch_useful_bytes_total") >= SHARD_BYTES
    # What was prefetched before the reader got there was not fetched again.
    assert not (_gets(tap, bucket, "ds/") & set(ahead[:1]))
