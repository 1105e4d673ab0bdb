"""KServe V1 and Open Inference Protocol V2 bodies: decoding (JSON and binary tensors) and answers."""

import json
import struct

import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from kiln_runtime.serve import codec_v1, codec_v2, signature
from kiln_runtime.serve.batching import Item
from kiln_runtime.serve.errors import BadRequest, ClientError
from kiln_runtime.serve.rows import numeric_matrix

from conftest import MIXED, numeric_signature

ROW = [float(i) / 10 for i in range(20)]


def v2(sig, has_proba=True):
    return codec_v2.Decoder("m", "3", sig, has_proba)


def test_v1_rows_are_left_for_the_batch_to_convert(sig20):
    rows, x, n, proba = codec_v1.decode(orjson.dumps({"instances": [ROW, ROW]}), sig20)
    assert (x, n, proba) == (None, 2, False) and rows == [ROW, ROW]


def test_v1_objects_and_probabilities_parameter(sig20):
    body = {"instances": [{f"f{i}": v for i, v in enumerate(ROW)}], "parameters": {"probabilities": True}}
    rows, _, n, proba = codec_v1.decode(orjson.dumps(body), sig20)
    assert proba and n == 1 and numeric_matrix(rows, sig20, "i").tolist() == [ROW]


@pytest.mark.parametrize("body, message", [
    (b"", "empty body"),
    (b"{", "not valid JSON"),
    (b"[1]", "must be a JSON object"),
    (b"{}", "'instances' is required: it is missing"),
    (b'{"inputs": {}}', "columnar form"),
    (b'{"instances": {}}', "must be an array of rows, got an object"),
    (b'{"instances": []}', "'instances' is empty"),
    (b'{"instances": [[1]], "parameters": {"probabilities": 1}}', "must be true or false"),
])
def test_v1_malformed_bodies_are_named(sig20, body, message):
    with pytest.raises(BadRequest, match=message):
        codec_v1.decode(body, sig20)


def test_v1_answer_with_probabilities():
    item = Item(None, None, None, None, 2, codec_v1.encode, True, "instances")
    body, headers = codec_v1.encode(item, np.array([0, 1]), np.array([[0.75, 0.25], [0.5, 0.5]], np.float32))
    assert orjson.loads(body) == {"predictions": [0, 1], "probabilities": [[0.75, 0.25], [0.5, 0.5]]}
    assert b"application/json" in headers


def tensor(name="input-0", shape=(1, 20), datatype="FP64", data=ROW, **extra):
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data, **extra}


def test_v2_matrix_tensor_flat_or_nested(sig20):
    for data in (ROW + ROW, [ROW, ROW]):
        rows, x, n, proba, ctx = v2(sig20).decode(orjson.dumps({"inputs": [tensor(shape=(2, 20), data=data)]}), None)
        assert n == 2 and x is None and numeric_matrix(rows, sig20, "d").tolist() == [ROW, ROW]
        assert ctx.outputs is None and not proba


def test_v2_int_tensor_needs_integers(sig20):
    ints = list(range(20))
    rows, *_ = v2(sig20).decode(orjson.dumps({"inputs": [tensor(datatype="INT64", data=ints)]}), None)
    assert rows == [ints]
    with pytest.raises(BadRequest, match="INT64 needs integer values"):
        v2(sig20).decode(orjson.dumps({"inputs": [tensor(datatype="INT64")]}), None)


def test_v2_binary_tensor_and_binary_outputs(sig20):
    raw = np.array([ROW, ROW], dtype=np.float32).tobytes()
    head = orjson.dumps({"id": "r1", "inputs": [tensor(shape=(2, 20), datatype="FP32", data=None,
                                                        parameters={"binary_data_size": len(raw)})],
                         "outputs": [{"name": "predict", "parameters": {"binary_data": True}},
                                     {"name": "probabilities"}]})
    head = head.replace(b',"data":null', b"")
    decoder = v2(sig20)
    rows, x, n, proba, ctx = decoder.decode(head + raw, str(len(head)).encode())
    assert rows is None and n == 2 and proba and ctx.body_id == "r1"
    ctx.prefix = decoder.answer_head(b"r1")  # what the server does once it chose the request id
    np.testing.assert_allclose(x, [ROW, ROW], rtol=1e-6)
    item = Item(None, None, None, x, 2, codec_v2.encode, proba, "d", ctx)
    body, headers = codec_v2.encode(item, np.array([1, 0]), np.array([[0.1, 0.9], [0.8, 0.2]], np.float32))
    hlen = int(headers.split(b"inference-header-content-length: ")[1].split(b"\r\n")[0])
    meta = orjson.loads(body[:hlen])
    assert meta["id"] == "r1" and meta["model_version"] == "3"
    predict, probs = meta["outputs"]
    assert predict["parameters"]["binary_data_size"] == 16 and "data" not in predict
    assert np.frombuffer(body[hlen:], dtype=np.int64).tolist() == [1, 0]
    assert probs["data"] == pytest.approx([0.1, 0.9, 0.8, 0.2])


