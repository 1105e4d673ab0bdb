"""Live quality closing the loop: fed-back labels become a condition, an Event and, when asked, a run.

The sidecars join labels with the answers they logged and keep a sliding window of labelled rows
(accuracy and F1, or MAE and RMSE). The operator combines the serving version's windows, judges them
against `monitoring.quality` once enough rows are labelled, and asks the pipeline for a run at most
once per cooldown, as drift does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .api import InferenceServiceSpec
from .api.training import LOWER_IS_BETTER
from .drift import Outcome, ask_for_run, unchanged_since
from .validation import Parsed


@dataclass
class Verdict:
    metrics: dict[str, float]
    rows: int


def from_reports(reports: list[dict[str, Any]]) -> Verdict | None:
    """The sidecars' windows combined: each metric is the mean over the pods weighted by their labelled
    rows (exact for accuracy and MAE; close for F1 and RMSE when the pods see alike traffic)."""
    windows = [r["quality"] for r in reports if isinstance(r.get("quality"), dict) and r["quality"].get("rows")]
    if not windows:
        return None
    rows = sum(int(w["rows"]) for w in windows)
    names = set().union(*(w.get("metrics") or {} for w in windows))
    metrics = {}
    for name in names:
        weighted = [(float(w["metrics"][name]), int(w["rows"])) for w in windows if name in (w.get("metrics") or {})]
        total = sum(n for _, n in weighted)
        if total:
            metrics[name] = sum(v * n for v, n in weighted) / total
    return Verdict(metrics, rows)


def plan(isvc: Parsed[InferenceServiceSpec], verdict: Verdict | None, version: str, now: str) -> Outcome:
    out = Outcome()
    floor = isvc.spec.monitoring.quality
    previous = isvc.status.get("quality") or {}
    if verdict is None:
        if previous.get("version") != version:  # a new version starts with no labels
            out.status["quality"] = {k: v for k, v in previous.items() if k == "lastRetrainRequest"}
        if floor:
            out.conditions.append(("QualityDegraded", "Unknown", "NoLabels",
                                   f"no labels fed back for {version} yet"))
        return out
    current = {**previous, "version": version, "metrics": {k: round(v, 4) for k, v in sorted(verdict.metrics.items())},
               "rows": verdict.rows}
    out.status["quality"] = unchanged_since(previous, current, now)
    if not floor:
        return out
    metric = floor.metric
    value = verdict.metrics.get(metric)
    need = floor.min_rows
    if value is None or verdict.rows < need:
        out.conditions.append(("QualityDegraded", "Unknown", "TooFewLabels",
                               f"{verdict.rows} labelled row(s) of {version}; the floor is judged from {need}"))
        return out
    lower = metric in LOWER_IS_BETTER
    bound = floor.max if lower else floor.min
    measured = f"{metric} {value:.4g} on the last {verdict.rows} labelled rows of {version}"
    if bound is None or (value <= bound if lower else value >= bound):
        out.conditions.append(("QualityDegraded", "False", "QualityMet", measured))
        return out
    message = f"{measured}, {'above the maximum' if lower else 'below the minimum'} {bound:g}"
    out.conditions.append(("QualityDegraded", "True", "BelowFloor", message))
    out.events.append(("Warning", "QualityDegraded", message))
    ask_for_run(out, floor, previous, out.status["quality"], "quality", message, now)
    return out
