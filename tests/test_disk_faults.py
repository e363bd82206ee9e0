"""Real disk faults under a running sidecar: a full file system (ENOSPC), a cache dir remounted
read-only (EROFS), and read errors (EIO) from a block device that shrank under its file system.
The sidecar keeps answering with correct bytes (sha256 against the upstream's), straight from the
upstream where the disk fails, and counts it. Also: cache files 0600 and directories 0700
whatever the umask. Mounts need root and mount(2); without them the fault tests skip."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

MiB = 1024 * 1024


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _get(s3, bucket, key) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _readyz(sc) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(sc.admin_url + "/readyz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.fixture
def tmpfs(tmp_path):
    """A 3 MiB tmpfs; yields its mount point and unmounts it at the end."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = _sh("mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mnt))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount(2)): {r.stderr.strip()}")
    yield mnt
    _sh("umount", "-l", str(mnt))


def test_full_disk_is_a_pass_through(make_sidecar, moto_s3, bucket, tmpfs):
    sc = make_sidecar(cache_dir=tmpfs / "cache", chunk_size="1MiB", cache_size="64MiB", event_interval="0.3")
    s3 = sc.client()
    objs = {f"k{i}": os.urandom(2 * MiB + 99) for i in range(3)}  # 6 MiB into a 3 MiB file system
    for k, v in objs.items():
        moto_s3.put_object(Bucket=bucket, Key=k, Body=v)
    for _ in range(2):
        for k, v in objs.items():
            assert _sha(_get(s3, bucket, k)) == _sha(v)
    text = sc.metrics_text()
    assert _metric(text, "sidecar_cache_disk_errors_total") > 0
    assert _metric(text, 'sidecar_requests_total{operation="GetObject",status="200"}') == 6
    assert not re.search(r'sidecar_requests_total\{operation="GetObject",status="5', text)
    deadline = time.time() + 5
    while not any(e.get("event") == "cache_disk_errors" for e in sc.log_events()):
        assert time.time() < deadline, "the disk errors are logged"
        time.sleep(0.1)


def test_cache_dir_turning_read_only(make_sidecar, tap, moto_s3, bucket, tmpfs):
    sc = make_sidecar(cache_dir=tmpfs / "cache", chunk_size="1MiB", ram_cache_size=0,
                      upstream_probe_interval="0.1")
    s3 = sc.client()
    cached, fresh = os.urandom(MiB + 5), os.urandom(MiB + 7)
    moto_s3.put_object(Bucket=bucket, Key="cached", Body=cached)
    moto_s3.put_object(Bucket=bucket, Key="fresh", Body=fresh)
    assert _get(s3, bucket, "cached") == cached
    r = _sh("mount", "-o", "remount,ro", str(tmpfs))
    assert r.returncode == 0, r.stderr
    try:
        with pytest.raises(OSError):
            (tmpfs / "cache" / "probe").write_bytes(b"x")  # really read-only, even for root
        tap.clear()
        assert _sha(_get(s3, bucket, "cached")) == _sha(cached)
        assert tap.object_gets() == [], "cached chunks are still served from the read-only disk"
        for i in range(2):
            tap.clear()
            assert _sha(_get(s3, bucket, "fresh")) == _sha(fresh)
            assert tap.object_gets(f"/{bucket}/fresh"), "nothing can be kept: each read passes through"
        assert len(tap.object_gets(f"/{bucket}/fresh")) == 1, "a known object's read costs one upstream GET"
        r2 = s3.get_object(Bucket=bucket, Key="fresh", Range="bytes=100-1048675")
        assert r2["Body"].read() == fresh[100:1048676]
        assert _metric(sc.metrics_text(), "sidecar_cache_disk_errors_total") >= 3
        time.sleep(0.2)  # past the probe interval: the next /readyz probes the disk again
        status, body = _readyz(sc)
        assert body["cache_dir"]["ok"] is False, body
        assert status == 200 and body["ready"], "a pass-through sidecar stays in service"
    finally:
        _sh("mount", "-o", "remount,rw", str(tmpfs))
    tap.clear()
    assert _get(s3, bucket, "fresh") == fresh
    assert _get(s3, bucket, "fresh") == fresh
    assert len(tap.object_gets(f"/{bucket}/fresh")) == 1, "writable again: cached again"


@pytest.mark.parametrize("required", [False, True])
def test_readiness_counts_the_disk_only_when_required(tmp_path, required):
    from sidecar.health import Readiness

    gone = tmp_path / "no-such-dir"  # the probe's create fails as on a dead disk
    readiness = Readiness(None, gone, interval=0.0, requires_upstream=False, requires_cache=required)
    ready, body = asyncio.run(readiness.report(started=True, index_loaded=True, draining=False))
    assert body["cache_dir"]["ok"] is False and "No such file" in body["cache_dir"]["detail"]
    assert ready is (not required)


