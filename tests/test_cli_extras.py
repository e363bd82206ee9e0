"""Commands and options that need an optional extra, run where it is not installed: one clear
line naming what is missing and how to get it, exit status 2, no traceback. Each runs as a real
process whose optional packages are stubs that fail to import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_EXTRA = ("sklearn", "skl2onnx", "matplotlib")


@pytest.fixture(scope="module")
def without_train(tmp_path_factory) -> dict[str, str]:
    """An environment in which the train extra's packages cannot be imported."""
    stubs = tmp_path_factory.mktemp("stubs")
    for name in TRAIN_EXTRA:
        (stubs / name).mkdir()
        (stubs / name / "__init__.py").write_text(f"raise ModuleNotFoundError({'No module named ' + name!r}, name={name!r})\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(stubs), str(ROOT)])}


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "t.csv"
    path.write_text("".join(f"{i},k{i % 7},{100 + i}\n" for i in range(60)))
    return path


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("args", [
    ["sim", "--prefetch", "--workload", "zipf", "--duration", "10m", "--no-progress"],
    ["sim", "--workload", "periodic", "--duration", "10m", "--no-progress"],
    ["sim", "{trace}", "--prefetch", "--no-progress"],
    ["sim", "{trace}", "--plot", "{tmp}/curve.png", "--no-progress"],
    ["train", "--workload", "zipf", "--duration", "10m", "--no-progress", "--out", "{tmp}/m.onnx"],
])
def test_missing_train_extra_is_one_line_and_exit_2(without_train, trace, tmp_path, args):
    args = [a.format(trace=trace, tmp=tmp_path) for a in args]
    r = _run(without_train, *args)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "pip install 'sidecar[train]'" in lines[0]
    assert any(m in lines[0] for m in TRAIN_EXTRA), lines[0]
    assert not (tmp_path / "curve.png").exists()


def test_commands_without_extras_still_run(without_train, trace):
    r = _run(without_train, "sim", str(trace), "--policies", "lru", "--sizes", "50%", "--no-progress")
    assert r.returncode == 0, r.stderr


def test_prefetch_on_a_workload_too_short_to_train_on():
    r = subprocess.run([sys.executable, "-m", "sidecar", "sim", "--prefetch", "--workload", "zipf", "--duration", "10m",
                        "--no-progress"], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "too short to train on" in r.stderr
