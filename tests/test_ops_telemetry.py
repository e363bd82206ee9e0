"""Metrics and logs of a running sidecar, read over its admin port and from its stdout: the
exposition passes promtool, the dashboard's families exist and count what happened, one log
line per request, and no credential, signature or token ever shows up anywhere."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.config import Config
from prometheus_client.parser import text_string_to_metric_families

from support.tap import Fault

ROOT = Path(__file__).resolve().parents[1]
KiB = 1024

# Families the Helm chart's Grafana dashboard queries.
DASHBOARD = {
    "sidecar_requests_total": "counter", "sidecar_cache_hits_total": "counter",
    "sidecar_cache_misses_total": "counter", "sidecar_cache_hit_bytes_total": "counter",
    "sidecar_cache_miss_bytes_total": "counter", "sidecar_cache_tier_bytes_total": "counter",
    "sidecar_request_duration_seconds": "histogram",
    "sidecar_upstream_bytes_total": "counter", "sidecar_prefetch_bytes_total": "counter",
    "sidecar_prefetch_useful_bytes_total": "counter", "sidecar_bandwidth_rate_bytes": "gauge",
}


def promtool() -> str:
    path = shutil.which("promtool") or str(ROOT / ".tools/bin/promtool")
    if not os.access(path, os.X_OK):
        pytest.fail("promtool is missing: `make tools` (scripts/install-tools.sh) installs it")
    return path


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def types(text: str) -> dict[str, str]:
    return {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def request_lines(sc) -> list[dict]:
    return [e for e in sc.log_events() if e.get("event") == "request"]


def test_metrics_pass_promtool_and_count_what_happened(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(chunk_size="64KiB")
    body = os.urandom(200 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="obj", Body=body)
    s3 = sc.client()
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == body  # miss
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == body  # hit
    assert s3.get_object(Bucket=bucket, Key="obj", Range="bytes=10-19")["Body"].read() == body[10:20]  # hit
    s3.list_objects_v2(Bucket=bucket)
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key="absent")
    text = sc.metrics_text()

    r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip(), r.stderr.strip()) == (0, "", ""), r.stdout + r.stderr

    t = types(text)
    for name, kind in DASHBOARD.items():
        assert t.get(name.removesuffix("_total")) == kind or t.get(name) == kind, f"{name} ({kind}) missing"
    v = samples(text)
    assert v[("sidecar_cache_misses_total", (("label", ""),))] == 1
    assert v[("sidecar_cache_hits_total", (("label", ""),))] == 2
    assert v[("sidecar_cache_miss_bytes_total", (("label", ""),))] == len(body)
    assert v[("sidecar_cache_hit_bytes_total", (("label", ""),))] == len(body) + 10
    assert v[("sidecar_requests_total", (("operation", "GetObject"), ("status", "200")))] == 2
    assert v[("sidecar_requests_total", (("operation", "GetObject"), ("status", "206")))] == 1
    assert v[("sidecar_requests_total", (("operation", "ListObjectsV2"), ("status", "200")))] == 1
    assert v[("sidecar_requests_total", (("operation", "GetObject"), ("status", "404")))] == 1
    assert v[("sidecar_request_duration_seconds_count", (("operation", "GetObject"), ("outcome", "hit")))] == 2
    assert v[("sidecar_request_duration_seconds_count", (("operation", "GetObject"), ("outcome", "miss")))] == 1
    assert v[("sidecar_upstream_bytes_total", (("purpose", "demand"),))] == len(body)
    assert v[("sidecar_cache_bytes", ())] == len(body)
    assert v[("sidecar_cache_entries", ())] == 4
    assert v[("sidecar_cache_objects", ())] == 1
    assert v[("sidecar_cache_crc_failures_total", ())] == 0
    assert v[("sidecar_requests_in_flight", ())] == 0
    assert v[("sidecar_build_info", (("version", "0.1.0"),))] == 1
    assert v[("sidecar_prefetch_bytes_total", ())] == 0 and v[("sidecar_bandwidth_rate_bytes", ())] == 0
    assert ("process_resident_memory_bytes", ()) in v


def test_crc_failures_are_counted_and_reported(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(chunk_size="64KiB", event_interval="0.3", ram_cache_size="0")  # every hit from disk
    body = os.urandom(130 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="rot", Body=body)
    s3 = sc.client()
    assert s3.get_object(Bucket=bucket, Key="rot")["Body"].read() == body
    chunks = [p for p in (sc.cache_dir / "v2").glob("??/*") if not p.name.endswith(".meta")]
    assert len(chunks) == 3
    for p in chunks:  # flip one byte in each, length unchanged
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    assert s3.get_object(Bucket=bucket, Key="rot")["Body"].read() == body, "rotten chunks are refetched"
    v = samples(sc.metrics_text())
    assert v[("sidecar_cache_crc_failures_total", ())] == 3
    line = wait_for(lambda: next((e for e in sc.log_events() if e.get("event") == "crc_failures"), None),
                    what="a crc_failures event in the log")
    assert line["level"] == "warning" and line["chunks"] == 3


def test_one_json_line_per_request(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(chunk_size="64KiB")
    body = os.urandom(100 * KiB)
    moto_s3.put_object(Bucket=bucket, Key="dir/a file+x", Body=body)
    s3 = sc.client()
    ids = []
    r = s3.get_object(Bucket=bucket, Key="dir/a file+x")
    assert r["Body"].read() == body
    ids.append(r["ResponseMetadata"]["RequestId"])
    r = s3.get_object(Bucket=bucket, Key="dir/a file+x", Range="bytes=0-99")
    assert r["Body"].read() == body[:100]
    ids.append(r["ResponseMetadata"]["RequestId"])
    ids.append(s3.head_object(Bucket=bucket, Key="dir/a file+x")["ResponseMetadata"]["RequestId"])
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 3 else None)(request_lines(sc)), what="3 request lines")
    assert [e["request_id"] for e in lines] == ids, "one line per request, its id the x-amz-request-id returned"
    miss, hit, head = lines
    assert miss["operation"] == "GetObject" and miss["bucket"] == bucket and miss["key"] == "dir/a file+x"
    assert (miss["status"], miss["outcome"], miss["bytes"], miss["bytes_upstream"]) == (200, "miss", len(body),
                                                                                       len(body))
    assert (hit["status"], hit["outcome"], hit["range"], hit["bytes"], hit["bytes_cache"]) == (206, "hit",
                                                                                            "bytes=0-99", 100, 100)
    assert (head["operation"], head["status"], head["bytes"]) == ("HeadObject", 200, 0)
    for e in lines:
        assert e["level"] == "info" and e["logger"] == "sidecar.access" and e["ms"] >= 0
        assert e["timestamp"].endswith("Z")


def test_hashed_keys_and_level_off(make_sidecar, moto_s3, bucket):
    hashed = make_sidecar(log_keys="hash")
    quiet = make_sidecar(log_level="off")
    moto_s3.put_object(Bucket=bucket, Key="secret-project/plan.txt", Body=b"x")
    for sc in (hashed, quiet):
        assert sc.client().get_object(Bucket=bucket, Key="secret-project/plan.txt")["Body"].read() == b"x"
    line = wait_for(lambda: next(iter(request_lines(hashed)), None), what="a request line")
    assert line["key"].startswith("sha256:") and len(line["key"]) == len("sha256:") + 16
    hashed.stop()
    quiet.stop()
    assert "secret-project" not in hashed.log_path.read_text()
    assert quiet.log_path.read_text().strip() == "", "log level off: not even the start line"


def test_keys_hashed_after_a_reload_also_on_hits_answered_from_a_remembered_plan(make_sidecar, moto_s3, bucket,
                                                                                tmp_path):
    """The lean path prepares a hit's request-log fields once per remembered request; a reload
    that turns ``log_keys`` to ``hash`` must reach those too, not only requests planned after."""
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(yaml.safe_dump({"log_keys": "plain"}))
    sc = make_sidecar(config=str(cfg))
    moto_s3.put_object(Bucket=bucket, Key="secret-project/plan.txt", Body=b"x")
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=10)
    for _ in range(3):  # a miss, then the same request again: a hit answered from its plan
        conn.request("GET", f"/{bucket}/secret-project/plan.txt")
        assert conn.getresponse().read() == b"x"
    cfg.write_text(yaml.safe_dump({"log_keys": "hash"}))
    r = urllib.request.urlopen(urllib.request.Request(sc.admin_url + "/reload", data=b"{}", method="POST"), timeout=5)
    assert json.loads(r.read())["changed"] == ["log_keys"]
    conn.request("GET", f"/{bucket}/secret-project/plan.txt")
    assert conn.getresponse().read() == b"x"
    conn.close()
    lines = wait_for(lambda: (lambda ls: ls if len(ls) == 4 else None)(request_lines(sc)), what="4 request lines")
    assert [e["key"] for e in lines[:3]] == ["secret-project/plan.txt"] * 3
    assert lines[3]["key"].startswith("sha256:") and lines[3]["outcome"] == "hit"


def test_console_format_on_request(make_sidecar, moto_s3, bucket):
    sc = make_sidecar(log_format="console")
    moto_s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    sc.client().get_object(Bucket=bucket, Key="k")["Body"].read()
    sc.stop()
    text = sc.log_path.read_text()
    line = next(line for line in text.splitlines() if "request" in line and "GetObject" in line)
    assert not line.startswith("{") and "key=k" in line


# --- secrets -----------------------------------------------------------------------------------

CLIENT_KEY_ID, CLIENT_SECRET, CLIENT_TOKEN = "AKIACLIENTKEYID00001", "client-secret-Q7w9", "client-session-token-Z3x8"
UPSTREAM_KEY_ID, UPSTREAM_SECRET, UPSTREAM_TOKEN = "AKIAUPSTREAMKEY00001", "upstream-secret-P4k2", "upstream-token-M5n6"
URL_PASSWORD = "url-password-R8t1"


def test_credentials_never_appear_in_logs_metrics_errors_or_config(make_sidecar, moto_s3, bucket, tmp_path):
    sc = make_sidecar(log_level="debug", chunk_size="64KiB",
                      env={"AWS_ACCESS_KEY_ID": UPSTREAM_KEY_ID, "AWS_SECRET_ACCESS_KEY": UPSTREAM_SECRET,
                           "AWS_SESSION_TOKEN": UPSTREAM_TOKEN})
    sent: list[str] = []  # every Authorization header, presigned URL and token the client sent
    s3 = boto3.client("s3", endpoint_url=sc.url, region_name="us-east-1", aws_access_key_id=CLIENT_KEY_ID,
                      aws_secret_access_key=CLIENT_SECRET, aws_session_token=CLIENT_TOKEN,
                      config=Config(retries={"max_attempts": 1}))

    def record(request, **kw):
        auth = request.headers.get("Authorization")
        sent.append(auth.decode() if isinstance(auth, bytes) else auth)

    s3.meta.events.register("before-send.s3", record)
    moto_s3.put_object(Bucket=bucket, Key="data.bin", Body=os.urandom(150 * KiB))
    s3.put_object(Bucket=bucket, Key="written", Body=b"through the sidecar")
    s3.get_object(Bucket=bucket, Key="data.bin")["Body"].read()
    s3.get_object(Bucket=bucket, Key="data.bin", Range="bytes=5-9")["Body"].read()
    s3.head_object(Bucket=bucket, Key="data.bin")
    s3.list_objects_v2(Bucket=bucket, Prefix="d")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key="absent")
    bodies: list[str] = []
    v4 = boto3.client("s3", endpoint_url=sc.url, region_name="us-east-1", aws_access_key_id=CLIENT_KEY_ID,
                      aws_secret_access_key=CLIENT_SECRET, aws_session_token=CLIENT_TOKEN,
                      config=Config(signature_version="s3v4"))
    for client, key in ((s3, "data.bin"), (s3, "absent"), (v4, "data.bin"), (v4, "absent"), (v4, "written")):
        # query-string authentication: SigV2 (boto3's default for presigning here) and SigV4
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600)
        sent.append(url)
        for rng in (None, "bytes=0-3"):
            req = urllib.request.Request(url, headers={"Range": rng} if rng else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    bodies.append(str(dict(r.headers)))
            except urllib.error.HTTPError as e:
                bodies.append(str(dict(e.headers)) + e.read().decode())
    bad = sc.url + f"/{bucket}/%FF%FE?" + sent[-1].split("?", 1)[1]  # invalid key: an error answer
    try:
        urllib.request.urlopen(bad, timeout=10)
    except urllib.error.HTTPError as e:
        bodies.append(e.read().decode())
    signatures = [m for part in sent for m in re.findall(r"Signature=([^&,\s]+)", part)]
    assert len(signatures) == len(sent) and all(len(s) >= 20 for s in signatures), sent
    signatures += [urllib.parse.unquote(s) for s in signatures]

    metrics, stats, running_config = sc.metrics_text(), json.dumps(sc.admin("/stats")), json.dumps(sc.admin("/config"))
    show = subprocess.run([sys.executable, "-m", "sidecar", "config", "show",
                           "--upstream", f"https://{UPSTREAM_KEY_ID}:{URL_PASSWORD}@s3.example.com"],
                          capture_output=True, text=True, timeout=60)
    assert show.returncode == 0 and "s3.example.com" in show.stdout
    bad_flag = subprocess.run([sys.executable, "-m", "sidecar", "config", "show",
                               "--upstream", f"ftp://{UPSTREAM_KEY_ID}:{URL_PASSWORD}@host"],
                              capture_output=True, text=True, timeout=60)
    assert bad_flag.returncode == 2
    assert sc.stop() == 0
    logs = sc.log_path.read_text()
    assert logs.count('"event": "request"') >= 16

    places = {"logs": logs, "metrics": metrics, "stats": stats, "running config": running_config,
              "config show": show.stdout + show.stderr, "config error": bad_flag.stdout + bad_flag.stderr,
              "responses": "\n".join(bodies)}
    forbidden = [CLIENT_SECRET, CLIENT_TOKEN, CLIENT_KEY_ID, UPSTREAM_SECRET, UPSTREAM_TOKEN, UPSTREAM_KEY_ID,
                 URL_PASSWORD, *signatures]
    for where, text in places.items():
        for secret in forbidden:
            assert secret not in text, f"{secret!r} leaked into {where}"
    for where in ("logs", "metrics", "stats", "running config"):
        for marker in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "AWS4-HMAC-SHA256",
                       "Authorization"):
            assert marker.lower() not in places[where].lower(), f"{marker} in {where}"


def test_notable_events_are_logged(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(chunk_size="1MiB", cache_size="4MiB", event_interval="1")
    s3 = sc.client()
    for i in range(8):
        moto_s3.put_object(Bucket=bucket, Key=f"o{i}", Body=os.urandom(1024 * KiB))
    for i in range(8):
        assert len(s3.get_object(Bucket=bucket, Key=f"o{i}")["Body"].read()) == 1024 * KiB
    burst = wait_for(lambda: next((e for e in sc.log_events() if e.get("event") == "eviction_burst"), None),
                     what="an eviction_burst event")
    assert burst["bytes"] >= 4 * 1024 * KiB and burst["capacity_bytes"] == 4 * 1024 * KiB
    moto_s3.put_object(Bucket=bucket, Key="unreachable", Body=b"x")
    tap.fault = lambda seen: Fault(drop=True)
    try:
        with pytest.raises(Exception):
            s3.get_object(Bucket=bucket, Key="unreachable")
        trouble = wait_for(lambda: next((e for e in sc.log_events() if e.get("event") == "upstream_errors"), None),
                           what="an upstream_errors event")
    finally:
        tap.fault = None
    assert trouble["level"] == "warning" and sum(trouble["by_kind"].values()) >= 1
