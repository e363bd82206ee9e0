"""The predictor loop in the running daemon: boto3 -> sidecar -> tap -> moto.

A small model is trained in a fixture (``train.train``) on synthetic reads of the shape the tests
make: sharded datasets read in order, epoch after epoch, among one-off reads.
"""

from __future__ import annotations

import os
import random
import time
import urllib.request

import pytest
import yaml

from sidecar.predict.accesslog import Access
from support.observe import fetched_keys, metric, wait_until

SHARDS = 12
SHARD_BYTES = 200_000


def _training_reads(seed: int = 0) -> list[Access]:
    rnd = random.Random(seed)
    t0 = 1.7e9
    out: list[Access] = []
    for d in range(80):
        start = t0 + rnd.uniform(0, 7200)
        step = rnd.uniform(0.05, 1.0)
        t = start
        for _ in range(rnd.randint(2, 4)):
            for i in range(SHARDS):
                out.append(Access(t, "train", f"ds{d}/shard-{i:03d}", 0, SHARD_BYTES - 1, SHARD_BYTES, "miss"))
                t += step * rnd.uniform(0.8, 1.2)
            t += rnd.uniform(2, 60)
    for n in range(3000):
        out.append(Access(t0 + rnd.uniform(0, 7800), "train", f"once/{n:05d}/obj", 0, 99_999, 100_000, "miss"))
    out.sort(key=lambda a: a.t)
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from sidecar.predict.train import train

    path = tmp_path_factory.mktemp("model") / "predictor.onnx"
    train(_training_reads(), path, horizon=300.0, progress=False)
    return path


def _post(sc, path: str, body: bytes) -> None:
    req = urllib.request.Request(sc.admin_url + path, data=body, method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def test_loop_prefetches_next_shards_not_best_effort(make_sidecar, tap, moto_s3, bucket, tmp_path, model_path):
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "prefix": "scratch/", "qos": "BestEffort"}]}))
    sc = make_sidecar(config=str(cfg), chunk_size="1MiB", model=str(model_path), prefetch_interval="0.5s",
                      prefetch_threshold="0.5", readahead_chunks=0)
    s3 = sc.client()
    keys = {p: [f"{p}shard-{i:03d}" for i in range(SHARDS)] for p in ("ds/", "scratch/")}
    blobs = {}
    for ks in keys.values():
        for k in ks:
            blobs[k] = os.urandom(SHARD_BYTES)
            moto_s3.put_object(Bucket=bucket, Key=k, Body=blobs[k])
    # Epoch 1: every shard of both datasets, in order.
    for i in range(SHARDS):
        for p in keys:
            assert s3.get_object(Bucket=bucket, Key=keys[p][i])["Body"].read() == blobs[keys[p][i]]
    _post(sc, "/purge", f'{{"bucket": "{bucket}"}}'.encode())
    tap.clear()
    # Epoch 2 begins: the first shards again.
    k = 3
    for i in range(k + 1):
        for p in keys:
            assert s3.get_object(Bucket=bucket, Key=keys[p][i])["Body"].read() == blobs[keys[p][i]]
    ahead = set(keys["ds/"][k + 1:k + 3])
    assert wait_until(lambda: ahead <= fetched_keys(tap, bucket, "ds/")), "the next shards were never fetched ahead"
    assert wait_until(lambda: metric(sc, "sidecar_prefetch_fetches_total", event="completed") >= 2)
    assert metric(sc, "sidecar_prefetch_bytes_total") >= 2 * SHARD_BYTES
    assert metric(sc, "sidecar_prefetch_runs_total", result="ok") >= 1
    assert metric(sc, "sidecar_prefetch_candidates_total") > 0
    time.sleep(1.5)  # a few more runs: still nothing under the BestEffort prefix
    assert fetched_keys(tap, bucket, "scratch/") == set(keys["scratch/"][:k + 1])

    tap.clear()
    useful_before = metric(sc, "sidecar_prefetch_useful_bytes_total")
    for key in sorted(ahead):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == blobs[key]
    assert not (fetched_keys(tap, bucket, "ds/") & ahead), "a prefetched shard was fetched again"
    assert metric(sc, "sidecar_prefetch_useful_bytes_total") - useful_before == len(ahead) * SHARD_BYTES
    runs = [e for e in sc.log_events() if e.get("event") == "predictor_run"]
    assert runs and {"candidates", "chosen", "bytes", "duration_ms"} <= runs[-1].keys()
    state = sc.admin("/stats")
    assert state.get("prefetch", {}).get("enabled") is True


