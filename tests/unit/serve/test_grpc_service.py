"""The gRPC service over a real connection, batcher and decoder: ModelInfer with raw and typed
tensors, the answer's form, errors as gRPC codes with the HTTP V2 decoder's own messages, health
and metadata, and the metrics' protocol."""

from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from kiln_runtime.serve.errors import BadRequest
from kiln_runtime.serve.grpc import codec, frames as f, messages as pb
from kiln_runtime.serve.grpc.service import PREFIX, GrpcService, SingleModel
from kiln_runtime.serve.metrics import Metrics
from kiln_runtime.serve.request_ids import RequestIds
from kiln_runtime.serve.served_model import ServedModel

from conftest import MIXED, numeric_signature
from test_grpc_h2 import Peer, grpc_message, request_block
from kiln_runtime.serve import signature

PROTOCOL = 3


class Runtime:
    kind = "onnx"
    label_datatype = "INT64"

    def __init__(self, classes=("0", "1"), fail=None):
        self.classes = classes
        self.has_proba = True
        self.calls = []
        self.fail = fail

    def predict(self, x, proba):
        self.calls.append(len(x))
        if self.fail is not None:
            raise self.fail
        if x.dtype == object:  # the mixed signature: age > 30
            labels = np.array([1 if row[0] > 30 else 0 for row in x], dtype=np.int64)
        else:
            labels = (x[:, 0] > 0).astype(np.int64)
        probs = np.stack([1 - labels, labels], axis=1).astype(np.float32) if proba else None
        return labels, probs


class Host:
    """A GrpcService wired to one ServedModel, with a real GrpcConnection (the Peer) in front."""

    def __init__(self, sig=None, runtime=None):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        sig = sig or numeric_signature(3)
        self.runtime = runtime or Runtime()
        settings = SimpleNamespace(model_name="m", model_version="2", max_batch_size=64, max_latency_ms=0.0)
        self.metrics = Metrics("m", "2", "x", "onnx", "onnx", ("0", "1"))
        self.served = ServedModel(settings, sig, self.runtime, self.metrics, None, self.loop, RequestIds("tok").choose)
        self.service = GrpcService(SingleModel(self.served), self.metrics, PROTOCOL, "9.9", 1 << 20)
        self.peer = Peer(self.service)
        self.peer.loop.close()
        self.peer.loop = self.loop
        self.peer.conn.loop = self.loop
        self.sid = 1

    def call(self, method: str, message: bytes, extra=b""):
        """-> (grpc-status, grpc-message or None, response bytes or None)."""
        sid, self.sid = self.sid, self.sid + 2
        self.peer.frames()
        self.peer.feed(self.peer.call(sid, message, request_block(PREFIX + method.encode(), extra)))
        self.peer.pump()
        answer = self.peer.answers()[sid]
        fields = answer.get("trailers") or answer["headers"]
        data = answer["data"]
        body = None
        if data:
            assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == len(data) - 5
            body = data[5:]
        message_text = fields.get(b"grpc-message")
        return int(fields[b"grpc-status"]), message_text.decode() if message_text else None, body

    def infer(self, req, extra=b""):
        code, text, body = self.call("ModelInfer", req.SerializeToString(), extra)
        return code, text, pb.ModelInferResponse.FromString(body) if body is not None else None

    def close(self):
        self.loop.close()


@pytest.fixture
def host():
    h = Host()
    yield h
    h.close()


def raw_request(x: np.ndarray, dtype="FP64", **kw):
    req = pb.ModelInferRequest(model_name="m", **kw)
    req.inputs.add(name="input-0", datatype=dtype, shape=list(x.shape))
    req.raw_input_contents.append(x.astype({"FP64": "<f8", "FP32": "<f4"}[dtype]).tobytes())
    return req


def test_raw_infer_is_answered_raw(host):
    x = np.array([[1.0, 0, 0], [-1.0, 0, 0], [2.0, 0, 0]])
    code, text, resp = host.infer(raw_request(x, id="req-7"))
    assert (code, text) == (0, None)
    assert (resp.model_name, resp.model_version, resp.id) == ("m", "2", "req-7")
    (out,) = resp.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("predict", "INT64", [3])
    assert np.frombuffer(resp.raw_output_contents[0], "<i8").tolist() == [1, 0, 1]
    assert host.runtime.calls == [3]
    assert host.metrics.v[host.metrics.layout.req + PROTOCOL * 9] == 1  # protocol 3, code 200


