"""The allow-list of estimators and the preprocessing derived from the dataset schema.

Class names map to import paths here, never through the user: a spec cannot make the trainer import
arbitrary code. The list matches the TrainingPipeline CRD's enum.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import InvalidParameter, InvalidSpec
from .spec import Column


@dataclass(frozen=True)
class Kind:
    module: str
    task: str  # classification | regression
    # Distance- and gradient-based estimators need standardised inputs; trees split on thresholds and
    # do not. Not scaling for trees also keeps their ONNX export exact: scikit-learn trees compare in
    # float32, and so does onnxruntime, only if nothing was computed on the value before.
    scaled: bool


_C, _R = "classification", "regression"
ALLOWED: dict[str, Kind] = {
    "LogisticRegression": Kind("sklearn.linear_model", _C, True),
    "RandomForestClassifier": Kind("sklearn.ensemble", _C, False),
    "ExtraTreesClassifier": Kind("sklearn.ensemble", _C, False),
    "GradientBoostingClassifier": Kind("sklearn.ensemble", _C, False),
    "HistGradientBoostingClassifier": Kind("sklearn.ensemble", _C, False),
    "DecisionTreeClassifier": Kind("sklearn.tree", _C, False),
    "KNeighborsClassifier": Kind("sklearn.neighbors", _C, True),
    "SVC": Kind("sklearn.svm", _C, True),
    "LinearRegression": Kind("sklearn.linear_model", _R, True),
    "Ridge": Kind("sklearn.linear_model", _R, True),
    "Lasso": Kind("sklearn.linear_model", _R, True),
    "ElasticNet": Kind("sklearn.linear_model", _R, True),
    "RandomForestRegressor": Kind("sklearn.ensemble", _R, False),
    "ExtraTreesRegressor": Kind("sklearn.ensemble", _R, False),
    "GradientBoostingRegressor": Kind("sklearn.ensemble", _R, False),
    "HistGradientBoostingRegressor": Kind("sklearn.ensemble", _R, False),
    "DecisionTreeRegressor": Kind("sklearn.tree", _R, False),
    "KNeighborsRegressor": Kind("sklearn.neighbors", _R, True),
    "SVR": Kind("sklearn.svm", _R, True),
}

MISSING_CATEGORY = ""  # how a missing category value reaches the model (string tensors have no null)


def kind_of(name: str) -> Kind:
    try:
        return ALLOWED[name]
    except KeyError:
        close = difflib.get_close_matches(name, ALLOWED, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise InvalidSpec(f"estimator {name!r} is not on Kiln's allow-list{hint}; allowed: "
                          f"{', '.join(sorted(ALLOWED))}") from None


def estimator_class(name: str):
    kind = kind_of(name)
    return getattr(importlib.import_module(kind.module), name)


def effective_params(name: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The parameters a trial passes: the spec's, checked against the class, plus Kiln's defaults.

    Defaults: `random_state` = the pipeline seed (reproducible runs) where the estimator takes one,
    and `probability=True` for SVC (probabilities feed roc_auc, log_loss and the drift baseline).
    """
    cls = estimator_class(name)
    accepted = set(inspect.signature(cls).parameters)
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InvalidParameter(f"{name} has no parameter {key!r}{hint}")
    out = dict(params)
    if "random_state" in accepted and "random_state" not in out:
        out["random_state"] = seed
    if name == "SVC" and "probability" not in out:
        out["probability"] = True
    return out


def make_estimator(name: str, params: dict[str, Any]):
    cls = estimator_class(name)
    try:
        return cls(**params)
    except TypeError as exc:  # a parameter the constructor does not take
        raise InvalidParameter(f"{name}: {exc}") from exc


def preprocessing(features: tuple[Column, ...], scaled: bool):
    """A ColumnTransformer from the schema: impute and (for scale-sensitive estimators) standardise
    numbers, impute booleans with the most frequent value, one-hot encode categories (unknown values
    at serving time encode as all zeros instead of failing)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c.name for c in features if c.type in ("number", "integer")]
    boolean = [c.name for c in features if c.type == "boolean"]
    category = [c.name for c in features if c.type == "category"]
    parts = []
    if numeric:
        steps = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
        if scaled:
            steps.append(("scale", StandardScaler()))
        parts.append(("number", Pipeline(steps), numeric))
    if boolean:
        parts.append(("boolean", SimpleImputer(strategy="most_frequent", keep_empty_features=True), boolean))
    if category:
        parts.append(("category", OneHotEncoder(handle_unknown="ignore", sparse_output=False), category))
    if not parts:
        raise InvalidSpec("the schema has no feature columns besides the target")
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


def make_pipeline(name: str, params: dict[str, Any], features: tuple[Column, ...]):
    from sklearn.pipeline import Pipeline

    return Pipeline([("preprocess", preprocessing(features, kind_of(name).scaled)),
                     ("model", make_estimator(name, params))])


def model_frame(typed: pd.DataFrame, features: tuple[Column, ...]) -> pd.DataFrame:
    """The model's input table: features in signature order, numbers as float64 (NaN = missing),
    categories as str with MISSING_CATEGORY for missing. kiln-serve builds the same from a request."""
    out = {}
    for col in features:
        values = typed[col.name]
        if col.type == "category":
            out[col.name] = np.array([MISSING_CATEGORY if v is None else str(v) for v in values], dtype=object)
        else:
            out[col.name] = values.to_numpy(dtype=np.float64)
    return pd.DataFrame(out, index=typed.index)


def target_vector(typed: pd.DataFrame, target: Column, task: str) -> np.ndarray:
    """Labels for a classifier (str for categories, int for integer and boolean targets), floats for a
    regressor. A number-typed target trains a classifier only when every value is integral."""
    values = typed[target.name]
    if task == "regression":
        if target.type == "category":
            raise InvalidSpec(f"a regressor needs a number, integer or boolean target; {target.name} is a category")
        return values.to_numpy(dtype=np.float64)
    if target.type == "category":
        return np.array([str(v) for v in values], dtype=object)
    floats = values.to_numpy(dtype=np.float64)
    if not np.all(floats == np.round(floats)):
        raise InvalidSpec(f"a classifier needs class labels; target {target.name} holds non-integral numbers "
                          "(declare it category or integer, or use a regressor)")
    return floats.astype(np.int64)