def test_wasted_prefetch_counted_on_purge(make_sidecar, tap, moto_s3, bucket, model_path):
    sc = make_sidecar(chunk_size="1MiB", model=str(model_path), prefetch_interval="0.5s",
                      prefetch_threshold="0.5", readahead_chunks=0)
    s3 = sc.client()
    names = [f"ds/shard-{i:03d}" for i in range(SHARDS)]
    for n in names:
        moto_s3.put_object(Bucket=bucket, Key=n, Body=os.urandom(SHARD_BYTES))
    for n in names:
        s3.get_object(Bucket=bucket, Key=n)["Body"].read()
    _post(sc, "/purge", f'{{"bucket": "{bucket}"}}'.encode())
    for n in names[:3]:
        s3.get_object(Bucket=bucket, Key=n)["Body"].read()
    assert wait_until(lambda: metric(sc, "sidecar_prefetch_bytes_total") > 0)
    assert wait_until(lambda: metric(sc, "sidecar_prefetch_fetches_total", event="completed") >= 1)
    assert metric(sc, "sidecar_prefetch_wasted_bytes_total") == 0
    _post(sc, "/purge", f'{{"bucket": "{bucket}"}}'.encode())
    wasted = metric(sc, "sidecar_prefetch_wasted_bytes_total")
    # (read after ``wasted``: fetches still running may only add to it)
    assert 0 < wasted <= metric(sc, "sidecar_prefetch_bytes_total")
    assert metric(sc, "sidecar_prefetch_useful_bytes_total") == 0


def _broken_schema(src, dst):
    import onnx

    from sidecar.predict.model import META_FEATURES

    m = onnx.load(str(src))
    for prop in m.metadata_props:
        if prop.key == META_FEATURES:
            prop.value = '["hotness", "something_else"]'
    onnx.save(m, str(dst))


def test_schema_mismatch_disables_prefetch_and_serves(make_sidecar, moto_s3, bucket, tmp_path, model_path):
    bad = tmp_path / "bad.onnx"
    _broken_schema(model_path, bad)
    moto_s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    for model in (bad, tmp_path / "missing.onnx"):
        sc = make_sidecar(model=str(model), prefetch_interval="0.2s")
        assert sc.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"
        time.sleep(0.5)
        disabled = [e for e in sc.log_events() if e.get("event") == "prefetch_disabled"]
        assert len(disabled) == 1 and str(model) in disabled[0].get("error", "")
        assert not [e for e in sc.log_events() if e.get("event") == "predictor_run"]
        assert sc.admin("/stats")["prefetch"]["enabled"] is False
        sc.stop()


def test_prefetch_false_writes_no_access_log(make_sidecar, moto_s3, bucket, tmp_path):
    cache = tmp_path / "c"
    sc = make_sidecar(cache_dir=cache, prefetch="false")
    moto_s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert sc.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"
    assert not (cache / "access-log").exists()
    assert [e for e in sc.log_events() if e.get("event") == "prefetch_disabled"][0]["reason"] == "prefetch=false"


def test_retention_weight_boosts_cached_chunks_of_scored_objects(make_sidecar, moto_s3, bucket, model_path):
    """lru_k_retention_weight: after a run, cached chunks of objects scored at least the
    retention threshold get the weight (counted in the predictor_run line); 0 boosts none."""
    for weight, expect in (("0.3", True), ("0", False)):
        sc = make_sidecar(chunk_size="1MiB", model=str(model_path), prefetch_interval="0.3s",
                          lru_k_retention_weight=weight, lru_k_retention_threshold="0",
                          readahead_chunks=0)
        s3 = sc.client()
        for i in range(4):
            key = f"ret{weight}/shard-{i:03d}"
            moto_s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(SHARD_BYTES))
            s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert wait_until(lambda: len([e for e in sc.log_events() if e.get("event") == "predictor_run"]) >= 2)
        runs = [e for e in sc.log_events() if e.get("event") == "predictor_run"]
        assert (max(e.get("retained", 0) for e in runs) > 0) is expect