def test_raw_fp32_with_probabilities(host):
    x = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
    req = raw_request(x, "FP32")
    req.outputs.add(name="probabilities")
    req.outputs.add(name="predict")
    code, _, resp = host.infer(req)
    assert code == 0 and [o.name for o in resp.outputs] == ["probabilities", "predict"]
    assert np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(2, 2).tolist() == [[0, 1], [1, 0]]
    assert np.frombuffer(resp.raw_output_contents[1], "<i8").tolist() == [1, 0]


@pytest.mark.parametrize("dtype, field", [("FP64", "fp64_contents"), ("FP32", "fp32_contents"),
                                          ("INT64", "int64_contents"), ("INT32", "int_contents")])
def test_typed_infer_is_answered_typed(host, dtype, field):
    req = pb.ModelInferRequest(model_name="m", model_version="2")
    t = req.inputs.add(name="input-0", datatype=dtype, shape=[2, 3])
    getattr(t.contents, field).extend([3, 0, 0, -1, 0, 0])
    req.outputs.add(name="predict")
    req.outputs.add(name="probabilities")
    code, text, resp = host.infer(req)
    assert code == 0, text
    assert not resp.raw_output_contents
    assert list(resp.outputs[0].contents.int64_contents) == [1, 0]
    assert list(resp.outputs[1].contents.fp32_contents) == [0, 1, 1, 0]
    assert resp.id.startswith("tok-")  # issued, as over HTTP


def test_request_id_header_wins_over_the_body_id(host):
    from kiln_runtime.serve.grpc.hpack import literal

    code, _, resp = host.infer(raw_request(np.ones((1, 3)), id="body-id"), literal(b"x-request-id", b"hdr-id"))
    assert code == 0 and resp.id == "hdr-id"


def test_per_feature_typed_tensors_with_categories_and_booleans():
    h = Host(signature.parse(MIXED))
    req = pb.ModelInferRequest(model_name="m")
    for name, dtype, field, values in (("age", "INT64", "int64_contents", [40, 20]),
                                       ("income", "FP64", "fp64_contents", [1.5, float("nan")]),
                                       ("colour", "BYTES", "bytes_contents", [b"red", b"blue"]),
                                       ("member", "BOOL", "bool_contents", [True, False])):
        t = req.inputs.add(name=name, datatype=dtype, shape=[2])
        getattr(t.contents, field).extend(values)
    code, text, resp = h.infer(req)
    assert code == 0, text
    assert list(resp.outputs[0].contents.int64_contents) == [1, 0]
    h.close()


def json_error(host, doc) -> str:
    """The HTTP V2 decoder's message for the same request as JSON."""
    with pytest.raises(BadRequest) as err:
        host.served.v2.decode(orjson.dumps(doc), None)
    return str(err.value)


@pytest.mark.parametrize("shape, dtype, name, values", [
    ([1, 2], "FP64", "input-0", [1.0, 2.0]),
    ([2, 3], "FP64", "input-0", [1.0] * 6 + [2.0]),
    ([1, 3], "UINT7", "input-0", [1.0, 2.0, 3.0]),
    ([1], "FP64", "nope", [1.0]),
    ([-1, 3], "FP64", "input-0", [1.0] * 3),
    ([1, 3], "BYTES", "input-0", ["a", "b", "c"]),
])
def test_bad_tensors_get_the_http_decoders_message(host, shape, dtype, name, values):
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name=name, datatype=dtype, shape=shape)
    if dtype == "BYTES":
        t.contents.bytes_contents.extend(v.encode() for v in values)
    elif dtype == "FP64":
        t.contents.fp64_contents.extend(values)
    code, text, _ = host.infer(req)
    assert code == 3
    if len(values) == int(np.prod([abs(d) for d in shape])) or shape[0] < 0 or dtype != "FP64":
        assert text == json_error(host, {"inputs": [{"name": name, "shape": shape, "datatype": dtype, "data": values}]})
    else:
        assert "contents.fp64_contents has 7 values, shape [2, 3] needs 6" in text


def test_raw_bytes_of_the_wrong_size_and_raw_count(host):
    req = raw_request(np.ones((2, 3)))
    req.raw_input_contents[0] = b"\0" * 40
    code, text, _ = host.infer(req)
    assert code == 3 and text == "inputs[0] (input-0): 40 bytes of binary data; 6 FP64 values need 48"
    req.raw_input_contents.append(b"")
    code, text, _ = host.infer(req)
    assert code == 3 and "raw_input_contents has 2 entries for 1 inputs" in text


def test_nan_and_infinity_are_checked_like_binary_tensors(host):
    for bad, needle in ((float("nan"), "does not accept missing values"), (float("inf"), "no infinity")):
        req = pb.ModelInferRequest(model_name="m")
        req.inputs.add(name="input-0", datatype="FP64", shape=[1, 3]).contents.fp64_contents.extend([bad, 0, 0])
        code, text, _ = host.infer(req)
        assert code == 3 and needle in text


