"""What every explanation method shares: the answer, the errors, the output spaces and the helpers
that read a fitted model's outputs and stored references."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..signature import BOOLEAN, CATEGORY, Signature

log = logging.getLogger("kiln.serve")

LINEAR, TREE, SAMPLING = "linear-exact", "tree-path", "sampling"
PREDICTION, PROBABILITY, LOG_ODDS, DECISION = "prediction", "probability", "log-odds", "decision-function"

MAX_BACKGROUND = 8  # background rows for `sampling`
SAMPLING_BUDGET = 2048  # model rows evaluated per explained row under `sampling`
TOLERANCE = 1e-6  # base + sum(attributions) vs the model's output, relative to max(1, |value|)
SEED = 20240519
MAX_LEAVES = 100_000  # tree-path's tables grow with the leaves; a larger ensemble is sampled instead


class Unsupported(Exception):
    """This model cannot be explained (e.g. it outputs neither numbers nor probabilities)."""


class UnknownTarget(ValueError):
    """The requested class is not one of the model's."""


@dataclass
class Explanation:
    method: str
    output: str  # prediction | probability | log-odds | decision-function
    features: tuple  # the signature's input features, the attributions' order
    columns: list  # what each output column explains: class labels, or [None] for a regressor
    base: np.ndarray  # (K,)
    values: np.ndarray  # (n, K): the model's own output
    attributions: np.ndarray  # (n, features, K)
    complement: object = None  # binary log-odds: the class whose log-odds are the negated column

    def select(self, target=None):
        """One explained output per row -> (targets, base (n,), values (n,), attributions (n, F)).
        `target` None: a regressor's prediction, or the class the model predicts for the row."""
        n = len(self.values)
        if self.columns == [None]:
            if target is not None:
                raise UnknownTarget("a regressor's explanation takes no target")
            return [None] * n, np.full(n, self.base[0]), self.values[:, 0], self.attributions[:, :, 0]
        if target is None:
            if self.complement is not None:
                col, sign = np.zeros(n, dtype=np.intp), np.where(self.values[:, 0] > 0, 1.0, -1.0)
            else:
                col, sign = np.argmax(self.values, axis=1), np.ones(n)
        else:
            want = str(target)
            matches = [k for k, c in enumerate(self.columns) if str(c) == want]
            if matches:
                col, sign = np.full(n, matches[0], dtype=np.intp), np.ones(n)
            elif self.complement is not None and str(self.complement) == want:
                col, sign = np.zeros(n, dtype=np.intp), -np.ones(n)
            else:
                known = list(self.columns) + ([self.complement] if self.complement is not None else [])
                raise UnknownTarget(f"target {target!r} is not one of the model's classes {known}")
        rows = np.arange(n)
        labels = [self.complement if s < 0 else self.columns[c] for c, s in zip(col.tolist(), sign.tolist())]
        return (labels, sign * self.base[col], sign * self.values[rows, col],
                sign[:, None] * self.attributions[rows, :, col])


def is_levels(ref) -> bool:
    return isinstance(ref, tuple) and len(ref) == 2 and ref[0] == "levels"


def as_feature_value(ftype: str, value, sig: Signature):
    if ftype == CATEGORY:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return sig.missing_category
        return str(value)
    try:
        v = float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        v = 0.0
    if math.isnan(v):
        v = 0.0
    if ftype == BOOLEAN and not sig.numeric:
        return bool(round(v))
    return v


def split_pipeline(model):
    """(preprocessing or None, final estimator)."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        steps = [s for _, s in model.steps[:-1] if s is not None and s != "passthrough"]
        return (model[:-1] if steps else None), model.steps[-1][1]
    return None, model


def outputs_of(est):
    """(classes or None, is classifier)."""
    from sklearn.base import is_classifier

    if is_classifier(est):
        classes = getattr(est, "classes_", None)
        if classes is None:
            raise Unsupported("the classifier has no classes_")
        return list(np.asarray(classes).tolist()), True
    return None, False


def output_columns(classes, k: int):
    """What each of k output columns explains, and the complement class of a binary one-column output."""
    if classes is None:
        if k != 1:
            raise Unsupported("a regressor with several outputs")
        return [None], None
    if k == 1 and len(classes) == 2:
        return [classes[1]], classes[0]
    if k != len(classes):
        raise NotApplicable(f"{k} outputs for {len(classes)} classes")
    return list(classes), None


def as_2d(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(values), -1)


class NotApplicable(Exception):
    pass


class Unmappable(Exception):
    pass


def is_nan(v) -> bool:
    return isinstance(v, (float, np.floating)) and math.isnan(v)


def grouping(sources: list[int], n_features: int) -> np.ndarray:
    g = np.zeros((len(sources), n_features))
    g[np.arange(len(sources)), sources] = 1.0
    return g


