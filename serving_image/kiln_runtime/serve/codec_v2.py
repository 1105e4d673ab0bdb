"""Open Inference Protocol (KServe V2 / Triton) inference requests and responses, JSON and binary.

Inputs, either
- one tensor [N, F] of numbers (FP64, FP32, FP16, INT*, UINT*), columns in the signature's order, or
- one tensor per feature, named as the feature, shape [N] or [N, 1]: numbers, BOOL for booleans,
  BYTES (strings) for categories.
Data comes as JSON (`data`, flat or nested) or, with Triton's binary tensor extension, as raw bytes
after a JSON header whose length is the `Inference-Header-Content-Length` HTTP header (tritonclient
sends that by default).

Outputs: `predict` (the label or value per row) by default; `probabilities` ([N, classes]) when
requested. Each is answered as JSON or as binary (`parameters.binary_data`, or the request's
`parameters.binary_data_output`). Unlike Triton, an unrequested `probabilities` is not computed:
it costs a second output per call that most clients never read.
"""

from __future__ import annotations

import struct
from itertools import chain

import numpy as np
import orjson

from .errors import BadRequest
from .signature import BOOLEAN, CATEGORY, INTEGER, Signature, check_value, jtype
from .rows import columns_matrix

JSON_HEADERS = b"content-type: application/json\r\n"
_loads, _dumps = orjson.loads, orjson.dumps

NUMPY_TYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
FLOAT_TYPES = frozenset(("FP16", "FP32", "FP64"))
INT_TYPES = frozenset(("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"))
NUMBER_TYPES = FLOAT_TYPES | INT_TYPES
_JSON_NUMBER = frozenset((float, int))
_JSON_INT = frozenset((int,))
_U32 = struct.Struct("<I")

PREDICT, PROBABILITIES = "predict", "probabilities"
OUTPUT_ALIASES = {"predict": PREDICT, "label": PREDICT, "output_label": PREDICT, "predictions": PREDICT,
                  "probabilities": PROBABILITIES, "predict_proba": PROBABILITIES,
                  "output_probability": PROBABILITIES, "probability": PROBABILITIES}


def datatype_of(array: np.ndarray) -> str:
    kind, size = array.dtype.kind, array.dtype.itemsize
    if kind == "f":
        return {2: "FP16", 4: "FP32"}.get(size, "FP64")
    if kind == "i":
        return f"INT{size * 8}"
    if kind == "u":
        return f"UINT{size * 8}"
    if kind == "b":
        return "BOOL"
    return "BYTES"


class V2Context:
    """What the answer needs from the request: its id and the outputs asked for."""

    __slots__ = ("prefix", "outputs", "body_id")

    def __init__(self, prefix: bytes | None, outputs, body_id: str | None = None):
        self.prefix = prefix  # set once the request id is chosen (Decoder.answer_head)
        self.outputs = outputs  # None: predict as JSON; else [(requested name, canonical, binary)]
        self.body_id = body_id  # the request's own `id`, a candidate for the request id


