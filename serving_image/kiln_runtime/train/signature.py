"""signature.json: what the model takes and returns, for kiln-serve's request validation and encoding.

    {"inputs": [{"name", "type"}, ...],          # features in the order the model expects
     "output": {"type": "label", "classes": [...]} | {"type": "value"},
     "target": name of the label column,
     "missing": {"number": "NaN", "integer": "NaN", "boolean": "NaN", "category": ""},
     "onnx": {"inputs": [{"name", "column", "elemType"}], "outputs": {...}}   # only with an ONNX export
    }
`inputs` and `output` are exactly the ModelVersion's spec.signature; the rest is for the server.
The skops model takes a pandas DataFrame with one column per input: float64 for number, integer and
boolean (0.0/1.0), str for category; missing values as listed under "missing".
"""

from __future__ import annotations

from .estimators import MISSING_CATEGORY
from .spec import Column


def build(features: tuple[Column, ...], target: Column, model, task: str, onnx_io: dict | None) -> dict:
    if task == "classification":
        output = {"type": "label", "classes": [str(c) for c in model.classes_]}
    else:
        output = {"type": "value"}
    sig = {
        "inputs": [{"name": c.name, "type": c.type} for c in features],
        "output": output,
        "target": target.name,
        "missing": {"number": "NaN", "integer": "NaN", "boolean": "NaN", "category": MISSING_CATEGORY},
    }
    if onnx_io:
        sig["onnx"] = onnx_io
    return sig


def for_model_version(sig: dict) -> dict:
    """The part of signature.json that goes into ModelVersion.spec.signature; the output names the target,
    so labels fed back in production are written under the column the Dataset trains on."""
    return {"inputs": sig["inputs"], "output": {**sig["output"], "name": sig["target"]}}
