"""Request ids on every inference answer, ids and times in the hand-off, and the feedback relay."""

from __future__ import annotations

import asyncio
import socket
from time import perf_counter
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from kiln_runtime.handoff import decode_frame, issuer_token
from kiln_runtime.serve.app import App
from kiln_runtime.serve.drift import DriftTap
from kiln_runtime.serve.feedback import Relay, parse_answer
from kiln_runtime.serve.http import Connection
from kiln_runtime.serve.metrics import Metrics
from kiln_runtime.serve.request_ids import RequestIds, sane

from conftest import Transport, http_request, numeric_signature, parse_answers


class Model:
    kind, has_proba, classes, label_datatype = "sklearn", True, ("0", "1"), "INT64"

    def predict(self, x, proba):
        labels = (x[:, 0] > 0).astype(np.int64)
        return labels, (np.stack([1 - labels, labels], axis=1).astype(np.float32) if proba else None)


def make_app(loop, drift=None, relay=None, token="0badcafe"):
    sig = numeric_signature(3)
    settings = SimpleNamespace(model_name="m", model_version="1", max_payload_bytes=1 << 20,
                               max_batch_size=64, max_latency_ms=0.0)
    metrics = Metrics("m", "1", "x", "sklearn", "skops", Model.classes)
    return App(settings, sig, Model(), metrics, drift, loop, "test", RequestIds(token), relay)


def exchange(loop, app, raw: bytes) -> list[tuple[int, dict, bytes]]:
    """Feeds raw HTTP bytes into a Connection and returns (status, headers, body) per answer."""
    conn = Connection(app)
    transport = Transport()
    conn.connection_made(transport)
    fed = loop.create_future()

    def feed():  # on the loop, as asyncio delivers bytes
        conn.data_received(raw)
        fed.set_result(None)

    loop.call_soon(feed)
    loop.run_until_complete(fed)
    # Until every request read is answered (the feedback relay takes a real round trip on the loop),
    # however many loop passes that takes on a busy machine.
    deadline = perf_counter() + 60
    while conn.pending and perf_counter() < deadline:
        loop.run_until_complete(asyncio.sleep(0.01))
    return parse_answers(bytes(transport.out))


def post(path: str, body: bytes, *headers: str) -> bytes:
    return http_request("POST", path, body, *headers)


V1 = orjson.dumps({"instances": [[1.0, 2.0, 3.0]]})
V2 = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]})


def test_choose_keeps_sane_client_ids_and_issues_the_rest():
    ids = RequestIds("12345678")
    assert ids.choose(b"abc-DEF_1.2:3") == b"abc-DEF_1.2:3"
    first, second = ids.choose(None), ids.choose(b"has space")
    assert first == b"12345678-1" and second == b"12345678-2"
    assert ids.choose(b"x" * 129).startswith(b"12345678-")
    assert ids.choose(None, "body-id") == b"body-id" and ids.choose(None, "bad id").startswith(b"1234")
    assert ids.choose(None, "é").startswith(b"1234") and ids.choose(None, 5).startswith(b"1234")
    assert issuer_token("12345678-ff") == "12345678" and issuer_token("my-request") is None
    assert sane("a" * 128) and not sane("") and not sane("a/b") and not sane(b"\xff")


def test_every_inference_answer_carries_a_request_id(loop):
    app = make_app(loop)
    v1, v1_own, v2, v2_header, v2_body, v2_bad_header, metadata = exchange(loop, app, b"".join((
        post("/v1/models/m:predict", V1),
        post("/v1/models/m:predict", V1, "X-Request-Id: client-1"),
        post("/v2/models/m/infer", V2),
        post("/v2/models/m/infer", V2, "x-request-id: hdr.7"),
        post("/v2/models/m/infer", V2.replace(b'{"inputs"', b'{"id":"body-9","inputs"')),
        post("/v2/models/m/infer", V2.replace(b'{"inputs"', b'{"id":"body-10","inputs"'), "X-Request-Id: a b"),
        b"GET /v2/models/m HTTP/1.1\r\nhost: x\r\nx-request-id: meta\r\n\r\n")))
    assert v1[0] == 200 and issuer_token(v1[1][b"x-request-id"].decode()) == "0badcafe"
    assert v1_own[1][b"x-request-id"] == b"client-1"
    assert orjson.loads(v2[2])["id"] == v2[1][b"x-request-id"].decode()
    assert v2[1][b"x-request-id"].startswith(b"0badcafe-")
    assert orjson.loads(v2_header[2])["id"] == "hdr.7" == v2_header[1][b"x-request-id"].decode()
    assert orjson.loads(v2_body[2])["id"] == "body-9" == v2_body[1][b"x-request-id"].decode()
    assert orjson.loads(v2_bad_header[2])["id"] == "body-10"  # an insane header loses to a sane body id
    assert b"x-request-id" not in metadata[1]  # only inference answers carry one
    ids = {a[1][b"x-request-id"] for a in (v1, v2)}
    assert len(ids) == 2


