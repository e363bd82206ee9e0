"""Cache rules in the running daemon: per-prefix TTL, do-not-cache, size limit, QoS, labels."""

from __future__ import annotations

import os
import time

import yaml

MiB = 1024 * 1024


def _get(s3, bucket, key) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _sidecar(make_sidecar, tmp_path, rules, **flags):
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(yaml.safe_dump({"rules": rules}))
    return make_sidecar(config=str(cfg), chunk_size="1MiB", **flags)


def test_do_not_cache_and_size_limits(make_sidecar, tap, moto_s3, bucket, tmp_path):
    sc = _sidecar(make_sidecar, tmp_path, [{"bucket": bucket, "prefix": "scratch/", "cache": False},
                                           {"bucket": bucket, "prefix": "logs/", "max_object_size": "1MiB"}])
    s3 = sc.client()
    blobs = {"scratch/a": os.urandom(100_000), "logs/small": os.urandom(500_000),
             "logs/big": os.urandom(2 * MiB), "other": os.urandom(100_000)}
    for k, v in blobs.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
    for k, v in blobs.items():
        assert _get(s3, bucket, k) == v
    tap.clear()
    for k, v in blobs.items():
        assert _get(s3, bucket, k) == v, "read-through objects still return the right bytes"
    fetched = {s.path.split("/", 2)[2] for s in tap.object_gets()}
    assert fetched == {"scratch/a", "logs/big"}
    assert sc.admin("/stats")["cache"]["used_bytes"] == 500_000 + 100_000


def test_metadata_ttl_per_prefix(make_sidecar, moto_s3, bucket, tmp_path):
    sc = _sidecar(make_sidecar, tmp_path, [{"bucket": bucket, "prefix": "static/", "metadata_ttl": "indefinite"},
                                           {"bucket": bucket, "prefix": "live/", "metadata_ttl": 0.5}])
    s3 = sc.client()
    for k in ("static/x", "live/x"):
        moto_s3.put_object(Bucket=bucket, Key=k, Body=b"one")
        assert _get(s3, bucket, k) == b"one"
        moto_s3.put_object(Bucket=bucket, Key=k, Body=b"two")  # behind the sidecar's back
    time.sleep(0.7)
    assert _get(s3, bucket, "live/x") == b"two"
    assert _get(s3, bucket, "static/x") == b"one", "an indefinite TTL trusts the cached version"


def test_best_effort_is_evicted_before_guaranteed(make_sidecar, tap, moto_s3, bucket, tmp_path):
    sc = _sidecar(make_sidecar, tmp_path, [{"bucket": bucket, "prefix": "models/", "qos": "Guaranteed"},
                                           {"bucket": bucket, "prefix": "tmp/", "qos": "BestEffort"}],
                  cache_size="6MiB")
    s3 = sc.client()
    objs = {f"models/m{i}": os.urandom(MiB) for i in range(3)}
    objs.update({f"tmp/t{i}": os.urandom(MiB) for i in range(3)})
    objs.update({f"data/d{i}": os.urandom(MiB) for i in range(3)})
    for k, v in objs.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
    for k in [k for k in objs if k.startswith("models/")] + [k for k in objs if k.startswith("tmp/")]:
        assert _get(s3, bucket, k) == objs[k]
    for k in [k for k in objs if k.startswith("data/")]:  # needs room: BestEffort goes first
        assert _get(s3, bucket, k) == objs[k]
    tap.clear()
    for k in [k for k in objs if k.startswith("models/")]:
        assert _get(s3, bucket, k) == objs[k]
    assert tap.object_gets() == [], "Guaranteed data survived; BestEffort was evicted instead"
    for k in [k for k in objs if k.startswith("tmp/")]:
        assert _get(s3, bucket, k) == objs[k]
    assert len(tap.object_gets()) == 3


def test_labels_reach_the_metrics(make_sidecar, moto_s3, bucket, tmp_path):
    sc = _sidecar(make_sidecar, tmp_path, [{"bucket": bucket, "labels": {"team": "ml"}}])
    moto_s3.put_object(Bucket=bucket, Key="k", Body=b"labelled")
    s3 = sc.client()
    assert _get(s3, bucket, "k") == b"labelled"
    assert _get(s3, bucket, "k") == b"labelled"
    text = sc.metrics_text()
    assert 'sidecar_cache_hits_total{label="team=ml"} 1.0' in text
    assert 'sidecar_cache_misses_total{label="team=ml"} 1.0' in text


def test_bad_rules_are_one_clear_line(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": "b", "qos": "Gold"}]}))
    r = subprocess.run([sys.executable, "-m", "sidecar", "config", "check", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "rules[0].qos" in r.stderr and "Gold" in r.stderr
