"""kiln-serve as a real process for the tests: its environment, port and log, waiting until it is
ready, and a stop that always reaps it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_pytest() -> None:
    """In the child before exec (Linux): SIGTERM when the pytest process dies, even killed outright,
    so that no kiln-serve outlives the run whatever happens to it."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServeProcess:
    """One kiln-serve process on a free loopback port. The drift hand-off and gRPC are off unless `env`
    says otherwise (servers started side by side would all want gRPC's default port)."""

    def __init__(self, env: dict, log: Path, inherit_kiln_env: bool = True):
        """Starts the process; stop() it whatever happens. `inherit_kiln_env=False` leaves out the
        test run's own KILN_* variables."""
        self.port = free_port()
        self.log_path = log
        inherited = {k: v for k, v in os.environ.items() if inherit_kiln_env or not k.startswith("KILN_")}
        full = {**inherited, "KILN_HOST": "127.0.0.1", "KILN_PORT": str(self.port), "KILN_HANDOFF_SOCKET": "off",
                "KILN_GRPC_PORT": "off", **env}
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "kiln_runtime.serve"], env=full,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_pytest if sys.platform == "linux" else None)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kiln-serve exited with {self.proc.returncode}: {self.log()}")
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.05)
        raise AssertionError(f"kiln-serve not ready after {timeout} s: {self.log()}")

    def wait_exit(self, timeout: float = 120.0) -> int:
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 30 s; idempotent, so fixtures call it whatever the test did."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()
        return self.proc.returncode


def stop_all(servers) -> None:
    """Stops every server, even when stopping one of them fails."""
    servers = list(servers)
    try:
        if servers:
            servers[0].stop()
    finally:
        if len(servers) > 1:
            stop_all(servers[1:])
