"""The data loop with real processes: kiln-serve and kiln-monitor side by side, as in a pod, writing to
moto's S3 server on loopback.

Predictions over V1 and V2 carry request ids; feedback sent to kiln-serve with those ids is joined
by the monitor (live accuracy on /drift); a SIGTERM to both flushes everything, and the Parquet
files read back hold exactly the rows answered, and the labelled rows with their labels.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

import serve_models
from kiln_runtime.profile import profile_column
from s3_server import moto_server
from serve_process import free_port

BUCKET = "kiln-loop"


def wait(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rows_received(monitor_url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(monitor_url + "/metrics", timeout=10).text
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "kiln_drift_rows_received_total")


def read_prefix(client, prefix: str) -> tuple[pa.Table, list[str]]:
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]
    tables = [pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=k)["Body"].read())) for k in keys]
    return pa.concat_tables(tables), keys


@pytest.fixture
def pod(tmp_path):
    files = serve_models.build(tmp_path / "lr", "lr")
    profile = {"rows": len(files.X),
               "columns": {f: profile_column(files.X[:, i], "number", seed=i) for i, f in enumerate(serve_models.FEATURES)},
               "predictions": profile_column(files.labels.astype(str), "category")}
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    sock, monitor_port, serve_port = str(tmp_path / "run" / "h.sock"), free_port(), free_port()
    with moto_server() as s3_url:
        aws = {"AWS_ENDPOINT_URL": s3_url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "kiln-test",
               "AWS_SECRET_ACCESS_KEY": "kiln-test-secret"}
        client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                              aws_access_key_id="kiln-test", aws_secret_access_key="kiln-test-secret")
        client.create_bucket(Bucket=BUCKET)
        exe = shutil.which("kiln-monitor", path=str(Path(sys.executable).parent))
        monitor_env = {**os.environ, **aws, "KILN_BASELINE_URI": (tmp_path / "profile.json").as_uri(),
                       "KILN_HANDOFF_SOCKET": sock, "KILN_MODEL_NAME": "m", "KILN_MODEL_VERSION": "1",
                       "KILN_MONITOR_HOST": "127.0.0.1", "KILN_MONITOR_PORT": str(monitor_port),
                       "KILN_MONITOR_INTERVAL_SECONDS": "0.5", "KILN_PAYLOAD_URI": f"s3://{BUCKET}/payload",
                       "KILN_PAYLOAD_FLUSH_SECONDS": "3600", "KILN_LABELLED_URI": f"s3://{BUCKET}/labelled"}
        serve_env = {**os.environ, **files.env(), "KILN_HOST": "127.0.0.1", "KILN_PORT": str(serve_port),
                     "KILN_HANDOFF_SOCKET": sock, "KILN_MONITOR_URL": f"http://127.0.0.1:{monitor_port}",
                     "KILN_GRPC_PORT": "off"}
        logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("monitor", "serve")}
        procs: list[subprocess.Popen] = []
        try:
            monitor = subprocess.Popen([exe or "kiln-monitor"], env=monitor_env, stderr=subprocess.STDOUT,
                                       stdout=logs["monitor"])
            procs.append(monitor)
            serve = subprocess.Popen([sys.executable, "-m", "kiln_runtime.serve"], env=serve_env,
                                     stderr=subprocess.STDOUT, stdout=logs["serve"])
            procs.append(serve)
            wait(lambda: requests.get(f"http://127.0.0.1:{monitor_port}/readyz", timeout=1).ok, "kiln-monitor")
            wait(lambda: requests.get(f"http://127.0.0.1:{serve_port}/v2/health/ready", timeout=1).ok, "kiln-serve")
            yield {"files": files, "serve": serve, "monitor": monitor, "client": client,
                   "serve_url": f"http://127.0.0.1:{serve_port}", "monitor_url": f"http://127.0.0.1:{monitor_port}"}
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            for proc in procs:
                proc.wait(timeout=60)
            for name, f in logs.items():
                f.close()
                print(f"--- {name}\n" + (tmp_path / f"{name}.log").read_text(errors="replace")[-4000:])


def test_predict_feedback_stop_and_read_back(pod):
    files, url = pod["files"], pod["serve_url"]
    session = requests.Session()
    answered: dict[str, list] = {}  # request id -> predictions
    rows_of: dict[str, np.ndarray] = {}
    k = 0
    for i in range(60):
        n = 1 + i % 3
        x = files.X[k: k + n]
        k += n
        if i % 2:
            resp = session.post(f"{url}/v1/models/m:predict", json={"instances": x.tolist()}, timeout=10)
            preds = resp.json()["predictions"]
        else:
            body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP64", "data": x.ravel().tolist()}]}
            resp = session.post(f"{url}/v2/models/m/infer", json=body, timeout=10)
            assert resp.json()["id"] == resp.headers["X-Request-Id"]
            preds = resp.json()["outputs"][0]["data"]
        assert resp.status_code == 200, resp.text
        answered[resp.headers["X-Request-Id"]] = preds
        rows_of[resp.headers["X-Request-Id"]] = x
    own = session.post(f"{url}/v1/models/m:predict", json={"instances": files.X[:2].tolist()},
                       headers={"X-Request-Id": "client.order-42"}, timeout=10)
    assert own.headers["X-Request-Id"] == "client.order-42"
    answered["client.order-42"], rows_of["client.order-42"] = own.json()["predictions"], files.X[:2]
    total_rows = sum(len(p) for p in answered.values())
    # kiln-serve hands rows over on a timer; the monitor waits only briefly (feedback.WAIT_SECONDS)
    # for the rows of feedback that overtakes them. Let them arrive first, however busy the machine.
    wait(lambda: rows_received(pod["monitor_url"]) >= total_rows, f"the monitor to receive {total_rows} rows")

    # Feedback: the true class is the prediction, except for every third request (all rows flipped).
    ids = sorted(answered)
    truth = {rid: [1 - p if j % 3 == 0 else p for p in answered[rid]] for j, rid in enumerate(ids)}
    resp = session.post(f"{url}/v2/models/m/feedback", json={"id": ids[0], "labels": truth[ids[0]]}, timeout=10)
    assert resp.status_code == 200 and resp.json()["joined"] == len(truth[ids[0]]), resp.text
    resp = session.post(f"{url}/v2/models/m/feedback",
                        json={"feedback": [{"id": rid, "labels": truth[rid]} for rid in ids[1:]]}, timeout=10)
    assert resp.status_code == 200 and resp.json()["joined"] == total_rows - len(truth[ids[0]]), resp.text
    resp = session.post(f"{url}/v2/models/m/feedback", json={"id": ids[0], "labels": truth[ids[0]]}, timeout=10)
    assert resp.status_code == 409
    resp = session.post(f"{url}/v2/models/m/feedback", json={"id": "never-answered", "labels": [1]}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"] == "unknown request id"
    resp = session.post(f"{url}/v2/models/m/feedback", json={"id": ids[1], "labels": []}, timeout=10)
    assert resp.status_code == 400 and resp.json()["field"] == "labels"

    right = sum(sum(a == b for a, b in zip(answered[rid], truth[rid])) for rid in ids)
    quality = requests.get(pod["monitor_url"] + "/drift", timeout=5).json()["quality"]
    assert quality["rows"] == total_rows
    assert quality["metrics"]["accuracy"] == pytest.approx(right / total_rows)

    # SIGTERM both, as the kubelet does: every row answered ends up in the store.
    pod["serve"].send_signal(signal.SIGTERM)
    pod["monitor"].send_signal(signal.SIGTERM)
    assert pod["serve"].wait(timeout=60) == 0
    assert pod["monitor"].wait(timeout=60) == 0

    payload, keys = read_prefix(pod["client"], "payload/")
    assert all(k.startswith("payload/model=m/version=1/date=") and k.endswith(".parquet") for k in keys)
    assert payload.num_rows == total_rows
    got = payload.to_pydict()
    assert sorted(set(got["request_id"])) == ids
    assert str(payload.schema.field("timestamp").type) == "timestamp[ms, tz=UTC]"
    for rid in ids:
        mine = sorted(i for i, r in enumerate(got["request_id"]) if r == rid)
        mine.sort(key=lambda i: got["row"][i])
        assert [got["row"][i] for i in mine] == list(range(len(answered[rid])))
        assert [got["prediction"][i] for i in mine] == answered[rid]
        np.testing.assert_allclose([[got[f][i] for f in serve_models.FEATURES] for i in mine], rows_of[rid])

    labelled, _ = read_prefix(pod["client"], "labelled/model=m/version=1/")
    assert labelled.num_rows == total_rows
    lab = labelled.to_pydict()
    for i, rid in enumerate(lab["request_id"]):
        assert lab["label"][i] == str(truth[rid][lab["row"][i]])
