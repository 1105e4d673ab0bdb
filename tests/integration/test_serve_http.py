"""kiln-serve as a real process on 127.0.0.1, driven by real HTTP clients.

Models are trained by the fixture (tests/serve_models.py): a logistic regression and a 100-tree
random forest on 20 numeric features, saved with skops and exported to ONNX, read over file://.
Answers are compared to the scikit-learn model's own predictions; tritonclient's HTTP client speaks
V2 to it unchanged. The last section serves what a real kiln-train run wrote (mixed feature types)
from moto's S3 server on loopback, configured the way the operator configures the pod.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

import serve_models
from kiln_runtime.handoff import decode_frame
from s3_server import moto_server
from serve_process import ServeProcess, stop_all

MAX_PAYLOAD = 256 * 1024


class Server(ServeProcess):
    """kiln-serve with a small payload limit, so the limit's answers are cheap to provoke."""

    def __init__(self, env: dict, log: Path):
        super().__init__({"KILN_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD), **env}, log)


@pytest.fixture
def spawn():
    """Starts kiln-serve processes for one test: spawn(env, log) -> Server. Every one of them is
    stopped when the test ends, passed or failed, so none outlives it."""
    started: list[Server] = []

    def start(env: dict, log: Path) -> Server:
        server = Server(env, log)
        started.append(server)
        return server

    try:
        yield start
    finally:
        stop_all(started)
        for server in started:  # shown by pytest when the test failed
            print(f"--- {server.log_path}\n{server.log()[-4000:]}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"lr": serve_models.build(root / "lr", "lr"), "rf": serve_models.build(root / "rf", "rf"),
            "lr_pf": serve_models.build(root / "lr_pf", "lr", "per-feature")}


@pytest.fixture(scope="module")
def handoff_socket(tmp_path_factory):
    path = tmp_path_factory.mktemp("handoff") / "h.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield path, sock
    sock.close()


@pytest.fixture(scope="module")
def servers(models, handoff_socket, tmp_path_factory):
    """Every long-lived server of this module, started at once (each spends seconds importing)."""
    logs = tmp_path_factory.mktemp("logs")
    specs = {
        "lr": {**models["lr"].env(), "KILN_HANDOFF_SOCKET": str(handoff_socket[0]),
               "KILN_HANDOFF_FRAME_ROWS": "8"},
        "rf": models["rf"].env(),
        "rf_sklearn": models["rf"].env(onnx=False),
        "lr_workers": {**models["lr_pf"].env(), "KILN_WORKERS": "2"},
    }
    started: dict[str, Server] = {}
    try:
        for name, env in specs.items():
            started[name] = Server(env, logs / f"{name}.log")
        yield {name: s.wait_ready() for name, s in started.items()}
    finally:
        stop_all(started.values())


def predict_v1(server, rows, **params):
    body = {"instances": rows}
    if params:
        body["parameters"] = params
    return requests.post(f"{server.url}/v1/models/m:predict", json=body, timeout=10)


# --- correctness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [("lr", "lr"), ("rf", "rf"), ("rf_sklearn", "rf"), ("lr_workers", "lr_pf")])
def test_v1_answers_are_the_models_own_predictions(servers, models, name, kind):
    server, files = servers[name], models[kind]
    resp = predict_v1(server, files.X.tolist(), probabilities=True)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["predictions"] == files.labels.tolist()
    np.testing.assert_allclose(body["probabilities"], files.proba, atol=1e-5)
    # One row per request from 16 threads: merged by the batcher, each answer still its own.
    objects = [dict(zip(serve_models.FEATURES, row)) for row in files.X[:64].tolist()]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda o: predict_v1(server, [o]), objects))
    assert [a.status_code for a in answers] == [200] * 64
    assert [a.json()["predictions"][0] for a in answers] == files.labels[:64].tolist()


