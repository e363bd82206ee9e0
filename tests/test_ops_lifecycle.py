"""Lifecycle of a sidecar process: SIGTERM drains responses in flight (up to shutdown_grace) and
exits 0; SIGHUP or a changed config file reloads what can change at run time, without dropping
connections, and a bad file keeps the running configuration."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from support.tap import Fault

MiB = 1024 * 1024


def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def event(sc, name: str) -> list[dict]:
    return [e for e in sc.log_events() if e.get("event") == name]


class SlowDownload(threading.Thread):
    """GET one object over a raw connection, reading it in small pieces."""

    def __init__(self, sc, bucket: str, key: str) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=30)
        self.path = f"/{bucket}/{key}"
        self.started = threading.Event()
        self.body = b""
        self.length: int | None = None  # Content-Length announced
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.conn.request("GET", self.path)
            r = self.conn.getresponse()
            self.length = int(r.headers["Content-Length"])
            parts = []
            while piece := r.read(64 * 1024):
                parts.append(piece)
                self.started.set()
            self.body = b"".join(parts)
        except BaseException as e:  # noqa: BLE001
            self.error = e
        finally:
            self.started.set()
            self.conn.close()


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def test_sigterm_lets_a_slow_download_finish_then_exits_0(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(chunk_size="1MiB", shutdown_grace="15")
    data = os.urandom(3 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="slow", Body=data)
    tap.fault = lambda seen: Fault(throttle_bps=1.5 * MiB) if "/slow" in seen.path else None
    try:
        dl = SlowDownload(sc, bucket, "slow")
        dl.start()
        assert dl.started.wait(10) and not dl.body, "the download is under way"
        t0 = time.monotonic()
        sc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(sc.port), 3, "the S3 port to stop accepting")
        with pytest.raises(urllib.error.HTTPError) as e:  # the admin port stays up, saying "draining"
            urllib.request.urlopen(sc.admin_url + "/readyz", timeout=5)
        assert e.value.code == 503 and json.loads(e.value.read())["draining"] is True
        dl.join(20)
        assert dl.error is None and dl.length == len(data)
        assert hashlib.sha256(dl.body).digest() == hashlib.sha256(data).digest()
        assert sc.proc.wait(20) == 0
        assert time.monotonic() - t0 < 10
    finally:
        tap.fault = None
    stopping, stopped = event(sc, "stopping"), event(sc, "stopped")
    assert stopping[0]["signal"] == "SIGTERM" and stopping[0]["in_flight"] == 1
    assert stopped[0]["in_flight_at_stop"] == 1 and stopped[0]["drain_s"] > 0.5
    request = event(sc, "request")
    assert [(r["status"], r["bytes"]) for r in request] == [(200, len(data))]


def test_sigterm_cuts_responses_that_outlast_the_grace(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(chunk_size="1MiB", shutdown_grace="1")
    moto_s3.put_object(Bucket=bucket, Key="slower", Body=os.urandom(4 * MiB))
    tap.fault = lambda seen: Fault(throttle_bps=MiB) if "/slower" in seen.path else None
    try:
        dl = SlowDownload(sc, bucket, "slower")
        dl.start()
        assert dl.started.wait(10)
        t0 = time.monotonic()
        sc.proc.send_signal(signal.SIGTERM)
        assert sc.proc.wait(15) == 0
        elapsed = time.monotonic() - t0
        dl.join(10)
    finally:
        tap.fault = None
    assert 0.9 < elapsed < 6, elapsed
    assert dl.length == 4 * MiB and (dl.error is not None or len(dl.body) < dl.length), \
        "cut short: the connection closes before the announced length, never a body that looks complete"


def write_config(path, **settings) -> None:
    path.write_text(yaml.safe_dump(settings))


def test_sighup_reloads_what_can_change_and_keeps_the_rest(make_sidecar, moto_s3, bucket, tmp_path):
    cfg = tmp_path / "sidecar.yaml"
    rules = [{"bucket": bucket, "labels": {"team": "a"}}]
    write_config(cfg, log_level="info", metadata_ttl=60, readahead_chunks=4, chunk_size="1MiB", cache_size="1GiB",
                 rules=rules)
    sc = make_sidecar(config=str(cfg), cache_size="2GiB")  # a flag outranks the file, then and on reload
    s3 = sc.client()
    moto_s3.put_object(Bucket=bucket, Key="k", Body=b"one")
    conn = http.client.HTTPConnection("127.0.0.1", sc.port, timeout=10)  # kept alive across the reload
    conn.request("GET", f"/{bucket}/k")
    assert conn.getresponse().read() == b"one"
    moto_s3.put_object(Bucket=bucket, Key="k", Body=b"two")  # behind the sidecar's back

    write_config(cfg, log_level="warning", metadata_ttl=0.2, readahead_chunks=0, chunk_size="2MiB", cache_size="3GiB",
                 rules=[{"bucket": bucket, "labels": {"team": "b"}}])
    sc.proc.send_signal(signal.SIGHUP)
    done = wait_for(lambda: event(sc, "config_reloaded"), what="config_reloaded")[0]
    assert done["reason"] == "SIGHUP"
    assert sorted(done["changed"]) == ["log_level", "metadata_ttl", "readahead_chunks", "rules"]
    assert done["restart_required"] == ["chunk_size"]
    running = sc.admin("/config")
    assert (running["log_level"], running["metadata_ttl"], running["readahead_chunks"], running["chunk_size"],
            running["cache_size"]) == ("warning", 0.2, 0, "1MiB", "2GiB"), "chunk size only changes on a restart"
    time.sleep(0.3)
    conn.request("GET", f"/{bucket}/k")
    assert conn.getresponse().read() == b"two", "the new metadata TTL applies, on the same connection"
    conn.close()
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two"
    text = sc.metrics_text()
    assert 'sidecar_cache_hits_total{label="team=b"} 1.0' in text, "the reloaded rules label new reads"
    assert 'sidecar_config_reloads_total{result="ok"} 1.0' in text
    assert "sidecar_config_restart_required 1.0" in text
    time.sleep(0.3)
    requests_logged = len(event(sc, "request"))
    assert requests_logged == 1, "log level warning: no request lines after the reload"

    cfg.write_text(yaml.safe_dump({"rules": [{"bucket": bucket, "qos": "Gold"}]}))
    sc.proc.send_signal(signal.SIGHUP)
    failed = wait_for(lambda: event(sc, "config_reload_failed"), what="config_reload_failed")
    assert len(failed) == 1 and "rules[0].qos" in failed[0]["error"] and failed[0]["level"] == "error"
    assert sc.admin("/config")["log_level"] == "warning", "a bad file keeps the running configuration"
    assert 'sidecar_config_reloads_total{result="error"} 1.0' in sc.metrics_text()
    assert sc.stop() == 0


def test_a_changed_file_is_reloaded(make_sidecar, moto_s3, bucket, tmp_path):
    cfg = tmp_path / "watched.yaml"
    write_config(cfg, readahead_chunks=4)
    sc = make_sidecar(config=str(cfg), config_watch_interval="0.2")
    time.sleep(0.3)
    write_config(cfg, readahead_chunks=8, log_level="debug")
    done = wait_for(lambda: event(sc, "config_reloaded"), what="a reload after the file changed")[0]
    assert done["reason"] == "file-changed" and sorted(done["changed"]) == ["log_level", "readahead_chunks"]
    assert sc.admin("/config")["readahead_chunks"] == 8
    r = urllib.request.urlopen(urllib.request.Request(sc.admin_url + "/reload", data=b"{}", method="POST"), timeout=5)
    assert json.loads(r.read()) == {"ok": True, "reason": "admin-api", "changed": [], "restart_required": [],
                                    "error": None}


def test_a_second_sigterm_stops_at_once(make_sidecar, tap, moto_s3, bucket):
    sc = make_sidecar(chunk_size="1MiB", shutdown_grace="30")
    moto_s3.put_object(Bucket=bucket, Key="long", Body=os.urandom(4 * MiB))
    tap.fault = lambda seen: Fault(throttle_bps=MiB) if "/long" in seen.path else None
    try:
        dl = SlowDownload(sc, bucket, "long")
        dl.start()
        assert dl.started.wait(10)
        sc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: event(sc, "stopping"), what="stopping")
        t0 = time.monotonic()
        sc.proc.send_signal(signal.SIGTERM)
        assert sc.proc.wait(10) == 1
        assert time.monotonic() - t0 < 2
        dl.join(10)
    finally:
        tap.fault = None
    assert event(sc, "stopping_now")[0]["level"] == "warning"