class Decoder:
    def __init__(self, model: str, version: str, sig: Signature, has_proba: bool):
        self.sig, self.has_proba = sig, has_proba
        self.model, self.version = model, version
        self._head = b'{"model_name":' + _dumps(model) + b',"model_version":' + _dumps(version) + b',"id":"'

    def answer_head(self, request_id: bytes) -> bytes:
        """The answer's JSON up to its outputs. The id is a sane token (request_ids): it goes in without
        JSON escaping."""
        return self._head + request_id + b'","outputs":['

    def decode(self, body: bytes, header_length: bytes | None):
        """-> (rows or None, matrix or None, row count, probabilities wanted, V2Context)."""
        binary = None
        if header_length is not None:
            try:
                hlen = int(header_length)
            except ValueError:
                raise BadRequest("Inference-Header-Content-Length is not an integer") from None
            if not 0 < hlen <= len(body):
                raise BadRequest(f"Inference-Header-Content-Length {hlen} is outside the body "
                                 f"({len(body)} bytes)")
            binary = memoryview(body)[hlen:]
            body = body[:hlen]
        if not body:
            raise BadRequest('empty body: send {"inputs": [{"name", "shape", "datatype", "data"}]}')
        try:
            doc = _loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if type(doc) is not dict:
            raise BadRequest(f"body must be a JSON object with 'inputs', got {jtype(doc)}")
        inputs = doc.get("inputs")
        if type(inputs) is not list or not inputs:
            raise BadRequest("'inputs' must be a non-empty array of tensors")
        params = doc.get("parameters")
        if params is not None and type(params) is not dict:
            raise BadRequest("'parameters' must be an object")
        binary_out = bool(params and params.get("binary_data_output") is True)
        outputs, proba = self.outputs(doc.get("outputs"), binary_out)
        request_id = doc.get("id")
        if request_id is not None and type(request_id) is not str:
            raise BadRequest("'id' must be a string")
        ctx = V2Context(None, outputs, request_id)
        rows, x, n = self.rows_of(self._tensors(inputs, binary))
        return rows, x, n, proba, ctx

    def rows_of(self, tensors: list):
        """Validated input tensors (see _tensors) -> (rows or None, matrix or None, row count): one
        [N, F] matrix, or one tensor per feature. Shared with the gRPC codec (grpc/codec.py), so both
        protocols refuse the same input with the same message."""
        sig = self.sig
        if len(tensors) == 1:
            name, shape = tensors[0][0], tensors[0][1]
            one_feature = name in sig.index and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
            if not one_feature:
                return self._matrix(tensors[0])
        x, n = self._by_feature(tensors)
        return None, x, n

    # --- requested outputs ------------------------------------------------------------------------

    def outputs(self, requested, binary_default: bool):
        """The outputs asked for ([{"name", "parameters"?}] or None) -> ([(name, canonical, binary)] or
        None for the default, probabilities wanted). Raises BadRequest naming the bad one."""
        if requested is None:
            return ([(PREDICT, PREDICT, True)] if binary_default else None), False
        if type(requested) is not list:
            raise BadRequest("'outputs' must be an array of {name}")
        out, proba = [], False
        for i, spec in enumerate(requested):
            if type(spec) is not dict or type(spec.get("name")) is not str:
                raise BadRequest(f"outputs[{i}] must be an object with a string 'name'")
            name = spec["name"]
            canonical = OUTPUT_ALIASES.get(name)
            if canonical is None or (canonical == PROBABILITIES and not self.has_proba):
                have = "predict, probabilities" if self.has_proba else "predict"
                raise BadRequest(f"outputs[{i}]: unknown output {name!r}; this model has {have}")
            p = spec.get("parameters")
            binary = binary_default
            if p is not None:
                if type(p) is not dict:
                    raise BadRequest(f"outputs[{i}].parameters must be an object")
                if p.get("binary_data") is not None:
                    binary = p.get("binary_data") is True
            proba = proba or canonical == PROBABILITIES
            out.append((name, canonical, binary))
        if not out:
            return None, False
        return out, proba

    # --- input tensors ------------------------------------------------------------------------

    def _tensors(self, inputs: list, binary):
        """Validated (name, shape, datatype, json data or None, binary chunk or None) per input."""
        tensors, offset = [], 0
        for i, t in enumerate(inputs):
            where = f"inputs[{i}]"
            if type(t) is not dict:
                raise BadRequest(f"{where} must be an object, got {jtype(t)}")
            name, shape, dtype = t.get("name"), t.get("shape"), t.get("datatype")
            if type(name) is not str:
                raise BadRequest(f"{where}.name must be a string")
            check_tensor(where, name, shape, dtype)
            p = t.get("parameters")
            size = p.get("binary_data_size") if type(p) is dict else None
            chunk, data = None, None
            if size is not None:
                if binary is None:
                    raise BadRequest(f"{where} ({name}): binary_data_size is set but the request has no "
                                     "Inference-Header-Content-Length header")
                if type(size) is not int or size < 0 or offset + size > len(binary):
                    raise BadRequest(f"{where} ({name}): binary_data_size {size!r} exceeds the binary data")
                chunk = binary[offset: offset + size]
                offset += size
            else:
                data = t.get("data")
                if type(data) is not list:
                    raise BadRequest(f"{where} ({name}): 'data' must be an array"
                                     + (" (or use binary_data_size)" if binary is not None else ""))
            tensors.append((name, shape, dtype, data, chunk, where))
        if binary is not None and offset != len(binary):
            raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the tensors' binary_data_size")
        return tensors

    def _matrix(self, tensor):
        name, shape, dtype, data, chunk, where = tensor
        sig = self.sig
        if not sig.numeric:
            raise BadRequest(f"{where} ({name}): this model has non-numeric features ({sig.describe()}); "
                             "send one tensor per feature, named as the feature")
        if len(shape) != 2 or shape[1] != sig.width:
            raise BadRequest(f"{where} ({name}): shape {shape} does not fit the model: expected "
                             f"[rows, {sig.width}] ({sig.describe()})")
        if dtype not in NUMBER_TYPES:
            raise BadRequest(f"{where} ({name}): datatype {dtype} does not fit numeric features; "
                             "use FP64, FP32 or INT64")
        n, width = shape
        if n == 0:
            raise BadRequest(f"{where} ({name}): no rows")
        if chunk is not None:
            x = _from_binary(chunk, dtype, n * width, where, name).reshape(n, width)
            return None, _checked_numbers(x.astype(np.float64), sig, where, name), n
        nested = type(data[0]) is list if data else False
        if nested:
            rows = data
            if len(rows) != n:
                raise BadRequest(f"{where} ({name}): data has {len(rows)} rows, shape says {n}")
        else:
            if len(data) != n * width:
                raise BadRequest(f"{where} ({name}): data has {len(data)} values, shape {shape} "
                                 f"needs {n * width}")
            rows = [data[k: k + width] for k in range(0, n * width, width)] if n > 1 else [data]
        if dtype in INT_TYPES:
            try:
                kinds = set(map(type, chain.from_iterable(rows)))
            except TypeError:
                kinds = None
            if kinds is None or not kinds <= _JSON_INT:
                raise BadRequest(f"{where} ({name}): datatype {dtype} needs integer values")
        # Floats are converted and checked with the rest of the batch (rows.numeric_matrix).
        return rows, None, n

    def _by_feature(self, tensors):
        sig = self.sig
        columns, n = {}, None
        for name, shape, dtype, data, chunk, where in tensors:
            j = sig.index.get(name)
            if j is None:
                raise BadRequest(f"{where}: unknown input {name!r}; send one [rows, {sig.width}] tensor, or "
                                 f"one tensor per feature named as the feature ({sig.describe()})")
            if name in columns:
                raise BadRequest(f"{where}: input {name!r} appears twice")
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise BadRequest(f"{where} ({name}): a per-feature tensor has shape [rows] or [rows, 1], "
                                 f"not {shape}")
            rows = shape[0]
            if n is None:
                n = rows
            elif rows != n:
                raise BadRequest(f"{where} ({name}): {rows} rows, but the first input has {n}")
            columns[name] = self._column(sig.features[j], dtype, data, chunk, rows, where, name)
        missing = [f for f in sig.names if f not in columns]
        if missing:
            raise BadRequest(f"missing input tensor for feature{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(map(repr, missing[:5]))}{' ...' if len(missing) > 5 else ''}")
        if not n:
            raise BadRequest("inputs have no rows")
        return columns_matrix(columns, n, sig), n

    def _column(self, feature, dtype, data, chunk, n, where, name):
        ftype = feature.type
        if data is not None:
            if data and type(data[0]) is list:  # [[v], [v], ...] for shape [N, 1]
                if not all(type(v) is list and len(v) == 1 for v in data):
                    raise BadRequest(f"{where} ({name}): nested data must be [[value], ...]")
                data = [v[0] for v in data]
            if len(data) != n:
                raise BadRequest(f"{where} ({name}): data has {len(data)} values, shape says {n}")
        if ftype == CATEGORY or ftype == BOOLEAN:
            want = "BYTES" if ftype == CATEGORY else "BOOL"
            if dtype != want:
                raise BadRequest(f"{where} ({name}): feature {name!r} is a {ftype}; send datatype {want}")
            if chunk is not None:
                if ftype == CATEGORY:
                    values = _bytes_elements(chunk, n, where, name)
                else:
                    values = _from_binary(chunk, dtype, n, where, name).tolist()
            else:
                values = data
            return np.array([check_value(feature, v, f"{where}.data[{k}]") for k, v in enumerate(values)]
                            + [None], dtype=object)[:-1]  # the None stops numpy splitting strings
        if dtype not in NUMBER_TYPES:
            raise BadRequest(f"{where} ({name}): feature {name!r} is a number; send FP64, FP32 or INT64")
        if chunk is not None:
            col = _from_binary(chunk, dtype, n, where, name).astype(np.float64)
        else:
            allowed = _JSON_INT if dtype in INT_TYPES else _JSON_NUMBER
            if feature.nullable:
                allowed = allowed | {type(None)}  # null -> NaN below
            if not set(map(type, data)) <= allowed:
                bad = next(v for v in data if type(v) not in allowed)
                raise BadRequest(f"{where} ({name}): datatype {dtype} needs "
                                 f"{'integers' if dtype in INT_TYPES else 'numbers'}, got {jtype(bad)}")
            try:
                col = np.array(data, dtype=np.float64)
            except (OverflowError, ValueError):
                raise BadRequest(f"{where} ({name}): a value is out of range") from None
        if not np.isfinite(col).all():
            if np.isinf(col).any() or not feature.nullable:
                raise BadRequest(f"{where} ({name}): values must be finite numbers"
                                 + ("" if feature.nullable else " (this feature takes no missing values)"))
        if ftype == INTEGER and not np.array_equal(col, np.floor(col), equal_nan=True):
            raise BadRequest(f"{where} ({name}): feature {name!r} is an integer; got a fractional value")
        return col


