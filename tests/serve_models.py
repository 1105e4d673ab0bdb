"""Small models for kiln-serve's tests and benchmark, trained here: a logistic regression and a
100-tree random forest on 20 numeric features, saved with skops (and joblib), exported to ONNX with
skl2onnx, with the signature.json kiln-serve reads.

`onnx_layout` picks the exported graph's inputs: "matrix" (one [N, 20] float32 tensor, skl2onnx's
default for an array-fitted model) or "per-feature" (one [N, 1] tensor per feature, kiln-train's
layout, recorded in signature.json under "onnx").
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_FEATURES = 20
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


@dataclass
class ModelFiles:
    kind: str
    dir: Path
    skops: Path
    joblib: Path
    onnx: Path
    signature: Path
    sha: dict  # file name -> sha256
    X: np.ndarray  # held-out rows
    labels: np.ndarray  # the scikit-learn model's own predictions for X
    proba: np.ndarray
    model: object

    def env(self, name: str = "m", onnx: bool = True, version: str = "1") -> dict:
        """kiln-serve's environment for these files."""
        env = {
            "KILN_MODEL_NAME": name,
            "KILN_MODEL_VERSION": version,
            "KILN_MODEL_URI": self.skops.as_uri(),
            "KILN_MODEL_SHA256": self.sha["model.skops"],
            "KILN_SIGNATURE": self.signature.as_uri(),
        }
        if onnx:
            env["KILN_ONNX_URI"] = self.onnx.as_uri()
            env["KILN_ONNX_SHA256"] = self.sha["model.onnx"]
        return env


def _data(seed: int = 0, rows: int = 2000):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES))
    w = rng.normal(size=N_FEATURES)
    y = (x @ w + 0.5 * rng.normal(size=rows) > 0).astype(np.int64)
    return x, y


def build(directory: Path, kind: str = "lr", onnx_layout: str = "matrix", seed: int = 0) -> ModelFiles:
    import joblib
    import skops.io as sio
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    directory.mkdir(parents=True, exist_ok=True)
    x, y = _data(seed)
    train, test = slice(0, 1500), slice(1500, None)
    if kind == "lr":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    elif kind == "rf":
        model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=seed, n_jobs=1)
    else:
        raise ValueError(kind)
    model.fit(x[train], y[train])
    options = {id(model): {"zipmap": False}}
    sig = {"inputs": [{"name": n, "type": "number"} for n in FEATURES],
           "output": {"type": "label", "classes": [str(c) for c in model.classes_]}}
    if onnx_layout == "matrix":
        onx = to_onnx(model, x[:1].astype(np.float32), options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    else:
        from skl2onnx import convert_sklearn

        if kind != "lr":
            raise ValueError("the per-feature layout is built for the pipeline (lr): skl2onnx "
                             "concatenates several inputs only in front of a transformer")
        types = [(f"in_{n}", FloatTensorType([None, 1])) for n in FEATURES]
        onx = convert_sklearn(model, initial_types=types, options=options,
                              target_opset={"": 17, "ai.onnx.ml": 3})
        sig["onnx"] = {"inputs": [{"name": f"in_{n}", "column": n, "elemType": "float32"} for n in FEATURES],
                       "outputs": {"label": "label", "probabilities": "probabilities"}}
    files = {
        "model.skops": sio.dumps(model),
        "model.onnx": onx.SerializeToString(),
        "signature.json": json.dumps(sig).encode(),
    }
    buf = io.BytesIO()
    joblib.dump(model, buf)
    files["model.joblib"] = buf.getvalue()
    sha = {}
    for name, data in files.items():
        (directory / name).write_bytes(data)
        sha[name] = hashlib.sha256(data).hexdigest()
    xt = x[test]
    return ModelFiles(kind, directory, directory / "model.skops", directory / "model.joblib",
                      directory / "model.onnx", directory / "signature.json", sha, xt,
                      model.predict(xt), model.predict_proba(xt), model)
