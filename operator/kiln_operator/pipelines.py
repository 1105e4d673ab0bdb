"""TrainingPipeline reconcile: when to start a run, and how a run moves from trials to a ModelVersion.

A run is two Jobs: the trials (one Indexed Job of P shards, the pod of index i training trials i, i+P,
... in one process; successive halving in one pod) and the selection step, which picks the best trial,
applies the quality gates and writes the final artifacts. Job names derive from the run id, so a
restarted operator finds the Jobs it already made instead of making them again. Runs start on
creation, on a spec change, on a new dataset version (`onDatasetChange`), on the cron `schedule`, and
on request through the `kiln.dev/run-requested` annotation (what the drift and quality loops and
`kubectl annotate` use).

A run trains on a snapshot of one Dataset version (the newest, or the one `datasetVersion` pins), never
on the moving source. A run asked for by drift or low quality first asks the Dataset for its newest
data (`kiln.dev/refresh`) and waits for that validation; when the newest version is the one the
serving model was trained on, retraining would learn nothing and the run is skipped. The serving
model (the champion) goes to the selection step, which scores both models on the same test rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from croniter import croniter

from .builders import training
from .builders.meta import ANNOTATION_RUN_REQUEST
from .builders.training import Dataset, Mv, Pipeline
from .config import OperatorConfig
from .jobs import JobView, TrialTotals, ran_image, trial_totals
from .plan import Plan

ACTIVE = ("Pending", "Running", "Selecting")
MAX_FAILED_TRIALS = 10  # status.runs[].failedTrials
MAX_ROUNDS = 20  # status.runs[].rounds
MAX_TRIAL_EVENTS = 5  # TrialFailed Events per reconcile: a run of many bad trials does not flood the namespace


@dataclass
class Observed:
    dataset: Dataset | None  # None too when its spec does not validate: no run can use it
    jobs: dict[str, JobView]  # by Job name
    production: Mv | None  # the model's current Production ModelVersion
    champion: Mv | None = None  # the ModelVersion now serving the model: the one to beat


# Runs asked for because production went wrong: they must see the newest data first.
FRESH_DATA_TRIGGERS = ("drift", "quality")


def run_request(pipeline: Pipeline) -> str | None:
    """The `kiln.dev/run-requested` value: how drift, quality and people ask for a run."""
    return (pipeline.body["metadata"].get("annotations") or {}).get(ANNOTATION_RUN_REQUEST)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def next_schedule(schedule: str, after: str) -> str:
    nxt = croniter(schedule, _parse_time(after)).get_next(datetime)
    return nxt.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def output_prefix(pipeline: Pipeline, run_id: str, cfg: OperatorConfig) -> str:
    return f"{cfg.artifact_root}/runs/{pipeline.namespace}/{pipeline.name}/{run_id}"


def _trigger(pipeline: Pipeline, dataset: Dataset, now: str) -> str | None:
    spec, status = pipeline.spec, pipeline.status
    runs = status.get("runs") or []
    if not runs and not status.get("lastRun"):
        return "create"
    if status.get("lastRunGeneration") not in (None, pipeline.body["metadata"].get("generation")):
        return "specChange"
    request = run_request(pipeline)
    if request and request != status.get("lastRunRequest"):
        for trigger, allowed in (("drift", spec.triggers.on_drift), ("quality", spec.triggers.on_quality)):
            if request.startswith(trigger):
                return trigger if allowed else None
        return "requested"
    version = dataset.status.get("version")
    if spec.triggers.on_dataset_change and status.get("lastDatasetVersion") not in (None, version):
        return "datasetChange"
    if spec.schedule and status.get("nextRun") and status["nextRun"] <= now:
        return "schedule"
    return None


def version_entry(dataset: Dataset, version: str | None) -> dict[str, Any] | None:
    """The Dataset's record of `version` (with its snapshot), or None when it is not kept."""
    status = dataset.status
    for entry in status.get("versions") or []:
        if entry.get("version") == version:
            return entry
    # A Dataset validated before snapshots existed knows only its current version.
    return {"version": version} if version and version == status.get("version") else None


def _version_to_train(pipeline: Pipeline, dataset: Dataset) -> str | None:
    return pipeline.spec.dataset_version or dataset.status.get("version")


