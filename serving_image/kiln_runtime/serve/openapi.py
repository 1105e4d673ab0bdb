"""The OpenAPI 3.0 document served at /openapi.json, built from the model's signature.

It describes both protocols for this one model (the model name is an enum, so a generated client or
a schema-driven fuzzer such as schemathesis exercises the real endpoints), and every error answer
as `{"error": "..."}`.
"""

from __future__ import annotations

from .signature import BOOLEAN, CATEGORY, INTEGER, Signature

_V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                 "FP16", "FP32", "FP64", "BYTES"]


def _value_schema(ftype: str, nullable: bool) -> dict:
    schema = {CATEGORY: {"type": "string"}, BOOLEAN: {"type": "boolean"},
              INTEGER: {"type": "integer"}}.get(ftype, {"type": "number"})
    return {**schema, "nullable": True} if nullable else schema


def document(model: str, version: str, sig: Signature, has_proba: bool) -> dict:
    width = sig.width
    row_array = {"type": "array", "minItems": width, "maxItems": width,
                 "items": _value_schema(sig.features[0].type, False) if sig.numeric else {},
                 "description": "feature values in signature order: " + ", ".join(sig.names)}
    row_object = {"type": "object", "required": list(sig.names), "additionalProperties": False,
                  "properties": {f.name: _value_schema(f.type, f.nullable) for f in sig.features}}
    error = {"description": "the problem, named", "content": {"application/json": {"schema": {
        "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
    errors = {"400": error, "404": error, "405": error, "413": error}
    model_param = {"name": "model_name", "in": "path", "required": True,
                   "schema": {"type": "string", "enum": [model]}}
    json_ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": _V2_DATATYPES},
        "parameters": {"type": "object"},
        "data": {"type": "array"}}}
    outputs = ["predict", "probabilities"] if has_proba else ["predict"]
    v1_request = {"type": "object", "required": ["instances"], "properties": {
        "instances": {"type": "array", "minItems": 1, "items": {"oneOf": [row_array, row_object]}},
        "parameters": {"type": "object", "properties": {"probabilities": {"type": "boolean"}}}}}
    v2_request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "items": tensor},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": outputs},
            "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}}}}

    feedback_item = {"type": "object", "required": ["id", "labels"], "properties": {
        "id": {"type": "string", "description": "the answer's X-Request-Id"},
        "labels": {"type": "array", "minItems": 1, "description": "one label per row of that request"}}}
    feedback_request = {"oneOf": [feedback_item, {"type": "object", "required": ["feedback"], "properties": {
        "feedback": {"type": "array", "minItems": 1, "items": feedback_item}}}]}

    def get(summary: str, ok: dict = json_ok, params=None) -> dict:
        op = {"summary": summary, "responses": {"200": ok, "404": error, "405": error}}
        if params:
            op["parameters"] = params
        return {"get": op}

    def post(summary: str, schema: dict) -> dict:
        return {"post": {"summary": summary, "parameters": [model_param],
                         "requestBody": {"required": True,
                                         "content": {"application/json": {"schema": schema}}},
                         "responses": {"200": json_ok, **errors}}}

    feedback_op = post("Labels for answered requests, joined by request id (relayed to kiln-monitor)",
                       feedback_request)
    target = {"description": "the class to explain (default: the class predicted for each row)",
              "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
    v1_explain = post("Feature attributions per row (docs/explanations.md)", {
        "type": "object", "required": ["instances"], "properties": {
            "instances": v1_request["properties"]["instances"],
            "parameters": {"type": "object", "properties": {"target": target}}}})
    v2_explain = post("Feature attributions per row, Open Inference Protocol style (docs/explanations.md)", {
        "type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"target": target}},
            "inputs": v2_request["properties"]["inputs"]}})
    for op in (v1_explain, v2_explain):
        op["post"]["responses"]["503"] = error  # too many explanations waiting, or not explainable
    feedback_op["post"]["responses"].update({"409": error, "410": error, "421": error, "503": error})
    return {
        "openapi": "3.0.3",
        "info": {"title": f"kiln-serve: {model}", "version": version,
                 "description": "KServe V1 and Open Inference Protocol (V2) endpoints for one model."},
        "paths": {
            "/v1/models": get("List the served models (V1)"),
            "/v1/models/{model_name}": get("Model status (V1)", params=[model_param]),
            "/v1/models/{model_name}:predict": post("Predict (KServe V1)", v1_request),
            "/v1/models/{model_name}:explain": v1_explain,
            "/v2": get("Server metadata (V2)"),
            "/v2/health/live": get("Liveness (V2)"),
            "/v2/health/ready": get("Readiness (V2); 503 while draining on shutdown"),
            "/v2/models/{model_name}": get("Model metadata (V2)", params=[model_param]),
            "/v2/models/{model_name}/ready": get("Model readiness (V2)", params=[model_param]),
            "/v2/models/{model_name}/infer": post("Inference (Open Inference Protocol V2)", v2_request),
            "/v2/models/{model_name}/explain": v2_explain,
            "/v2/models/{model_name}/feedback": feedback_op,
            "/metrics": get("Prometheus metrics", ok={"description": "OK", "content": {
                "text/plain": {"schema": {"type": "string"}}}}),
        },
    }