def test_unknown_output_and_model_and_version(host):
    req = raw_request(np.ones((1, 3)))
    req.outputs.add(name="logits")
    assert host.infer(req)[:2] == (3, "outputs[0]: unknown output 'logits'; this model has predict, probabilities")
    code, text, _ = host.infer(raw_request(np.ones((1, 3)), model_version="7"))
    assert code == 5 and "has no version '7'" in text
    req = raw_request(np.ones((1, 3)))
    req.model_name = "other"
    code, text, _ = host.infer(req)
    assert code == 5 and text == "model 'other' is not served here; this server serves 'm'"
    assert host.runtime.calls == []


def test_not_a_message_unimplemented_and_model_failures(host):
    assert host.call("ModelInfer", b"\xff\xff\xff")[:2] == (3, "the request is not a valid ModelInferRequest message")
    assert host.call("ModelConfig", b"")[0] == 12
    host.runtime.fail = RuntimeError("boom")
    code, text, _ = host.infer(raw_request(np.ones((1, 3))))
    assert (code, text) == (13, "the model failed: RuntimeError")
    host.runtime.fail = ValueError("unseen category")
    assert host.infer(raw_request(np.ones((1, 3))))[:2] == (3, "the model rejected the input: unseen category")


def test_health_and_metadata(host):
    assert pb.ServerLiveResponse.FromString(host.call("ServerLive", b"")[2]).live
    assert pb.ServerReadyResponse.FromString(host.call("ServerReady", b"")[2]).ready
    ready = pb.ModelReadyRequest(name="m").SerializeToString()
    assert pb.ModelReadyResponse.FromString(host.call("ModelReady", ready)[2]).ready
    assert host.call("ModelReady", pb.ModelReadyRequest(name="x").SerializeToString())[0] == 5
    meta = pb.ModelMetadataResponse.FromString(
        host.call("ModelMetadata", pb.ModelMetadataRequest(name="m").SerializeToString())[2])
    assert (meta.name, list(meta.versions), meta.platform) == ("m", ["2"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input-0", "FP64", [-1, 3])]
    assert [t.name for t in meta.outputs] == ["predict", "probabilities"]
    server = pb.ServerMetadataResponse.FromString(host.call("ServerMetadata", b"")[2])
    assert (server.name, server.version) == ("kiln-serve", "9.9")
    host.service.draining = True
    assert not pb.ServerReadyResponse.FromString(host.call("ServerReady", b"")[2]).ready
    assert not pb.ModelReadyResponse.FromString(host.call("ModelReady", ready)[2]).ready


def test_drain_closes_every_connection_after_its_answers(host):
    host.service.drain()
    host.peer.pump()
    assert host.peer.frames()[-1][0] == f.GOAWAY
    assert host.peer.transport.closed


def test_the_fast_answer_equals_the_generic_one():
    item = SimpleNamespace(ctx=codec.GrpcContext(None, True))
    item.ctx.prefix = codec.head_fields("m", "2") + codec.id_field(b"abc")
    for labels in (np.array([1, 0, 1], dtype=np.int64), np.array([0.5, 1.5]), np.array([1], dtype=np.int32)):
        fast, _ = codec.encode(item, labels, None)
        item.ctx.outputs = [("predict", "predict", True)]
        generic, _ = codec.encode(item, labels, None)
        item.ctx.outputs = None
        assert pb.ModelInferResponse.FromString(fast) == pb.ModelInferResponse.FromString(generic)
    strings = np.array(["no", "yes"], dtype=object)
    answer = pb.ModelInferResponse.FromString(codec.encode(item, strings, None)[0])
    assert answer.outputs[0].datatype == "BYTES" and answer.raw_output_contents[0] == b"\x02\0\0\0no\x03\0\0\0yes"


def test_every_answer_counts_under_the_grpc_protocol(host):
    from kiln_runtime.serve.metrics import CODES

    host.infer(raw_request(np.ones((1, 3))))
    host.call("ServerLive", b"")
    host.peer.feed(f.frame(f.HEADERS, f.END_HEADERS, 99, request_block(PREFIX + b"ModelInfer"))
                   + f.frame(f.DATA, f.END_STREAM, 99, b"\0\0"))  # bad framing: refused by the connection
    req = host.metrics.v[host.metrics.layout.req:]
    per = len(CODES) + 1
    assert req[PROTOCOL * per + CODES.index(400)] == 1 and req[PROTOCOL * per + CODES.index(200)] == 2
    assert sum(req[:PROTOCOL * per]) == 0  # nothing under v1, v2 or other