def check_tensor(where: str, name: str, shape, dtype) -> None:
    """An input tensor's shape and datatype, checked alike for JSON and gRPC."""
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest(f"{where} ({name}): shape must be a non-empty array of non-negative integers")
    if type(dtype) is not str or (dtype not in NUMPY_TYPES and dtype != "BYTES"):
        raise BadRequest(f"{where} ({name}): unknown datatype {dtype!r}")


def _from_binary(chunk, dtype: str, count: int, where: str, name: str) -> np.ndarray:
    np_type = NUMPY_TYPES[dtype]
    if len(chunk) != count * np_type.itemsize:
        raise BadRequest(f"{where} ({name}): {len(chunk)} bytes of binary data; {count} {dtype} values "
                         f"need {count * np_type.itemsize}")
    return np.frombuffer(chunk, dtype=np_type, count=count)


def _bytes_elements(chunk, count: int, where: str, name: str) -> list:
    """Triton's BYTES wire form: each element is a 4-byte little-endian length and that many bytes."""
    out, pos, raw = [], 0, bytes(chunk)
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequest(f"{where} ({name}): truncated BYTES element length")
        (size,) = _U32.unpack_from(raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise BadRequest(f"{where} ({name}): BYTES element longer than the data")
        try:
            out.append(raw[pos: pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(f"{where} ({name}): BYTES element {len(out)} is not UTF-8 text") from None
        pos += size
    if len(out) != count:
        raise BadRequest(f"{where} ({name}): {len(out)} BYTES elements, shape says {count}")
    return out


def _checked_numbers(x: np.ndarray, sig: Signature, where: str, name: str) -> np.ndarray:
    """Binary tensors can carry NaN and infinity, which JSON cannot: NaN means null (allowed only for
    nullable features), infinity is never a feature value."""
    if not np.isfinite(x).all():
        if np.isinf(x).any():
            raise BadRequest(f"{where} ({name}): values must be finite numbers (no infinity)")
        strict = sig.strict_columns
        if len(strict) and np.isnan(x[:, strict]).any():
            bad = sig.names[strict[int(np.argmax(np.isnan(x[:, strict]).any(axis=0)))]]
            raise BadRequest(f"{where} ({name}): feature {bad!r} does not accept missing values (NaN)")
    if sig.integer_columns:
        cols = x[:, sig.integer_columns]
        frac = (cols != np.floor(cols)) & ~np.isnan(cols)
        if frac.any():
            bad = sig.names[sig.integer_columns[int(np.argmax(frac.any(axis=0)))]]
            raise BadRequest(f"{where} ({name}): feature {bad!r} is an integer; got a fractional value")
    return x


# --- the answer ---------------------------------------------------------------------------------

def bytes_payload(values: list) -> bytes:
    """Triton's BYTES wire form of values (their text): a 4-byte little-endian length before each."""
    parts = []
    for v in values:
        b = str(v).encode()
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def encode(item, labels: np.ndarray, probs):
    ctx = item.ctx
    outputs = ctx.outputs
    if outputs is None:  # the common case: predict as JSON
        return (ctx.prefix + b'{"name":"predict","datatype":"' + datatype_of(labels).encode()
                + b'","shape":[' + str(len(labels)).encode() + b'],"data":' + _dumps(labels.tolist())
                + b"}]}"), JSON_HEADERS
    pieces, blobs = [], []
    for name, canonical, binary in outputs:
        array = labels if canonical == PREDICT else probs
        dt = datatype_of(array)
        spec = {"name": name, "datatype": dt, "shape": list(array.shape)}
        if binary:
            blob = bytes_payload(array.tolist()) if dt == "BYTES" else np.ascontiguousarray(array).tobytes()
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            spec["data"] = array.reshape(-1).tolist()
        pieces.append(_dumps(spec))
    head = ctx.prefix + b",".join(pieces) + b"]}"
    if not blobs:
        return head, JSON_HEADERS
    headers = (b"content-type: application/octet-stream\r\ninference-header-content-length: "
               + str(len(head)).encode() + b"\r\n")
    return head + b"".join(blobs), headers
