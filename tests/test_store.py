"""The chunk store on a real directory: atomic commits, CRC verification, rebuild, budget."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.cache.policy import LRUPolicy
from sidecar.cache.store import ChunkStore, version_id
from sidecar.objects import ObjectMeta

CS = 64 * 1024


def meta(key: str, size: int, etag: str = '"e1"', bucket: str = "b") -> ObjectMeta:
    return ObjectMeta(bucket, key, etag, size, "Tue, 14 Nov 2023 22:13:20 GMT", (("content-type", "x/y"),))


def store(root, capacity=10 * CS, **kw) -> ChunkStore:
    s = ChunkStore(root, chunk_size=CS, capacity=capacity, policy=LRUPolicy(), **kw)
    s.open()
    return s


def put(s: ChunkStore, m: ObjectMeta, data: bytes) -> None:
    v = s.version_for(m)
    for i in range(s.layout.count(v.meta.size)):
        w = s.begin_write(v, i)
        w.write(data[i * CS:(i + 1) * CS])
        assert s.commit(w)
        w.close()


def read(s: ChunkStore, m: ObjectMeta) -> bytes | None:
    v = s.version_for(m)
    out = b""
    for i in range(s.layout.count(v.meta.size)):
        c = s.open_verified(v.vid, i)
        if c is None:
            return None
        out += c.data if c.data is not None else os.pread(c.fd, c.length, 0)
        c.close()
    return out


def test_commit_verify_and_rebuild(tmp_path):
    s = store(tmp_path)
    data = os.urandom(3 * CS + 100)
    m = meta("k", len(data))
    put(s, m, data)
    assert read(s, m) == data
    assert s.used_bytes == len(data)
    s2 = store(tmp_path)
    assert s2.stats.rebuilt_chunks == 4 and s2.used_bytes == len(data)
    assert read(s2, m) == data
    assert [v.meta for v in s2.versions.values()] == [m]


def test_files_are_private(tmp_path):
    s = store(tmp_path)
    put(s, meta("k", 10), b"0123456789")
    for p in (tmp_path / "v2").rglob("*"):
        assert p.stat().st_mode & 0o077 == 0, p


def test_corruption_is_a_miss_and_the_file_goes(tmp_path):
    s = store(tmp_path, ram_cache_size=0)
    data = os.urandom(2 * CS)
    m = meta("k", len(data))
    put(s, m, data)
    vid = s.version_for(m).vid
    path = next(p for p in (tmp_path / "v2").rglob(f"{vid}.1.*"))
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert s.open_verified(vid, 0) is not None
    assert s.open_verified(vid, 1) is None
    assert s.stats.crc_failures == 1 and not path.exists() and s.used_bytes == CS


def test_abort_leaves_nothing(tmp_path):
    s = store(tmp_path)
    m = meta("k", 2 * CS)
    v = s.version_for(m)
    w = s.begin_write(v, 0)
    w.write(b"x" * 100)
    assert not s.commit(w), "an incomplete chunk is never committed"
    w.close()
    assert list((tmp_path / "v2" / "tmp").iterdir()) == []
    assert s.used_bytes == 0 and s.space.reserved == 0


def test_budget_evicts_least_recent(tmp_path):
    s = store(tmp_path, capacity=4 * CS)
    objs = {f"o{i}": os.urandom(2 * CS) for i in range(3)}
    put(s, meta("o0", 2 * CS), objs["o0"])
    put(s, meta("o1", 2 * CS), objs["o1"])
    assert read(s, meta("o0", 2 * CS)) == objs["o0"]  # o0 is now more recent than o1
    put(s, meta("o2", 2 * CS), objs["o2"])
    assert s.used_bytes <= 4 * CS and s.stats.evictions == 2
    assert read(s, meta("o1", 2 * CS)) is None
    assert read(s, meta("o0", 2 * CS)) == objs["o0"]


def test_drop_version_and_new_etag(tmp_path):
    s = store(tmp_path)
    put(s, meta("k", 10, '"v1"'), b"a" * 10)
    put(s, meta("k", 10, '"v2"'), b"b" * 10)
    assert read(s, meta("k", 10, '"v1"')) == b"a" * 10, "versions never mix: each has its own chunks"
    s.drop_version(s.version_for(meta("k", 10, '"v1"')).vid)
    assert read(s, meta("k", 10, '"v1"')) is None
    assert read(s, meta("k", 10, '"v2"')) == b"b" * 10


def test_rebuild_keeps_only_the_newest_version_of_a_key(tmp_path):
    """At start the catalog decides which version of each object found on disk is current
    (the one stored last); the store keeps that one and deletes the others' files."""
    from sidecar.catalog import current_on_disk

    s = store(tmp_path)
    put(s, meta("k", 10, '"v1"'), b"a" * 10)
    put(s, meta("k", 10, '"v2"'), b"b" * 10)
    put(s, meta("other", 10), b"c" * 10)
    s2 = ChunkStore(tmp_path, chunk_size=CS, capacity=10 * CS, policy=LRUPolicy())
    kept = s2.open(current_on_disk)
    assert sorted(v.meta.etag for v in s2.versions.values()) == ['"e1"', '"v2"'] == sorted(v.meta.etag for v in kept)
    assert s2.used_bytes == 20 and read(s2, meta("k", 10, '"v2"')) == b"b" * 10
    assert len(list((tmp_path / "v2").glob("??/*.meta"))) == 2, "the replaced version's files are gone"
    s3 = store(tmp_path)
    assert len(s3.versions) == 2, "without the catalog's decision the store keeps what it finds"


