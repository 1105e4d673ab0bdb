"""The operator as a subprocess (`python -m kiln_operator`), for tests that need it running beside them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        self.kubeconfig, self.log, self.args, self.env = kubeconfig, log, args, env or {}
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "OperatorProcess":
        out = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiln_operator", "--kubeconfig", str(self.kubeconfig),
             "--health", f"http://127.0.0.1:{self.port}/healthz", "--metrics-port", str(self.metrics_port),
             *self.args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        return self

    def __exit__(self, *_) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def token_kubeconfig(admin: Path, token: str, out: Path) -> Path:
    """A kubeconfig for the same apiserver as `admin`, authenticated by a ServiceAccount token."""
    cluster = yaml.safe_load(admin.read_text())["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "kiln", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "kiln", "user": "sa"}}],
    }
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out
