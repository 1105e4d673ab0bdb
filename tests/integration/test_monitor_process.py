"""The real kiln-monitor process: real datagrams from handoff.py's sender, real HTTP scrapes.

In-distribution traffic shows no drift; the same traffic with one feature shifted by one standard
deviation shows drift naming that feature, on /drift and on /metrics; garbage datagrams are counted
and dropped without hurting the process; SIGTERM stops it cleanly and removes the socket.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln_runtime.handoff import HandoffSender
from kiln_runtime.profile import profile_column

FEATURES = [f"f{i}" for i in range(8)]
COLORS = ["red", "green", "blue"]
WINDOW = 2000


def _profile() -> dict:
    """The baseline as training writes it (kiln_runtime.profile): 8 normal features, one category,
    and the predictions."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20_000, len(FEATURES)))
    columns = {name: profile_column(train[:, i], "number", seed=i) for i, name in enumerate(FEATURES)}
    columns["color"] = profile_column(rng.choice(COLORS, size=20_000, p=[0.5, 0.3, 0.2]), "category")
    return {"rows": 20_000, "columns": columns, "predictions": profile_column(train[:, 0] - train[:, 1], "number")}


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _metrics(port: int) -> dict:
    status, body = _get(port, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def _wait(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _send(sender: HandoffSender, rng: np.random.Generator, rows: int, shift: str | None = None) -> None:
    for _ in range(rows // 250):
        matrix = rng.normal(size=(250, len(FEATURES)))
        if shift:
            matrix[:, FEATURES.index(shift)] += 1.0
        colors = rng.choice(COLORS, size=250, p=[0.5, 0.3, 0.2]).tolist()
        # The kernel queues only net.unix.max_dgram_qlen (10) datagrams and the sender never waits
        # (by design: it keeps a bounded backlog, then drops); on a busy machine the monitor can fall
        # behind a burst, so a dropped frame is offered again: the test is about drift, not drops.
        for _attempt in range(200):
            dropped = sender.dropped_rows
            sender.add(matrix, matrix[:, 0] - matrix[:, 1], {"color": colors})
            sender.flush()
            if sender.dropped_rows == dropped:
                break
            time.sleep(0.01)
        # A frame the queue refused waits in the sender's backlog: offer it until the monitor took it
        # (however long a busy machine keeps the monitor from reading).
        deadline = time.monotonic() + 120
        while sender.backlog_rows and time.monotonic() < deadline:
            time.sleep(0.01)
            sender.flush()
        assert not sender.backlog_rows, "the monitor took no frame for 120 s"
        time.sleep(0.002)


def _report_after(port: int, rows: int) -> dict:
    """The first report evaluated after `rows` rows in total were received."""
    def ready():
        status, body = _get(port, "/drift")
        report = json.loads(body) if status == 200 else {}
        return report if report.get("rowsReceived", 0) >= rows else None
    return _wait(ready, f"a report covering {rows} rows")


@pytest.fixture
def monitor(tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(_profile()))
    sock_path = str(tmp_path / "run" / "handoff.sock")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("kiln-monitor", path=str(Path(sys.executable).parent)) or shutil.which("kiln-monitor")
    assert exe, "the kiln-monitor console script is not installed (bash hack/venv.sh)"
    env = {**os.environ, "KILN_BASELINE_URI": f"file://{profile}", "KILN_HANDOFF_SOCKET": sock_path,
           "KILN_MODEL_NAME": "iris", "KILN_MODEL_VERSION": "3", "KILN_MONITOR_HOST": "127.0.0.1",
           "KILN_MONITOR_PORT": str(port), "KILN_MONITOR_WINDOW_ROWS": str(WINDOW),
           "KILN_MONITOR_MIN_ROWS": "1000", "KILN_MONITOR_INTERVAL_SECONDS": "0.2"}
    log = tmp_path / "monitor.log"  # a file, not a pipe nobody drains
    with open(log, "w") as err:
        proc = subprocess.Popen([exe], env=env, stderr=err)
    try:
        _wait(lambda: proc.poll() is not None or _ready(port), "kiln-monitor to become ready")
        assert proc.poll() is None, log.read_text()
        yield proc, port, sock_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        print(log.read_text())  # shown by pytest when the test fails


def _ready(port: int) -> bool:
    try:
        return _get(port, "/readyz")[0] == 200
    except OSError:
        return False


def test_drift_end_to_end(monitor):
    proc, port, sock_path = monitor
    assert _get(port, "/healthz") == (200, b"ok\n")
    mv = (("model", "iris"), ("version", "3"))
    rng = np.random.default_rng(1)
    sender = HandoffSender(sock_path, "iris", "3", FEATURES)

    # Garbage first: counted, dropped, and the process keeps going.
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for junk in (b"", b"GET / HTTP/1.1\r\n", b"KLN1\xff\xff\xff\x7f", os.urandom(5000)):
        raw.sendto(junk, sock_path)
    raw.close()

    _send(sender, rng, 2 * WINDOW)
    report = _report_after(port, 2 * WINDOW)
    assert report["rowsReceived"] == sender.sent_rows == 2 * WINDOW
    assert report["driftDetected"] is False, report["worstFeatures"]
    assert report["windowRows"] == WINDOW and report["framesDropped"] == {"malformed": 4}
    assert report["score"] < 0.1
    m = _metrics(port)
    assert m[("kiln_drift_detected", mv)] == 0.0
    assert m[("kiln_drift_window_rows", mv)] == WINDOW
    assert m[("kiln_drift_frames_dropped_total", tuple(sorted(mv + (("reason", "malformed"),))))] == 4
    assert m[("kiln_drift_rows_received_total", mv)] == 2 * WINDOW
    assert all(m[("kiln_feature_drift_detected", tuple(sorted(mv + (("feature", f),))))] == 0.0
               for f in FEATURES + ["color"])

    # One feature shifted by one standard deviation, for a whole window.
    _send(sender, rng, WINDOW, shift="f5")
    report = _report_after(port, 3 * WINDOW)
    assert report["driftDetected"] is True
    assert report["driftedFeatures"] == ["f5"]
    assert report["worstFeatures"][0]["feature"] == "f5" and report["worstFeatures"][0]["psi"] >= 0.2
    m = _metrics(port)
    f5 = tuple(sorted(mv + (("feature", "f5"),)))
    assert m[("kiln_drift_detected", mv)] == 1.0
    assert m[("kiln_feature_drift_detected", f5)] == 1.0
    assert m[("kiln_feature_drift_psi", f5)] >= 0.2 and m[("kiln_feature_drift_ks_pvalue", f5)] < 1e-6
    assert m[("kiln_feature_drift_detected", tuple(sorted(mv + (("feature", "f4"),))))] == 0.0

    sender.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert not os.path.exists(sock_path)


def test_waits_for_a_missing_baseline_without_crashing(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("kiln-monitor", path=str(Path(sys.executable).parent)) or shutil.which("kiln-monitor")
    env = {**os.environ, "KILN_BASELINE_URI": f"file://{tmp_path}/absent.json",
           "KILN_HANDOFF_SOCKET": str(tmp_path / "h.sock"), "KILN_MONITOR_HOST": "127.0.0.1",
           "KILN_MONITOR_PORT": str(port)}
    proc = subprocess.Popen([exe], env=env, stderr=subprocess.DEVNULL)
    try:
        status, body = _wait(lambda: _get_or_none(port, "/drift"), "the HTTP endpoint")
        assert status == 503 and "absent.json" in json.loads(body)["error"]
        assert _get(port, "/readyz")[0] == 503 and _get(port, "/healthz")[0] == 200
        assert _metrics(port)[("kiln_drift_baseline_loaded", (("model", "unknown"), ("version", "unknown")))] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _get_or_none(port: int, path: str):
    try:
        status, body = _get(port, path)
    except OSError:
        return None
    return (status, body) if json.loads(body).get("error") else None


def test_bad_configuration_exits_with_a_message():
    exe = shutil.which("kiln-monitor", path=str(Path(sys.executable).parent)) or shutil.which("kiln-monitor")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    result = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "KILN_BASELINE_URI is required" in result.stderr