@pytest.mark.parametrize("name, kind", [("lr", "lr"), ("rf", "rf"), ("lr_workers", "lr_pf")])
def test_tritonclient_http_speaks_v2_unchanged(servers, models, name, kind):
    import tritonclient.http as httpclient

    server, files = servers[name], models[kind]
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("m")
    meta = client.get_model_metadata("m")
    assert meta["name"] == "m" and [o["name"] for o in meta["outputs"]] == ["predict", "probabilities"]
    assert client.get_server_metadata()["extensions"]
    x = files.X[:50]
    for binary in (True, False):
        for dtype, np_type in (("FP64", np.float64), ("FP32", np.float32)):
            inp = httpclient.InferInput("input-0", list(x.shape), dtype)
            inp.set_data_from_numpy(x.astype(np_type), binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("predict", binary_data=binary),
                       httpclient.InferRequestedOutput("probabilities", binary_data=not binary)]
            result = client.infer("m", [inp], outputs=outputs, request_id="abc")
            assert result.get_response()["id"] == "abc"
            np.testing.assert_array_equal(result.as_numpy("predict"), files.labels[:50])
            np.testing.assert_allclose(result.as_numpy("probabilities"), files.proba[:50], atol=1e-5)
    # No outputs named: tritonclient asks for binary outputs; predict is the default output.
    inp = httpclient.InferInput("input-0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("m", [inp]).as_numpy("predict"), files.labels[:50])
    client.close()


def test_v2_one_tensor_per_feature_by_name(servers, models):
    files = models["lr"]
    inputs = [{"name": f, "shape": [5], "datatype": "FP64", "data": files.X[:5, i].tolist()}
              for i, f in enumerate(serve_models.FEATURES)]
    resp = requests.post(f"{servers['lr'].url}/v2/models/m/versions/1/infer", json={"inputs": inputs}, timeout=10)
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("predict", "INT64", [5])
    assert out["data"] == files.labels[:5].tolist()


def test_metadata_health_and_openapi(servers, models):
    url = servers["lr"].url
    assert requests.get(url + "/v1/models").json() == {"models": ["m"]}
    assert requests.get(url + "/v1/models/m").json()["ready"] is True
    assert requests.get(url + "/v2/health/live").status_code == 200
    assert requests.get(url + "/v2/models/m/versions/1/ready").json() == {"name": "m", "ready": True}
    meta = requests.get(url + "/v2/models/m").json()
    assert meta["platform"] == "onnxruntime_onnx" and meta["inputs"][0]["shape"] == [-1, 20]
    doc = requests.get(url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v2/models/{model_name}/infer" in doc["paths"]


def scrape(server) -> dict:
    text = requests.get(server.url + "/metrics", timeout=5).text
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model", "version")))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_count_requests_batches_predictions_and_name_the_model(servers, models):
    server, files = servers["rf"], models["rf"]
    before = scrape(server)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda row: predict_v1(server, [row]), files.X[:40].tolist()))
    predict_v1(server, [[1, 2]])  # a 400
    after = scrape(server)
    ok = ("kiln_requests_total", (("code", "200"), ("protocol", "v1")))
    assert after[ok] - before.get(ok, 0) == 40
    assert after[("kiln_requests_total", (("code", "400"), ("protocol", "v1")))] >= 1
    rows = sum(v for (n, _), v in after.items() if n == "kiln_predictions_total") - \
        sum(v for (n, _), v in before.items() if n == "kiln_predictions_total")
    assert rows == 40
    assert after[("kiln_batch_size_sum", ())] - before.get(("kiln_batch_size_sum", ()), 0) == 40
    info = [labels for (n, labels) in after if n == "kiln_model_info"]
    assert dict(info[0])["digest"] == files.sha["model.onnx"] and dict(info[0])["runtime"] == "onnx"
    assert after[("kiln_request_duration_seconds_count", (("protocol", "v1"),))] >= 41


def test_workers_share_the_port_and_their_metrics(servers):
    server = servers["lr_workers"]
    with ThreadPoolExecutor(8) as pool:  # a new connection each: the kernel spreads them over workers
        codes = list(pool.map(lambda _: requests.get(server.url + "/v2/health/ready").status_code, range(60)))
    assert codes == [200] * 60
    # Each worker publishes its numbers every second (later on a busy machine): whichever worker
    # answers the scrape shows the other's once published.
    ok = ("kiln_requests_total", (("code", "200"), ("protocol", "v2")))
    deadline = time.monotonic() + 60
    while (seen := scrape(server).get(ok, 0)) < 60 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen >= 60