def test_binary_answers_and_errors_carry_the_id_too(loop):
    app = make_app(loop)
    raw = np.array([[1.0, 2.0, 3.0]]).tobytes()
    head = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}})
    binary, bad = exchange(loop, app, post("/v2/models/m/infer", head + raw, f"Inference-Header-Content-Length: {len(head)}",
                                           "X-Request-Id: bin-1") + post("/v1/models/m:predict", b"{}"))
    hlen = int(binary[1][b"inference-header-content-length"])
    assert binary[0] == 200 and binary[1][b"x-request-id"] == b"bin-1"
    assert orjson.loads(binary[2][:hlen])["id"] == "bin-1"
    assert bad[0] == 400 and bad[1][b"x-request-id"].startswith(b"0badcafe-")


def test_hand_off_frames_carry_each_rows_request_id_and_time(loop, tmp_path):
    path = str(tmp_path / "h.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(2)
    tap = DriftTap(path, "m", "1", numeric_signature(3), frame_rows=256)
    app = make_app(loop, drift=tap)
    two_rows = orjson.dumps({"instances": [[1.0, 2.0, 3.0], [-1.0, 0.0, 0.0]]})
    answers = exchange(loop, app, post("/v1/models/m:predict", V1, "X-Request-Id: r1")
                       + post("/v1/models/m:predict", two_rows))
    tap.sender.flush()
    frame = decode_frame(receiver.recv(1 << 20))
    second = answers[1][1][b"x-request-id"].decode()
    assert frame.request_ids == ["r1", second, second]
    assert frame.row_in_request.tolist() == [0, 0, 1]
    assert np.isfinite(frame.timestamps).all() and frame.timestamps[0] > 1.7e9
    receiver.close()


def test_feedback_without_a_monitor_url_is_503_naming_it(loop):
    app = make_app(loop, relay=Relay(None))
    (answer,) = exchange(loop, app, post("/v2/models/m/feedback", b'{"id":"x","labels":[1]}'))
    assert answer[0] == 503 and b"KILN_MONITOR_URL" in answer[2]


def test_feedback_is_relayed_after_a_hand_off_flush(loop):
    seen, flushed = [], []

    async def monitor(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        seen.append((head.split(b" ")[1], await reader.readexactly(length), list(flushed)))
        writer.write(b'HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 16\r\n'
                     b'connection: close\r\n\r\n{"result":"dup"}')
        await writer.drain()
        writer.close()

    server = loop.run_until_complete(asyncio.start_server(monitor, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    app = make_app(loop, relay=Relay(f"http://127.0.0.1:{port}", flush=lambda: flushed.append(1)))
    body = b'{"id":"r1","labels":[1]}'
    (answer,) = exchange(loop, app, post("/v2/models/m/feedback", body))
    assert seen == [(b"/feedback", body, [1])]  # flushed before the relay
    assert answer[0] == 409 and orjson.loads(answer[2]) == {"result": "dup"}
    server.close()


def test_feedback_to_an_unreachable_monitor_is_503(loop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_app(loop, relay=Relay(f"http://127.0.0.1:{port}"))
    (answer,) = exchange(loop, app, post("/v2/models/m/feedback", b"{}"))
    assert answer[0] == 503 and b"unreachable" in answer[2]
    (get,) = exchange(loop, app, b"GET /v2/models/m/feedback HTTP/1.1\r\nhost: x\r\n\r\n")
    assert get[0] == 405


def test_parse_answer_reads_status_and_body():
    assert parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}") == (200, b"{}")
    with pytest.raises(ValueError):
        parse_answer(b"garbage")
