"""Successive halving (search.strategy halving): scikit-learn's HalvingGridSearchCV over the run's
candidates, then a full trial for each candidate that survived every round.

The candidates are trials 0..planned-1 with search.trial_params' parameters, given to scikit-learn as
one single-point grid each, so a candidate keeps its trial index. Rounds are scored where trials are:
on the validation rows (a PredefinedSplit of the training part) or on the same cross-validation folds,
with the pipeline's metric, never on the test split. Round scores come from a reduced budget (a
subsample, or fewer estimators), so the candidates of the last round then train as ordinary trials on
the whole budget (trial.complete): selection compares them on exactly what it compares any trial on,
and can refit the winner from its recorded parameters.

Stored under the run's output:
  search/halving.json        every round (budget, candidates, how many went on, the cutoff) and every
                             candidate's score per round and the round it stopped in
  trials/<i>/stopped.json    a candidate stopped early: its last round, budget, score and the cutoff
  trials/<i>/result.json     a finalist's trial, as any trial writes it
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from . import estimators, evaluate, search, trial
from . import storeio as kio
from .errors import InvalidSpec, TrainError, Unreachable
from .prepare import Prepared
from .shard import Tally
from .spec import Config


def record_uri(cfg: Config) -> str:
    return f"{cfg.output}/search/halving.json"


def run(cfg: Config) -> dict:
    pipeline = cfg.pipeline
    planned = search.planned_trials(pipeline)
    candidates = [search.trial_params(pipeline, i) for i in range(planned)]
    prep = trial.prepared_or_recorded(cfg, range(planned))
    # One listing of trials/ tells a retried pod what an earlier attempt stored: the search is
    # deterministic, so its record is reused and only the finalists still missing train.
    done = kio.keys_below(f"{cfg.output}/trials/")
    record = _previous(cfg)
    searched = record is None
    if searched:
        record = _search(cfg, prep, candidates)
        kio.write_json(record_uri(cfg), record)
    tally = Tally(assigned=planned)
    for entry in record["candidates"]:
        if entry["stoppedIn"] is not None and entry.get("stopped"):
            if searched:
                kio.write_json(f"{trial.trial_prefix(cfg.output, entry['trial'])}/stopped.json", entry["stopped"])
            tally.stopped += 1
        elif entry["stoppedIn"] is not None:
            if searched:
                trial.record_error(cfg.output, entry["trial"], "FitFailed", entry["error"])
            tally.failure(entry["trial"], "FitFailed", entry["error"])
    for entry in record["candidates"]:
        if entry["stoppedIn"] is None:
            _finalist(cfg, prep, entry, tally, f"{entry['trial']}/result.json" in done)
    rounds = [{k: r[k] for k in ("round", "resources", "candidates", "kept")} for r in record["rounds"]]
    head = (f"successive halving: {planned} candidate(s), {len(rounds)} round(s), "
            f"{sum(e['stoppedIn'] is None for e in record['candidates'])} trained on the whole budget")
    summary = {**tally.summary(), "rounds": rounds, "searchRecordUri": record_uri(cfg),
               "message": tally.sentence(head)}
    if not tally.succeeded:
        first = tally.failures[0]
        raise TrainError(f"{summary['message']}; trial {first['trial']}: {first['message']}",
                         reason=first["reason"], details=summary)
    return {"result": "Succeeded", **summary}


def _finalist(cfg: Config, prep: Prepared, entry: dict, tally: Tally, trained: bool) -> None:
    if trained:  # a retried pod: this finalist already trained
        tally.success(kio.read_json(f"{trial.trial_prefix(cfg.output, entry['trial'])}/result.json"), reused=True)
        return
    try:
        tally.success(trial.complete(cfg, prep, entry["trial"], entry["finalParams"]))
    except Unreachable:
        raise
    except TrainError as exc:
        tally.failure(entry["trial"], exc.reason, str(exc))


def _previous(cfg: Config) -> dict | None:
    """The record of an earlier attempt of this run, if one finished its search."""
    uri = record_uri(cfg)
    return kio.read_json(uri) if kio.exists(uri) else None


def _scorer(task: str, metric: str):
    # The run's own metric, as trials compute it; scikit-learn maximises, so losses are negated. A
    # metric a subsample cannot define (one class in it) scores NaN, which halving ranks last.
    sign = -1.0 if metric in evaluate.LOWER_IS_BETTER else 1.0

    def scorer(model, X, y) -> float:
        try:
            return sign * evaluate.score(model, X, y, task)[metric]
        except (KeyError, ValueError, IndexError):
            return float("nan")

    return scorer, sign


def _rows_and_folds(cfg: Config, prep: Prepared):
    """(X, y, cv): the rows rounds are scored on and how, exactly as the trials split them."""
    from sklearn.model_selection import PredefinedSplit

    pipeline = cfg.pipeline
    if pipeline.cv_folds >= 2:
        y = prep.split.y_train
        return prep.split.X_train, y, evaluate.folds_of(y, prep.task, pipeline.cv_folds, pipeline.seed)
    val = prep.validation
    X = pd.concat([val.X_train, val.X_test])
    y = np.concatenate([val.y_train, val.y_test])
    folds = np.concatenate([np.full(len(val.y_train), -1), np.zeros(len(val.y_test), dtype=int)])
    return X, y, PredefinedSplit(folds)


def _search(cfg: Config, prep: Prepared, candidates: list[dict]) -> dict:
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (the API is experimental)
    from sklearn.model_selection import HalvingGridSearchCV

    pipeline, plan = cfg.pipeline, cfg.pipeline.halving
    on_samples = plan.resource == "samples"
    final_extra = {} if on_samples else {plan.resource: plan.max_resources}
    # Every parameter a trial would pass (seed included), so a round fits what the trial fits.
    full = [estimators.effective_params(pipeline.estimator, {**pipeline.params, **c, **final_extra}, pipeline.seed)
            for c in candidates]
    grid = [{f"model__{k}": [v] for k, v in p.items() if on_samples or k != plan.resource} for p in full]
    X, y, cv = _rows_and_folds(cfg, prep)
    scorer, sign = _scorer(prep.task, prep.metric)
    resource = "n_samples" if on_samples else f"model__{plan.resource}"
    max_resources = plan.max_resources if not on_samples else min(plan.max_resources or len(y), len(y))
    searcher = HalvingGridSearchCV(
        estimators.make_pipeline(pipeline.estimator, full[0], prep.features), grid, factor=plan.factor,
        resource=resource, min_resources=plan.min_resources or "exhaust", max_resources=max_resources,
        cv=cv, scoring=scorer, refit=False, error_score=np.nan, random_state=pipeline.seed,
        n_jobs=pipeline.parallelism)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            searcher.fit(X, y)
        except ValueError as exc:
            raise InvalidSpec(f"pipeline.search.halving: {str(exc).splitlines()[0]}") from exc
    failed_fit = next((str(w.message).strip().splitlines()[0] for w in caught
                       if type(w.message).__name__ == "FitFailedWarning"), "")
    return _record(cfg, prep.metric, candidates, full, searcher, sign, failed_fit, len(y), final_extra)


def _record(cfg: Config, metric: str, candidates: list[dict], full: list[dict], searcher, sign: float, failed_fit: str,
            rows: int, final_extra: dict) -> dict:
    pipeline, plan = cfg.pipeline, cfg.pipeline.halving

    def key(params: dict) -> str:
        clean = {k.removeprefix("model__"): v for k, v in params.items()
                 if k.removeprefix("model__") != plan.resource}
        return json.dumps(clean, sort_keys=True, default=str)

    index = {key(p): i for i, p in enumerate(full)}
    results = searcher.cv_results_
    scores: dict[int, list[dict]] = {i: [] for i in range(len(candidates))}
    by_round: dict[int, list[tuple[int, float]]] = {}
    for r, params, value in zip(results["iter"], results["params"], results["mean_test_score"]):
        i = index[key(params)]
        value = sign * float(value) if math.isfinite(value) else None
        scores[i].append({"round": int(r), "resources": int(searcher.n_resources_[r]), "score": value})
        by_round.setdefault(int(r), []).append((i, value))
    last = max(by_round)
    rounds = []
    for r in sorted(by_round):
        went_on = {i for i, _ in by_round.get(r + 1, [])}
        kept_scores = [s for i, s in by_round[r] if i in went_on and s is not None]
        cutoff = (min(kept_scores) if sign > 0 else max(kept_scores)) if kept_scores else None
        rounds.append({"round": r, "resources": int(searcher.n_resources_[r]), "candidates": len(by_round[r]),
                       "kept": len(went_on) if r < last else len(by_round[r]), "cutoff": cutoff})
    out = []
    for i, candidate in enumerate(candidates):
        mine = scores[i]
        final = mine[-1]["round"]
        entry = {"trial": i, "searchParams": candidate, "scores": mine,
                 "stoppedIn": None if final == last else final,
                 "finalParams": {**candidate, **final_extra}}
        if final != last and mine[-1]["score"] is None:
            entry["error"] = (f"the fit failed on round {final}'s budget ({mine[-1]['resources']} "
                              f"{plan.resource}){': ' + failed_fit if failed_fit else ''}")[:600]
        elif final != last:
            cutoff, score = rounds[final]["cutoff"], mine[-1]["score"]
            why = f"stopped after round {final}: {metric} {score:.6g} on {mine[-1]['resources']} {plan.resource}"
            if cutoff is not None:
                why += (f", tied with the worst of the best 1/{plan.factor} ({cutoff:.6g}) and placed after it"
                        if score == cutoff else f", the best 1/{plan.factor} scored {'at most' if sign < 0 else 'at least'} {cutoff:.6g}")
            entry["stopped"] = {"trial": i, "round": final, "resources": mine[-1]["resources"], "score": score,
                                "cutoff": cutoff, "searchParams": candidate, "message": why}
        out.append(entry)
    return {"strategy": "halving", "factor": plan.factor, "resource": plan.resource,
            "minResources": int(searcher.min_resources_), "maxResources": int(searcher.max_resources_),
            "rows": rows, "splits": int(searcher.n_splits_), "metric": metric,
            "on": "cv" if pipeline.cv_folds >= 2 else "validation", "rounds": rounds, "candidates": out}
