"""The held-out split, cross-validation and metrics, written so a reader can redo them in plain
scikit-learn and get the same numbers (the tests do exactly that).

Split:  sklearn.model_selection.train_test_split(X, y, test_size=testFraction, random_state=seed,
        stratify=y for classifiers when every class has at least two rows, else None).
        The test split is scored once, on the selected model only: nothing is picked by it.
Validation (cvFolds 0): the same call on the training split, test_size=validationFraction, same seed
        and stratification rule; the trial fits on the rest and its score is the metric on these rows.
CV:     cvFolds >= 2 folds of the training split, StratifiedKFold (classifiers) or KFold, shuffled with
        random_state=seed; the trial's score is the mean of the metric over the folds.
Metrics (classifiers):
        accuracy; f1, precision, recall with average="binary" and pos_label = the second class in sorted
        order for two classes, average="macro" otherwise (zero_division=0); roc_auc on predict_proba
        (binary: the second class's column; multiclass: one-vs-rest, macro); log_loss with
        labels = the model's classes. roc_auc and log_loss need predict_proba and are left out without it.
        (regressors): rmse = sqrt(mean_squared_error), mae, r2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InvalidSpec

CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
LOWER_IS_BETTER = ("log_loss", "rmse", "mae")  # the operator's API lists the same three


def default_metric(task: str) -> str:
    return "accuracy" if task == "classification" else "rmse"


def check_metric(metric: str, task: str) -> None:
    allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if metric not in allowed:
        raise InvalidSpec(f"metric {metric!r} does not suit a {task} estimator; use one of {', '.join(allowed)}")


def better(a: float, b: float, metric: str) -> bool:
    """Whether score `a` is strictly better than `b` for `metric`."""
    return a < b if metric in LOWER_IS_BETTER else a > b


@dataclass
class Split:
    X_train: object
    X_test: object
    y_train: np.ndarray
    y_test: np.ndarray


def _stratify(y: np.ndarray, task: str):
    if task != "classification":
        return None
    _, counts = np.unique(y, return_counts=True)
    return y if counts.min() >= 2 and counts.size >= 2 else None


def split(X, y: np.ndarray, task: str, test_fraction: float, seed: int,
          field: str = "testFraction") -> Split:
    """(train, test) rows; `validation_split` calls it again on the train part, so `field` names
    which fraction a split that cannot be made is about."""
    from sklearn.model_selection import train_test_split

    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_fraction, random_state=seed, stratify=_stratify(y, task))
    except ValueError as exc:
        raise InvalidSpec(f"cannot split {len(y)} rows with {field} {test_fraction}: {exc}") from exc
    return Split(X_train, X_test, y_train, y_test)


def validation_split(outer: Split, task: str, fraction: float, seed: int) -> Split:
    """The rows a trial fits on (X_train) and is scored on (X_test), both from the training part."""
    return split(outer.X_train, outer.y_train, task, fraction, seed, field="validationFraction")


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _final_step(model, X):
    """(the estimator, its input): a pipeline's preprocessing runs once for predict and predict_proba
    alike, exactly as Pipeline.predict would run it."""
    steps = getattr(model, "steps", None)
    if steps and len(steps) > 1:
        return model[-1], model[:-1].transform(X)
    return model, X


def classification_metrics(model, X, y_true: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as m
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    model, X = _final_step(model, X)
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    # A forest's predict is the argmax of its predict_proba (scikit-learn defines it so): one pass
    # through the trees instead of two. Other models predict their own way (SVC's Platt-scaled
    # probabilities can disagree with its decision function).
    if proba is not None and isinstance(model, (RandomForestClassifier, ExtraTreesClassifier)):
        y_pred = model.classes_.take(np.argmax(proba, axis=1), axis=0)
    else:
        y_pred = model.predict(X)
    classes = list(model.classes_)
    binary = len(classes) == 2
    avg = {"average": "binary", "pos_label": classes[1]} if binary else {"average": "macro"}
    # One pass for the three (what f1_score, precision_score and recall_score each compute alone).
    precision, recall, f1, _ = m.precision_recall_fscore_support(y_true, y_pred, zero_division=0, **avg)
    out = {"accuracy": m.accuracy_score(y_true, y_pred), "f1": f1, "precision": precision, "recall": recall}
    if proba is not None:
        present = np.unique(y_true)
        try:
            out["log_loss"] = m.log_loss(y_true, proba, labels=classes)
        except ValueError:
            pass  # a held-out label the model never saw (a class with a single row) leaves it undefined
        try:
            if binary:
                out["roc_auc"] = m.roc_auc_score(y_true, proba[:, 1]) if present.size == 2 else float("nan")
            else:
                out["roc_auc"] = m.roc_auc_score(y_true, proba, multi_class="ovr", average="macro",
                                                 labels=classes)
        except ValueError:
            pass  # a class absent from the held-out split leaves roc_auc undefined
    return {k: v for k, v in ((k, _finite(v)) for k, v in out.items()) if v is not None}


def regression_metrics(model, X, y_true: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as m

    model, X = _final_step(model, X)
    y_pred = model.predict(X)
    out = {
        "rmse": math.sqrt(m.mean_squared_error(y_true, y_pred)),
        "mae": m.mean_absolute_error(y_true, y_pred),
        "r2": m.r2_score(y_true, y_pred),
    }
    return {k: v for k, v in ((k, _finite(v)) for k, v in out.items()) if v is not None}


def score(model, X, y, task: str) -> dict[str, float]:
    return (classification_metrics if task == "classification" else regression_metrics)(model, X, y)


def mean_metrics(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the folds, for the metrics every fold has."""
    names = [k for k in per_fold[0] if all(k in m for m in per_fold)]
    return {k: float(np.mean([m[k] for m in per_fold])) for k in names}


def folds_of(y: np.ndarray, task: str, folds: int, seed: int):
    """The cross-validation splitter trials use (stratified when every class has `folds` rows); halving
    scores its rounds on the same folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if len(y) < folds:
        raise InvalidSpec(f"cvFolds {folds} exceeds the {len(y)} training rows")
    if task == "classification" and _stratify(y, task) is not None \
            and np.unique(y, return_counts=True)[1].min() >= folds:
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def cross_validate_all(make_model, X, y: np.ndarray, task: str, folds: int, seed: int,
                       metric: str) -> list[dict[str, float]]:
    """Every metric on each fold; `metric` must be defined on all of them (it picks the winner)."""
    scores = []
    for train_idx, test_idx in folds_of(y, task, folds, seed).split(X, y):
        model = make_model().fit(X.iloc[train_idx], y[train_idx])
        metrics = score(model, X.iloc[test_idx], y[test_idx], task)
        if metrics.get(metric) is None:
            raise InvalidSpec(f"metric {metric} is undefined on a cross-validation fold (too few rows per class?)")
        scores.append(metrics)
    return scores
