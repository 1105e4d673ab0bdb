"""Compiled inference: the trained pipeline exported to ONNX, kept only when it agrees with scikit-learn.

Layout of the exported graph (recorded in signature.json under "onnx" so kiln-serve needs no guessing):
  inputs:  one tensor per feature, in signature order, shape [N, 1]; float32 for number, integer and
           boolean features (NaN = missing, booleans 0/1), string for categories ("" = missing).
           Names are skl2onnx's sanitised column names (non-alphanumerics become "_").
  outputs: classifiers: "label" [N] (int64 or string, as the classes) and "probabilities" [N, classes]
           float32 in the order of signature.output.classes; regressors: "variable" [N, 1] float32.

Parity on the held-out split, the criterion for recording the export (float32 arithmetic cannot match
scikit-learn's float64 bit for bit, hence tolerances):
  classifiers: every label identical, and |p_onnx - p_sklearn| <= PROBA_ATOL for every probability;
  regressors:  |y_onnx - y_sklearn| <= REG_ATOL + REG_RTOL * |y_sklearn| for every row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .spec import Column

PROBA_ATOL = 1e-4
REG_ATOL = 1e-4
REG_RTOL = 1e-4
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}  # served by every onnxruntime since 1.13


@dataclass
class OnnxResult:
    exported: bool
    reason: str | None = None
    data: bytes | None = None
    parity: dict = field(default_factory=dict)
    io: dict = field(default_factory=dict)  # the input/output layout for signature.json


def _initial_types(features: tuple[Column, ...]):
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    return [(c.name, StringTensorType([None, 1]) if c.type == "category" else FloatTensorType([None, 1]))
            for c in features]


def feeds(session, features: tuple[Column, ...], frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Input tensors for `frame` (a model_frame), matched to the session's inputs by position."""
    out = {}
    for spec_input, col in zip(session.get_inputs(), features):
        values = frame[col.name].to_numpy()
        if col.type == "category":
            out[spec_input.name] = values.astype(str).astype(object).reshape(-1, 1)
        else:
            out[spec_input.name] = values.astype(np.float32).reshape(-1, 1)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def export(model, features: tuple[Column, ...], X_test: pd.DataFrame, task: str) -> OnnxResult:
    try:
        import onnxruntime as ort
        from skl2onnx import convert_sklearn
    except ImportError as exc:
        return OnnxResult(False, f"skl2onnx/onnxruntime not installed: {exc}")
    classifier = task == "classification"
    has_proba = classifier and hasattr(model, "predict_proba")
    try:
        # zipmap off: probabilities as a plain [N, classes] tensor instead of a list of dicts.
        options = {id(model): {"zipmap": False}} if has_proba else None
        with warnings.catch_warnings():
            # protobuf 6 warns that skl2onnx passes numpy booleans as ints (the reason protobuf is
            # pinned below 7); nothing for a user to act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            onx = convert_sklearn(model, initial_types=_initial_types(features), options=options,
                                  target_opset=TARGET_OPSET)
        data = onx.SerializeToString()
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds(session, features, X_test))
    except Exception as exc:  # noqa: BLE001 - any converter or runtime failure means "serve skops"
        return OnnxResult(False, f"conversion failed: {_first_line(exc)}")
    names = [o.name for o in session.get_outputs()]
    layout = {"inputs": [{"name": i.name, "column": c.name, "elemType": "string" if c.type == "category"
                          else "float32"} for i, c in zip(session.get_inputs(), features)],
              "outputs": {}}
    rows = len(X_test)
    if classifier:
        layout["outputs"] = {"label": names[0]}
        labels = np.asarray(outputs[0]).reshape(-1)
        expected = np.asarray(model.predict(X_test))
        mismatched = int(np.sum(labels.astype(str) != expected.astype(str)))
        parity = {"rows": rows, "labelsMismatched": mismatched, "probabilityTolerance": PROBA_ATOL}
        ok = mismatched == 0
        if has_proba and len(outputs) > 1:
            layout["outputs"]["probabilities"] = names[1]
            err = float(np.max(np.abs(np.asarray(outputs[1], dtype=np.float64) - model.predict_proba(X_test)))) \
                if rows else 0.0
            parity["maxProbabilityError"] = err
            ok = ok and err <= PROBA_ATOL
        why = None if ok else (f"{mismatched} of {rows} labels differ" if mismatched else
                               f"probabilities differ by up to {parity.get('maxProbabilityError'):.3g} "
                               f"(tolerance {PROBA_ATOL:g})")
    else:
        layout["outputs"] = {"value": names[0]}
        got = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
        expected = np.asarray(model.predict(X_test), dtype=np.float64).reshape(-1)
        diff = np.abs(got - expected)
        bound = REG_ATOL + REG_RTOL * np.abs(expected)
        parity = {"rows": rows, "maxAbsoluteError": float(diff.max()) if rows else 0.0,
                  "absoluteTolerance": REG_ATOL, "relativeTolerance": REG_RTOL}
        ok = bool(np.all(diff <= bound))
        why = None if ok else (f"predictions differ by up to {parity['maxAbsoluteError']:.3g} "
                               f"(tolerance {REG_ATOL:g} + {REG_RTOL:g}·|y|)")
    parity["verified"] = ok
    if not ok:
        return OnnxResult(False, f"parity check failed on the held-out split: {why}", parity=parity)
    return OnnxResult(True, None, data, parity, layout)
