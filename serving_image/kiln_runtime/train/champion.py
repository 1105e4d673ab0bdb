"""The champion gate: a new model must beat the model now serving on the same test rows.

Stored metrics of the serving model were measured on the data of its own day; comparing them with
today's numbers compares two datasets as much as two models. So the champion's artifact is loaded
(digest checked, skops with the runtime's own trust rule, joblib only with its allowUnsafe) and
scored on exactly the challenger's test rows. When that cannot be done for a reason outside the
challenger (artifact missing, altered or unloadable, a feature the data no longer has), the gate
fails as ChampionUnavailable: a model that was not shown to beat the champion is never promoted.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from kiln_runtime.store import sha256_hex

from . import artifacts, estimators
from . import storeio as kio
from .errors import SourceError, TrainError, Unreachable
from .evaluate import better, score
from .gates import fmt, short_of, threshold_to_beat
from .prepare import Prepared
from .spec import Champion

NOT_BEATEN = "ChampionNotBeaten"
UNAVAILABLE = "ChampionUnavailable"


@dataclass
class Verdict:
    champion: dict  # {name, metrics, metric, value}: the summary's "champion"
    failed: dict | None = None  # the gate entry when the challenger does not pass
    reason: str | None = None  # NOT_BEATEN or UNAVAILABLE when it does not


class _Unavailable(Exception):
    pass


def _load(champ: Champion):
    try:
        data = kio.read(champ.uri)
    except Unreachable:
        raise  # transient: worth the Job's retry, not a verdict
    except SourceError as exc:
        raise _Unavailable(f"its artifact cannot be read: {exc}") from exc
    actual = sha256_hex(data)
    if actual != champ.sha256:
        raise _Unavailable(f"its artifact {champ.uri} does not match its digest (expected sha256 "
                           f"{champ.sha256[:12]}…, found {actual[:12]}…)")
    if champ.format == "joblib" and not champ.allow_unsafe:
        raise _Unavailable("its artifact is joblib, which executes code when loaded, and it is not marked "
                           "allowUnsafe")
    if champ.format not in ("skops", "joblib"):
        raise _Unavailable(f"its artifact format {champ.format!r} cannot be scored (skops or joblib)")
    try:
        return artifacts.loads(data, champ.format)
    except TrainError as exc:  # InvalidArtifact, UntrustedTypes
        raise _Unavailable(f"its artifact cannot be loaded safely ({exc.reason}): {exc}") from exc


def _inputs(champ: Champion, prep: Prepared):
    """The champion's input table for the challenger's test rows, built from its own signature."""
    typed = prep.typed.loc[prep.split.X_test.index]
    numeric = ("number", "integer", "boolean")
    schema = {c.name: c.type for c in prep.features + (prep.target,)}
    for col in champ.inputs:
        have = schema.get(col.name)
        if have is None or col.name not in typed.columns:
            raise _Unavailable(f"it needs feature {col.name}, which dataset version {prep.version[:12]}… does not have")
        if (have in numeric) != (col.type in numeric):
            raise _Unavailable(f"it takes {col.name} as {col.type}, the data has it as {have}")
    return estimators.model_frame(typed, champ.inputs)


def judge(champ: Champion, prep: Prepared, metric: str, value: float | None, margin: float) -> Verdict:
    """Whether the challenger's `value` of `metric` on the test split beats the champion's by `margin`
    (strictly better when the margin is 0)."""
    summary = {"name": champ.name, "metrics": None, "metric": metric, "value": None}
    rows = int(len(prep.split.y_test))
    try:
        model = _load(champ)
        X = _inputs(champ, prep)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                metrics = score(model, X, prep.split.y_test, prep.task)
        except Exception as exc:  # noqa: BLE001 - a foreign model fails in any way
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise _Unavailable(f"scoring it on the test split failed: {type(exc).__name__}: {first}") from exc
        summary["metrics"] = metrics
        if metrics.get(metric) is None:
            raise _Unavailable(f"it has no {metric} on the test split (roc_auc and log_loss need predict_proba)")
    except _Unavailable as exc:
        message = (f"cannot compare with the champion {champ.name}: {exc}; a model not shown to beat it is "
                   "not promoted")
        return Verdict(summary, {"gate": "champion", "metric": metric, "value": value, "message": message},
                       UNAVAILABLE)

    theirs = metrics[metric]
    summary["value"] = theirs
    threshold = threshold_to_beat(theirs, margin, metric)
    # Strictly better when the margin is 0; meeting a positive margin exactly is enough.
    passed = value is not None and (better(value, threshold, metric) or
                                    (margin > 0 and math.isclose(value, threshold, rel_tol=0, abs_tol=1e-12)))
    if passed:
        return Verdict(summary)
    by = f" by {fmt(margin)}" if margin else ""
    message = (f"{metric} {fmt(value) if value is not None else 'n/a'} does not beat {champ.name} "
               f"({fmt(theirs)}){by} on the test split of dataset version {prep.version[:12]}… ({rows} rows)")
    short = None if value is None else short_of(value, threshold, metric)
    return Verdict(summary, {"gate": "champion", "metric": metric, "value": value, "champion": theirs,
                             "threshold": threshold, "shortBy": short, "message": message}, NOT_BEATEN)