def test_changed_chunk_size_discards_old_chunks(tmp_path):
    s = store(tmp_path)
    put(s, meta("k", 3 * CS), os.urandom(3 * CS))
    s2 = ChunkStore(tmp_path, chunk_size=2 * CS, capacity=10 * CS, policy=LRUPolicy())
    s2.open()
    assert s2.versions == {} and list((tmp_path / "v2").rglob("*.meta")) == []


def test_stray_files_are_cleaned_at_start(tmp_path):
    s = store(tmp_path)
    put(s, meta("k", 10), b"x" * 10)
    (tmp_path / "v2" / "tmp" / "leftover").write_bytes(b"partial")
    (tmp_path / "v2" / "ab").mkdir(exist_ok=True)
    (tmp_path / "v2" / "ab" / ("f" * 40 + ".0.deadbeef")).write_bytes(b"orphan")
    s2 = store(tmp_path)
    assert not (tmp_path / "v2" / "tmp" / "leftover").exists()
    assert not (tmp_path / "v2" / "ab" / ("f" * 40 + ".0.deadbeef")).exists()
    assert read(s2, meta("k", 10)) == b"x" * 10


def test_version_ids_separate_everything():
    ids = {version_id("b", "k", '"e"', 1, CS), version_id("b", "k", '"e"', 2, CS), version_id("b", "k", '"f"', 1, CS),
           version_id("b", "k2", '"e"', 1, CS), version_id("b2", "k", '"e"', 1, CS), version_id("b", "k", '"e"', 1, 2 * CS),
           version_id("b\0k", "", '"e"', 1, CS)}
    assert len(ids) == 7


def test_too_small_for_a_chunk_streams_without_keeping(tmp_path):
    s = store(tmp_path, capacity=CS)
    m = meta("big", 3 * CS)
    v = s.version_for(m)
    w0 = s.begin_write(v, 0)
    w1 = s.begin_write(v, 1)  # no room while w0 holds the budget
    assert w0.reserved and not w1.reserved
    for w in (w0, w1):
        w.write(b"z" * CS)
    assert s.commit(w0) and not s.commit(w1)
    assert s.used_bytes == CS


def test_ram_tier_keeps_small_chunks_under_its_budget_least_recent_out():
    from sidecar.cache.ramtier import RamTier
    ram = RamTier(capacity=10, chunk_max=4)
    ram.put("a", b"aaaa")
    ram.put("big", b"x" * 5)
    assert ram.get("big") is None, "larger than chunk_max: not kept"
    ram.put("b", b"bbbb")
    assert ram.get("a") == b"aaaa"  # a is now the most recent
    ram.put("c", b"cccc")
    assert ram.get("b") is None and ram.get("a") == b"aaaa" and ram.get("c") == b"cccc" and ram.used == 8
    ram.drop("a")
    assert ram.used == 4 and len(ram) == 1
    assert RamTier(capacity=0, chunk_max=4).holds(1) is False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from("put drop read corrupt refetch".split()),
                          st.integers(0, 5), st.integers(1, 3)), max_size=30))
