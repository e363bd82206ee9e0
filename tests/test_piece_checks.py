"""Piece-level verification of chunk files (format v2): the trailer, checks that follow the bytes
a read touches, the identity recheck, strict mode, format migration and the scrub."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache import chunkfile
from sidecar.cache.policy import LRUPolicy
from sidecar.cache.scrub import scrub_forever
from sidecar.cache.store import ChunkStore
from sidecar.upstream.base import ObjectMeta

P = chunkfile.PIECE_SIZE
MiB = 1024 * 1024


def _file(tmp: Path, data: bytes, splits: list[int]) -> tuple[Path, int]:
    sums = chunkfile.PieceSums()
    pos = 0
    for n in splits:
        sums.update(data[pos:pos + n])
        pos += n
    sums.update(data[pos:])
    trailer, digest = sums.trailer()
    p = tmp / "chunk"
    p.write_bytes(data + trailer)
    return p, digest


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 5 * P + 3), st.lists(st.integers(1, P + 7), max_size=8), st.data())
def test_pieces_check_exactly_the_bytes_asked_for(tmp_path_factory, length, splits, draw):
    tmp = tmp_path_factory.mktemp("pc")
    data = os.urandom(length)
    p, digest = _file(tmp, data, splits)  # however the bytes arrived, the same table
    assert p.stat().st_size == chunkfile.file_size(length)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert chunkfile.check_file(fd, length, digest) is None
        if not length:
            return
        table, piece = chunkfile.read_table(fd, length, digest)
        lo = draw.draw(st.integers(0, length - 1))
        hi = draw.draw(st.integers(lo, length - 1))
        view = chunkfile.check_pieces(fd, table, piece, length, lo // piece, hi // piece)
        assert bytes(view[lo - lo // piece * piece:hi - lo // piece * piece + 1]) == data[lo:hi + 1]
    finally:
        os.close(fd)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3 * P), st.data())
def test_any_flipped_byte_of_the_file_is_found(tmp_path_factory, length, draw):
    tmp = tmp_path_factory.mktemp("flip")
    data = os.urandom(length)
    p, digest = _file(tmp, data, [])
    raw = bytearray(p.read_bytes())
    at = draw.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= 1 << draw.draw(st.integers(0, 7))
    p.write_bytes(raw)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert chunkfile.check_file(fd, length, digest) is not None
        found = chunkfile.read_table(fd, length, digest)
        if at < length:  # a data byte: the table is good, the piece holding it is not
            table, piece = found
            assert chunkfile.check_pieces(fd, table, piece, length, at // piece, at // piece) is None
        else:  # the trailer: the table is never trusted
            assert found is None
    finally:
        os.close(fd)


def _meta(size: int, etag: str = '"e"') -> ObjectMeta:
    return ObjectMeta("b", "k", etag, size, "Tue, 14 Nov 2023 22:13:20 GMT", ())


def _store(root: Path, cs: int = 4 * P, **kw) -> ChunkStore:
    s = ChunkStore(root, chunk_size=cs, capacity=64 * MiB, policy=LRUPolicy(), **kw)
    s.open()
    return s


def _put(s: ChunkStore, data: bytes):
    v = s.version_for(_meta(len(data)))
    for i in range(s.layout.count(v.meta.size)):
        w = s.begin_write(v, i)
        w.write(data[i * s.chunk_size:(i + 1) * s.chunk_size])
        assert s.commit(w)
        w.close()
    return v


def _read(s: ChunkStore, vid: str, index: int, lo: int, hi: int) -> tuple[bytes | None, bool]:
    """(bytes lo..hi or None if bad, whether they were handed out unchecked for sendfile)."""
    c = s.open_chunk(vid, index, lo, hi)
    assert c is not None
    try:
        if c.verified:
            return os.pread(c.fd, hi - lo + 1, lo), True
        view = c.check(lo, hi)
        return (None if view is None else bytes(view)), False
    finally:
        c.close()  # settles the check: good pieces remembered, a bad chunk dropped


def test_a_read_checks_only_the_pieces_it_touches(tmp_path):
    s = _store(tmp_path)
    data = os.urandom(4 * P)
    v = _put(s, data)
    path = s.chunk_file(v.vid, 0)
    with open(path, "r+b") as f:  # rot in the last piece
        f.seek(3 * P + 5)
        f.write(bytes([data[3 * P + 5] ^ 0xFF]))
    assert _read(s, v.vid, 0, 10, 2 * P + 3) == (data[10:2 * P + 4], False), "pieces 0-2 are good"
    assert _read(s, v.vid, 0, 3 * P, 3 * P + 9) == (None, False)
    assert not s.has(v.vid, 0) and s.stats.crc_failures == 1


@pytest.mark.parametrize("strict", [False, True])
def test_checked_pieces_are_sent_unchecked_until_the_file_changes(tmp_path, strict):
    s = _store(tmp_path, verify_every_read=strict)
    data = os.urandom(4 * P)
    v = _put(s, data)
    assert _read(s, v.vid, 0, 0, P - 1) == (data[:P], False)
    assert _read(s, v.vid, 0, 0, P - 1) == (data[:P], not strict), "checked since the file last changed"
    assert _read(s, v.vid, 0, P, 2 * P - 1) == (data[P:2 * P], False), "a piece not yet checked"
    time.sleep(0.05)  # file times have a coarse clock
    path = s.chunk_file(v.vid, 0)
    with open(path, "r+b") as f:  # rewritten with the very same bytes: the identity changed
        f.write(data[:16])
    assert _read(s, v.vid, 0, 0, P - 1) == (data[:P], False), "checked again after any change"
    assert _read(s, v.vid, 0, 0, P - 1) == (data[:P], not strict)


def test_a_rewritten_file_with_different_bytes_is_caught_after_a_checked_read(tmp_path):
    s = _store(tmp_path)
    data = os.urandom(4 * P)
    v = _put(s, data)
    assert _read(s, v.vid, 0, 0, 4 * P - 1)[0] == data
    time.sleep(0.05)
    path = s.chunk_file(v.vid, 0)
    other = tmp_path / "other"
    raw = path.read_bytes()
    other.write_bytes(raw[:2 * P] + b"\0" * 100 + raw[2 * P + 100:])
    os.replace(other, path)  # a new inode under the same name, piece 2 different
    assert _read(s, v.vid, 0, 200, 300) == (data[200:301], False), "checked again; piece 0 is good"
    assert _read(s, v.vid, 0, P, 2 * P + 5) == (None, False)


def test_older_cache_formats_are_dropped_at_start_never_read(tmp_path):
    old = tmp_path / "v1" / "ab"
    old.mkdir(parents=True)
    (old / "abcd.meta").write_text("{}")
    (old / "abcd.0.00000000").write_bytes(b"x" * 100)
    s = _store(tmp_path)
    assert not (tmp_path / "v1").exists()
    assert s.versions == {} and s.used_bytes == 0
    assert (tmp_path / chunkfile.FORMAT).is_dir()


def test_a_chunk_file_without_a_piece_table_is_never_served(tmp_path):
    """A v1-style file (bytes only) under a v2 name: its size is wrong, so it is a miss."""
    s = _store(tmp_path)
    data = os.urandom(4 * P)
    v = _put(s, data)
    s.chunk_file(v.vid, 0).write_bytes(data)
    assert _read(s, v.vid, 0, 0, 10) == (None, False)


def test_the_scrub_finds_rot_the_identity_cannot_show_and_times_its_pass(tmp_path):
    s = _store(tmp_path)
    data = os.urandom(3 * 4 * P)
    v = _put(s, data)
    assert _read(s, v.vid, 1, 0, 4 * P - 1)[0] == data[4 * P:8 * P]
    assert _read(s, v.vid, 1, 0, 4 * P - 1)[1], "checked: sent unchecked from now on"
    path = s.chunk_file(v.vid, 1)
    st0 = path.stat()
    with open(path, "r+b") as f:
        f.seek(7)
        f.write(b"\xff\x00")
    os.utime(path, ns=(st0.st_atime_ns, st0.st_mtime_ns))  # (media rot leaves mtime as it was)

    async def run() -> None:
        task = asyncio.ensure_future(scrub_forever(s, 1 << 40))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if s.stats.scrub_pass_seconds > 0:
                break
        task.cancel()

    asyncio.run(run())
    assert not s.has(v.vid, 1) and s.stats.crc_failures == 1
    assert s.has(v.vid, 0) and s.has(v.vid, 2)
    assert s.stats.scrubbed_bytes >= 2 * 4 * P and s.stats.scrub_pass_seconds > 0
    assert _read(s, v.vid, 2, 0, 10) == (data[8 * P:8 * P + 11], True), "a good scrub counts as a check"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_a_ranged_hit_is_served_from_good_pieces_of_a_damaged_chunk(make_sidecar, tap, moto_s3, bucket, tmp_path):
    data = os.urandom(2 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="o", Body=data)
    sc = make_sidecar(cache_dir=tmp_path / "c", chunk_size="1MiB", ram_cache_size=0, scrub_rate=0)
    s3 = sc.client()
    assert s3.get_object(Bucket=bucket, Key="o")["Body"].read() == data
    sc.stop()
    (victim,) = [p for p in (tmp_path / "c" / chunkfile.FORMAT).glob("??/*.0.*")]
    with open(victim, "r+b") as f:  # rot in chunk 0's last piece
        f.seek(MiB - 3)
        f.write(b"\x00\x01\x02")
    sc.start()
    s3 = sc.client()
    tap.clear()
    got = s3.get_object(Bucket=bucket, Key="o", Range="bytes=1000-300000")["Body"].read()
    assert got == data[1000:300001] and tap.object_gets() == [], "only the pieces asked for are checked"
    got = s3.get_object(Bucket=bucket, Key="o", Range=f"bytes=1000-{MiB + 99}")["Body"].read()
    assert _sha(got) == _sha(data[1000:MiB + 100])
    assert [g.headers["range"] for g in tap.object_gets(f"/{bucket}/o")] == [f"bytes=0-{MiB - 1}"]
    assert sc.admin("/stats")["cache"]["crc_failures"] == 1