@pytest.fixture
def shrinking_disk(tmp_path):
    """An ext4 file system on a loop device; yields (mount point, shrink), where shrink() cuts
    the device to its first 2 MiB so reads of blocks past that fail with EIO."""
    img, mnt = tmp_path / "disk.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(24 * MiB)
    if _sh("mkfs.ext4", "-q", "-F", str(img)).returncode != 0:
        pytest.skip("mkfs.ext4 is not available")
    r = _sh("losetup", "-f", "--show", str(img))
    if r.returncode != 0:
        pytest.skip(f"no loop device here: {r.stderr.strip()}")
    dev = r.stdout.strip()
    if _sh("mount", dev, str(mnt)).returncode != 0:
        _sh("losetup", "-d", dev)
        pytest.skip("cannot mount a loop device here")

    def shrink() -> None:
        _sh("sync")
        os.truncate(img, 2 * MiB)
        assert _sh("losetup", "-c", dev).returncode == 0

    yield mnt, shrink
    _sh("umount", "-l", str(mnt))
    _sh("losetup", "-d", dev)


@pytest.mark.parametrize("verification", ["every-read", "when-changed"])
def test_read_errors_are_misses(make_sidecar, tap, moto_s3, bucket, shrinking_disk, verification):
    mnt, shrink = shrinking_disk
    data = os.urandom(6 * MiB)
    moto_s3.put_object(Bucket=bucket, Key="eio", Body=data)
    sc = make_sidecar(cache_dir=mnt / "cache", chunk_size="1MiB", ram_cache_size=0,
                      chunk_verification=verification)
    s3 = sc.client()
    assert _get(s3, bucket, "eio") == data
    shrink()
    chunks = [p for p in (mnt / "cache" / "v2").glob("??/*") if not p.name.endswith(".meta")]
    eio = 0
    for p in chunks:  # out of the page cache, so reads go to the (now short) device
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            os.pread(fd, MiB, 0)
        except OSError:
            eio += 1
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    if eio == 0:
        pytest.skip("the file system placed every chunk within the first 2 MiB: no EIO to test")
    tap.clear()
    if verification == "when-changed":
        # Pieces checked before the disk failed go out by sendfile: a response that meets the EIO
        # is aborted (never a short body that looks complete), and the next read checks that
        # chunk first, so it is dropped and refetched. One aborted response per unreadable chunk.
        # A range within one chunk (sent straight from the lean path) first, then whole reads.
        for i in range(len(data) // MiB):
            for _ in range(2):
                try:
                    got = s3.get_object(Bucket=bucket, Key="eio", Range=f"bytes={i * MiB}-{(i + 1) * MiB - 2}")
                    part = got["Body"].read()
                except Exception:  # noqa: BLE001 - the aborted response
                    continue
                assert _sha(part) == _sha(data[i * MiB:(i + 1) * MiB - 1])
                break
            else:
                pytest.fail(f"chunk {i}: a second read after an aborted one must be answered right")
        for _ in range(eio):
            try:
                got = _get(s3, bucket, "eio")
            except Exception:  # noqa: BLE001 - the aborted response
                continue
            assert _sha(got) == _sha(data)
    assert _sha(_get(s3, bucket, "eio")) == _sha(data), "unreadable chunks are refetched, never served"
    assert len(tap.object_gets(f"/{bucket}/eio")) >= 1
    text = sc.metrics_text()  # a chunk that cannot be read fails verification, or cannot even be opened
    assert _metric(text, "sidecar_cache_crc_failures_total") \
        + _metric(text, 'sidecar_cache_store_errors_total{op="read"}') >= eio
    assert sc.admin("/healthz")["status"] == "ok"


def _fill_with_umask_0(make_sidecar, moto_s3, bucket, cache: Path) -> None:
    cache.mkdir(mode=0o755)
    os.chmod(cache, 0o755)  # a pre-existing, world-readable directory (a volume's default)
    old = os.umask(0)  # children inherit it: every bit the daemon does not clear itself is left open
    try:
        sc = make_sidecar(cache_dir=cache, chunk_size="64KiB")
    finally:
        os.umask(old)
    data = os.urandom(300 * 1024)
    moto_s3.put_object(Bucket=bucket, Key="p", Body=data)
    assert _get(sc.client(), bucket, "p") == data
    sc.stop()  # whatever is written at shutdown too


def _loose(paths) -> list[str]:
    return [f"{p}: {oct(p.stat().st_mode & 0o777)}" for p in paths
            if p.stat().st_mode & 0o777 != (0o700 if p.is_dir() else 0o600)]


def test_cache_files_are_private_whatever_the_umask(make_sidecar, moto_s3, bucket, tmp_path):
    cache = tmp_path / "c"
    _fill_with_umask_0(make_sidecar, moto_s3, bucket, cache)
    paths = [cache, *(cache / "v2").rglob("*")]
    assert len([p for p in paths if p.is_file()]) == 6  # 5 chunks and the metadata
    assert _loose(paths) == []


def test_everything_under_the_cache_dir_is_private(make_sidecar, moto_s3, bucket, tmp_path):
    cache = tmp_path / "c"
    _fill_with_umask_0(make_sidecar, moto_s3, bucket, cache)
    assert _loose(cache.rglob("*")) == []
