"""KServe V1 (the TensorFlow Serving style `:predict`): `{"instances": [...]}` -> `{"predictions": [...]}`.

Instances are rows, either arrays in the signature's feature order or objects keyed by feature name.
`{"parameters": {"probabilities": true}}` adds `"probabilities": [[p per class], ...]` to the answer
(the classes' order is the model's, listed by `GET /v1/models/<name>`).
"""

from __future__ import annotations

import orjson

from .errors import BadRequest
from .rows import object_matrix, rows_from_objects
from .signature import Signature, jtype

JSON_HEADERS = b"content-type: application/json\r\n"
_loads = orjson.loads
_dumps = orjson.dumps


def decode(body: bytes, sig: Signature):
    """-> (rows or None, matrix or None, row count, probabilities wanted). Raises BadRequest."""
    if not body:
        raise BadRequest('empty body: send {"instances": [[feature values...], ...]}')
    try:
        doc = _loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise BadRequest(f'body must be a JSON object {{"instances": [...]}}, got {jtype(doc)}')
    instances = doc.get("instances")
    if type(instances) is not list:
        if instances is None:
            which = "'inputs' (the columnar form) is not supported" if "inputs" in doc else "it is missing"
            raise BadRequest(f"'instances' is required: {which}")
        raise BadRequest(f"'instances' must be an array of rows, got {jtype(instances)}")
    if not instances:
        raise BadRequest("'instances' is empty")
    proba = False
    params = doc.get("parameters")
    if params is not None:
        if type(params) is not dict:
            raise BadRequest(f"'parameters' must be an object, got {jtype(params)}")
        flag = params.get("probabilities", False)
        if type(flag) is not bool:
            raise BadRequest("'parameters.probabilities' must be true or false")
        proba = flag
    rows = instances
    if type(instances[0]) is dict:
        rows = rows_from_objects(instances, sig, "instances")
    if sig.numeric:
        # Converted and checked with the rest of the batch (rows.numeric_matrix): cheaper per request.
        return rows, None, len(rows), proba
    return None, object_matrix(rows, sig, "instances"), len(rows), proba


def encode(item, labels, probs):
    preds = _dumps(labels.tolist())
    if probs is None:
        return b'{"predictions":' + preds + b"}", JSON_HEADERS
    return (b'{"predictions":' + preds + b',"probabilities":' + _dumps(probs.tolist()) + b"}",
            JSON_HEADERS)
