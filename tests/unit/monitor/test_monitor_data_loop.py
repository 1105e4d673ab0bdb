"""The monitor as a whole, in-process: payload and labelled logs on, feedback over HTTP, the data
loop's configuration and metrics, and a stop that reads the socket dry and writes every row."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pyarrow.dataset as ds
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln_runtime.handoff import HandoffSender
from kiln_runtime.monitor import config as config_mod
from kiln_runtime.monitor.app import Monitor

from monitor_profiles import make_profile, numeric_column

TOKEN = "c0ffee00"


def _http(port, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_data_loop_configuration_defaults_and_errors():
    cfg = config_mod.from_env({"KILN_BASELINE_URI": "file:///p.json"})
    assert (cfg.payload_uri, cfg.payload_sample_rate, cfg.payload_flush_seconds, cfg.payload_flush_rows,
            cfg.payload_buffer_rows, cfg.labelled_uri, cfg.label_column, cfg.feedback_ttl_seconds,
            cfg.feedback_max_rows, cfg.task, cfg.quality_window_rows) == (
        None, 1.0, 60.0, 50_000, 200_000, None, "label", 3600.0, 200_000, None, 1000)
    for env, match in (({"KILN_PAYLOAD_URI": "http://x"}, "KILN_PAYLOAD_URI"),
                       ({"KILN_PAYLOAD_SAMPLE_RATE": "1.5"}, "KILN_PAYLOAD_SAMPLE_RATE"),
                       ({"KILN_TASK": "ranking"}, "KILN_TASK"),
                       ({"KILN_LABELLED_URI": "s3:///nobucket"}, "KILN_LABELLED_URI")):
        with pytest.raises(config_mod.ConfigError, match=match):
            config_mod.from_env({"KILN_BASELINE_URI": "file:///p.json", **env})


def test_rows_logged_labels_joined_and_everything_written_on_stop(tmp_path):
    rng = np.random.default_rng(0)
    profile = make_profile({"a": numeric_column(rng.normal(size=2000)), "b": numeric_column(rng.normal(size=2000))})
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    sock_path = str(tmp_path / "h.sock")
    cfg = config_mod.from_env({
        "KILN_BASELINE_URI": (tmp_path / "profile.json").as_uri(), "KILN_HANDOFF_SOCKET": sock_path,
        "KILN_MODEL_NAME": "m", "KILN_MODEL_VERSION": "1", "KILN_MONITOR_HOST": "127.0.0.1",
        "KILN_MONITOR_PORT": "0", "KILN_MONITOR_INTERVAL_SECONDS": "0.2",
        "KILN_PAYLOAD_URI": (tmp_path / "payload").as_uri(), "KILN_PAYLOAD_FLUSH_SECONDS": "3600",
        "KILN_LABELLED_URI": (tmp_path / "labelled").as_uri()})
    monitor = Monitor(cfg)
    runner = threading.Thread(target=monitor.run)
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while monitor.counters is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert monitor.counters is not None, "the monitor did not start receiving within 120 s"
        sender = HandoffSender(sock_path, "m", "1", ["a", "b"], frame_rows=64)
        sent = 0
        for i in range(40):  # 40 requests of 5 rows
            x = rng.normal(size=(5, 2))
            sender.add(x, (x[:, 0] > 0).astype(float), None, [(f"{TOKEN}-{i:x}", 5, time.time())])
            sender.flush()
            sent += 5
            time.sleep(0.001)
        assert sender.dropped_rows == 0
        # Frames the socket's short queue refused wait in the sender's backlog until a flush finds
        # room; the receiver's pace depends on the machine, so wait for it (feedback waits only
        # feedback.WAIT_SECONDS for rows still on their way).
        deadline = time.monotonic() + 120
        while (sender.backlog_rows or monitor.counters.rows_received < sent) and time.monotonic() < deadline:
            sender.flush()
            time.sleep(0.01)
        assert monitor.counters.rows_received == sent and sender.dropped_rows == 0
        # A request's feedback right behind its rows: joined once the receiver has read them.
        status, body = _http(monitor.http_port, "/feedback", json.dumps(
            {"feedback": [{"id": f"{TOKEN}-{i:x}", "labels": [1, 0, 1, 0, 1]} for i in range(40)]}).encode())
        assert status == 200 and json.loads(body)["joined"] == 200
        status, body = _http(monitor.http_port, "/feedback", b'{"id": "nope", "labels": [1]}')
        assert status == 404
        status, body = _http(monitor.http_port, "/drift")
        report = json.loads(body)
        assert report["quality"]["rows"] == 200 and set(report["quality"]["metrics"]) == {"accuracy", "f1"}
        assert report["payload"]["uri"] == cfg.payload_uri and report["payload"]["rowsWritten"] == 0
        status, body = _http(monitor.http_port, "/metrics")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}

        def key(name, **labels):
            return name, tuple(sorted({"model": "m", "version": "1", **labels}.items()))

        assert samples[key("kiln_feedback_labels_total", result="joined")] == 200
        assert samples[key("kiln_feedback_labels_total", result="unknown")] == 1
        assert samples[key("kiln_live_quality_rows")] == 200
        assert key("kiln_live_quality", metric="accuracy") in samples
        assert samples[key("kiln_payload_rows_written_total")] == 0
        # Rows still in flight when the stop comes are read and written too.
        x = rng.normal(size=(7, 2))
        sender.add(x, np.zeros(7), None, [("last", 7, time.time())])
        monitor.stop.set()
        sender.flush()
        sent += 7
    finally:
        monitor.stop.set()
        runner.join(30)
    assert not runner.is_alive()
    payload = ds.dataset(tmp_path / "payload", format="parquet", partitioning="hive").to_table()
    assert payload.num_rows == sent == monitor.payload.rows_written
    assert sorted(set(payload.column("request_id").to_pylist()))[-1] == "last"
    labelled = ds.dataset(tmp_path / "labelled", format="parquet", partitioning="hive").to_table()
    assert labelled.num_rows == 200 and labelled.column("label").to_pylist()[:5] == ["1", "0", "1", "0", "1"]
