"""The fallback runtime: the scikit-learn estimator itself (from skops, or joblib when allowed).

Served when no parity-verified ONNX export exists. Each call costs the estimator's fixed overhead
(input validation, and for a forest one pass per tree), which is why batching matters most here.
"""

from __future__ import annotations

import numpy as np

from .errors import LoadError
from .signature import CATEGORY, LABEL, Signature


class SklearnRuntime:
    kind = "sklearn"

    def __init__(self, model, sig: Signature):
        if not hasattr(model, "predict"):
            raise LoadError(f"the loaded object ({type(model).__name__}) has no predict method")
        self.model = model
        self.sig = sig
        n_in = getattr(model, "n_features_in_", None)
        if isinstance(n_in, (int, np.integer)) and int(n_in) != sig.width:
            raise LoadError(f"the model takes {n_in} features, the signature lists {sig.width}")
        names = getattr(model, "feature_names_in_", None)
        # A model fitted on a DataFrame checks column names; one fitted on an array does not.
        self._frame_columns = [str(n) for n in names] if names is not None else None
        if self._frame_columns is not None and self._frame_columns != list(sig.names):
            raise LoadError(f"the model was fitted on columns {self._frame_columns[:5]}..., which are "
                            f"not the signature's features in order")
        self.has_proba = sig.output == LABEL and hasattr(model, "predict_proba")
        classes = getattr(model, "classes_", None)
        self.classes = sig.classes or (tuple(classes.tolist()) if classes is not None else None)
        if sig.output == LABEL and classes is not None:
            kind = np.asarray(classes).dtype.kind
            self.label_datatype = {"i": "INT64", "u": "INT64", "b": "BOOL", "f": "FP64"}.get(kind, "BYTES")
        else:
            self.label_datatype = "FP64"

    def _input(self, x: np.ndarray):
        """The estimator's input as kiln-train fitted it: a DataFrame when it was fitted on one (numbers
        and booleans as float64 with NaN for null, categories as str with the missing marker), else
        the float matrix itself."""
        if self._frame_columns is None and x.dtype != object:
            return x
        import pandas as pd

        if x.dtype != object:
            return pd.DataFrame(x, columns=self._frame_columns or list(self.sig.names))
        columns = {}
        missing = self.sig.missing_category
        for j, (name, feat) in enumerate(zip(self.sig.names, self.sig.features)):
            values = x[:, j].tolist()
            if feat.type == CATEGORY:
                columns[name] = np.array([missing if v is None else str(v) for v in values], dtype=object)
            else:
                columns[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        return pd.DataFrame(columns)

    def predict(self, x: np.ndarray, proba: bool):
        data = self._input(x)
        if proba and self.has_proba:
            probs = np.asarray(self.model.predict_proba(data))
            # One pass, not two: the label is the most probable class, as predict() would answer.
            labels = np.asarray(self.model.classes_)[probs.argmax(axis=1)]
            return labels, probs
        labels = np.asarray(self.model.predict(data))
        return labels.reshape(-1) if labels.ndim > 1 else labels, None