def _start_run(pipeline: Pipeline, dataset: Dataset, observed: Observed, trigger: str,
               now: str, cfg: OperatorConfig, out: Plan) -> dict[str, Any]:
    status = pipeline.status
    last = status.get("lastRun") or "r0"
    run_id = f"r{int(last.lstrip('r') or 0) + 1}"
    version = version_entry(dataset, _version_to_train(pipeline, dataset))
    config = training.run_config(pipeline, dataset, run_id, output_prefix(pipeline, run_id, cfg),
                                 observed.production, cfg, version, observed.champion,
                                 pipeline.body["metadata"].get("generation"))
    out.apply.append(training.trials_job(pipeline, run_id, config, cfg))
    search = pipeline.spec.search
    trials = training.trial_count(search)
    if search.strategy == "halving":
        work = f"{trials} candidate(s), successive halving in 1 pod"
    else:
        work = f"{trials} trial(s) in {training.shard_count(search)} pod(s)"
    against = f"; to beat {observed.champion.name}" if observed.champion else ""
    out.event("Normal", "RunStarted", f"run {run_id} ({trigger}): {work} on dataset version "
              f"{version['version'][:12]}{against}")
    out.status.update(lastRun=run_id, lastRunGeneration=pipeline.body["metadata"].get("generation"),
                      lastDatasetVersion=version["version"])
    request = run_request(pipeline)
    if request:
        out.status["lastRunRequest"] = request
    return {"id": run_id, "phase": "Running", "trigger": trigger, "job": training.run_job_name(pipeline, run_id, "trials"),
            "datasetVersion": version["version"], "startedAt": now,
            "trialsPlanned": trials, "trialsSucceeded": 0, "trialsFailed": 0, "trialsStopped": 0}


def _fresh_data(pipeline: Pipeline, dataset: Dataset, observed: Observed, trigger: str,
                out: Plan) -> bool:
    """For a run asked for by drift or quality: whether the Dataset has answered this request with its
    newest data and that data is new to the serving model. Asks for it (out.refresh) or skips the
    request (recording it as acted on) otherwise."""
    if trigger not in FRESH_DATA_TRIGGERS or pipeline.spec.dataset_version:
        return True
    request = run_request(pipeline)
    if dataset.status.get("lastRefresh") != request:
        out.refresh = request
        return False
    version = dataset.status.get("version")
    champion = observed.champion
    if champion and champion.spec.lineage.dataset_version == version:
        out.event("Normal", "RunSkipped", f"a {trigger} run was requested, but the newest data (version "
                  f"{version[:12]}) is what {champion.name} was trained on: retraining would "
                  "learn nothing new")
        out.status["lastRunRequest"] = request
        return False
    return True


def _advance(pipeline: Pipeline, dataset: Dataset, run: dict[str, Any], observed: Observed,
             now: str, cfg: OperatorConfig, out: Plan) -> dict[str, Any]:
    """Moves one active run forward by what its Jobs say; returns the updated run."""
    run = dict(run)
    run_id = run["id"]
    trials_name = training.run_job_name(pipeline, run_id, "trials")
    select_name = training.run_job_name(pipeline, run_id, "select")
    trials = observed.jobs.get(trials_name, JobView(None))
    version = version_entry(dataset, run.get("datasetVersion")) or {"version": run.get("datasetVersion")}
    config = training.run_config(pipeline, dataset, run_id, output_prefix(pipeline, run_id, cfg),
                                 observed.production, cfg, version, observed.champion,
                                 run_generation(pipeline, run_id))
    if run["phase"] == "Running":
        if trials.job is None:
            out.apply.append(training.trials_job(pipeline, run_id, config, cfg))  # lost before a restart
            return run
        totals = _record_trials(run, trials, out)
        if trials.state is None:
            return run
        # Complete, or Failed because a shard failed: the trials that succeeded elsewhere are in the store,
        # and selection picks among them. (The Job's own count is of shards: it stands in for summaries lost.)
        if totals.succeeded == 0 and trials.succeeded == 0:
            return _finish(run, "Failed", _no_trial_succeeded(totals, trials), now, out, warning=True)
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
        _count_trials(run, summary.get("trials"))  # what the store holds: exact even past the shards' caps
        if isinstance(summary.get("failedTrials"), list):  # a crashed trial a retry trained is no failure
            run["failedTrials"] = summary["failedTrials"][:MAX_FAILED_TRIALS]
        run["bestMetrics"] = {k: float(v) for k, v in (summary.get("metrics") or {}).items()
                              if isinstance(v, (int, float))} or run.get("bestMetrics")
        for role in ("challenger", "champion"):
            score = summary.get(role)
            if isinstance(score, dict) and score.get("metric"):
                run[role] = {k: score[k] for k in ("name", "metric", "value") if score.get(k) is not None}
        result = summary.get("result")
        if select.state == "Complete" and result == "Succeeded":
            mv = summary.get("modelVersion") or {}
            if not mv.get("signature") or not mv.get("artifact"):
                return _finish(run, "Failed", "the selection summary lost the model's signature (termination "
                               f"message truncated); the full record is at {summary.get('manifestUri')}", now, out,
                               warning=True)
            run["bestMetrics"] = {k: float(v) for k, v in (mv.get("metrics") or {}).items()}
            lineage = registered_lineage(pipeline, run, mv.get("lineage") or {}, summary.get("trainedBy"),
                                         select, trials)
            if not lineage.get("imageDigest"):
                out.event("Warning", "ImageDigestUnknown", f"run {run_id}: the pod that trained the model "
                          "reports no image digest; its ModelVersion names the image by reference only")
            out.register.append((run_id, {**mv, "lineage": lineage}))
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


