"""The token bucket in a running sidecar, over real HTTP: a warm job (background, through the
reader's gate) proceeds at about bandwidth_cap, while a demand GET at the same time is not held
to the cap. The upstream is a local directory throttled to a fixed bandwidth well above the cap."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.tap import Fault

MiB = 1024 * 1024
CAP = 8 * MiB
UPSTREAM_BANDWIDTH = 100 * MiB


def admin(sc, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(sc.admin_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def metric(sc, name: str, labels: dict | None = None, default: float | None = None) -> float:
    for fam in text_string_to_metric_families(sc.metrics_text()):
        for s in fam.samples:
            if s.name == name and s.labels == (labels or {}):
                return s.value
    if default is not None:
        return default
    raise AssertionError(f"{name}{labels or ''} not exposed")


def timed_get(s3, key: str, size: int) -> float:
    t0 = time.perf_counter()
    body = s3.get_object(Bucket="bk", Key=key)["Body"].read()
    assert len(body) == size
    return time.perf_counter() - t0


@pytest.fixture
def upstream_dir(tmp_path):
    root = tmp_path / "up"
    (root / "bk" / "warm").mkdir(parents=True)
    for i in range(12):
        (root / "bk" / "warm" / f"part-{i:02d}").write_bytes(os.urandom(4 * MiB))
    for name in ("demand-before", "demand-during"):
        (root / "bk" / name).write_bytes(os.urandom(16 * MiB))
    return root


def test_warm_runs_at_the_cap_and_demand_is_not_held_to_it(make_sidecar, upstream_dir, tmp_path):
    # The upstream's latency is steady; a loaded test machine's event loop is not: a wide tolerance
    # keeps scheduling noise from reading as congestion here (the AIMD has its own tests).
    sc = make_sidecar(f"file://{upstream_dir}?latency=20ms&bandwidth={UPSTREAM_BANDWIDTH}", chunk_size="1MiB",
                      bandwidth_cap=CAP, bandwidth_latency_tolerance=4, prefetch="false", readahead_chunks=0)
    s3 = sc.client()
    assert metric(sc, "sidecar_bandwidth_rate_bytes") == CAP
    # A full burst to start with: 50 ms of the rate (any second of background stays near the cap).
    assert metric(sc, "sidecar_bandwidth_tokens_bytes") == pytest.approx(0.05 * CAP), "a full burst to start with"

    before = timed_get(s3, "demand-before", 16 * MiB)  # alone: the upstream's own speed

    job = admin(sc, "POST", "/warm", {"bucket": "bk", "prefix": "warm/"})
    t_start = time.monotonic()
    samples: list[tuple[float, int]] = []
    during: list[float] = []

    def demand() -> None:
        time.sleep(1.5)
        during.append(timed_get(sc.client(), "demand-during", 16 * MiB))

    t = threading.Thread(target=demand)
    t.start()
    while True:
        state = admin(sc, "GET", f"/warm/{job['id']}")
        samples.append((time.monotonic() - t_start, state["bytes_done"]))
        if state["state"] != "running" and state["state"] != "listing":
            break
        assert time.monotonic() - t_start < 40, "warm job did not finish"
        time.sleep(0.1)
    t.join()
    assert state["state"] == "done" and state["bytes_fetched"] == 48 * MiB, state

    # Background at about the cap: the slope after the first burst of tokens. The demand GET's
    # 16 MiB came out of the same budget meanwhile, so a little under the cap is expected.
    t1, b1 = next(((t, b) for t, b in samples if t >= 1.0), samples[0])
    t2, b2 = samples[-1]
    slope = (b2 - b1) / max(t2 - t1, 0.05)
    assert 0.45 * CAP <= slope <= 1.15 * CAP, f"warm ran at {slope / MiB:.1f} MiB/s against a cap of {CAP / MiB} MiB/s"

    # Demand never waits for tokens: 16 MiB held to the cap would take 2 s.
    assert during[0] < 1.0 and during[0] < 4 * before + 0.3, (before, during)
    assert metric(sc, "sidecar_upstream_bytes_total", {"purpose": "prefetch"}) == 48 * MiB
    assert metric(sc, "sidecar_upstream_bytes_total", {"purpose": "demand"}) == 32 * MiB


SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message></Error>')


def test_upstream_slowdown_and_errors_cut_the_rate(make_sidecar, tap, moto_s3, bucket):
    # Only the failures speak here: moto's own latency on a busy machine is left out of it.
    sc = make_sidecar(chunk_size="64KiB", bandwidth_cap=CAP, bandwidth_latency_tolerance=100, prefetch="false")
    body = os.urandom(200 * 1024)
    moto_s3.put_object(Bucket=bucket, Key="obj", Body=body)
    moto_s3.put_object(Bucket=bucket, Key="other", Body=body)
    faults = {"obj": [Fault(status=503, body=SLOWDOWN)], "other": []}

    def fault(seen):
        for key, queue in faults.items():
            if seen.path.split("?")[0] == f"/{bucket}/{key}" and queue:
                return queue.pop(0)
        return None

    tap.fault = fault
    try:
        s3 = sc.client()
        t = time.monotonic()
        assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == body, "retried after the SlowDown"
        assert metric(sc, "sidecar_bandwidth_decreases_total", {"reason": "throttled"}) == 1
        assert CAP / 2 <= metric(sc, "sidecar_bandwidth_rate_bytes") <= CAP / 2 + 0.1 * CAP * (time.monotonic() - t)
        time.sleep(1.1)  # past the cooldown: the next congestion event cuts again
        t0 = time.monotonic()
        before = metric(sc, "sidecar_bandwidth_rate_bytes")
        faults["other"].append(Fault(status=500))
        assert s3.get_object(Bucket=bucket, Key="other")["Body"].read() == body
        cut = metric(sc, "sidecar_bandwidth_rate_bytes")
        t1 = time.monotonic()
        assert metric(sc, "sidecar_bandwidth_decreases_total", {"reason": "error"}) == 1
        assert cut <= before / 2 + 0.1 * CAP * (t1 - t0) + 1, "halved (then grown for at most t1 - t0)"
        # Healthy answers since: the rate grows back additively, a tenth of the cap per second.
        time.sleep(1.0)
        grown = metric(sc, "sidecar_bandwidth_rate_bytes")
        t2 = time.monotonic()
        assert cut + 0.1 * CAP * 1.0 <= grown <= min(CAP, cut + 0.1 * CAP * (t2 - t0)) + 1
    finally:
        tap.fault = None


def test_the_cap_changes_on_reload(make_sidecar, tmp_path):
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text("bandwidth_cap: 8MiB\n")
    sc = make_sidecar(config=str(cfg), prefetch="false")
    assert metric(sc, "sidecar_bandwidth_rate_bytes") == 8 * MiB
    cfg.write_text("bandwidth_cap: 2MiB\nbandwidth_floor: 1MiB\n")
    report = admin(sc, "POST", "/reload", {})
    assert sorted(report["changed"]) == ["bandwidth_cap", "bandwidth_floor"] and not report["restart_required"]
    assert metric(sc, "sidecar_bandwidth_rate_bytes") == 2 * MiB
    assert metric(sc, "sidecar_bandwidth_tokens_bytes") <= 2 * MiB
    cfg.write_text("bandwidth_cap: 0\n")
    admin(sc, "POST", "/reload", {})
    assert metric(sc, "sidecar_bandwidth_rate_bytes") == 0, "no cap: background not limited"


def test_a_demand_read_joining_a_background_fill_stops_its_wait_for_tokens(make_sidecar, upstream_dir):
    # 64 KiB/s: after the first piece a background fill owes 192 KiB and waits about 4 s for the next.
    sc = make_sidecar(f"file://{upstream_dir}?latency=5ms&bandwidth={UPSTREAM_BANDWIDTH}", chunk_size="1MiB",
                      bandwidth_cap="64KiB", prefetch="false", readahead_chunks=0)
    job = admin(sc, "POST", "/warm", {"bucket": "bk", "keys": ["warm/part-00"]})
    deadline = time.monotonic() + 10
    while metric(sc, "sidecar_upstream_bytes_total", {"purpose": "prefetch"}, default=0) == 0:
        assert time.monotonic() < deadline, "the warm job never started fetching"
        time.sleep(0.05)
    took = timed_get(sc.client(), "warm/part-00", 4 * MiB)
    assert took < 2.0, f"the demand read waited on the gate ({took:.2f} s)"
    # The fill commits just after its last byte reaches the client; at 64 KiB/s the job alone would need a minute.
    deadline = time.monotonic() + 1.0
    while admin(sc, "GET", f"/warm/{job['id']}")["state"] != "done":
        assert time.monotonic() < deadline, "the fill it joined did not complete the job"
        time.sleep(0.02)
    # The promoted rest of the fill was a client's read: counted as demand, not as prefetch.
    prefetched = metric(sc, "sidecar_upstream_bytes_total", {"purpose": "prefetch"})
    demand = metric(sc, "sidecar_upstream_bytes_total", {"purpose": "demand"})
    assert prefetched + demand == 4 * MiB and prefetched <= 1 * MiB, (prefetched, demand)


def test_a_passed_through_object_get_counts_against_the_cap(make_sidecar, upstream_dir):
    sc = make_sidecar(f"file://{upstream_dir}?latency=5ms&bandwidth={UPSTREAM_BANDWIDTH}", chunk_size="1MiB",
                      bandwidth_cap=f"{CAP}", prefetch="false", readahead_chunks=0)
    assert metric(sc, "sidecar_bandwidth_tokens_bytes") == pytest.approx(0.05 * CAP, rel=0.01)
    # ExpectedBucketOwner is answered by the upstream itself: the bytes pass through, uncached.
    body = sc.client().get_object(Bucket="bk", Key="demand-before", ExpectedBucketOwner="123456789012")["Body"]
    assert len(body.read()) == 16 * MiB
    assert metric(sc, "sidecar_upstream_bytes_total", {"purpose": "demand"}, default=0) == 0, "not a fill"
    # 16 MiB of demand took the full burst and left debt (less what refilled since).
    assert metric(sc, "sidecar_bandwidth_tokens_bytes") < 0
