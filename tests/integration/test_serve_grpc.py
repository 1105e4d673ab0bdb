"""kiln-serve's gRPC port (KILN_GRPC_PORT) as a real process, driven by tritonclient.grpc (grpcio) unchanged.

The Open Inference Protocol's `inference.GRPCInferenceService`: health, metadata and ModelInfer with
raw and typed tensors, answers compared to the scikit-learn model's own predictions; errors as gRPC
status codes whose messages are the HTTP V2 path's, word for word; many concurrent streams on one
channel; a graceful SIGTERM while calls are in flight; and the multi-model mode routing by name.
Processes, models and the gated model come from test_serve_http.py and test_serve_multimodel.py.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import serve_models
import test_serve_http as http_tests
import test_serve_multimodel as multi_tests
from kiln_runtime.handoff import decode_frame
from serve_process import free_port, stop_all

spawn = http_tests.spawn  # the fixture: every process started by a test is stopped when it ends
models = http_tests.models
gated = http_tests.gated
handoff_socket = http_tests.handoff_socket


@pytest.fixture(scope="module")
def servers(models, handoff_socket, tmp_path_factory):
    logs = tmp_path_factory.mktemp("grpc-logs")
    specs = {"lr": {**models["lr"].env(), "KILN_HANDOFF_SOCKET": str(handoff_socket[0]),
                    "KILN_HANDOFF_FRAME_ROWS": "8"},
             "rf": models["rf"].env(),
             "lr_workers": {**models["lr_pf"].env(), "KILN_WORKERS": "2"}}
    started = {}
    try:
        for name, env in specs.items():
            grpc_port = free_port()
            started[name] = http_tests.Server({**env, "KILN_GRPC_PORT": str(grpc_port)}, logs / f"{name}.log")
            started[name].grpc_port = grpc_port
        yield {name: s.wait_ready() for name, s in started.items()}
    finally:
        stop_all(started.values())


def client(server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")


def infer_input(x: np.ndarray, dtype: str = "FP64", name: str = "input-0"):
    inp = grpcclient.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x.astype({"FP64": np.float64, "FP32": np.float32}[dtype]))
    return inp


# --- the protocol, through tritonclient ------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [("lr", "lr"), ("rf", "rf"), ("lr_workers", "lr_pf")])
def test_tritonclient_grpc_speaks_to_kiln_serve_unchanged(servers, models, name, kind):
    server, files = servers[name], models[kind]
    c = client(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("m") and c.is_model_ready("m", "1")
    meta = c.get_model_metadata("m")
    assert (meta.name, list(meta.versions), meta.platform) == ("m", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input-0", "FP64", [-1, 20])]
    assert [t.name for t in meta.outputs] == ["predict", "probabilities"]
    server_meta = c.get_server_metadata()
    assert server_meta.name == "kiln-serve" and "binary_tensor_data" in server_meta.extensions
    x = files.X[:50]
    for dtype in ("FP64", "FP32"):
        outputs = [grpcclient.InferRequestedOutput("predict"), grpcclient.InferRequestedOutput("probabilities")]
        result = c.infer("m", [infer_input(x, dtype)], outputs=outputs, request_id="grpc-abc")
        assert result.get_response().id == "grpc-abc"
        np.testing.assert_array_equal(result.as_numpy("predict"), files.labels[:50])
        np.testing.assert_allclose(result.as_numpy("probabilities"), files.proba[:50], atol=1e-5)
    # No outputs named: predict only, raw like the request (Triton's rule).
    result = c.infer("m", [infer_input(x)], model_version="1")
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["predict"] and len(response.raw_output_contents) == 1
    np.testing.assert_array_equal(result.as_numpy("predict"), files.labels[:50])
    c.close()


def test_typed_contents_are_answered_typed(servers, models):
    files = models["lr"]
    x = files.X[:7]
    with grpc.insecure_channel(f"127.0.0.1:{servers['lr'].grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = service_pb2.ModelInferRequest(model_name="m", id="typed-1")
        t = req.inputs.add(name="input-0", datatype="FP64", shape=list(x.shape))
        t.contents.fp64_contents.extend(x.reshape(-1).tolist())
        req.outputs.add(name="predict")
        req.outputs.add(name="probabilities")
        answer = stub.ModelInfer(req, timeout=10)
        assert answer.id == "typed-1" and not answer.raw_output_contents
        assert (answer.model_name, answer.model_version) == ("m", "1")
        predict, proba = answer.outputs
        assert (predict.datatype, list(predict.shape)) == ("INT64", [7])
        assert list(predict.contents.int64_contents) == files.labels[:7].tolist()
        np.testing.assert_allclose(np.array(proba.contents.fp32_contents).reshape(7, -1), files.proba[:7], atol=1e-5)
        # One tensor per feature, by name, typed: the same as HTTP V2's per-feature form.
        req = service_pb2.ModelInferRequest(model_name="m")
        for i, feature in enumerate(serve_models.FEATURES):
            t = req.inputs.add(name=feature, datatype="FP32", shape=[7, 1])
            t.contents.fp32_contents.extend(x[:, i].astype(np.float32).tolist())
        answer = stub.ModelInfer(req, timeout=10)
        assert list(answer.outputs[0].contents.int64_contents) == files.labels[:7].tolist()


def http_v2_error(server, body: dict) -> str:
    answer = requests.post(f"{server.url}/v2/models/m/infer", json=body, timeout=10)
    assert answer.status_code == 400, answer.text
    return answer.json()["error"]


@pytest.mark.parametrize("shape, dtype, name, needle", [
    ([1, 19], "FP64", "input-0", "inputs[0] (input-0): shape [1, 19] does not fit the model"),
    ([1, 20], "BYTES", "input-0", "inputs[0] (input-0): datatype BYTES"),
    ([1], "FP64", "colour", "inputs[0] (colour): shape [1] does not fit the model"),
])
def test_bad_input_is_invalid_argument_with_the_http_message(servers, models, shape, dtype, name, needle):
    server = servers["lr"]
    values = [0.5] * int(np.prod(shape))
    req = service_pb2.ModelInferRequest(model_name="m")
    t = req.inputs.add(name=name, datatype=dtype, shape=shape)
    if dtype == "BYTES":
        t.contents.bytes_contents.extend([b"x"] * len(values))
    else:
        t.contents.fp64_contents.extend(values)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
    http = http_v2_error(server, {"inputs": [{"name": name, "shape": shape, "datatype": dtype,
                                              "data": ["x"] * len(values) if dtype == "BYTES" else values}]})
    assert err.value.details() == http  # one validation, one message, both protocols


def test_tritonclient_errors_map_to_grpc_codes(servers, models):
    c = client(servers["lr"])
    x = models["lr"].X[:2]
    with pytest.raises(InferenceServerException) as err:
        c.infer("m", [infer_input(x[:, :19])])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "inputs[0] (input-0)" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        c.infer("nope", [infer_input(x)])
    assert err.value.status() == "StatusCode.NOT_FOUND" and "'nope' is not served here" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        c.infer("m", [infer_input(x)], model_version="9")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        c.is_model_ready("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        c.get_model_config("m")
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"
    assert c.is_server_live()  # the connection serves on after every error
    c.close()


def test_many_concurrent_streams_on_one_channel(servers, models):
    files = models["rf"]
    c = client(servers["rf"])
    results, done = {}, threading.Semaphore(0)

    def callback(i):
        def on_answer(result, error):
            results[i] = (result, error)
            done.release()
        return on_answer

    n = 400
    for i in range(n):  # all in flight at once on the one HTTP/2 connection
        c.async_infer("m", [infer_input(files.X[i % len(files.X)][None, :])], callback(i), request_id=f"s{i}")
    for _ in range(n):
        assert done.acquire(timeout=60)
    for i in range(n):
        result, error = results[i]
        assert error is None, error
        assert result.get_response().id == f"s{i}"
        assert result.as_numpy("predict").tolist() == [files.labels[i % len(files.X)]]
    # And from 32 threads sharing the channel.
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda i: c.infer("m", [infer_input(files.X[i][None, :])]).as_numpy("predict")[0],
                            range(256)))
    assert got == files.labels[:256].tolist()
    c.close()


def scrape(server) -> dict:
    return http_tests.scrape(server)


def test_metrics_count_grpc_calls_under_their_own_protocol(servers, models):
    server = servers["rf"]
    before = scrape(server)
    c = client(server)
    for i in range(5):
        c.infer("m", [infer_input(models["rf"].X[i][None, :])])
    with pytest.raises(InferenceServerException):
        c.infer("m", [infer_input(models["rf"].X[:1, :3])])
    c.close()
    after = scrape(server)
    ok = ("kiln_requests_total", (("code", "200"), ("protocol", "grpc")))
    bad = ("kiln_requests_total", (("code", "400"), ("protocol", "grpc")))
    assert after[ok] - before.get(ok, 0) == 5
    assert after[bad] - before.get(bad, 0) == 1
    assert after[("kiln_request_duration_seconds_count", (("protocol", "grpc"),))] >= 6


def test_grpc_rows_are_handed_to_the_monitoring_sidecar(servers, models, handoff_socket):
    sock = http_tests.drained(handoff_socket[1])
    files = models["lr"]
    c = client(servers["lr"])
    c.infer("m", [infer_input(files.X[:8])], request_id="grpc-drift-1")
    c.close()
    rows, preds = [], []
    for _ in range(200):
        frame = decode_frame(sock.recv(1 << 20))
        mine = np.array([i for i, r in enumerate(frame.request_ids or []) if r == "grpc-drift-1"], dtype=int)
        if mine.size:
            rows.append(frame.matrix[mine])
            preds.append(frame.predictions[mine])
        if sum(len(r) for r in rows) >= 8:
            break
    np.testing.assert_allclose(np.concatenate(rows), files.X[:8])
    np.testing.assert_array_equal(np.concatenate(preds), files.labels[:8])


def test_garbage_on_the_grpc_port_leaves_the_server_serving(servers, models):
    server = servers["lr"]
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x01\x05\x00\x00\x00\x01\x80\x80\x80\x80"):
        with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
            sock.sendall(junk)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break  # the server closed it
                data += chunk
            assert b"\x07\x00\x00\x00\x00\x00" in data  # a GOAWAY frame before the close
    c = client(server)
    assert c.infer("m", [infer_input(models["lr"].X[:3])]).as_numpy("predict").tolist() == models["lr"].labels[:3].tolist()
    c.close()


# --- shutdown --------------------------------------------------------------------------------------

def test_sigterm_answers_every_stream_in_flight_then_exits(models, gated, spawn, tmp_path):
    files = models["rf"]
    gate, env = gated
    grpc_port = free_port()
    server = spawn({**env, "KILN_GRPC_PORT": str(grpc_port)}, tmp_path / "drain.log").wait_ready()
    c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
    assert c.is_server_ready()
    results, done = {}, threading.Semaphore(0)

    def keep(i):
        def on_answer(result, error):
            results[i] = (result, error)
            done.release()
        return on_answer

    c.async_infer("m", [infer_input(files.X)], keep("big"))  # held inside the model by the gate
    gate.wait_entered(timeout=120)
    for i in range(8):  # arrive while the server is busy: queued for the next batch
        c.async_infer("m", [infer_input(files.X[i][None, :])], keep(i))
    # The event loop is inside the model call: these calls wait in the socket's buffer, read on the
    # loop's next pass, before the drain's GOAWAY (server.py reads once more before draining). The
    # pause only lets grpcio's own thread write them out.
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    gate.release()
    for _ in range(9):
        assert done.acquire(timeout=60)
    result, error = results["big"]
    assert error is None, error
    assert result.as_numpy("predict").tolist() == files.labels.tolist()
    for i in range(8):
        result, error = results[i]
        assert error is None, error
        assert result.as_numpy("predict").tolist() == [files.labels[i]]
    assert server.wait_exit(60) == 0
    c.close()
    log = server.log()
    assert "draining" in log and "drained; exiting" in log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", grpc_port), timeout=2)


def test_grpc_port_off_serves_http_only(models, spawn, tmp_path):
    grpc_port = free_port()
    server = spawn({**models["lr"].env(), "KILN_GRPC_PORT": "off"}, tmp_path / "off.log").wait_ready()
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", grpc_port), timeout=2)
    assert "gRPC off" in server.log()


# --- the multi-model mode -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lrs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc-lr")
    return [serve_models.build(root / f"lr{i}", "lr", seed=i + 1) for i in range(2)]


def test_multi_model_routes_by_model_name(lrs, tmp_path):
    table = multi_tests.Table(tmp_path / "table")
    table.write([multi_tests.entry("a", lrs[0]), multi_tests.entry("b", lrs[1], onnx=True)])
    grpc_port = free_port()
    server = multi_tests.Server(table.path, tmp_path / "multi.log", KILN_GRPC_PORT=str(grpc_port))
    try:
        server.wait_ready()
        x = lrs[0].X[:30]
        own = {name: files.model.predict(x) for name, files in zip("ab", lrs)}
        assert not np.array_equal(own["a"], own["b"])
        c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        assert not c.is_model_ready("a")  # not loaded yet: metadata from the table meanwhile
        assert c.get_model_metadata("b").platform == "onnxruntime_onnx"
        for name in ("a", "b"):  # the first call loads the model, then answers
            np.testing.assert_array_equal(c.infer(name, [infer_input(x)]).as_numpy("predict"), own[name])
        assert c.is_model_ready("a") and c.is_model_ready("b")
        with pytest.raises(InferenceServerException) as err:
            c.infer("zzz", [infer_input(x)])
        assert err.value.status() == "StatusCode.NOT_FOUND"
        c.close()
        metrics = server.metrics()
        grpc_ok = [v for (n, labels), v in metrics.items() if n == "kiln_requests_total"
                   and dict(labels).get("protocol") == "grpc" and dict(labels).get("code") == "200"
                   and dict(labels).get("model") in ("a", "b")]
        assert sum(grpc_ok) == 2
    finally:
        assert server.stop() == 0
        print(server.log()[-3000:])