def run_generation(pipeline: Pipeline, run_id: str) -> int | None:
    """The pipeline's metadata.generation when run `run_id` started, while it is the latest run (an active
    run always is: Forbid starts none beside it, Replace cancels it)."""
    status = pipeline.status
    return status.get("lastRunGeneration") if status.get("lastRun") == run_id else None


def training_pod(trained_by: Any, select: JobView, trials: JobView) -> dict[str, Any] | None:
    """The pod that fitted the registered model, as the selection summary's `trainedBy` names it: the
    selection pod when it refitted the winner, else the trial pod whose stored model it took. A summary
    without `trainedBy` (an older runtime) refitted in the selection pod."""
    by = trained_by if isinstance(trained_by, dict) else {"step": "select"}
    view = trials if by.get("step") == "trials" else select
    if isinstance(by.get("pod"), str) and view.pod(by["pod"]):
        return view.pod(by["pod"])
    if view is select:
        return select.summary_pod(0)
    # No pod name: the attempts at the trial's shard, when they all ran one image.
    shards = max(int(((trials.job or {}).get("spec") or {}).get("completions") or 1), 1)
    trial = by.get("trial")
    attempts = trials.index_pods(trial % shards) if isinstance(trial, int) else []
    digests = {ran_image(p)[1] for p in attempts}
    return attempts[0] if len(digests) == 1 and None not in digests else None


def registered_lineage(pipeline: Pipeline, run: dict[str, Any], lineage: dict[str, Any], trained_by: Any,
                       select: JobView, trials: JobView) -> dict[str, Any]:
    """The runtime's lineage completed with what only the operator knows: the image digest that trained
    the model (from that pod's status), and the data version and pipeline generation of the run."""
    out = dict(lineage)
    out["datasetVersion"] = out.get("datasetVersion") or run.get("datasetVersion")
    generation = run_generation(pipeline, run["id"])
    if out.get("pipelineGeneration") is None and generation is not None:
        out["pipelineGeneration"] = generation
    image, digest = ran_image(training_pod(trained_by, select, trials))
    if digest:
        out["imageDigest"] = digest
        out.setdefault("image", image)
    return {k: v for k, v in out.items() if v is not None}


def _count_trials(run: dict[str, Any], counts: Any) -> None:
    """The selection summary's `trials {planned, succeeded, failed, stopped}`, read from the store."""
    if isinstance(counts, dict):
        for key in ("succeeded", "failed", "stopped"):
            if isinstance(counts.get(key), int):
                run["trials" + key.capitalize()] = counts[key]


def _record_trials(run: dict[str, Any], trials: JobView, out: Plan) -> TrialTotals:
    """Copies what the trials' shards reported into the run; a TrialFailed Event for each failed trial the
    run did not list yet (the list only grows, so a reconcile seeing the same summaries repeats none)."""
    totals = trial_totals(trials.summaries, MAX_FAILED_TRIALS)
    run.update(trialsSucceeded=totals.succeeded, trialsFailed=totals.failed, trialsStopped=totals.stopped)
    known = list(run.get("failedTrials") or [])
    listed = {failure.get("trial") for failure in known}
    new = [failure for failure in totals.failures if failure["trial"] not in listed]
    new = new[:max(MAX_FAILED_TRIALS - len(known), 0)]
    for failure in new[:MAX_TRIAL_EVENTS]:
        message = f"run {run['id']}: trial {failure['trial']} failed: {_why(failure)}"
        out.event("Warning", "TrialFailed", message[:500])
    if new:
        run["failedTrials"] = sorted(known + new, key=lambda failure: failure["trial"])
    if totals.rounds:
        run["rounds"] = totals.rounds[:MAX_ROUNDS]
    if totals.search_record:
        run["searchRecord"] = totals.search_record
    return totals


def _why(failure: dict[str, Any]) -> str:
    return ": ".join(filter(None, (failure.get("reason") or "Failed", failure.get("message"))))


def _no_trial_succeeded(totals: TrialTotals, trials: JobView) -> str:
    """Why a run had no trial to select from: the first failed trial, else the first failed shard (one that
    stopped before any trial, e.g. AccessDenied), else the Job's own condition."""
    if totals.failures:
        first = totals.failures[0]
        return f"every trial failed; first: trial {first['trial']}: {_why(first)}"
    shard = next((s for _, s in sorted(trials.summaries.items()) if s.get("result") == "Failed"), {})
    why = shard.get("message") or trials.failure_message()
    return f"every trial failed; first: {shard.get('reason', '')} {why}".strip()


