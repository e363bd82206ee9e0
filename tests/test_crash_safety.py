"""Crash safety: a sidecar killed with SIGKILL mid-write under concurrent reads, overwrites and
deletes, restarted on the same cache dir, serves only the upstream's bytes and never a version
replaced by a write it acknowledged. The rig is bench/crash_cycles.py's (which runs ≥ 50 cycles)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from crash_cycles import CrashRig, History, body, differing  # noqa: E402

CHUNK = 64 * 1024


@pytest.fixture
def rig(moto, tmp_path):
    r = CrashRig(tmp_path, objects=16, chunk_size="64KiB", moto=moto)
    yield r
    r.close()


def test_kill_9_cycles_serve_only_upstream_bytes(rig):
    for run_for in (0.4, 0.9, 0.6, 1.2):
        rig.cycle(run_for)
    t = rig.tally
    assert t.cycles == 4
    # the kills hit a live load: writes acknowledged, reads checked, and chunks being written
    assert t.writes_ok and t.deletes_ok and t.chaos_reads
    assert t.kills_mid_write >= 1, "no kill caught a chunk being written"
    assert t.objects_checked == 4 * len(rig.keys) and t.ranges_checked == 3 * 4 * len(rig.keys)
    assert t.mismatched_bytes == 0 and t.mismatched_reads == 0, t.examples
    assert t.stale_versions == 0, t.examples
    assert t.errors_after_restart == 0, t.examples
    assert rig.tracebacks() == []
    # no temp file of a killed write survives a restart, and every chunk kept is whole
    assert not [p for p in (rig.sidecar.cache_dir / "v2" / "tmp").iterdir() if not p.name.endswith(".meta")]


def test_a_restarted_sidecar_serves_its_cache_from_disk(rig):
    """The restart keeps the chunks it had (a kill loses at most what was in flight)."""
    s3 = rig._client()
    for k in rig.keys:
        s3.get_object(Bucket=rig.bucket, Key=k)["Body"].read()
    rig.sidecar.kill()
    rig.sidecar.start()
    restored = rig.sidecar.admin("/stats")["cache"]["restored_chunks"]
    expected = sum(-(-len(body(k, 0, CHUNK)) // CHUNK) for k in rig.keys)
    assert restored == expected
    rig.verify()
    assert rig.tally.clean, rig.tally.examples


# --- the rig's own judgement: it must see what it is there to see ---------------------------


def test_history_calls_an_older_generation_stale_and_garbage_a_mismatch():
    h = History(["k"], CHUNK)
    g1, data1 = h.begin("k", delete=False)
    g1.started, g1.done = 9.5, 10.0
    old = body("k", 0, CHUNK)
    assert h.classify("k", data1, None, 11.0, 12.0) == ("ok", 0)
    assert h.classify("k", old, None, 11.0, 12.0)[0] == "stale"
    assert h.classify("k", old, None, 9.0, 12.0) == ("ok", 0), "a read concurrent with the write may see either"
    assert h.classify("k", data1, None, 8.0, 9.0)[0] == "mismatch", "a body from a write not yet started"
    torn = bytearray(data1)
    torn[5] ^= 1
    assert h.classify("k", bytes(torn), None, 11.0, 12.0) == ("mismatch", 1)
    assert h.classify("k", data1[100:200], (100, 199), 11.0, 12.0) == ("ok", 0)
    assert h.classify("k", old[100:200], (100, 199), 11.0, 12.0)[0] == "stale"
    assert h.classify("k", None, None, 11.0, 12.0)[0] == "mismatch", "a 404 for an object that exists"
    g2, _ = h.begin("k", delete=True)
    g2.started, g2.done = 19.5, 20.0
    assert h.classify("k", None, None, 21.0, 22.0) == ("ok", 0)
    assert h.classify("k", data1, None, 21.0, 22.0)[0] == "stale", "served after its delete"
    assert h.gen_of("k", hashlib.sha256(data1).hexdigest()) == g1.gen


def test_differing_counts_bytes():
    assert differing(b"abcd", b"abcd") == 0
    assert differing(b"abcd", b"abXd") == 1
    assert differing(b"ab", b"abcd") == 2
    assert differing(None, b"abc") == 3


def test_the_rig_sees_a_version_it_should_not_be_served(rig):
    """A write that bypasses the sidecar (metadata trusted for an hour) leaves it serving its
    cached version: the check against moto must call that stale."""
    s3 = rig._client()
    key = rig.keys[0]
    s3.get_object(Bucket=rig.bucket, Key=key)["Body"].read()
    g, data = rig.history.begin(key, delete=False)
    rig.upstream.put_object(Bucket=rig.bucket, Key=key, Body=data)
    rig.verify()
    assert rig.tally.stale_versions >= 1 and not rig.tally.clean
