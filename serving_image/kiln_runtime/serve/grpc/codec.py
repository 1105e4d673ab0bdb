"""ModelInferRequest -> the rows the Batcher predicts; predictions -> ModelInferResponse bytes.

Validation is the HTTP V2 decoder's (codec_v2.Decoder): each input becomes the same
(name, shape, datatype, data, binary chunk, where) tuple the JSON path builds, so a wrong shape, an
unknown feature or a missing value gets the same message naming the same tensor over both protocols.
Typed numeric contents are turned into their little-endian bytes and checked as binary data: protobuf
carries NaN and infinity, which JSON cannot, and the binary checks already say what they mean.

The answer follows Triton: raw_output_contents when the request used raw_input_contents, typed
contents otherwise. The common answer (one `predict` output, raw) is written as protobuf wire bytes
directly: building a message object per call would cost more than the rest of the answer.
"""

from __future__ import annotations

from math import prod

import numpy as np

from .. import codec_v2
from ..codec_v2 import NUMPY_TYPES, PREDICT, datatype_of
from ..errors import BadRequest
from .messages import ModelInferResponse

# Datatype -> InferTensorContents field (FP16 has none: it is sent raw).
TYPED_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


class GrpcContext:
    """What the answer needs from the request."""

    __slots__ = ("prefix", "outputs", "raw")

    def __init__(self, outputs, raw: bool):
        self.prefix = b""  # model_name, model_version and id fields, serialized (set by the service)
        self.outputs = outputs  # None: predict only; else [(requested name, canonical, _)]
        self.raw = raw


def decode(decoder: codec_v2.Decoder, req):
    """-> (rows or None, matrix or None, row count, probabilities wanted, GrpcContext)."""
    inputs = req.inputs
    if not inputs:
        raise BadRequest("'inputs' must be a non-empty array of tensors")
    raw = req.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs: send one "
                         "per input, in the inputs' order, or typed contents for all")
    requested = req.outputs
    # Named outputs are checked by the HTTP decoder's own rule (aliases, probabilities only if the
    # model has them); none named is the common case: predict only.
    outputs, proba = decoder.outputs([{"name": o.name} for o in requested], True) if requested else (None, False)
    tensors = []
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        name, shape, dtype = t.name, list(t.shape), t.datatype
        codec_v2.check_tensor(where, name, shape, dtype)
        if raw:
            tensors.append((name, shape, dtype, None, raw[i], where))
        else:
            tensors.append(_typed(t, name, shape, dtype, where))
    rows, x, n = decoder.rows_of(tensors)
    return rows, x, n, proba, GrpcContext(outputs, bool(raw))


def _typed(t, name: str, shape: list, dtype: str, where: str):
    field = TYPED_FIELDS.get(dtype)
    if field is None:
        raise BadRequest(f"{where} ({name}): datatype {dtype} has no typed contents; send it in "
                         "raw_input_contents")
    values = getattr(t.contents, field)
    count = prod(shape)
    if len(values) != count:
        raise BadRequest(f"{where} ({name}): contents.{field} has {len(values)} values, shape {shape} "
                         f"needs {count}")
    if dtype == "BYTES":
        data = []
        for k, v in enumerate(values):
            try:
                data.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                raise BadRequest(f"{where} ({name}): BYTES element {k} is not UTF-8 text") from None
        return name, shape, dtype, data, None, where
    try:
        chunk = np.array(values, dtype=NUMPY_TYPES[dtype]).tobytes()
    except (OverflowError, ValueError):
        raise BadRequest(f"{where} ({name}): a value is out of range for {dtype}") from None
    return name, shape, dtype, None, chunk, where


# --- the answer -------------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def head_fields(model: str, version: str) -> bytes:
    """model_name (1) and model_version (2), serialized once per model."""
    return _field(0x0A, model.encode()) + _field(0x12, version.encode())


def id_field(rid: bytes) -> bytes:
    return _field(0x1A, rid)


_PREDICT_NAME = _field(0x0A, b"predict")
_DT_FIELDS = {dt: _field(0x12, dt.encode()) for dt in list(NUMPY_TYPES) + ["BYTES"]}


def encode(item, labels: np.ndarray, probs):
    ctx = item.ctx
    if ctx.outputs is None and ctx.raw:
        dt = datatype_of(labels)
        if dt != "BYTES":
            n = len(labels)
            tensor = _PREDICT_NAME + _DT_FIELDS[dt] + _field(0x1A, _varint(n))
            blob = np.ascontiguousarray(labels).tobytes()
            return ctx.prefix + _field(0x2A, tensor) + _field(0x32, blob), None
    resp = ModelInferResponse()
    for name, canonical in ((o[0], o[1]) for o in ctx.outputs) if ctx.outputs is not None else ((PREDICT, PREDICT),):
        array = labels if canonical == PREDICT else probs
        dt = datatype_of(array)
        out = resp.outputs.add(name=name, datatype=dt, shape=array.shape)
        if ctx.raw:
            resp.raw_output_contents.append(codec_v2.bytes_payload(array.reshape(-1).tolist()) if dt == "BYTES"
                                            else np.ascontiguousarray(array).tobytes())
        elif dt == "BYTES":
            out.contents.bytes_contents.extend(str(v).encode() for v in array.reshape(-1).tolist())
        elif dt == "FP16":
            out.contents.fp32_contents.extend(array.astype(np.float32).reshape(-1).tolist())
            out.datatype = "FP32"
        else:
            getattr(out.contents, TYPED_FIELDS[dt]).extend(array.reshape(-1).tolist())
    return ctx.prefix + resp.SerializeToString(), None