def drained(sock):
    """The hand-off socket with what earlier tests sent dropped, blocking again (30 s)."""
    sock.setblocking(False)
    while True:
        try:
            sock.recv(1 << 20)
        except BlockingIOError:
            break
    sock.settimeout(30)
    return sock


def test_rows_are_handed_to_the_monitoring_sidecar(servers, models, handoff_socket):
    sock = drained(handoff_socket[1])
    files = models["lr"]
    resp = predict_v1(servers["lr"], files.X[:8].tolist())
    assert resp.status_code == 200
    # Frames the unread socket refused earlier wait in the server's backlog and come first, and rows
    # of an earlier test's requests may share a frame with this one's (the sender flushes on a timer):
    # this request's rows are picked out by its id, from however many frames carry them.
    rid = resp.headers["X-Request-Id"]
    seen = {"model": set(), "row": [], "ts": [], "x": [], "pred": []}
    for _ in range(200):
        frame = decode_frame(sock.recv(1 << 20))
        mine = np.array([i for i, r in enumerate(frame.request_ids or []) if r == rid], dtype=int)
        if mine.size:
            seen["model"].add((frame.model, frame.version))
            seen["row"] += frame.row_in_request[mine].tolist()
            seen["ts"] += frame.timestamps[mine].tolist()
            seen["x"].append(frame.matrix[mine])
            seen["pred"].append(frame.predictions[mine])
        if len(seen["row"]) >= 8:
            break
    assert seen["model"] == {("m", "1")} and len(seen["row"]) == 8
    assert seen["row"] == list(range(8)) and np.isfinite(seen["ts"]).all()
    np.testing.assert_allclose(np.concatenate(seen["x"]), files.X[:8])
    np.testing.assert_array_equal(np.concatenate(seen["pred"]), files.labels[:8])


# --- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, reason", [
    ({"KILN_MODEL_SHA256": "0" * 64}, "digest mismatch: expected sha256 0000"),
    ({"KILN_MODEL_FORMAT": "joblib"}, "format joblib can execute arbitrary code"),
    ({"KILN_ONNX_SHA256": "1" * 64}, "onnx model: .*digest mismatch"),
])
def test_refusals_exit_non_zero_with_one_clear_line(models, spawn, tmp_path, change, reason):
    import re

    files = models["lr"]
    env = {**files.env(), **change}
    if change.get("KILN_MODEL_FORMAT") == "joblib":
        env.update(KILN_MODEL_URI=files.joblib.as_uri(), KILN_MODEL_SHA256=files.sha["model.joblib"])
    server = spawn(env, tmp_path / "refused.log")
    assert server.wait_exit() == 3
    lines = [ln for ln in server.log().splitlines() if "refusing to serve" in ln]
    assert len(lines) == 1 and re.search(reason, lines[0]), server.log()


