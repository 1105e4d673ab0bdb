"""`kiln-train trial`: train and score one trial of a run (one completion of the Indexed Job).

Writes, under <output>/trials/<index>/:
  result.json                     params, metrics and score on the validation split (or the
                                  cross-validation folds); written last, so its presence means the
                                  trial is complete
  model.skops (or model.joblib)   the fitted pipeline, only with `keepTrialModels: true`
  error.json                      instead of result.json when the trial failed (best effort)

Trial models are not kept by default: serialising with skops costs more than most fits (importing
skops alone takes a second or more, and a 100-tree forest another second to write), and only the
winner is ever used; the selection step refits it from its recorded parameters and seed instead, and
checks that the refit scores exactly what the trial reported. No trial sees the test split.
"""

from __future__ import annotations

import os
import re
import time
import warnings

import numpy as np

from . import artifacts, estimators, evaluate, search
from . import storeio as kio
from .errors import InvalidParameter, InvalidSpec, TrainError, Unreachable
from .prepare import Prepared, prepare
from .spec import Config

try:  # scikit-learn's own "this parameter value is invalid" error (a ValueError and a TypeError)
    from sklearn.utils._param_validation import InvalidParameterError
except ImportError:  # pragma: no cover - older or newer layouts
    InvalidParameterError = ()  # type: ignore[assignment]


# The pod's own name, from the Downward API (the operator's trials and select Jobs set it): how the
# operator finds the pod that trained a registered model, and so the image digest it ran. An Indexed
# Job's HOSTNAME is `<job>-<index>`, the same for every retry of an index, so it cannot say this.
POD_ENV = "KILN_POD_NAME"


def pod_name() -> str | None:
    return os.environ.get(POD_ENV) or None


def trial_prefix(output: str, index: int) -> str:
    return f"{output}/trials/{index}"


