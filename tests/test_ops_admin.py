"""The admin API and ``sidecar admin`` against running sidecars, with the recording tap showing
what reached the upstream: purge, pin, warm, hot objects, health and readiness."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from support.tap import Fault

MiB = 1024 * 1024


def call(sc, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(sc.admin_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def post(sc, path: str, body: dict) -> dict:
    status, out = call(sc, "POST", path, body)
    assert status in (200, 202), (status, out)
    return out


def get(s3, bucket, key) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def fetched(tap, bucket) -> list[str]:
    """Keys whose bytes were fetched from the upstream since the tap was cleared."""
    return sorted(s.path.split("?")[0].split("/", 2)[2] for s in tap.object_gets(f"/{bucket}/"))


def cli(sc, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidecar", "admin", "--admin", sc.admin_url.split("//")[1], *args],
                          capture_output=True, text=True, timeout=60)


def wait_job(sc, job_id: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = call(sc, "GET", f"/warm/{job_id}")
        assert status == 200
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"warm job {job_id} did not finish")


def test_purge_drops_metadata_and_chunks_under_a_prefix(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(chunk_size="1MiB")
    s3 = sc.client()
    blobs = {"a/1": os.urandom(MiB + 5), "a/2": os.urandom(1000), "b/1": os.urandom(2000)}
    for k, v in blobs.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
        assert get(s3, bucket, k) == v
    out = post(sc, "/purge", {"bucket": bucket, "prefix": "a/"})
    assert (out["objects"], out["chunks"], out["bytes"], out["catalog_entries"]) == (2, 3, MiB + 5 + 1000, 2)
    assert sc.admin("/stats")["cache"]["used_bytes"] == 2000
    tap.clear()
    for k, v in blobs.items():
        assert get(s3, bucket, k) == v
    assert fetched(tap, bucket) == ["a/1", "a/2"], "purged objects come from the upstream again, the rest do not"
    r = cli(sc, "purge", bucket)
    assert r.returncode == 0 and json.loads(r.stdout)["objects"] == 3, r.stderr
    assert sc.admin("/stats")["cache"]["used_bytes"] == 0
    assert call(sc, "POST", "/purge", {"prefix": "a/"})[0] == 400


def test_pinned_chunks_survive_eviction_and_restarts(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(chunk_size="1MiB", cache_size="4MiB")
    s3 = sc.client()
    keep, control = os.urandom(2 * MiB), os.urandom(MiB)
    moto_s3.put_object(Bucket=bucket, Key="models/m", Body=keep)
    moto_s3.put_object(Bucket=bucket, Key="misc/control", Body=control)
    churn = {f"churn/{i}": os.urandom(MiB) for i in range(6)}
    for k, v in churn.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
    assert get(s3, bucket, "models/m") == keep and get(s3, bucket, "misc/control") == control
    out = post(sc, "/pin", {"bucket": bucket, "prefix": "models/"})
    assert out["entries_pinned"] == 2 and out["pinned_bytes"] == 2 * MiB
    assert out["pins"] == [{"bucket": bucket, "prefix": "models/"}]
    sc.restart()  # the pin is kept with the cache
    s3 = sc.client()
    assert sc.admin("/pins")["pins"] == [{"bucket": bucket, "prefix": "models/"}]
    for k, v in churn.items():
        assert get(s3, bucket, k) == v
    tap.clear()
    assert get(s3, bucket, "models/m") == keep and get(s3, bucket, "misc/control") == control
    for k, v in churn.items():
        assert get(s3, bucket, k) == v
    # 7 MiB of unpinned objects beside 2 pinned in 4 MiB: whichever the policy kept, at least
    # five were evicted, and the pinned object was not
    again = fetched(tap, bucket)
    assert "models/m" not in again and len(again) >= 5, again

    r = cli(sc, "unpin", bucket, "models/")
    assert r.returncode == 0 and json.loads(r.stdout)["pins"] == [], r.stderr
    for k, v in churn.items():
        assert get(s3, bucket, k) == v
    tap.clear()
    assert get(s3, bucket, "models/m") == keep
    assert fetched(tap, bucket) == ["models/m"], "unpinned, it is evictable again"


def test_warm_a_prefix_and_keys_with_progress(make_sidecar, tap, moto_s3, bucket, tmp_path):
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "prefix": "w/nocache/", "cache": False}]}))
    sc = make_sidecar(chunk_size="1MiB", config=str(cfg))
    blobs = {"w/big": os.urandom(5 * MiB // 2), "w/small": os.urandom(100_000), "w/empty": b"",
             "w/one": os.urandom(MiB), "w/nocache/x": os.urandom(1000), "x/other": os.urandom(3000)}
    for k, v in blobs.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
    tap.clear()
    job = post(sc, "/warm", {"bucket": bucket, "prefix": "w/"})
    job = wait_job(sc, job["id"])
    cached = sum(len(v) for k, v in blobs.items() if k.startswith("w/") and "nocache" not in k)
    assert job["state"] == "done", job
    assert (job["objects_total"], job["objects_done"], job["objects_skipped"], job["objects_failed"]) == (5, 4, 1, 0)
    assert job["bytes_total"] == job["bytes_done"] == job["bytes_fetched"] == cached
    assert len(tap.requests("GET", "list-type=2")) == 1
    text = sc.metrics_text()  # an operator's warm is no guess of the predictor's
    assert re.search(r"^sidecar_prefetch_bytes_total 0\.0$", text, re.M), text
    background = re.search(r'^sidecar_upstream_bytes_total\{purpose="prefetch"\} (\S+)$', text, re.M)
    assert float(background.group(1)) == cached, "warm bytes are counted as background (prefetch-purpose) bytes"
    tap.clear()
    s3 = sc.client()
    for k, v in blobs.items():
        assert get(s3, bucket, k) == v
    assert fetched(tap, bucket) == ["w/nocache/x", "x/other"], "warmed objects are read from the cache"

    job = post(sc, "/warm", {"bucket": bucket, "keys": ["x/other", "w/big", "no/such/key"]})
    job = wait_job(sc, job["id"])
    assert (job["objects_done"], job["objects_failed"], job["bytes_already_cached"]) == (2, 1, len(blobs["w/big"]) +
                                                                                          len(blobs["x/other"]))
    assert job["errors"] == [{"key": "no/such/key", "error": "NoSuchKey: The specified key does not exist."}]
    assert call(sc, "GET", "/warm/nonexistent")[0] == 404
    assert call(sc, "POST", "/warm", {"bucket": bucket, "keys": "x/other"})[0] == 400

    moto_s3.put_object(Bucket=bucket, Key="cli/a", Body=os.urandom(3 * MiB))
    r = cli(sc, "warm", bucket, "cli/", "--interval", "0.1")
    assert r.returncode == 0, r.stderr
    assert "100%" in r.stderr and "3.00M" in r.stderr, r.stderr  # the progress bar, in bytes
    assert r.stdout.startswith("warm done: 1 objects cached (3145728 bytes fetched")


def test_hot_objects_by_decayed_reads(make_sidecar, moto_s3, bucket):
    sc = make_sidecar()
    s3 = sc.client()
    for k in ("a", "b", "c", "d"):
        moto_s3.put_object(Bucket=bucket, Key=k, Body=k.encode() * 10)
    for k, n in (("a", 1), ("b", 4), ("c", 2), ("d", 3)):
        for _ in range(n):
            get(s3, bucket, k)
    hot = sc.admin("/hot?n=3")["objects"]
    assert [o["key"] for o in hot] == ["b", "d", "c"]
    assert 3.9 < hot[0]["hotness"] <= 4 and hot[0]["size"] == 10 and hot[0]["cached_bytes"] == 10
    r = cli(sc, "hot", "-n", "2")
    assert r.returncode == 0
    assert [line.split()[-1] for line in r.stdout.splitlines()[1:]] == [f"s3://{bucket}/b", f"s3://{bucket}/d"]
    assert call(sc, "GET", "/hot?n=zero")[0] == 400
    # Without --admin, the CLI finds the endpoint where the daemon's settings put it.
    r = subprocess.run([sys.executable, "-m", "sidecar", "admin", "stats"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SIDECAR_ADMIN_LISTEN": sc.admin_url.split("//")[1]})
    reads = json.loads(r.stdout)["reads"] if r.returncode == 0 else r.stderr
    assert (reads["hits"], reads["misses"]) == (6, 4), reads


def test_readiness_follows_the_upstream_only_when_required(make_sidecar, tap, moto_s3, bucket):
    relaxed = make_sidecar(upstream_probe_interval="0.2")
    strict = make_sidecar(upstream_probe_interval="0.2", ready_requires_upstream="true")
    moto_s3.put_object(Bucket=bucket, Key="k", Body=b"cached")
    assert get(relaxed.client(), bucket, "k") == b"cached"
    for sc in (relaxed, strict):
        status, body = call(sc, "GET", "/readyz")
        assert status == 200 and all(body["checks"].values()) and body["upstream"]["ok"], body
        assert call(sc, "GET", "/healthz") == (200, {"status": "ok"})
    tap.fault = lambda seen: Fault(drop=True)
    try:
        time.sleep(0.3)
        status, body = call(relaxed, "GET", "/readyz")
        assert status == 200 and body["upstream"]["ok"] is False, "cached data is still served: stay ready"
        assert get(relaxed.client(), bucket, "k") == b"cached"
        status, body = call(strict, "GET", "/readyz")
        assert status == 503 and body["checks"]["upstream_reachable"] is False, body
        r = cli(strict, "ready")
        assert r.returncode == 1 and json.loads(r.stdout)["ready"] is False
    finally:
        tap.fault = None
    time.sleep(0.3)
    assert call(strict, "GET", "/readyz")[0] == 200
    assert 'sidecar_upstream_up 1.0' in strict.metrics_text()
    strict.stop()
    events = [e["event"] for e in strict.log_events() if e.get("logger") == "sidecar.health"]
    assert events == ["upstream_unreachable", "upstream_reachable"]



def _non_loopback_address() -> str | None:
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outbound interface
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def test_admin_changes_only_from_loopback(tmp_path, logs_dir):
    import json as _json
    import urllib.error
    import urllib.request

    from support.procs import Sidecar, free_port

    addr = _non_loopback_address()
    if addr is None:
        pytest.skip("no non-loopback address on this machine")
    (tmp_path / "up" / "b").mkdir(parents=True)
    port = free_port()
    sc = Sidecar(f"file://{tmp_path / 'up'}", tmp_path / "c", logs_dir, admin_listen=f"0.0.0.0:{port}")
    try:
        remote = f"http://{addr}:{port}"
        with urllib.request.urlopen(remote + "/stats", timeout=5) as r:
            assert r.status == 200
        req = urllib.request.Request(remote + "/purge", data=_json.dumps({"bucket": "b"}).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 403
        local = urllib.request.Request(f"http://127.0.0.1:{port}/purge", data=_json.dumps({"bucket": "b"}).encode(),
                                       method="POST")
        with urllib.request.urlopen(local, timeout=5) as r:
            assert r.status == 200
    finally:
        sc.stop()
