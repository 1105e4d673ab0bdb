"""`kubectl kiln runs PIPELINE [RUN]`: a pipeline's runs from its status; one run's trials from the store."""

from __future__ import annotations

import json
from typing import Any

from kiln_operator.api.training import CLASSIFIERS, LOWER_IS_BETTER

from . import tables
from .errors import CliError

ACTIVE = ("Pending", "Running", "Selecting", "Registering")


def selection_metric(pipeline: dict[str, Any]) -> str:
    """search.metric, else what the runtime picks: accuracy for classifiers, rmse for regressors."""
    spec = pipeline.get("spec") or {}
    metric = (spec.get("search") or {}).get("metric")
    if metric:
        return metric
    return "accuracy" if (spec.get("estimator") or {}).get("class") in CLASSIFIERS else "rmse"


def runs_view(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    metric = selection_metric(pipeline)
    out = []
    for run in (pipeline.get("status") or {}).get("runs") or []:
        best = (run.get("bestMetrics") or {}).get(metric)
        if best is None and run.get("challenger"):
            best = run["challenger"].get("value")
        out.append({
            "id": run.get("id"), "phase": run.get("phase"), "trigger": run.get("trigger"),
            "datasetVersion": run.get("datasetVersion"),
            "trials": {"planned": run.get("trialsPlanned"), "succeeded": run.get("trialsSucceeded", 0),
                       "failed": run.get("trialsFailed", 0), "stopped": run.get("trialsStopped", 0)},
            "metric": metric, "best": best, "modelVersion": run.get("modelVersion"),
            "champion": run.get("champion"), "startedAt": run.get("startedAt"),
            "finishedAt": run.get("finishedAt"), "message": run.get("message"),
        })
    return out


def runs_table(view: list[dict[str, Any]]) -> str:
    if not view:
        return "no runs yet"
    metric = view[0]["metric"]
    rows = [[r["id"], r["phase"], r["trigger"], tables.short(r["datasetVersion"]), r["trials"]["planned"],
             r["trials"]["succeeded"], r["trials"]["failed"], r["trials"]["stopped"], r["best"],
             r["modelVersion"], _champion(r["champion"]), r["startedAt"], r["finishedAt"], r["message"]] for r in view]
    return tables.render(["RUN", "PHASE", "TRIGGER", "DATA", "PLANNED", "SUCCEEDED", "FAILED", "STOPPED",
                          f"BEST {metric.upper()}", "MODEL", "CHAMPION", "STARTED", "FINISHED", "MESSAGE"], rows)


def _champion(champion: dict[str, Any] | None) -> str | None:
    """The version serving when the run started, scored on the run's own test rows (its challenger's)."""
    if not champion or not champion.get("name"):
        return None
    return f"{champion['name']}={tables.number(champion.get('value'))}"


def find_run(pipeline: dict[str, Any], run_id: str) -> dict[str, Any]:
    runs = (pipeline.get("status") or {}).get("runs") or []
    for run in runs:
        if run.get("id") == run_id:
            return run
    kept = ", ".join(r.get("id", "?") for r in runs) or "none"
    raise CliError(f'run "{run_id}" not found in trainingpipeline "{pipeline["metadata"]["name"]}" '
                   f'(runs kept: {kept}; spec.runHistoryLimit keeps the newest)')


def output_from_job(job: dict[str, Any] | None) -> str | None:
    """The output prefix in the trials Job's KILN_TRAIN_CONFIG, the runtime's own instructions."""
    if not job:
        return None
    for container in job.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "KILN_TRAIN_CONFIG":
                try:
                    return json.loads(env.get("value") or "{}").get("output")
                except ValueError:
                    return None
    return None


def output_prefix(pipeline: dict[str, Any], run: dict[str, Any], *, artifact_root: str | None = None,
                  job: dict[str, Any] | None = None, model_version: dict[str, Any] | None = None) -> str:
    """Where the run's trials are stored. The run's status does not say, so in order of trust: the
    artifact root the user names (the operator's KILN_ARTIFACT_ROOT layout), the trials Job's config
    (Jobs expire a day after they finish), the registered model's location, halving's search record."""
    meta = pipeline["metadata"]
    if artifact_root:
        return f"{artifact_root.rstrip('/')}/runs/{meta['namespace']}/{meta['name']}/{run['id']}"
    found = output_from_job(job)
    if found:
        return found
    uri = ((model_version or {}).get("spec", {}).get("artifact") or {}).get("uri") or ""
    if "/model/" in uri:
        return uri.rsplit("/model/", 1)[0]
    record = run.get("searchRecord") or ""
    if "/search/" in record:
        return record.rsplit("/search/", 1)[0]
    raise CliError(f'cannot tell where run "{run["id"]}" of trainingpipeline "{meta["name"]}" stored its trials: '
                   f'its Job {run.get("job") or ""} is gone and it registered no model; pass --artifact-root '
                   "(the operator's KILN_ARTIFACT_ROOT, e.g. s3://kiln/artifacts) or set KILN_ARTIFACT_ROOT")


def trials_view(run: dict[str, Any], records: dict[int, dict[str, dict]], metric: str) -> list[dict[str, Any]]:
    """Every planned trial, best first: succeeded by validation score (ties: lowest index, as selection
    breaks them), then stopped ones by their last score, then failed and missing ones."""
    planned = run.get("trialsPlanned") or (max(records) + 1 if records else 0)
    failures = {f.get("trial"): f for f in run.get("failedTrials") or []}
    lower = metric in LOWER_IS_BETTER
    out = []
    for i in range(max(planned, max(records) + 1 if records else 0)):
        found = records.get(i, {})
        if "result.json" in found:
            r = found["result.json"]
            out.append({"trial": i, "status": "Succeeded", "params": r.get("searchParams") or {},
                        "metric": r.get("metric", metric), "score": r.get("score"),
                        "on": (r.get("selection") or {}).get("on"), "seconds": r.get("trainSeconds"),
                        "message": "; ".join(r.get("warnings") or []) or None})
        elif "stopped.json" in found:
            s = found["stopped.json"]
            out.append({"trial": i, "status": "Stopped", "params": s.get("searchParams") or {}, "metric": metric,
                        "score": s.get("score"), "on": f"round {s.get('round')}", "seconds": None,
                        "message": s.get("message")})
        else:
            e = found.get("error.json") or failures.get(i)
            if e:
                status, message = "Failed", f"{e.get('reason')}: {e.get('message')}"
            elif run.get("phase") in ACTIVE:
                status, message = "Pending", None
            else:
                status, message = "Failed", "NoResult: the trial left no record"
            out.append({"trial": i, "status": status, "params": {}, "metric": metric, "score": None, "on": None,
                        "seconds": None, "message": message})
    rank = {"Succeeded": 0, "Stopped": 1, "Pending": 2, "Failed": 3}

    def key(t):
        score = t["score"] if t["score"] is not None else 0.0
        return rank[t["status"]], score if lower else -score, t["trial"]
    return sorted(out, key=key)


def trials_table(view: list[dict[str, Any]], metric: str) -> str:
    if not view:
        return "no trials"
    rows = [[t["trial"], t["status"], t["score"], t["on"], _params(t["params"]),
             None if t["seconds"] is None else f"{t['seconds']:.2f}s", t["message"]] for t in view]
    return tables.render(["TRIAL", "STATUS", metric.upper(), "ON", "PARAMETERS", "DURATION", "MESSAGE"], rows)


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={tables.number(v) if isinstance(v, float) else json.dumps(v)}" for k, v in params.items())


def run_title(pipeline: dict[str, Any], run: dict[str, Any], output: str) -> str:
    name = pipeline["metadata"]["name"]
    parts = [f"run {run['id']} of trainingpipeline {name}: {run.get('phase')}"]
    if run.get("modelVersion"):
        parts.append(f"registered {run['modelVersion']}")
    return ", ".join(parts) + f" (trials under {output}/trials/)"
