"""Child processes for tests and benchmarks: a moto S3 server and sidecar daemons on free ports.

Shared by the tests (``conftest.py``) and the benchmarks in ``bench/``, which put ``tests/`` on
``sys.path``. moto is only installed with the ``test`` extra; the daemon never imports this.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}

# Environment for child processes: test credentials, and nothing from the developer's AWS setup.
CHILD_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SIDECAR_"))},
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def client(endpoint: str, **config) -> "boto3.client":
    cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, **config)
    return boto3.client("s3", endpoint_url=endpoint, config=cfg, **CREDS)


class MotoServer:
    """moto's standalone S3 server as a child process."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_dir / f"moto-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=CHILD_ENV)
        wait_port(self.port, proc=self.proc)

    def client(self, **config):
        return client(self.url, **config)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class Sidecar:
    """``sidecar serve`` as a child process on free ports, logging JSON to a file."""

    def __init__(self, upstream: str, cache_dir: Path, log_dir: Path, *, env: dict | None = None,
                 cwd: Path | None = None, **flags: object) -> None:
        """``cwd``: the directory the daemon starts in (``python -m`` imports the ``sidecar``
        package found there first)."""
        self.upstream = upstream
        self.cwd = cwd
        self.cache_dir = Path(cache_dir)
        self.flags = flags
        self.log_dir = log_dir
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.log_path = self.log_dir / f"sidecar-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.port = free_port()
        admin = self.flags.get("admin_listen")
        admin_port = int(str(admin).rsplit(":", 1)[1]) if admin else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        args = [sys.executable, "-m", "sidecar", "serve", "--upstream", self.upstream,
                "--cache-dir", str(self.cache_dir), "--listen", f"127.0.0.1:{self.port}",
                "--admin-listen", f"127.0.0.1:{admin_port}", "--log-format", "json"]
        for k, v in self.flags.items():
            args += ["--" + k.replace("_", "-"), str(v)]  # later flags win: these override the above
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**CHILD_ENV, **self.extra_env}, cwd=self.cwd)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.admin_url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"sidecar did not start:\n{self.log_path.read_text()}")

    def _started_line(self) -> dict | None:
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"event": "started"' in line:
                return json.loads(line)
        return None

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "line": line})
        return out

    def client(self, **config):
        return client(self.url, **config)

    def admin(self, path: str) -> dict:
        with urllib.request.urlopen(self.admin_url + path, timeout=10) as r:
            return json.loads(r.read())

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()
