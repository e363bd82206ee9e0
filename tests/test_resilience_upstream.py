"""Upstream faults, injected by the tap between the sidecar and a real S3 server: the sidecar
keeps serving what it has, answers the rest with S3's 503 within its deadline, never passes a
cut-off body as complete, and recovers on its own."""

from __future__ import annotations

import http.client
import os
import time
import xml.etree.ElementTree as ET

import pytest

from support import raw
from support.tap import Fault

MiB = 1024 * 1024


def _code(reply: raw.Reply) -> str | None:
    return ET.fromstring(reply.body).findtext("Code") if reply.body else None


@pytest.fixture
def faulty(make_sidecar, tap):
    """A sidecar with a short metadata TTL (so cached objects need revalidation) in front of the
    tap; the tap's faults are cleared afterwards."""
    sc = make_sidecar(metadata_ttl=0.2, chunk_size="1MiB", upstream_answer_within=2)
    yield sc
    tap.fault = None


@pytest.mark.parametrize("fault", [Fault(drop=True), Fault(delay=30), Fault(status=500)],
                         ids=["connection-dropped", "silent", "internal-error"])
def test_upstream_down_cached_served_uncached_503(faulty, tap, moto_s3, bucket, fault):
    cached = {f"c{i}": os.urandom(300_000) for i in range(5)}
    for k, v in {**cached, "uncached": b"never read before"}.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
    s3 = faulty.client()
    for k, v in cached.items():
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == v
    time.sleep(0.3)  # every cached entry's metadata is now due for revalidation
    tap.fault = lambda seen: fault
    t0 = time.monotonic()
    r = raw.request(faulty.url, "GET", f"/{bucket}/uncached")
    elapsed = time.monotonic() - t0
    assert r.status == 503 and _code(r) == "ServiceUnavailable", r.body
    assert elapsed < 2 + 1.5, f"the client waited {elapsed:.1f} s"
    for k, v in cached.items():  # stale-if-error: all of it, even with its TTL expired
        got = raw.request(faulty.url, "GET", f"/{bucket}/{k}")
        assert got.status == 200 and got.body == v
    t0 = time.monotonic()
    again = raw.request(faulty.url, "GET", f"/{bucket}/uncached")
    assert again.status == 503 and time.monotonic() - t0 < 2 + 1.5
    tap.fault = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # recovery without any operator
        r = raw.request(faulty.url, "GET", f"/{bucket}/uncached")
        if r.status == 200:
            break
        time.sleep(0.3)
    assert r.status == 200 and r.body == b"never read before"


def test_stale_if_error_has_a_limit(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(metadata_ttl=0.2, stale_if_error=0.5, upstream_answer_within=1)
    moto_s3.put_object(Bucket=bucket, Key="old", Body=b"cached long ago")
    assert raw.request(sc.url, "GET", f"/{bucket}/old").status == 200
    time.sleep(0.7)
    tap.fault = lambda seen: Fault(drop=True)
    try:
        r = raw.request(sc.url, "GET", f"/{bucket}/old")
        assert r.status == 503, "metadata older than stale_if_error is not trusted"
    finally:
        tap.fault = None


def test_a_body_cut_off_every_time_aborts_the_response(make_sidecar, tap, moto_s3, bucket, tmp_path):
    data = os.urandom(3 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="cut", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / "cut", chunk_size="1MiB")
    tap.fault = lambda seen: Fault(cut_after=100_000) if seen.method == "GET" else None
    try:
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=30)
            conn.request("GET", f"/{bucket}/cut")
            resp = conn.getresponse()
            if resp.status == 503:  # failed before a byte was sent: a clean S3 error
                assert b"<Code>ServiceUnavailable</Code>" in resp.read()
            else:  # failed mid-body: the connection is cut short of Content-Length
                assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)
                with pytest.raises(http.client.IncompleteRead) as e:
                    resp.read()
                assert len(e.value.partial) < len(data), "never a short body passed off as complete"
            conn.close()
    finally:
        tap.fault = None
    # nothing partial was committed: every cached chunk is whole, and the next read is correct
    chunks = [p for p in (tmp_path / "cut" / "v2").glob("??/*") if not p.name.endswith(".meta")]
    assert all(p.stat().st_size == MiB for p in chunks)
    assert sc.client().get_object(Bucket=bucket, Key="cut")["Body"].read() == data


def test_a_body_cut_off_once_is_resumed(make_sidecar, tap, moto_s3, bucket):
    data = os.urandom(3 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="resume", Body=data)
    sc = make_sidecar(chunk_size="1MiB")
    cuts = []

    def once(seen):
        if seen.method == "GET" and not cuts:
            cuts.append(seen)
            return Fault(cut_after=MiB + 777)
        return None

    tap.fault = once
    try:
        assert sc.client().get_object(Bucket=bucket, Key="resume")["Body"].read() == data
    finally:
        tap.fault = None
    gets = [s for s in tap.requests("GET", f"/{bucket}/resume")]
    assert len(gets) == 2
    first, last = map(int, gets[1].headers["range"].removeprefix("bytes=").split("-"))
    # resumed from the last byte received (bytes in flight when the connection broke are lost)
    assert 0 < first <= MiB + 777 and last == len(data) - 1, gets[1].headers["range"]


def test_throttling_is_retried(make_sidecar, tap, moto_s3, bucket):
    moto_s3.put_object(Bucket=bucket, Key="busy", Body=b"eventually")
    sc = make_sidecar(upstream_answer_within=3)
    slow_downs = []
    body = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Reduce</Message></Error>'

    def throttle(seen):
        if len(slow_downs) < 2:
            slow_downs.append(seen)
            return Fault(status=503, body=body)
        return None

    tap.fault = throttle
    try:
        assert sc.client().get_object(Bucket=bucket, Key="busy")["Body"].read() == b"eventually"
    finally:
        tap.fault = None
    assert len(slow_downs) == 2


def test_writes_are_not_retried(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar()
    tap.fault = lambda seen: Fault(status=500) if seen.method == "PUT" else None
    try:
        r = raw.request(sc.url, "PUT", f"/{bucket}/w", {}, b"payload")
        assert r.status == 500
    finally:
        tap.fault = None
    assert len(tap.requests("PUT", f"/{bucket}/w")) == 1
