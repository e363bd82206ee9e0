"""Settings: precedence, units, and one clear line for a bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidecar import config
from sidecar.config import ConfigError, load, parse_duration, parse_size, parse_ttl


@pytest.mark.parametrize("text,want", [("4MiB", 4 << 20), ("20GiB", 20 << 30), ("512Ki", 512 << 10), ("1G", 10**9),
                                       ("1048576", 1 << 20), (" 2 mib ", 2 << 20), ("1.5KiB", 1536), (7, 7)])
def test_sizes(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("bad", ["", "-1", "4XB", "MiB", "1e3", "nan", True])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_durations():
    assert parse_duration("500ms") == 0.5 and parse_duration("5m") == 300 and parse_duration(2) == 2.0
    assert parse_ttl("indefinite") is None and parse_ttl("60") == 60.0


def test_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("cache_size: 1GiB\nchunk_size: 8MiB\nmetadata-ttl: 5\nrules: []\n")
    s = load({"config": str(f), "chunk_size": "2MiB"}, env={"SIDECAR_CACHE_SIZE": "2GiB", "SIDECAR_METADATA_TTL": "7"})
    assert (s.cache_size, s.chunk_size, s.metadata_ttl) == (2 << 30, 2 << 20, 7.0)
    assert s.extra == {"rules": []}
    assert load({}, env={}).chunk_size == 4 << 20


@pytest.mark.parametrize("flags,env,setting", [
    ({"cache_size": "lots"}, {}, "cache_size"), ({}, {"SIDECAR_LISTEN": "nohostport"}, "listen"),
    ({"chunk_size": "1KiB"}, {}, "chunk_size"), ({"upstream": "ftp://x"}, {}, "upstream"),
    ({"metadata_ttl": "soon"}, {}, "metadata_ttl"), ({"cache_size": "1MiB"}, {}, "cache_size"),
])
def test_errors_name_the_setting(flags, env, setting):
    with pytest.raises(ConfigError) as e:
        load(flags, env=env)
    assert e.value.setting == setting
    assert f"--{setting.replace('_', '-')}" in str(e.value) and "expected" in str(e.value)


def test_unknown_yaml_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("cache_sise: 1GiB\n")
    with pytest.raises(ConfigError, match="cache_sise"):
        load({"config": str(f)}, env={})


def test_cli_exit_code_and_one_line():
    r = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--cache-size", "20XB"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "cache_size" in r.stderr and "20XB" in r.stderr


def test_missing_local_upstream_dir_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sidecar", "serve", "--upstream", f"file://{tmp_path}/absent",
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "upstream" in r.stderr and "existing directory" in r.stderr


def test_every_option_has_a_flag_and_env_name():
    names = config.option_names()
    assert len(set(names)) == len(names)
    assert config.env_name("cache_size") == "SIDECAR_CACHE_SIZE"


def test_every_log_level_starts(tmp_path):
    from sidecar.telemetry import get_logger, setup_logging

    for level in ("debug", "info", "warning", "error", "off"):
        setup_logging(level, "json")
        get_logger().info("probe")