def test_the_index_is_the_one_record_of_cached_chunks(tmp_path_factory, ops):
    """Whatever is written, read, evicted, corrupted or dropped, the budget counts exactly the
    chunks the index holds, and the policy orders exactly those."""
    s = store(tmp_path_factory.mktemp("c"), capacity=7 * CS)
    for op, n, chunks in ops:
        m = meta(f"k{n}", chunks * CS - 7, etag=f'"e{n % 2}"')
        v = s.version_for(m)
        if op == "put" or op == "refetch":
            put(s, m, os.urandom(m.size))
        elif op == "drop":
            s.drop_version(v.vid)
        elif op == "read":
            read(s, m)
        elif op == "corrupt" and s.has(v.vid, 0):
            s.drop_corrupt(v.vid, 0)
        cached = [(vid, i) for vid, ver in s.versions.items() for i in ver.chunks]
        assert s.used_bytes == sum(s.versions[vid].length(i) for vid, i in cached)
        assert s.entries == len(cached) == len(s.space.policy)
        assert all(k in s.space.policy for k in cached)
        assert s.used_bytes <= s.capacity


def test_the_disk_tier_hands_out_only_verified_chunks(tmp_path):
    """The disk tier's ``get`` (the RAM tier's protocol) gives a chunk's bytes only after
    checking every piece; a damaged file is a miss and leaves the index."""
    s = store(tmp_path)
    data = os.urandom(2 * CS)
    m = meta("k", len(data))
    put(s, m, data)
    vid = s.version_for(m).vid
    assert s.disk.get((vid, 0)) == data[:CS] and s.disk.get((vid, 1)) == data[CS:]
    path = s.chunk_file(vid, 1)
    with open(path, "r+b") as f:
        f.seek(CS // 2)
        f.write(bytes([data[CS + CS // 2] ^ 1]))
    assert s.disk.get((vid, 1)) is None
    assert not s.has(vid, 1) and not path.exists() and s.stats.crc_failures == 1
    assert s.used_bytes == CS and s.disk.get((vid, 1)) is None


def test_a_chunk_whose_check_fails_is_dropped_when_closed(tmp_path):
    """Callers need not remember to report a failed check: closing the chunk does."""
    s = store(tmp_path)
    data = os.urandom(CS)
    m = meta("k", len(data))
    put(s, m, data)
    vid = s.version_for(m).vid
    with open(s.chunk_file(vid, 0), "r+b") as f:
        f.write(bytes([data[0] ^ 1]))
    c = s.open_chunk(vid, 0)
    assert c is not None and not c.verified and c.check(0, 99) is None
    assert s.has(vid, 0), "still indexed until the chunk is closed"
    c.close()
    assert not s.has(vid, 0) and s.stats.crc_failures == 1


def test_chunks_evicted_before_the_budget_gives_up_leave_the_index(tmp_path):
    """A write that cannot fit even after evicting everything evictable (the rest is pinned)
    is not kept; the chunks evicted on the way are gone from the index and the disk too, so the
    budget still counts exactly what the index holds."""
    from sidecar.cache.qos import QoSPolicy
    from sidecar.cache.rules import RuleSet

    rules = RuleSet.from_config([{"bucket": "pinned", "pin": True}])
    policy = QoSPolicy(rules, LRUPolicy)
    s = ChunkStore(tmp_path, chunk_size=CS, capacity=3 * CS, policy=policy)
    policy._locate = lambda key: s.object_of(key[0])
    s.open()
    put(s, meta("p", 2 * CS + 1, bucket="pinned"), os.urandom(2 * CS + 1))
    put(s, meta("x", CS - 1), os.urandom(CS - 1))
    assert s.used_bytes == 3 * CS
    w = s.begin_write(s.version_for(meta("big", CS)), 0)  # x goes, and still it does not fit
    w.write(os.urandom(CS))
    assert not s.commit(w), "no room: the chunk is served but not kept"
    w.close()
    cached = [(vid, i) for vid, ver in s.versions.items() for i in ver.chunks]
    assert s.used_bytes == sum(s.versions[vid].length(i) for vid, i in cached) == 2 * CS + 1
    assert len(_chunk_files(tmp_path)) == len(cached) == 3


def _chunk_files(root):
    return [p for p in (root / "v2").glob("??/*") if not p.name.endswith(".meta")]


def test_the_disk_tier_is_written_by_streaming_and_placed_whole(tmp_path):
    """The disk tier's write side, without the store: bytes written are readable from the temp
    file while the chunk grows (readers tail it); ``put`` seals the chunk and places it under
    its final name, whole and checked by ``get``; ``discard`` leaves nothing behind."""
    from sidecar.cache.disk import ChunkWriter, DiskTier
    from sidecar.cache.store import StoreStats

    index: dict = {}
    disk = DiskTier(tmp_path, stats=StoreStats(), locate=index.get, on_bad=lambda *a: index.pop(a[0], None))
    disk.prepare()
    vid, data = "ab" * 20, os.urandom(3 * CS + 5)
    w = ChunkWriter(vid, 0, len(data), *disk.temp_file(vid, 0))
    w.write(data[:CS])
    assert os.pread(w.fd, CS, 0) == data[:CS], "a reader tailing the write sees what arrived"
    w.write(data[CS:])
    assert disk.get((vid, 0)) is None, "nothing is handed out before it is placed"
    index[(vid, 0)] = (disk.put(w), len(data))
    w.close()
    assert w.closed and disk.get((vid, 0)) == data
    assert os.listdir(disk.tmp) == [] and disk.chunk_path(vid, 0, w.crc).exists()

    gone = ChunkWriter(vid, 1, CS, *disk.temp_file(vid, 1))
    gone.write(data[:CS // 2])
    disk.discard(gone)
    gone.close()
    assert gone.closed and os.listdir(disk.tmp) == []
    small = ChunkWriter(vid, 2, 4, *disk.temp_file(vid, 2))
    with pytest.raises(ValueError):
        small.write(b"12345")
    small.close()


def test_sidecar_verify_and_the_store_at_start_read_a_cache_directory_alike(tmp_path):
    """One reading of a cache directory (``disk.read_dir``): the files ``sidecar verify`` calls
    orphans are exactly those the store deletes at start, and the chunks it checks are those
    the store keeps."""
    import shutil

    from sidecar.cache import chunkfile
    from sidecar.cache.verify import verify_dir

    s = store(tmp_path)
    data = os.urandom(2 * CS)
    put(s, meta("good", len(data)), data)
    put(s, meta("headless", CS), os.urandom(CS))
    v = s.version_for(meta("good", len(data)))
    shard = s.disk.chunk_path(v.vid, 0, v.chunks[0]).parent
    headless = s.version_for(meta("headless", CS))
    s.disk.meta_path(headless.vid).unlink()  # its chunk has no metadata now
    second = 0xFFFFFFFF if v.chunks[1] != 0xFFFFFFFF else 0xFFFFFFFE  # sorts after the real one: the one left
    shutil.copy(s.disk.chunk_path(v.vid, 1, v.chunks[1]), shard / chunkfile.chunk_name(v.vid, 1, second))
    (shard / "not-a-cache-file").write_bytes(b"x")
    wrong = s.disk.meta_path(version_id("b", "renamed", '"e1"', 5, CS))
    wrong.parent.mkdir(exist_ok=True)
    shutil.copy(s.disk.meta_path(v.vid), wrong)  # metadata under another version's name
    before = {p for p in (tmp_path / "v2").glob("??/*")}

    report = verify_dir(tmp_path)
    assert report.objects == 1 and report.chunks_checked == 2 and report.corrupt == 0
    s2 = store(tmp_path)
    deleted = before - {p for p in (tmp_path / "v2").glob("??/*")}
    assert report.orphans == len(deleted) == 4
    assert list(s2.versions) == [v.vid] and sorted(s2.versions[v.vid].chunks) == [0, 1]