def _finish(run: dict[str, Any], phase: str, message: str, now: str, out: Plan, warning: bool = False) -> dict[str, Any]:
    run.update(phase=phase, message=message[:1000], finishedAt=now)
    out.event("Warning" if warning else "Normal", f"Run{phase}", f"run {run['id']}: {message[:500]}")
    return run


def _progress(run: dict[str, Any]) -> str:
    """`11 of 24 trial(s) done, 1 failed`: a new failure changes the Ready condition, so its Event is posted."""
    done = run.get("trialsSucceeded", 0)
    parts = [f"{done} of {run['trialsPlanned']} trial(s) done" if run.get("trialsPlanned") else
             f"{done} trial(s) done"]
    parts += [f"{run[key]} {what}" for key, what in (("trialsFailed", "failed"), ("trialsStopped", "stopped early"))
              if run.get(key)]
    return ", ".join(parts)


def plan(pipeline: Pipeline, observed: Observed, cfg: OperatorConfig, now: str) -> Plan:
    out = Plan()
    spec, status = pipeline.spec, pipeline.status
    runs = [dict(r) for r in status.get("runs") or []]
    dataset = observed.dataset
    if dataset is None:
        out.condition("Ready", "False", "DatasetNotFound", f"Dataset {spec.dataset_ref.name!r} does not exist")
        return out
    dataset_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in dataset.status.get("conditions") or [])

    runs = [_advance(pipeline, dataset, r, observed, now, cfg, out) if r["phase"] in ACTIVE else r for r in runs]
    active = [r for r in runs if r["phase"] in ACTIVE + ("Registering",)]

    trigger = _trigger(pipeline, dataset, now) if dataset_ready else None
    if trigger and version_entry(dataset, _version_to_train(pipeline, dataset)) is None:
        kept = ", ".join(v["version"][:12] for v in dataset.status.get("versions") or []) or "none"
        out.condition("Ready", "False", "DatasetVersionNotFound", f"datasetVersion {spec.dataset_version} is not a "
                      f"kept version of Dataset {dataset.name!r} (kept: {kept})")
        trigger = None
    if trigger and not active and not _fresh_data(pipeline, dataset, observed, trigger, out):
        trigger = None
    if trigger and active:
        if spec.concurrency_policy == "Replace":
            for run in active:
                for step in ("trials", "select"):
                    out.delete.append(("batch/v1", "Job", training.run_job_name(pipeline, run["id"], step)))
                _finish(run, "Cancelled", f"replaced by a new run ({trigger})", now, out)
            active = []
        else:
            out.event("Normal", "RunSkipped", f"a run was requested ({trigger}) while run {active[0]['id']} "
                      "is active (concurrencyPolicy Forbid)")
            request = run_request(pipeline)
            if request:
                out.status["lastRunRequest"] = request
            trigger = None
    if trigger:
        runs.append(_start_run(pipeline, dataset, observed, trigger, now, cfg, out))

    if spec.schedule and (not status.get("nextRun") or status["nextRun"] <= now):
        out.status["nextRun"] = next_schedule(spec.schedule, now)

    limit = spec.run_history_limit
    finished = [r for r in runs if r["phase"] not in ACTIVE + ("Registering",)]
    for old in finished[: max(len(finished) - limit, 0)]:
        runs.remove(old)
        for step in ("trials", "select"):
            out.delete.append(("batch/v1", "Job", training.run_job_name(pipeline, old["id"], step)))
    out.status["runs"] = runs

    latest = runs[-1] if runs else None
    if any(c[0] == "Ready" for c in out.conditions):
        pass  # decided above (a pinned version that is not kept)
    elif out.refresh and not active:
        out.condition("Ready", "False", "WaitingForData", f"asked Dataset {dataset.name!r} for its "
                      "newest data before the requested run")
    elif not dataset_ready and not latest:
        out.condition("Ready", "False", "DatasetNotReady",
                      f"waiting for Dataset {dataset.name!r} to become Ready")
    elif latest is None:
        out.condition("Ready", "False", "NoRun", "no run yet")
    elif latest["phase"] in ACTIVE + ("Registering",):
        out.condition("Ready", "False", "Running", f"run {latest['id']} is {latest['phase'].lower()} "
                      f"({_progress(latest)})")
    elif latest["phase"] == "Succeeded":
        out.condition("Ready", "True", "Succeeded", f"run {latest['id']} produced {latest.get('modelVersion')}")
    else:
        out.condition("Ready", "False", f"Run{latest['phase']}", f"run {latest['id']}: {latest.get('message', '')}")
    return out
