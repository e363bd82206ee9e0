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

from sidecar.cache import chunkfile
from sidecar.cache.chunkfile import PIECE, PieceSums
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


def _chunk_file(tmp_path, data: bytes, pieces=(1,)) -> tuple[object, int]:
    sums = PieceSums()
    for i in range(0, len(data), 1000):  # bytes arrive in sizes unrelated to pieces
        sums.update(data[i:i + 1000])
    trailer = sums.trailer(len(data))
    p = tmp_path / "chunk"
    p.write_bytes(data + trailer)
    return p, crc32c.crc32c(trailer)


@pytest.mark.parametrize("length", [0, 1, PIECE - 1, PIECE, 3 * PIECE + 7])
def test_chunk_file_checks_every_byte_and_its_length(tmp_path, length):
    data = os.urandom(length)
    p, crc = _chunk_file(tmp_path, data)
    assert p.stat().st_size == chunkfile.file_size(length)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert chunkfile.check_fd(fd, length, crc) is None
        assert chunkfile.check_fd(fd, length, crc ^ 1) == "crc", "the trailer must be the one the index recorded"
    finally:
        os.close(fd)
    raw = p.read_bytes()
    for damaged, problem in ((raw + b"x", "size"), (raw[:-1], "size"),
                             (bytes([raw[0] ^ 1]) + raw[1:], "crc"), (raw[:-1] + bytes([raw[-1] ^ 1]), "crc")):
        p.write_bytes(damaged)
        fd = os.open(p, os.O_RDONLY)
        try:
            assert chunkfile.check_fd(fd, length, crc) == problem
            assert not chunkfile.check_bytes(damaged, length, crc)
        finally:
            os.close(fd)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5 * PIECE), st.data())
def test_a_range_checks_exactly_the_pieces_it_touches(length, data):
    """A read of lo..hi fails when a byte of a piece it touches is flipped and succeeds (with
    the right bytes) when the flipped byte lies in a piece it does not touch."""
    body = os.urandom(length)
    lo = data.draw(st.integers(0, length - 1))
    hi = data.draw(st.integers(lo, length - 1))
    flip = data.draw(st.integers(0, length - 1))
    with tempfile.TemporaryDirectory() as d:
        p, crc = _chunk_file(Path(d), body)
        raw = bytearray(p.read_bytes())
        raw[flip] ^= 0x40
        p.write_bytes(bytes(raw))
        fd = os.open(p, os.O_RDONLY)
        try:
            table = chunkfile.read_table(fd, length, crc)
            got = chunkfile.read_checked(fd, table, length, lo, hi)
        finally:
            os.close(fd)
    touched = lo // PIECE <= flip // PIECE <= hi // PIECE
    assert (got is None) == touched
    if got is not None:
        assert bytes(got) == body[lo:hi + 1]


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


def _range(s3, bucket, key, lo, hi) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={lo}-{hi}")["Body"].read()


def _checked(sc) -> int:
    return sc.admin("/stats")["cache"]["checked_bytes"]


def test_a_ranged_hit_checks_only_the_pieces_it_touches(make_sidecar, moto_s3, bucket, tmp_path):
    data = os.urandom(2 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="r", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="1MiB", ram_cache_size=0, chunk_verification="every-read")
    s3 = sc.client()
    assert _get(s3, bucket, "r") == data
    for lo, hi, pieces in ((100_000, 100_099, 1), (PIECE - 6, PIECE + 4, 2), (MiB + 5, MiB + 3 * PIECE, 4)):
        before = _checked(sc)
        assert _range(s3, bucket, "r", lo, hi) == data[lo:hi + 1]
        assert _checked(sc) - before == pieces * PIECE, (lo, hi)
    before = _checked(sc)
    assert _range(s3, bucket, "r", 100_000, 100_099) == data[100_000:100_100]
    assert _checked(sc) - before == PIECE, "every-read checks again on every read"


def test_an_unchanged_file_is_not_checked_again_and_a_changed_one_is(make_sidecar, moto_s3, bucket, tmp_path):
    data = os.urandom(2 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="w", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="1MiB", ram_cache_size=0)  # when-changed: the default
    s3 = sc.client()
    assert _get(s3, bucket, "w") == data
    time.sleep(0.1)  # file times have a coarse clock: a check this close to the write is not remembered
    assert _range(s3, bucket, "w", 0, MiB - 1) == data[:MiB]
    before = _checked(sc)
    assert _range(s3, bucket, "w", 0, MiB - 1) == data[:MiB]
    assert _range(s3, bucket, "w", 1000, 300_000) == data[1000:300_001]
    assert _checked(sc) == before, "the same file, unchanged since its check, is sent without reading it back"
    # Rewritten in place with its modification time put back: the ctime still tells.
    path = _chunks(tmp_path / "c")[0]
    st = path.stat()
    _flip(path, 200_000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _range(s3, bucket, "w", 150_000, 250_000) == data[150_000:250_001]
    assert sc.admin("/stats")["cache"]["crc_failures"] == 1


def test_a_cache_in_the_older_format_is_dropped_not_misread(make_sidecar, tap, moto_s3, bucket, tmp_path):
    data = os.urandom(MiB)
    moto_s3.put_object(Bucket=bucket, Key="o", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="1MiB")
    assert _get(sc.client(), bucket, "o") == data
    sc.stop()
    # What a v1 sidecar left: the same names, whole-chunk CRC32C, no piece table.
    (tmp_path / "c" / "v2").rename(tmp_path / "c" / "v1")
    for p in _chunks_in(tmp_path / "c" / "v1"):
        body = p.read_bytes()[:MiB]
        p.write_bytes(body)
        p.rename(p.with_name(f"{p.name.rsplit('.', 1)[0]}.{crc32c.crc32c(body):08x}"))
    sc.start()
    assert not (tmp_path / "c" / "v1").exists()
    assert sc.admin("/stats")["cache"]["chunks"] == 0
    tap.clear()
    assert _sha(_get(sc.client(), bucket, "o")) == _sha(data)
    assert len(tap.object_gets(f"/{bucket}/o")) == 1


def _chunks_in(root: Path) -> list[Path]:
    return [p for p in root.glob("??/*") if not p.name.endswith(".meta")]


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
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="1MiB", ram_cache_size=0)
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
    r = _cli("verify", "--admin", sc.admin_url.removeprefix("http://"), "--no-repair", "--json")
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
    from sidecar.verify import verify_dir

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
