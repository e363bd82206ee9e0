"""Shared fixtures: a real moto S3 server, a recording tap in front of it, sidecar processes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from support.procs import MotoServer, Sidecar
from support.tap import Tap

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def moto(logs_dir):
    server = MotoServer(logs_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3(moto):
    """A boto3 client straight to the upstream."""
    return moto.client()


@pytest.fixture(scope="module")
def tap(moto):
    t = Tap(moto.url)
    yield t
    t.close()


@pytest.fixture(scope="module")
def sidecar(tap, tmp_path_factory, logs_dir):
    """A sidecar in front of the tap (so tests see what reaches the upstream), one per module."""
    sc = Sidecar(tap.url, tmp_path_factory.mktemp("cache"), logs_dir, metadata_ttl=60, chunk_size="1MiB")
    yield sc
    sc.stop()


@pytest.fixture
def bucket(moto_s3) -> str:
    name = "b-" + uuid.uuid4().hex[:12]
    moto_s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_sidecar(tap, tmp_path, logs_dir):
    """Start extra sidecars with their own settings; stopped at the end of the test."""
    started: list[Sidecar] = []

    def make(upstream: str | None = None, cache_dir: Path | None = None, **flags) -> Sidecar:
        sc = Sidecar(upstream or tap.url, cache_dir or tmp_path / f"cache-{len(started)}", logs_dir, **flags)
        started.append(sc)
        return sc

    yield make
    for sc in started:
        sc.stop()


@pytest.fixture(scope="session")
def tier_moto(logs_dir):
    """A second moto server: the store of a shared tier (tests/test_shared_tier.py)."""
    server = MotoServer(logs_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tier_tap(tier_moto):
    """A tap in front of the shared tier's store, to see and fault its traffic."""
    t = Tap(tier_moto.url)
    yield t
    t.close()