CLIENT_ERRORS = [
    ("POST", "/v1/models/m:predict", b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/models/m:predict", b'{"instances": [[1, 2, 3]]}', 400, "has 3 values; the model takes 20"),
    ("POST", "/v1/models/m:predict", json.dumps({"instances": [["a"] * 20]}).encode(), 400,
     r"instances\[0\]\[0\] \(feature 'f0'\): expected a number, got a string"),
    ("POST", "/v1/models/m:predict", b'{"instances": [[1]], "parameters": []}', 400, "'parameters' must be an object"),
    ("POST", "/v1/models/other:predict", b'{"instances": [[1]]}', 404, "model 'other' is not served here"),
    ("POST", "/v2/models/other/infer", b"{}", 404, "model 'other' is not served here"),
    ("GET", "/v2/models/m/versions/7", b"", 404, "has no version '7'"),
    ("GET", "/nope", b"", 404, "no such endpoint: /nope"),
    ("GET", "/v1/models/m:predict", b"", 405, "takes POST"),
    ("DELETE", "/v2/models/m", b"", 405, "takes GET"),
    ("POST", "/v2/models/m/infer", b'{"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": [1]}]}',
     400, r"data has 1 values, shape \[1, 20\] needs 20"),
    ("POST", "/v2/models/m/infer", b'{"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", '
     b'"parameters": {"binary_data_size": 160}}]}', 400, "no Inference-Header-Content-Length"),
]


@pytest.mark.parametrize("method, path, body, status, message", CLIENT_ERRORS)
def test_client_errors_are_4xx_naming_the_problem(servers, method, path, body, status, message):
    import re

    resp = requests.request(method, servers["lr"].url + path, data=body, timeout=10)
    assert resp.status_code == status, resp.text
    assert re.search(message, resp.json()["error"]), resp.text
    if status == 405:
        assert resp.headers["allow"] in ("GET", "POST")


def raw_exchange(port: int, data: bytes, expect_close: bool = True, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not expect_close and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_payload_over_the_limit_is_413(servers):
    url = servers["lr"].url + "/v1/models/m:predict"
    resp = requests.post(url, data=b"[" + b"1," * MAX_PAYLOAD + b"1]", timeout=10)
    assert resp.status_code == 413 and "over the limit" in resp.json()["error"]
    # Announced with Expect: 100-continue: refused before the body is sent.
    head = (f"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_PAYLOAD + 1}\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    answer = raw_exchange(servers["lr"].port, head)
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()
    # The server is unharmed.
    assert predict_v1(servers["lr"], [[0.0] * 20]).status_code == 200


def test_malformed_http_is_400_and_pipelined_requests_are_answered_in_order(servers, models):
    assert raw_exchange(servers["lr"].port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    files = models["rf"]
    reqs = []
    for row in files.X[:10].tolist():
        body = json.dumps({"instances": [row]}).encode()
        reqs.append(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    reqs.append(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = raw_exchange(servers["rf"].port, b"".join(reqs))
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert [json.loads(b)["predictions"][0] for b in bodies[:10]] == files.labels[:10].tolist()
    assert json.loads(bodies[10]) == {"live": True}


# --- fuzzing -------------------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=8)
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                        max_leaves=40)
row = st.lists(st.floats(-1e6, 1e6) | st.integers(-10, 10) | json_leaf, min_size=18, max_size=21)
v1_body = st.fixed_dictionaries({"instances": st.lists(row, max_size=4) | json_any},
                                optional={"parameters": st.fixed_dictionaries({"probabilities": json_leaf}) | json_any})
tensor = st.fixed_dictionaries({
    "name": st.sampled_from(["input-0", "f0", "f3"]) | json_leaf,
    "shape": st.lists(st.integers(-1, 25), max_size=3) | json_any,
    "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BOOL", "BYTES", "UINT8"]) | json_leaf,
    "data": st.lists(st.floats(-1e3, 1e3) | json_leaf, max_size=45) | json_any},
    optional={"parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 400)}) | json_any})
v2_body = st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=3) | json_any},
                                optional={"outputs": st.lists(st.fixed_dictionaries(
                                              {"name": st.sampled_from(["predict", "probabilities", "x"])}), max_size=2)
                                          | json_any, "id": json_leaf, "parameters": json_any})


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/models/m:predict", "/v2/models/m/infer", "/v1/models/x:predict"]),
       body=v1_body | v2_body | json_any, raw=st.booleans(), tail=st.binary(max_size=64),
       header=st.none() | st.integers(-3, 3000))
def test_fuzzed_bodies_never_get_a_5xx(servers, path, body, raw, tail, header):
    data = json.dumps(body).encode()
    if raw:
        data = data[: len(data) // 2] + tail
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Inference-Header-Content-Length"] = str(header)
        data += tail
    resp = requests.post(servers["lr"].url + path, data=data, headers=headers, timeout=10)
    assert resp.status_code in (200, 400, 404, 413), (resp.status_code, resp.text)
    if resp.status_code != 200:
        assert resp.json()["error"]


# --- graceful shutdown ---------------------------------------------------------------------------

def pipelined(rows, per_request: int = 1) -> bytes:
    bodies = [json.dumps({"instances": rows[i: i + per_request]}).encode() for i in range(0, len(rows), per_request)]
    return b"".join(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                    for b in bodies)


def read_all(sock) -> list[bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data.split(b"HTTP/1.1 ")[1:]


def one_answer(sock, request: bytes) -> bytes:
    """Sends one request on a keep-alive connection and reads its whole answer (content-length)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    size = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")))
    while len(body) < size:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        body += chunk
    assert len(body) == size, "more than one answer"
    return head + b"\r\n\r\n" + body


@pytest.fixture
def gated(models, spawn, tmp_path):
    """The forest behind a gate (tests/integration/gated_model.py): a prediction of 100 rows or more
    waits, inside kiln-serve, until the test releases it. Yields (Gate, kiln-serve's environment).
    It depends on `spawn` so that the gate opens before the servers are stopped."""
    import hashlib

    import joblib

    from gated_model import Gate, GatedModel

    files = models["rf"]
    gate = Gate()
    try:
        path = tmp_path / "gated.joblib"
        joblib.dump(GatedModel(files.model, gate.port, min_rows=100), path)
        here = str(Path(__file__).resolve().parent)
        env = {**files.env(onnx=False), "KILN_MODEL_URI": path.as_uri(),
               "KILN_MODEL_SHA256": hashlib.sha256(path.read_bytes()).hexdigest(),
               "KILN_MODEL_FORMAT": "joblib", "KILN_ALLOW_UNSAFE": "true",
               "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
        yield gate, env
    finally:
        gate.close()  # a prediction still held goes on, so a failed test never leaves kiln-serve stuck


def test_sigterm_drains_in_flight_requests_then_exits(models, gated, spawn, tmp_path):
    files = models["rf"]
    gate, env = gated
    server = spawn(env, tmp_path / "drain.log").wait_ready()
    rows = files.X.tolist()
    busy = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    late = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(4)]
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    # An answer on each proves the server accepted it: now each is an idle keep-alive connection.
    for sock in [busy, *late, idle]:
        assert one_answer(sock, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
    busy.sendall(pipelined(rows, per_request=len(rows)))
    # Precondition, held by the test rather than assumed of the machine's speed: kiln-serve is inside
    # the model call for the big request, and stays there until the gate is released.
    gate.wait_entered(timeout=120)
    for i, sock in enumerate(late):  # arrive while the server is busy
        sock.sendall(pipelined(rows[2 * i: 2 * i + 2]))
    busy.setblocking(False)
    with pytest.raises(BlockingIOError):
        busy.recv(1)  # the big answer is still being computed
    busy.setblocking(True)
    server.proc.send_signal(signal.SIGTERM)
    gate.release()
    busy_answers = read_all(busy)
    late_answers = [read_all(sock) for sock in late]
    assert read_all(idle) == []  # an idle connection is closed without an answer
    assert server.wait_exit(60) == 0
    assert len(busy_answers) == 1 and busy_answers[0].startswith(b"200 OK")
    assert json.loads(busy_answers[0].split(b"\r\n\r\n", 1)[1])["predictions"] == files.labels.tolist()
    got = []
    for answers in late_answers:  # answered, then the connection closed by the server
        assert [a[:3] for a in answers] == [b"200"] * 2
        got += [json.loads(a.split(b"\r\n\r\n", 1)[1])["predictions"][0] for a in answers]
    assert got == files.labels[:8].tolist()
    log = server.log()
    assert "draining" in log and "drained; exiting" in log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


# --- kiln-train's own artifacts, served from a real S3 API --------------------------------------------

S3_BUCKET = "kiln-artifacts"
MIXED_FEATURES = [("x0", "number"), ("x1", "number"), ("x2", "number"), ("rooms", "integer"),
                  ("colour", "category"), ("member", "boolean")]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server as a process on 127.0.0.1; yields the AWS_* environment a pod would get."""
    import boto3

    with moto_server() as url:
        env = {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "kiln-test",
               "AWS_SECRET_ACCESS_KEY": "kiln-test-secret"}
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=S3_BUCKET)
        yield {"env": env, "client": client}


def mixed_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        x = rng.normal(size=3)
        colour = str(rng.choice(["red", "green", "blue"]))
        member = bool(rng.random() < 0.4)
        rooms = int(rng.integers(1, 7))
        score = x[0] - 0.5 * x[1] + (0.8 if colour == "red" else 0) + (0.6 if member else 0) + 0.1 * rooms
        rows.append({"x0": float(x[0]), "x1": float(x[1]), "x2": float(x[2]), "rooms": rooms,
                     "colour": colour, "member": member, "label": "yes" if score + rng.normal(0, 0.3) > 0.8 else "no"})
    return rows


@pytest.fixture(scope="module")
def trained(s3, tmp_path_factory):
    """A real kiln-train run (trial 0, then select) writing its artifact set to S3; returns the
    ModelVersion fragment from its manifest and the scikit-learn model it registered."""
    import csv
    import io

    from kiln_runtime.train import artifacts

    tmp = tmp_path_factory.mktemp("train")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[n for n, _ in MIXED_FEATURES] + ["label"])
    writer.writeheader()
    writer.writerows({**r, "member": "true" if r["member"] else "false"} for r in mixed_rows(600, 1))
    s3["client"].put_object(Bucket=S3_BUCKET, Key="data/mixed.csv", Body=buf.getvalue().encode())
    columns = [{"name": n, "type": t, "nullable": False} for n, t in MIXED_FEATURES]
    columns[4]["allowed"] = ["red", "green", "blue"]
    config = {
        "dataset": {"source": {"uri": f"s3://{S3_BUCKET}/data/mixed.csv", "format": "csv"}, "target": "label",
                    "schema": {"columns": columns + [{"name": "label", "type": "category", "allowed": ["no", "yes"]}]},
                    "checks": {"minRows": 100}},
        "pipeline": {"modelName": "mixed", "estimator": {"class": "LogisticRegression", "params": {}},
                     "search": {"strategy": "grid", "trials": 1, "metric": "accuracy", "space": {"C": [1.0]}},
                     "evaluation": {"testFraction": 0.25, "seed": 3}},
        "output": f"s3://{S3_BUCKET}/runs/default/mixed/r1",
    }
    cfg_path = tmp / "run.json"
    cfg_path.write_text(json.dumps(config))
    kiln_train = str(Path(sys.executable).with_name("kiln-train"))
    for command, extra in (("trial", {"JOB_COMPLETION_INDEX": "0"}), ("select", {})):
        term = tmp / f"{command}.json"
        done = subprocess.run([kiln_train, command], capture_output=True, timeout=300,
                              env={**os.environ, **s3["env"], **extra, "KILN_TRAIN_CONFIG_FILE": str(cfg_path),
                                   "KILN_TERMINATION_LOG": str(term)})
        assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary = json.loads((tmp / "select.json").read_bytes())
    assert summary["result"] == "Succeeded", summary
    key = summary["manifestUri"].split("/", 3)[3]
    manifest = json.loads(s3["client"].get_object(Bucket=S3_BUCKET, Key=key)["Body"].read())
    mv = manifest["modelVersion"]
    model_key = mv["artifact"]["uri"].split("/", 3)[3]
    model = artifacts.loads(s3["client"].get_object(Bucket=S3_BUCKET, Key=model_key)["Body"].read(), "skops")
    return {"mv": mv, "model": model, "dir": mv["artifact"]["uri"].rsplit("/", 1)[0]}


def operator_env(mv: dict, onnx: bool = True) -> dict:
    """kiln-serve's environment as the operator's builder sets it from a ModelVersion (the signature
    inline, ONNX only when its parity was verified)."""
    art = mv["artifact"]
    env = {"KILN_MODEL_NAME": "mixed", "KILN_MODEL_VERSION": "1", "KILN_MODEL_URI": art["uri"],
           "KILN_MODEL_SHA256": art["sha256"], "KILN_MODEL_FORMAT": art["format"],
           "KILN_SIGNATURE": json.dumps(mv["signature"])}
    if onnx and (art.get("onnx") or {}).get("parityVerified"):
        env.update(KILN_ONNX_URI=art["onnx"]["uri"], KILN_ONNX_SHA256=art["onnx"]["sha256"])
    return env


def expected_labels(model, rows: list[dict]) -> list:
    import pandas as pd

    frame = pd.DataFrame({n: [("" if r[n] is None else str(r[n])) if t == "category" else
                              (np.nan if r[n] is None else float(r[n])) for r in rows] for n, t in MIXED_FEATURES})
    return [str(v) for v in model.predict(frame)]


@pytest.mark.parametrize("onnx", [True, False], ids=["onnx", "skops"])
def test_kiln_trains_artifact_set_served_from_s3_as_the_operator_configures_it(s3, trained, spawn, tmp_path, onnx):
    assert trained["mv"]["artifact"]["onnx"]["parityVerified"], "kiln-train exported no ONNX to serve"
    server = spawn({**s3["env"], **operator_env(trained["mv"], onnx)}, tmp_path / "s3.log").wait_ready()
    rows = mixed_rows(40, 2)
    features = [{k: v for k, v in r.items() if k != "label"} for r in rows]
    resp = requests.post(server.url + "/v1/models/mixed:predict", json={"instances": features}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert [str(v) for v in resp.json()["predictions"]] == expected_labels(trained["model"], features)
    # V2, one tensor per feature with the types the signature names.
    dtypes = {"number": "FP64", "integer": "INT64", "category": "BYTES", "boolean": "BOOL"}
    inputs = [{"name": n, "shape": [len(features)], "datatype": dtypes[t], "data": [f[n] for f in features]}
              for n, t in MIXED_FEATURES]
    resp = requests.post(server.url + "/v2/models/mixed/infer", json={"inputs": inputs}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert [str(v) for v in resp.json()["outputs"][0]["data"]] == expected_labels(trained["model"], features)
    info = next(ln for ln in requests.get(server.url + "/metrics").text.splitlines()
                if ln.startswith("kiln_model_info"))
    assert f'runtime="{"onnx" if onnx else "sklearn"}"' in info
    # The signature's types are enforced, naming the feature.
    bad = {**features[0], "colour": 3}
    resp = requests.post(server.url + "/v1/models/mixed:predict", json={"instances": [bad]}, timeout=10)
    assert resp.status_code == 400 and "feature 'colour'" in resp.json()["error"]


def test_the_full_signature_json_from_s3_lets_imputed_features_be_null(s3, trained, spawn, tmp_path):
    env = {**s3["env"], **operator_env(trained["mv"], onnx=False),
           "KILN_SIGNATURE": trained["dir"] + "/signature.json"}
    server = spawn(env, tmp_path / "sig.log").wait_ready()
    rows = [{k: v for k, v in r.items() if k != "label"} for r in mixed_rows(10, 4)]
    rows[0]["x1"], rows[1]["colour"], rows[2]["rooms"] = None, None, None
    resp = requests.post(server.url + "/v1/models/mixed:predict", json={"instances": rows}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert [str(v) for v in resp.json()["predictions"]] == expected_labels(trained["model"], rows)


@pytest.mark.parametrize("change, reason", [
    ({"KILN_MODEL_SHA256": "f" * 64}, "model: .*digest mismatch"),
    ({"KILN_MODEL_URI": f"s3://{S3_BUCKET}/runs/default/mixed/nope/model.skops"}, "model: .*(not found|NoSuchKey)"),
])
def test_a_bad_artifact_in_s3_is_refused_with_its_reason(s3, trained, spawn, tmp_path, change, reason):
    import re

    server = spawn({**s3["env"], **operator_env(trained["mv"]), **change}, tmp_path / "bad.log")
    assert server.wait_exit() == 3
    lines = [ln for ln in server.log().splitlines() if "refusing to serve" in ln]
    assert len(lines) == 1 and re.search(reason, lines[0]), server.log()
    assert "kiln-test-secret" not in server.log()
