"""TrainingPipeline reconcile: when to start a run, and how a run moves from trials to a ModelVersion.

A run is two Jobs: the trials (one Indexed Job, one completion per trial) and the selection step,
which picks the best trial, applies the quality gates and writes the final artifacts. Job names
derive from the run id, so a restarted operator finds the Jobs it already made instead of making
them again. Runs start on creation, on a spec change, on a new dataset version (`onDatasetChange`),
on the cron `schedule`, and on request through the `kiln.dev/run-requested` annotation (what the
drift loop and `kubectl annotate` use).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from croniter import croniter

from .builders import training
from .builders.meta import ANNOTATION_RUN_REQUEST
from .config import OperatorConfig
from .jobs import JobView
from .plan import Plan

ACTIVE = ("Pending", "Running", "Selecting")


@dataclass
class Observed:
    dataset: dict[str, Any] | None
    jobs: dict[str, JobView]  # by Job name
    production: dict[str, Any] | None  # the model's current Production ModelVersion


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def next_schedule(schedule: str, after: str) -> str:
    nxt = croniter(schedule, _parse_time(after)).get_next(datetime)
    return nxt.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def output_prefix(pipeline: dict[str, Any], run_id: str, cfg: OperatorConfig) -> str:
    meta = pipeline["metadata"]
    return f"{cfg.artifact_root}/runs/{meta['namespace']}/{meta['name']}/{run_id}"


def _trigger(pipeline: dict[str, Any], dataset: dict[str, Any], now: str) -> str | None:
    spec, status = pipeline["spec"], pipeline.get("status") or {}
    meta = pipeline["metadata"]
    runs = status.get("runs") or []
    if not runs and not status.get("lastRun"):
        return "create"
    if status.get("lastRunGeneration") not in (None, meta.get("generation")):
        return "specChange"
    request = (meta.get("annotations") or {}).get(ANNOTATION_RUN_REQUEST)
    if request and request != status.get("lastRunRequest"):
        if request.startswith("drift") and not spec.get("triggers", {}).get("onDrift", True):
            return None
        return "drift" if request.startswith("drift") else "requested"
    version = (dataset.get("status") or {}).get("version")
    if spec.get("triggers", {}).get("onDatasetChange") and status.get("lastDatasetVersion") not in (None, version):
        return "datasetChange"
    if spec.get("schedule") and status.get("nextRun") and status["nextRun"] <= now:
        return "schedule"
    return None


def _start_run(pipeline: dict[str, Any], dataset: dict[str, Any], observed: Observed, trigger: str,
               now: str, cfg: OperatorConfig, out: Plan) -> dict[str, Any]:
    status = pipeline.get("status") or {}
    last = status.get("lastRun") or "r0"
    run_id = f"r{int(last.lstrip('r') or 0) + 1}"
    config = training.run_config(pipeline, dataset, run_id, output_prefix(pipeline, run_id, cfg),
                                 observed.production, cfg)
    out.apply.append(training.trials_job(pipeline, run_id, config, cfg))
    trials = training.trial_count(pipeline["spec"].get("search", {}))
    out.event("Normal", "RunStarted", f"run {run_id} ({trigger}): {trials} trial(s) on dataset version "
              f"{(dataset['status'].get('version') or '')[:12]}")
    out.status.update(lastRun=run_id, lastRunGeneration=pipeline["metadata"].get("generation"),
                      lastDatasetVersion=dataset["status"].get("version"))
    request = (pipeline["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_REQUEST)
    if request:
        out.status["lastRunRequest"] = request
    return {"id": run_id, "phase": "Running", "trigger": trigger, "job": training.run_job_name(pipeline, run_id, "trials"),
            "datasetVersion": dataset["status"].get("version"), "startedAt": now,
            "trialsSucceeded": 0, "trialsFailed": 0}


def _advance(pipeline: dict[str, Any], dataset: dict[str, Any], run: dict[str, Any], observed: Observed,
             now: str, cfg: OperatorConfig, out: Plan) -> dict[str, Any]:
    """Moves one active run forward by what its Jobs say; returns the updated run."""
    run = dict(run)
    run_id = run["id"]
    trials_name = training.run_job_name(pipeline, run_id, "trials")
    select_name = training.run_job_name(pipeline, run_id, "select")
    trials = observed.jobs.get(trials_name, JobView(None))
    config = training.run_config(pipeline, dataset, run_id, output_prefix(pipeline, run_id, cfg),
                                 observed.production, cfg)
    config["datasetVersion"] = run.get("datasetVersion")
    if run["phase"] == "Running":
        if trials.job is None:
            out.apply.append(training.trials_job(pipeline, run_id, config, cfg))  # lost before a restart
            return run
        run["trialsSucceeded"] = trials.succeeded
        run["trialsFailed"] = len(trials.failed_indexes)
        if trials.state is None:
            return run
        if trials.succeeded == 0:
            first = next(iter(sorted(trials.summaries.items())), (None, {}))[1]
            why = first.get("message") or trials.failure_message()
            return _finish(run, "Failed", f"every trial failed; first: {first.get('reason', '')} {why}".strip(),
                           now, out, warning=True)
        run["phase"] = "Selecting"
        out.apply.append(training.select_job(pipeline, run_id, config, cfg))
        return run
    if run["phase"] == "Selecting":
        select = observed.jobs.get(select_name, JobView(None))
        if select.job is None:
            out.apply.append(training.select_job(pipeline, run_id, config, cfg))
            return run
        if select.state is None:
            return run
        summary = select.summary(0) or {}
        run["bestMetrics"] = {k: float(v) for k, v in (summary.get("metrics") or {}).items()
                              if isinstance(v, (int, float))} or run.get("bestMetrics")
        result = summary.get("result")
        if select.state == "Complete" and result == "Succeeded":
            mv = summary.get("modelVersion") or {}
            if not mv.get("signature") or not mv.get("artifact"):
                return _finish(run, "Failed", "the selection summary lost the model's signature (termination "
                               f"message truncated); the full record is at {summary.get('manifestUri')}", now, out,
                               warning=True)
            run["bestMetrics"] = {k: float(v) for k, v in (mv.get("metrics") or {}).items()}
            out.register.append((run_id, mv))
            run["phase"] = "Registering"
            run["message"] = summary.get("message")
            return run
        if result == "GateFailed":
            return _finish(run, "GateFailed", summary.get("message") or "a quality gate failed", now, out,
                           warning=True)
        reason = summary.get("reason") or "SelectionFailed"
        return _finish(run, "Failed", f"{reason}: {summary.get('message') or select.failure_message()}", now, out,
                       warning=True)
    return run


def _finish(run: dict[str, Any], phase: str, message: str, now: str, out: Plan, warning: bool = False) -> dict[str, Any]:
    run.update(phase=phase, message=message[:1000], finishedAt=now)
    out.event("Warning" if warning else "Normal", f"Run{phase}", f"run {run['id']}: {message[:500]}")
    return run


def plan(pipeline: dict[str, Any], observed: Observed, cfg: OperatorConfig, now: str) -> Plan:
    out = Plan()
    spec, status = pipeline["spec"], pipeline.get("status") or {}
    runs = [dict(r) for r in status.get("runs") or []]
    dataset = observed.dataset
    if dataset is None:
        out.condition("Ready", "False", "DatasetNotFound", f"Dataset {spec['datasetRef']['name']!r} does not exist")
        return out
    dataset_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (dataset.get("status") or {}).get("conditions") or [])

    runs = [_advance(pipeline, dataset, r, observed, now, cfg, out) if r["phase"] in ACTIVE else r for r in runs]
    active = [r for r in runs if r["phase"] in ACTIVE + ("Registering",)]

    trigger = _trigger(pipeline, dataset, now) if dataset_ready else None
    if trigger and active:
        if spec.get("concurrencyPolicy", "Forbid") == "Replace":
            for run in active:
                for step in ("trials", "select"):
                    out.delete.append(("batch/v1", "Job", training.run_job_name(pipeline, run["id"], step)))
                _finish(run, "Cancelled", f"replaced by a new run ({trigger})", now, out)
            active = []
        else:
            out.event("Normal", "RunSkipped", f"a run was requested ({trigger}) while run {active[0]['id']} "
                      "is active (concurrencyPolicy Forbid)")
            request = (pipeline["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_REQUEST)
            if request:
                out.status["lastRunRequest"] = request
            trigger = None
    if trigger:
        runs.append(_start_run(pipeline, dataset, observed, trigger, now, cfg, out))

    if spec.get("schedule") and (not status.get("nextRun") or status["nextRun"] <= now):
        out.status["nextRun"] = next_schedule(spec["schedule"], now)

    limit = spec.get("runHistoryLimit", 5)
    finished = [r for r in runs if r["phase"] not in ACTIVE + ("Registering",)]
    for old in finished[: max(len(finished) - limit, 0)]:
        runs.remove(old)
        for step in ("trials", "select"):
            out.delete.append(("batch/v1", "Job", training.run_job_name(pipeline, old["id"], step)))
    out.status["runs"] = runs

    latest = runs[-1] if runs else None
    if not dataset_ready and not latest:
        out.condition("Ready", "False", "DatasetNotReady",
                      f"waiting for Dataset {dataset['metadata']['name']!r} to become Ready")
    elif latest is None:
        out.condition("Ready", "False", "NoRun", "no run yet")
    elif latest["phase"] in ACTIVE + ("Registering",):
        out.condition("Ready", "False", "Running", f"run {latest['id']} is {latest['phase'].lower()} "
                      f"({latest.get('trialsSucceeded', 0)} trial(s) done)")
    elif latest["phase"] == "Succeeded":
        out.condition("Ready", "True", "Succeeded", f"run {latest['id']} produced {latest.get('modelVersion')}")
    else:
        out.condition("Ready", "False", f"Run{latest['phase']}", f"run {latest['id']}: {latest.get('message', '')}")
    return out
