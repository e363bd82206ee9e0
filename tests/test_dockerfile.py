"""The Dockerfile, read as text (no Docker engine here): it installs like the Makefile, runs as
non-root on a read-only root filesystem, and agrees with the webhook and the chart."""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from sidecar import config
from sidecar.inject import spec as inject_spec

ROOT = Path(__file__).resolve().parent.parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out


DOCKERFILE = instructions((ROOT / "Dockerfile").read_text())


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in DOCKERFILE:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def make_variables() -> dict[str, str]:
    variables = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Z_]+)\s*(?::=|\?=|=)\s*(.*)$", line)
        if m:
            variables[m.group(1)] = m.group(2).strip()
    return variables


def expand(text: str, variables: dict[str, str]) -> str:
    for _ in range(10):
        text = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
    return text


def makefile_runtime_install() -> str:
    """The recipe line of the Makefile's runtime install target, variables expanded."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$(VENV)/.installed:"))
    recipe = [line.strip() for line in lines[start + 1:] if line.startswith("\t")][:2]
    (pip_line,) = [line for line in recipe if "$(PIP)" in line]
    return expand(pip_line, make_variables())


def test_pip_install_line_is_the_makefiles() -> None:
    make_line = makefile_runtime_install()
    assert make_line == ".venv/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ."
    runs = [args for ins, args in DOCKERFILE if ins == "RUN" and "pip install" in args]
    assert runs == [make_line], f"Dockerfile pip install {runs} differs from the Makefile's {make_line!r}"
    # ...run where the Makefile runs it: a venv named like the Makefile's, next to constraints.txt
    build = stages()[0]
    assert ("WORKDIR", "/opt/sidecar") in build
    assert ("RUN", "python -m venv .venv") in build
    copied_before = [a for ins, a in build[:build.index(("RUN", make_line))] if ins == "COPY"]
    assert any("constraints.txt" in a and "pyproject.toml" in a for a in copied_before)


def test_multi_stage_slim_python_311() -> None:
    froms = [a for ins, a in DOCKERFILE if ins == "FROM"]
    assert len(froms) >= 2
    arg = next(a for ins, a in DOCKERFILE if ins == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert re.match(r"PYTHON_IMAGE=python:3\.11(\.\d+)?-slim", arg)
    assert froms[0] == "${PYTHON_IMAGE} AS build" and froms[-1] == "${PYTHON_IMAGE}"
    final = stages()[-1]
    assert ("COPY", "--from=build /opt/sidecar /opt/sidecar") in final
    assert not any("pip install" in a for ins, a in final if ins == "RUN"), "no installing in the run stage"


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, args in stage:
        if ins == "ENV":
            for word in shlex.split(args):
                k, _, v = word.partition("=")
                env[k] = v
    return env


def test_non_root_read_only_root_filesystem() -> None:
    final = stages()[-1]
    user = [a for ins, a in final if ins == "USER"]
    assert user, "no USER"
    uid, _, gid = user[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, "numeric non-root UID:GID"
    # the webhook injects the sidecar with the same identity, and the chart runs the webhook with it
    sc = inject_spec.InjectSpec().security_context
    assert (sc["runAsUser"], sc["runAsGroup"]) == (int(uid), int(gid))
    values = yaml.safe_load((ROOT / "charts" / "sidecar" / "values.yaml").read_text())
    assert values["webhook"]["podSecurityContext"]["runAsUser"] == int(uid)
    volumes = json.loads(next(a for ins, a in final if ins == "VOLUME"))
    env = _env(final)
    assert env["SIDECAR_CACHE_DIR"] in volumes
    for var in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        assert any(env[var] == v or env[var].startswith(v + "/") for v in volumes), f"{var}={env[var]} not on a volume"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # the injected sidecar mounts its volumes where the image expects them
    assert set(volumes) == {inject_spec.CACHE_MOUNT_PATH, inject_spec.TMP_MOUNT_PATH}


def test_entrypoint_healthcheck_ports_and_model() -> None:
    final = stages()[-1]
    entry = json.loads(next(a for ins, a in final if ins == "ENTRYPOINT"))
    assert entry == ["sidecar", "serve"]
    health = next(a for ins, a in final if ins == "HEALTHCHECK")
    assert health.endswith('CMD ["python", "/opt/sidecar/scripts/healthcheck.py"]')
    exposed = {int(p) for ins, a in final if ins == "EXPOSE" for p in a.split()}
    defaults = config.load({}, env={})
    assert exposed == {defaults.listen[1], defaults.admin_listen[1]}
    build = stages()[0]
    assert ("COPY", "models/predictor.onnx models/predictor.onnx") in build
    assert _env(final)["SIDECAR_MODEL"] == "/opt/sidecar/models/predictor.onnx"
    # the daemon accepts the image's environment as settings
    env = {k: v for k, v in _env(final).items() if k.startswith("SIDECAR_")}
    assert config.load({}, env=env).cache_dir == Path("/var/cache/sidecar")


# --- .dockerignore -------------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def docker_includes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    included = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rx = _pattern_regex(line.lstrip("!").strip("/"))
        parts = path.split("/")
        if any(rx.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            included = negate
    return included


@pytest.mark.parametrize("path, wanted", [
    ("pyproject.toml", True), ("constraints.txt", True), ("README.md", True),
    ("sidecar/cli.py", True), ("sidecar/inject/mutate.py", True),
    ("models/predictor.onnx", True), ("scripts/healthcheck.py", True),
    (".venv/bin/python", False), (".git/HEAD", False), (".tools/bin/helm", False),
    ("tests/test_inject.py", False), ("charts/sidecar/values.yaml", False), ("bench/webhook_latency.py", False),
    ("sidecar/__pycache__/cli.cpython-311.pyc", False), ("sidecar.egg-info/PKG-INFO", False),
    ("models/training-data.parquet", False), (".hypothesis/examples/x", False),
])
def test_dockerignore(path: str, wanted: bool) -> None:
    assert docker_includes(path) is wanted


def test_every_copied_file_is_in_the_context() -> None:
    for stage in stages():
        for ins, args in stage:
            if ins == "COPY" and not args.startswith("--from"):
                *sources, _ = args.split()
                for src in sources:
                    assert docker_includes(src.rstrip("/") + ("/x.py" if src.endswith("/") else "")), src


# --- the HEALTHCHECK script -----------------------------------------------------------------------

class _Admin(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _run_healthcheck(listen: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    if listen is not None:
        env["SIDECAR_ADMIN_LISTEN"] = listen
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "healthcheck.py")], env=env,
                          capture_output=True, timeout=30).returncode


def test_healthcheck_script() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Admin)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _run_healthcheck(f"127.0.0.1:{port}") == 0
        assert _run_healthcheck(f"0.0.0.0:{port}") == 0  # wildcard listen is probed on loopback
        _Admin.status = 503
        assert _run_healthcheck(f"127.0.0.1:{port}") == 1
    finally:
        _Admin.status = 200
        server.shutdown()
        server.server_close()
    assert _run_healthcheck(f"127.0.0.1:{port}") == 1  # nothing listening