def test_v2_binary_nan_and_infinity(sig20):
    for value, message in ((np.nan, "does not accept missing values"), (np.inf, "no infinity")):
        raw = np.array([ROW], dtype=np.float64)
        raw[0, 4] = value
        head = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64",
                                         "parameters": {"binary_data_size": raw.nbytes}}]})
        with pytest.raises(BadRequest, match=message):
            v2(sig20).decode(head + raw.tobytes(), str(len(head)).encode())


def test_v2_one_tensor_per_feature_with_bytes_for_categories():
    sig = signature.parse(MIXED)
    colour = b"".join(struct.pack("<I", len(s)) + s for s in (b"red", b"blue"))
    head = orjson.dumps({"inputs": [
        {"name": "age", "shape": [2], "datatype": "INT64", "data": [30, 41]},
        {"name": "income", "shape": [2, 1], "datatype": "FP64", "data": [[1.5], [None]]},
        {"name": "colour", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(colour)}},
        {"name": "member", "shape": [2], "datatype": "BOOL", "data": [True, False]}]})
    rows, x, n, _, _ = v2(sig).decode(head + colour, str(len(head)).encode())
    assert n == 2 and x.tolist()[0] == [30.0, 1.5, "red", True]
    assert x[1, 2] == "blue" and np.isnan(x[1, 1])


@pytest.mark.parametrize("body, message", [
    ({"inputs": []}, "non-empty array of tensors"),
    ({"inputs": [tensor(shape=(1, 19))]}, r"shape \[1, 19\] does not fit the model"),
    ({"inputs": [tensor(shape=(2, 20))]}, "data has 20 values, shape .* needs 40"),
    ({"inputs": [tensor(datatype="FP99")]}, "unknown datatype 'FP99'"),
    ({"inputs": [tensor(datatype="BYTES")]}, "does not fit numeric features"),
    ({"inputs": [tensor(shape=(1, -20))]}, "non-negative integers"),
    ({"inputs": [tensor(name="f0", shape=(1,), data=[1.0])]}, "missing input tensor for features 'f1'"),
    ({"inputs": [tensor()], "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
    ({"inputs": [tensor()], "id": 5}, "'id' must be a string"),
    ({"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "parameters": {"binary_data_size": 8}}]},
     "no Inference-Header-Content-Length"),
])
def test_v2_malformed_requests_are_named(sig20, body, message):
    with pytest.raises(BadRequest, match=message):
        v2(sig20).decode(orjson.dumps(body), None)


def test_v2_probabilities_refused_for_a_model_without_them(sig20):
    with pytest.raises(BadRequest, match="this model has predict$"):
        v2(sig20, has_proba=False).decode(orjson.dumps({"inputs": [tensor()], "outputs": [{"name": "probabilities"}]}), None)


json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                        max_leaves=40)
v2_tensor = st.fixed_dictionaries({
    "name": st.sampled_from(["input-0", "f0", "f1", "zz"]) | json_leaf,
    "shape": st.lists(st.integers(-2, 30), max_size=3) | json_any,
    "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BOOL", "BYTES", "FP16", "UINT8"]) | json_leaf,
    "data": st.lists(json_leaf, max_size=45) | st.lists(st.lists(json_leaf, max_size=21), max_size=3) | json_any,
})


@settings(max_examples=200, deadline=None)
@given(doc=st.fixed_dictionaries({"inputs": st.lists(v2_tensor, max_size=3) | json_any},
                                 optional={"outputs": json_any, "id": json_leaf, "parameters": json_any}),
       header=st.none() | st.integers(-5, 2000).map(lambda n: str(n).encode()) | st.binary(max_size=4),
       tail=st.binary(max_size=200))
def test_any_v2_body_decodes_and_converts_or_is_a_client_error(doc, header, tail):
    sig = numeric_signature(20, integer=(2,))
    body = json.dumps(doc).encode() + (tail if header is not None else b"")
    try:
        rows, x, n, _, _ = v2(sig).decode(body, header)
        if x is None:
            x = numeric_matrix(rows, sig, "d")
    except ClientError:
        return
    assert x.shape == (n, 20)


@settings(max_examples=150, deadline=None)
@given(doc=st.fixed_dictionaries({"instances": json_any}, optional={"parameters": json_any}) | json_any)
def test_any_v1_body_decodes_and_converts_or_is_a_client_error(doc):
    sig = signature.parse(MIXED)
    try:
        codec_v1.decode(json.dumps(doc).encode(), sig)
    except ClientError:
        pass
