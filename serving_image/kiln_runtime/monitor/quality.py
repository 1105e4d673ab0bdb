"""Live model quality: predictions against the labels fed back, over the last N labelled rows.

Labels are compared with predictions the way the model sees them. Classification compares a
canonical text form, so 1, 1.0 and "1" are one class, and true and "true" another (the baseline's
spelling, kiln_runtime.profile.category_key, plus numeric strings read as numbers). Regression
compares floats. The task is KILN_TASK when set, else classification when the predictions are text
or all integral, else regression.

Metrics (sklearn's definitions): classification `accuracy` and `f1`: binary F1 with the second
class in sorted order as the positive one when the window holds exactly two classes, macro F1
otherwise (`f1Average` in the report says which); regression `mae` and `rmse`. They are computed
when read (a scrape or /drift), over at most a window of rows, never per label.
"""

from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np

from kiln_runtime.profile import category_key

CLASSIFICATION, REGRESSION = "classification", "regression"


def canonical(value) -> str | None:
    """The class a label or a prediction names."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return category_key(number) if math.isfinite(number) else value
    return category_key(value)


def _as_float(value) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _class_order(classes) -> list:
    try:
        return sorted(classes, key=float)
    except (TypeError, ValueError):
        return sorted(classes)


def classification_metrics(labels: list, predictions: list) -> dict:
    y = [canonical(v) for v in labels]
    p = [canonical(v) for v in predictions]
    n = len(y)
    if not n:
        return {}
    correct = sum(1 for a, b in zip(y, p) if a == b)
    classes = _class_order({c for c in y + p if c is not None})
    tp = dict.fromkeys(classes, 0)
    fp = dict.fromkeys(classes, 0)
    fn = dict.fromkeys(classes, 0)
    for a, b in zip(y, p):
        if a == b:
            tp[a] += 1
        else:
            if b is not None:
                fp[b] += 1
            if a is not None:
                fn[a] += 1

    def f1(c) -> float:
        denom = 2 * tp[c] + fp[c] + fn[c]
        return 2 * tp[c] / denom if denom else 0.0

    if len(classes) == 2:
        score, average = f1(classes[1]), "binary"
    else:
        score, average = (sum(f1(c) for c in classes) / len(classes) if classes else 0.0), "macro"
    return {"accuracy": correct / n, "f1": score, "f1Average": average,
            **({"positiveClass": classes[1]} if average == "binary" else {})}


def regression_metrics(labels: list, predictions: list) -> dict:
    y = np.array([_as_float(v) for v in labels], dtype=np.float64)
    p = np.array([_as_float(v) for v in predictions], dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    if not ok.any():
        return {}
    err = y[ok] - p[ok]
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(math.sqrt(np.mean(err * err)))}


class Quality:
    """The sliding window of (label, prediction) pairs; thread-safe."""

    def __init__(self, window: int, task: str | None = None):
        self.window, self.task = window, task
        self._labels: deque = deque(maxlen=window)
        self._predictions: deque = deque(maxlen=window)
        self._lock = threading.Lock()
        # What the served predictions look like, for the task when KILN_TASK is not set.
        self.text_predictions = False
        self.fractional_predictions = False

    def observe_predictions(self, predictions: np.ndarray) -> None:
        if self.task is not None or self.text_predictions:
            return
        if predictions.dtype == object:
            self.text_predictions = True
        elif not self.fractional_predictions and predictions.size:
            finite = predictions[np.isfinite(predictions)]
            if not np.array_equal(finite, np.floor(finite)):
                self.fractional_predictions = True

    def current_task(self) -> str:
        if self.task is not None:
            return self.task
        if self.text_predictions or not self.fractional_predictions:
            return CLASSIFICATION
        return REGRESSION

    def extend(self, labels: list, predictions: list) -> None:
        with self._lock:
            self._labels.extend(labels)
            self._predictions.extend(predictions)

    def snapshot(self) -> dict:
        with self._lock:
            labels, predictions = list(self._labels), list(self._predictions)
        task = self.current_task()
        metrics = (classification_metrics if task == CLASSIFICATION else regression_metrics)(labels, predictions)
        out = {"task": task, "rows": len(labels), "window": self.window}
        for key in ("f1Average", "positiveClass"):  # descriptions, not numbers: beside the metrics
            if key in metrics:
                out[key] = metrics.pop(key)
        out["metrics"] = metrics
        return out