def _mentions_params(exc: BaseException, params: dict) -> bool:
    """Whether the error names one of the user's parameters or one of their string values, as a word."""
    text = str(exc)
    words = set(params) | {v for v in params.values() if isinstance(v, str) and v}
    return any(re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", text) for w in words)


def fit(model, X, y, estimator: str, params: dict):
    """Fits, turning scikit-learn's rejection of a parameter into InvalidParameter.

    A ValueError that names one of the parameters ("penalty='l1' is not supported by solver lbfgs")
    is a rejected combination too; any other error is a genuine failure and propagates as a crash.
    """
    try:
        return model.fit(X, y)
    except InvalidParameterError as exc:
        raise InvalidParameter(f"{estimator}: {str(exc).splitlines()[0]}") from exc
    except (ValueError, TypeError) as exc:
        if _mentions_params(exc, params):
            raise InvalidParameter(f"{estimator} rejected its parameters: {str(exc).splitlines()[0]}") from exc
        raise


def _jsonable(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def train(cfg: Config, prep: Prepared, index: int, search_params: dict) -> tuple[dict, object]:
    """Fits and scores one trial: result.json's content (without the model's location) and the model.

    Never touches the test split: a trial is scored on the validation rows (cvFolds 0) or by
    cross-validation inside the training part, and the selection step scores the test rows once, on
    the winner. `reproduce` records what the selection step must find again from the same model."""
    pipeline = cfg.pipeline
    user_params = {**pipeline.params, **search_params}
    params = estimators.effective_params(pipeline.estimator, user_params, pipeline.seed)
    sp = prep.split

    def fresh():
        return estimators.make_pipeline(pipeline.estimator, params, prep.features)

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cv = None
        if pipeline.cv_folds >= 2:
            folds = evaluate.cross_validate_all(lambda: _Fitting(fresh(), pipeline.estimator, user_params),
                                                sp.X_train, sp.y_train, prep.task, pipeline.cv_folds,
                                                pipeline.seed, prep.metric)
            scores = [f[prep.metric] for f in folds]
            cv = {"folds": pipeline.cv_folds, "scores": scores, "mean": float(np.mean(scores))}
            model = fit(fresh(), sp.X_train, sp.y_train, pipeline.estimator, user_params)
            train_seconds = time.perf_counter() - started  # cross-validation included
            metrics = evaluate.mean_metrics(folds)
            selection = {"on": "cv", "rows": int(len(sp.y_train)), "folds": pipeline.cv_folds}
            # Refitting the folds would cost the selection step k fits: the final model's metrics on
            # its own training rows identify it as well.
            reproduce = {"on": "train", "metrics": evaluate.score(model, sp.X_train, sp.y_train, prep.task)}
            rows = {"train": int(len(sp.y_train)), "test": int(len(sp.y_test))}
        else:
            val = prep.validation
            model = fit(fresh(), val.X_train, val.y_train, pipeline.estimator, user_params)
            train_seconds = time.perf_counter() - started
            metrics = evaluate.score(model, val.X_test, val.y_test, prep.task)
            selection = {"on": "validation", "rows": int(len(val.y_test))}
            reproduce = {"on": "validation", "metrics": metrics}
            rows = {"train": int(len(val.y_train)), "validation": int(len(val.y_test)), "test": int(len(sp.y_test))}
    if prep.metric not in metrics:
        raise InvalidSpec(f"metric {prep.metric} could not be computed for {pipeline.estimator} on the "
                          f"{'validation split' if cv is None else 'cross-validation folds'} (roc_auc and "
                          "log_loss need predict_proba; roc_auc needs every class present)")
    messages = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}" for w in caught})
    return {
        "trial": index, "estimator": pipeline.estimator, "task": prep.task,
        "searchParams": _jsonable(search_params), "params": _jsonable(params),
        "metric": prep.metric, "metrics": metrics, "selection": selection, "reproduce": reproduce,
        "score": cv["mean"] if cv else metrics[prep.metric], "cv": cv,
        "datasetVersion": prep.version, "seed": pipeline.seed, "rows": rows,
        "trainSeconds": round(train_seconds, 4), "warnings": messages[:5], "sklearnVersion": _sklearn_version(),
    }, model


class _Fitting:
    """A model whose fit() maps rejected parameters to InvalidParameter (used inside cross-validation)."""

    def __init__(self, model, estimator, params):
        self.model, self.estimator, self.params = model, estimator, params

    def fit(self, X, y):
        return fit(self.model, X, y, self.estimator, self.params)


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def run(cfg: Config, index: int) -> dict:
    """The trial command for one trial (no --shards); returns the termination summary."""
    if index < 0:
        raise InvalidSpec(f"trial index must be non-negative, got {index}")
    pipeline = cfg.pipeline
    planned = search.planned_trials(pipeline)
    search_params = search.trial_params(pipeline, index)
    summary = {"command": "trial", "trial": index}
    if search_params is None:
        return {**summary, "result": "Skipped",
                "message": f"trial {index} is past the {planned} trial(s) this search space yields"}
    prep = prepared_or_recorded(cfg, [index])
    result = complete(cfg, prep, index, search_params)
    return {**summary, "result": "Succeeded", "metric": result["metric"], "score": result["score"],
            "metrics": result["metrics"], "selection": result["selection"], "params": result["searchParams"],
            "resultUri": f"{trial_prefix(cfg.output, index)}/result.json", "datasetVersion": result["datasetVersion"],
            "message": f"trial {index}: {result['metric']} {result['score']:.6g} on {result['selection']['on']}"}


def prepared_or_recorded(cfg: Config, indexes) -> Prepared:
    """The run's data, prepared once; a failure is recorded as each of `indexes`' error, so the
    selection step can say why those trials left no result."""
    try:
        return prepare(cfg)
    except Unreachable:
        raise
    except TrainError as exc:
        for index in indexes:
            record_error(cfg.output, index, exc.reason, str(exc))
        raise


def complete(cfg: Config, prep: Prepared, index: int, search_params: dict) -> dict:
    """Trains trial `index`, stores its result.json (and model, with keepTrialModels) and returns the
    result; a failure is stored as its error.json and raised."""
    prefix = trial_prefix(cfg.output, index)
    try:
        result, model = train(cfg, prep, index, search_params)
        result["model"] = None
        result["pod"] = pod_name()
        if cfg.keep_trial_models:
            fmt = cfg.pipeline.artifact_format
            model_uri = f"{prefix}/{artifacts.FILENAMES[fmt]}"
            digest = kio.write(model_uri, artifacts.dumps(model, fmt))
            result["model"] = {"uri": model_uri, "sha256": digest, "format": fmt}
        kio.write_json(f"{prefix}/result.json", result)  # last: its presence marks the trial complete
    except Unreachable:
        raise  # another write would only wait out the same timeouts again
    except TrainError as exc:
        record_error(cfg.output, index, exc.reason, str(exc))
        raise
    except Exception as exc:
        record_error(cfg.output, index, "TrainerCrashed", f"{type(exc).__name__}: {exc}")
        raise
    return result


def record_error(output: str, index: int, reason: str, message: str) -> None:
    # Lets the selection step say why trials failed; the store may be the thing that failed, so this
    # is best effort and never hides the original error.
    try:
        kio.write_json(f"{trial_prefix(output, index)}/error.json",
                       {"trial": index, "reason": reason, "message": message[:2000]})
    except Exception:  # noqa: BLE001
        pass
