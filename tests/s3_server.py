"""moto's standalone S3 server as a real process, for the tests and benchmarks that need an S3 API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def moto_server(host: str = "127.0.0.1", env: dict[str, str] | None = None) -> Iterator[str]:
    """Starts the server on a free port of `host` (loopback, or the pod bridge's host side so pods reach
    it); yields its URL and stops it afterwards. `env` reaches moto (e.g. INITIAL_NO_AUTH_ACTION_COUNT)."""
    with socket.socket() as s:
        s.bind((host, 0))  # fails at once, naming the address, when it does not exist here
        port = s.getsockname()[1]
    url = f"http://{host}:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # imports take long on a busy machine
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto's S3 server did not start on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # never left running after the tests
            proc.kill()
            proc.wait()
