"""Integrity: the Merkle tree over chunk CRCs, damaged chunk and metadata files over real HTTP,
and ``sidecar verify`` offline (a cache dir) and online (``POST /verify``, ``sidecar admin verify``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache.merkle import MerkleTree

MiB = 1024 * 1024
crcs = st.lists(st.one_of(st.none(), st.integers(0, 2**32 - 1)), min_size=1, max_size=70)


@given(crcs, st.data())
def test_merkle_diff_finds_exactly_the_changed_leaves(a, data):
    b = list(a)
    for i in data.draw(st.sets(st.integers(0, len(a) - 1))):
        b[i] = data.draw(st.one_of(st.none(), st.integers(0, 2**32 - 1)).filter(lambda x, o=a[i]: x != o))
    ta, tb = MerkleTree(a), MerkleTree(b)
    changed = [i for i in range(len(a)) if a[i] != b[i]]
    assert ta.diff(tb) == changed
    assert (ta.root == tb.root) == (not changed)


def test_merkle_root_depends_on_order_and_presence():
    assert MerkleTree([1, 2]).root != MerkleTree([2, 1]).root
    assert MerkleTree([1, None]).root != MerkleTree([1]).root
    assert MerkleTree.of({0: 5, 2: 7}, 3).root == MerkleTree([5, None, 7]).root


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _get(s3, bucket, key) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _chunks(cache: Path) -> dict[int, Path]:
    return {int(p.name.split(".")[1]): p for p in (cache / "v2").glob("??/*") if not p.name.endswith(".meta")}


def _post(sc, path: str, body: dict) -> dict:
    req = urllib.request.Request(sc.admin_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True, timeout=120)


def _flip(p: Path, offset: int) -> None:
    with open(p, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x80]))


def test_damage_the_existing_tests_do_not_cover_is_never_served(make_sidecar, tap, moto_s3, bucket, tmp_path):
    # (flip, truncate and delete of a middle chunk: test_cache_behaviour.py)
    data = os.urandom(4 * MiB + 12345)  # last chunk short
    moto_s3.put_object(Bucket=bucket, Key="rot", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="1MiB", ram_cache_size=0)
    s3 = sc.client()
    assert _get(s3, bucket, "rot") == data
    files = _chunks(tmp_path / "c")
    assert sorted(files) == [0, 1, 2, 3, 4]
    time.sleep(0.05)
    _flip(files[4], 12344)  # the last byte of the short last chunk
    files[1].write_bytes(files[1].read_bytes() + b"\0" * 7)  # replaced by a longer file
    new = tmp_path / "shorter"
    new.write_bytes(files[2].read_bytes()[:-1])
    os.replace(new, files[2])  # replaced by a shorter file
    tap.clear()
    assert _sha(_get(s3, bucket, "rot")) == _sha(data)
    assert sc.admin("/stats")["cache"]["crc_failures"] == 3
    gets = tap.object_gets(f"/{bucket}/rot")
    assert sorted(g.headers["range"] for g in gets) == [f"bytes={i * MiB}-{min((i + 1) * MiB, len(data)) - 1}"
                                                         for i in (1, 2, 4)], "each damaged chunk refetched once"
    tap.clear()
    assert _sha(_get(s3, bucket, "rot")) == _sha(data)
    assert tap.object_gets() == [], "the refetched chunks are cached again"


def test_damaged_metadata_file_is_discarded_at_start(make_sidecar, tap, moto_s3, bucket, tmp_path):
    data = os.urandom(2 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="m", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="1MiB")
    assert _get(sc.client(), bucket, "m") == data
    sc.stop()
    (meta,) = (tmp_path / "c" / "v2").glob("??/*.meta")
    raw = meta.read_bytes()
    meta.write_bytes(raw[: len(raw) // 2])
    sc.start()
    assert sc.admin("/stats")["cache"]["chunks"] == 0, "chunks of a version with damaged metadata are dropped"
    tap.clear()
    assert _sha(_get(sc.client(), bucket, "m")) == _sha(data)
    assert len(tap.object_gets(f"/{bucket}/m")) == 1


def test_online_verify_drops_and_refetches(make_sidecar, tap, moto_s3, bucket, tmp_path):
    a, b = os.urandom(3 * MiB + 5), os.urandom(MiB)
    moto_s3.put_object(Bucket=bucket, Key="a", Body=a)
    moto_s3.put_object(Bucket=bucket, Key="b", Body=b)
    # no scrub: it would find the damage below before verify is asked to
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="1MiB", ram_cache_size=0, scrub_rate=0)
    s3 = sc.client()
    assert _get(s3, bucket, "a") == a and _get(s3, bucket, "b") == b
    clean = _post(sc, "/verify", {})
    assert (clean["objects"], clean["chunks_checked"], clean["corrupt"], clean["ok"]) == (2, 5, 0, True)
    assert clean["bytes_checked"] == len(a) + len(b)
    vid_a = next(p.name.split(".")[0] for p in (tmp_path / "c" / "v2").glob("??/*.meta")
                 if json.loads(p.read_bytes())["meta"]["key"] == "a")
    files = {int(p.name.split(".")[1]): p for p in (tmp_path / "c" / "v2").glob(f"??/{vid_a}.*.*")}
    _flip(files[0], 100)
    os.truncate(files[3], 2)
    tap.clear()
    one = _post(sc, "/verify", {"bucket": bucket, "key": "a"})
    assert (one["objects"], one["chunks_checked"], one["corrupt"], one["dropped"], one["repaired"], one["ok"]) \
        == (1, 4, 2, 2, 2, True)
    assert [(c["index"], c["problem"]) for c in one["objects_with_problems"][0]["corrupt"]] == [(0, "crc"), (3, "size")]
    assert len(tap.object_gets(f"/{bucket}/a")) == 2
    tap.clear()
    assert _sha(_get(s3, bucket, "a")) == _sha(a)
    assert tap.object_gets() == [], "verify repaired the cache: the read is a hit"
    assert sc.admin("/stats")["cache"]["crc_failures"] == 2
    # the CLI: clean cache, exit 0; corruption that is dropped but not refetched, exit 1
    r = _cli("admin", "--admin", sc.admin_url.removeprefix("http://"), "verify", bucket)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checked 5 chunks (4.00 MiB) of 2 objects" in r.stdout and "0 corrupt" in r.stdout
    _flip(files[1], 5)
    r = _cli("admin", "--admin", sc.admin_url.removeprefix("http://"), "verify", "--no-repair", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and (out["corrupt"], out["dropped"], out["repaired"]) == (1, 1, 0)
    assert _sha(_get(s3, bucket, "a")) == _sha(a)


def test_verify_bad_input_is_a_400(make_sidecar, tmp_path):
    sc = make_sidecar(cache_dir=tmp_path / "c")
    for body in ({"key": "k"}, {"bucket": "a/b"}, {"bucket": "b", "repair": 3}):
        req = urllib.request.Request(sc.admin_url + "/verify", data=json.dumps(body).encode(), method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError(f"{body} accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400 and "error" in json.loads(e.read())


def test_offline_verify_and_repair(make_sidecar, tap, moto_s3, bucket, tmp_path):
    data = os.urandom(3 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="o", Body=data)
    cache = tmp_path / "c"
    sc = make_sidecar(cache_dir=cache, chunk_size="1MiB")
    assert _get(sc.client(), bucket, "o") == data
    sc.stop()
    r = _cli("verify", "--cache-dir", str(cache))
    assert r.returncode == 0 and "checked 3 chunks (3.00 MiB) of 1 objects" in r.stdout, r.stdout + r.stderr
    _flip(_chunks(cache)[2], 77)
    r = _cli("verify", "--cache-dir", str(cache))
    assert r.returncode == 1 and f"s3://{bucket}/o chunk 2: crc" in r.stdout, r.stdout
    assert len(_chunks(cache)) == 3, "without --repair nothing is touched"
    r = _cli("verify", "--cache-dir", str(cache), "--repair", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and (out["corrupt"], out["dropped"]) == (1, 1)
    assert sorted(_chunks(cache)) == [0, 1]
    assert _cli("verify", "--cache-dir", str(cache)).returncode == 0
    assert _cli("verify", "--cache-dir", str(tmp_path / "nothing")).returncode == 2
    sc.start()
    tap.clear()
    assert _sha(_get(sc.client(), bucket, "o")) == _sha(data)
    assert len(tap.object_gets(f"/{bucket}/o")) == 1


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.integers(0, 9), st.sampled_from(["flip", "shorter", "longer", "delete"]), max_size=10))
def test_verify_dir_names_exactly_the_damaged_chunks(damage):
    from sidecar.cache.policy import LRUPolicy
    from sidecar.cache.store import ChunkStore
    from sidecar.objects import ObjectMeta
    from sidecar.cache.verify import verify_dir

    cs = 4096
    with tempfile.TemporaryDirectory() as d:
        s = ChunkStore(Path(d), chunk_size=cs, capacity=1 << 20, policy=LRUPolicy())
        s.open()
        data = os.urandom(9 * cs + 100)  # 10 chunks, the last short
        v = s.version_for(ObjectMeta("b", "k", '"e"', len(data), "Tue, 14 Nov 2023 22:13:20 GMT", ()))
        for i in range(10):
            w = s.begin_write(v, i)
            w.write(data[i * cs:(i + 1) * cs])
            assert s.commit(w)
            w.close()
        for i, how in damage.items():
            p = s.chunk_file(v.vid, i)
            if how == "flip":
                _flip(p, p.stat().st_size - 1)
            elif how == "shorter":
                os.truncate(p, p.stat().st_size - 1)
            elif how == "longer":
                p.write_bytes(p.read_bytes() + b"\0")
            else:
                p.unlink()
        report = verify_dir(Path(d))
        # On disk the file names are the index: a deleted chunk is simply not cached.
        bad = {i: {"flip": "crc", "shorter": "size", "longer": "size"}[h] for i, h in damage.items() if h != "delete"}
        found = {c["index"]: c["problem"] for o in report.as_json()["objects_with_problems"] for c in o["corrupt"]}
        assert found == bad
        deleted = sum(h == "delete" for h in damage.values())
        assert report.chunks_checked == 10 - deleted and report.ok == (not bad)
        assert verify_dir(Path(d), repair=True).dropped == len(bad)
        assert verify_dir(Path(d)).as_json()["objects_with_problems"] == []
