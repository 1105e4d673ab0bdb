"""One reconcile per kind: observe (from the cache) → plan (pure) → act (write only what differs).

Each returns when it wants to be woken up again for something no watch reports (the drift cadence,
the next cron run, a rolling-out version's answers), or None. A reconcile reads nothing from the
apiserver: the body and every child come from the cache, which kopf's watches keep current.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any, Callable

from . import config, datasets, drift, drift_sources, events, inference, k8s, pipelines, quality, registry, rollout_metrics, sources
from .api.kinds import API_VERSION, Kind, kind_by_name
from .builders import serving, training
from .builders.meta import ANNOTATION_RUN_REQUEST, LABEL_ROLE, LABEL_VERSION
from .builders.serving import ROUTE_API_VERSION, ROUTE_PLURAL
from .cache import Cache
from .conditions import now_rfc3339
from .jobs import JobView, termination_summaries
from .plan import Plan
from .reconcile import decide, is_news, status_patch

log = logging.getLogger("kiln_operator.reconcile")
CONFIG = config.from_env()
CACHE = Cache()
# Every child carries the hash of the manifest Kiln last applied: equal hash, nothing to write.
HASH_ANNOTATION = "kiln.dev/applied-hash"
# While a new version rolls out and its pods answer, its error rate is read this often (pods' /metrics).
ROLLOUT_READ_SECONDS = 3.0

Wakeup = float | None


def _ref(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"extra": {"k8s_ref": {"kind": body.get("kind"), "namespace": meta.get("namespace"),
                                  "name": meta.get("name")}}}


def _store(written: dict[str, Any] | None) -> None:
    if written:
        CACHE.put(written)


def write_status(body: dict[str, Any], status: dict[str, Any]) -> None:
    meta = body["metadata"]
    _store(k8s.patch_status(body.get("apiVersion", API_VERSION), body["kind"], meta["namespace"], meta["name"], status))


def stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the hash of its content in an annotation."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:20]
    meta = manifest["metadata"]
    return {**manifest, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}), HASH_ANNOTATION: digest}}}


def apply_if_changed(manifest: dict[str, Any]) -> bool:
    """Applies a child unless the cache shows it as last applied; returns whether it wrote."""
    wanted = stamped(manifest)
    meta = wanted["metadata"]
    current = CACHE.get(wanted["kind"], meta["namespace"], meta["name"])
    if current is not None and (current["metadata"].get("annotations") or {}).get(HASH_ANNOTATION) \
            == meta["annotations"][HASH_ANNOTATION]:
        return False
    _store(k8s.apply(wanted))
    return True


def _validate(kind: Kind, body: dict[str, Any]) -> bool:
    """Writes Ready=False for a spec the operator cannot act on; returns whether the spec is usable."""
    if body["metadata"].get("deletionTimestamp"):
        return False  # going away: its children follow by ownerReference, nothing to reconcile
    outcome = decide(kind, body)
    if outcome.ready == "True":
        return True
    if is_news(body, outcome):
        write_status(body, status_patch(body, outcome))
        events.post(body, "Warning", outcome.reason, outcome.message)
        log.warning(f"{kind.kind} {outcome.reason}: {outcome.message}", **_ref(body))
    return False


def act(body: dict[str, Any], result: Plan, always_post: tuple[str, ...] = ()) -> None:
    """Carries out a plan: apply and delete the children that differ, write the status that changed,
    post Events."""
    ns = body["metadata"]["namespace"]
    for manifest in result.apply:
        apply_if_changed(manifest)
    for api_version, kind, name in result.delete:
        if CACHE.get(kind, ns, name) is not None:
            k8s.delete(api_version, kind, ns, name)
            CACHE.remove_key((kind, ns, name))
    conditions, changed = events.merge_conditions(body, result.conditions)
    current = body.get("status") or {}
    update = {k: v for k, v in result.status.items() if current.get(k) != v}
    if changed or update or current.get("observedGeneration") != body["metadata"].get("generation"):
        write_status(body, {**update, "conditions": conditions, "observedGeneration": body["metadata"].get("generation")})
    for type_, reason, message in result.events:
        # A plan repeats its events while a state lasts; only news (a changed condition, or a
        # transition event) is posted, so a resync never floods the namespace.
        if changed or reason in always_post:
            events.post(body, type_, reason, message)
            log.info(f"{reason}: {message}", **_ref(body))


def _owned(obj: dict[str, Any] | None, owner: dict[str, Any]) -> bool:
    return bool(obj) and any(ref.get("uid") == owner["metadata"]["uid"]
                             for ref in obj["metadata"].get("ownerReferences") or [])


ISVC = kind_by_name("InferenceService")


def observe_inference(isvc: dict[str, Any]) -> inference.Observed:
    ns = isvc["metadata"]["namespace"]
    deployments = {}
    for role in inference.ROLES:
        dep = CACHE.get("Deployment", ns, serving.deployment_name(isvc, role))
        if _owned(dep, isvc):
            deployments[role] = dep
    pods = CACHE.children(isvc, "Pod")
    # Asked even without spec.gateway: a route made before the field was removed must be found to go.
    route_api = k8s.serves(ROUTE_API_VERSION, ROUTE_PLURAL)
    route = CACHE.get("HTTPRoute", ns, serving.service_name(isvc)) if route_api else None
    role_services = {svc["metadata"]["labels"][LABEL_ROLE] for svc in CACHE.children(isvc, "Service")
                     if LABEL_ROLE in (svc["metadata"].get("labels") or {})}
    serving_version = (isvc.get("status") or {}).get("modelVersion")
    rolling = _rolling_version(deployments, serving_version)
    return inference.Observed(
        model_versions=CACHE.list("ModelVersion", ns),
        deployments=deployments,
        pods=pods,
        # Read only while a version rolls out: the pods' counters say how it answers.
        answers=rollout_metrics.answers(pods, serving_version) if rolling else {},
        route_api=route_api,
        route=route if _owned(route, isvc) else None,
        role_services=role_services,
        pods_complete=True,
    )


def _rolling_version(deployments: dict[str, dict[str, Any]], serving_version: str | None) -> str | None:
    """The version the primary Deployment rolls out, while it is not the one serving."""
    deployed = inference.version_of(deployments.get("primary"))
    return deployed if deployed != serving_version else None


def reconcile_inference(body: dict[str, Any]) -> Wakeup:
    if not _validate(ISVC, body):
        return None
    observed = observe_inference(body)
    result = inference.plan(body, observed, CONFIG)
    wake = watch_drift(body, observed, result)
    act(body, result, always_post=("RolledOut", "RolledBack", "RetrainRequested", "RetrainRequestFailed"))
    # A version rolling out whose pods answer: its error rate comes from the pods' counters, which no
    # watch reports, so look again soon. Pods that do not answer yet change through watch events.
    serving_now = result.status.get("modelVersion") or (body.get("status") or {}).get("modelVersion")
    rolling = _rolling_version(observed.deployments, serving_now)
    if rolling and any(inference.pod_ready(p) and p["metadata"].get("labels", {}).get(LABEL_VERSION) == rolling
                       for p in observed.pods):
        wake = min(wake or ROLLOUT_READ_SECONDS, ROLLOUT_READ_SECONDS)
    return wake


class Cadence:
    """When each object last did a periodic read (drift, a source listing). It lives in memory, not in
    status, so a read that finds nothing new writes nothing; a restart reads again at once."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}

    def remaining(self, body: dict[str, Any], every: float) -> float:
        """Seconds until the next read of `body` is due; 0 when it is due now."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        return max(every - (datetime.now(timezone.utc).timestamp() - self._last.get(key, 0.0)), 0.0)

    def done(self, body: dict[str, Any]) -> None:
        self._last[(body["metadata"]["namespace"], body["metadata"]["name"])] = datetime.now(timezone.utc).timestamp()


_drift_read = Cadence()


def watch_drift(isvc: dict[str, Any], observed: inference.Observed, result: Plan) -> Wakeup:
    """Reads the serving version's drift and live quality every READ_EVERY_SECONDS, and asks the
    pipeline for a run when told to; returns when to read again."""
    spec = isvc["spec"]
    drift_spec = spec.get("monitoring", {}).get("drift", {})
    watch_quality = spec.get("feedback") is not None
    serving_version = result.status.get("modelVersion") or (isvc.get("status") or {}).get("modelVersion")
    if not (drift_spec.get("enabled", True) or watch_quality) or not serving_version:
        return None
    wait = _drift_read.remaining(isvc, drift.READ_EVERY_SECONDS)
    if wait:
        return wait
    _drift_read.done(isvc)
    now = now_rfc3339()
    mv = next((m for m in observed.model_versions if m["metadata"]["name"] == serving_version), None)
    outcomes = []
    reports, where = None, None
    if CONFIG.prometheus_url and mv:
        where = drift_sources.selector(isvc["metadata"]["namespace"], mv["spec"]["modelName"], str(mv["spec"]["version"]))
    else:
        reports = drift_sources.sidecar_reports(observed.pods, serving_version)
    if drift_spec.get("enabled", True):
        if where:
            verdict = drift_sources.from_prometheus(CONFIG.prometheus_url, where)
        else:
            verdict = drift.from_reports(reports)
        outcomes.append((drift.plan(isvc, verdict, now), drift_spec.get("pipelineRef")))
    if watch_quality:
        if where:
            live = drift_sources.quality_from_prometheus(CONFIG.prometheus_url, where)
        else:
            live = quality.from_reports(reports)
        floor = spec.get("monitoring", {}).get("quality") or {}
        outcomes.append((quality.plan(isvc, live, serving_version, now), floor.get("pipelineRef")))
    asked = False
    for outcome, pipeline_ref in outcomes:
        result.status.update(outcome.status)
        result.conditions.extend(outcome.conditions)
        result.events.extend(outcome.events)
        if outcome.request_run and not asked:  # drift and quality at once: one run answers both
            asked = True
            _request_run(isvc, pipeline_ref["name"], outcome.request_run, result)
    return drift.READ_EVERY_SECONDS


def _request_run(isvc: dict[str, Any], name: str, request: str, result: Plan) -> None:
    try:
        _store(k8s.annotate(API_VERSION, "TrainingPipeline", isvc["metadata"]["namespace"], name,
                            {ANNOTATION_RUN_REQUEST: request}))
    except Exception as exc:  # a missing pipeline must not stop serving; the condition says why
        for key in ("drift", "quality"):
            (result.status.get(key) or {}).pop("lastRetrainRequest", None)
        result.event("Warning", "RetrainRequestFailed", f"could not ask TrainingPipeline {name!r} for a run: {exc}")
        log.warning(f"retrain request to {name} failed: {exc}", **_ref(isvc))


# The last log lines of terminated pods, by pod uid: they never change, so they are read once.
_log_tails: dict[str, str] = {}


def observe_jobs(owner: dict[str, Any]) -> dict[str, JobView]:
    ns = owner["metadata"]["namespace"]
    pods_by_job: dict[str, list] = {}
    for pod in CACHE.children(owner, "Pod"):
        job = pod["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name")
        pods_by_job.setdefault(job, []).append(pod)

    def last_lines(pod: dict[str, Any]) -> str:
        uid = pod["metadata"].get("uid", "")
        if uid not in _log_tails:
            if len(_log_tails) > 1000:
                _log_tails.clear()
            _log_tails[uid] = k8s.pod_logs_tail(ns, pod["metadata"]["name"], "train", lines=5)
        return _log_tails[uid]

    return {job["metadata"]["name"]: JobView(job, termination_summaries(pods_by_job.get(job["metadata"]["name"], []),
                                                                        last_lines))
            for job in CACHE.children(owner, "Job")}


DATASET = kind_by_name("Dataset")


_source_checked = Cadence()


def check_source(body: dict[str, Any], result_conditions: list) -> tuple[str | None, Wakeup]:
    """The source's fingerprint to validate (a new listing when one is due, else the last one) and when
    to list again. A source that cannot be listed keeps the last fingerprint: nothing is validated
    and the last version stays usable; the SourceAvailable condition says why."""
    spec_source = body["spec"]["source"]
    last = (body.get("status") or {}).get("sourceFingerprint")
    interval = spec_source.get("checkIntervalSeconds")
    if not interval:
        return None, None
    wait = _source_checked.remaining(body, interval)
    if wait and last:
        return last, wait
    _source_checked.done(body)
    try:
        listing = sources.list_source(spec_source["uri"], CONFIG.s3_endpoint, CONFIG.s3_region)
    except sources.SourceUnavailable as exc:
        result_conditions.append(("SourceAvailable", "False", "SourceUnavailable", str(exc)))
        return last, interval
    result_conditions.append(("SourceAvailable", "True", "Listed",
                              f"{listing.files} file(s), {listing.bytes} bytes at the last check"))
    return listing.fingerprint, interval


def trained_on(dataset: dict[str, Any]) -> frozenset[str]:
    """The versions of this Dataset that ModelVersions were trained on."""
    name = dataset["metadata"]["name"]
    return frozenset(m["spec"].get("lineage", {}).get("datasetVersion")
                     for m in CACHE.list("ModelVersion", dataset["metadata"]["namespace"])
                     if m["spec"].get("lineage", {}).get("dataset") == name
                     and m["spec"].get("lineage", {}).get("datasetVersion"))


def reconcile_dataset(body: dict[str, Any]) -> Wakeup:
    if not _validate(DATASET, body):
        return None
    checked: list = []
    fingerprint, wake = check_source(body, checked)
    jobs = observe_jobs(body)
    token = datasets.validation_token(body, fingerprint)
    view = jobs.get(training.validation_job_name(body, token), JobView(None))
    result = datasets.plan(body, view, CONFIG, now_rfc3339(), fingerprint, trained_on(body))
    result.conditions.extend(checked)
    if fingerprint and fingerprint != (body.get("status") or {}).get("sourceFingerprint") \
            and (body.get("status") or {}).get("sourceFingerprint"):
        result.event("Normal", "SourceChanged", f"the source's listing changed; validating with Job "
                     f"{training.validation_job_name(body, token)}")
    act(body, result, always_post=("SourceChanged",))
    return wake


PIPELINE = kind_by_name("TrainingPipeline")


def reconcile_pipeline(body: dict[str, Any]) -> Wakeup:
    if not _validate(PIPELINE, body):
        return None
    ns, spec = body["metadata"]["namespace"], body["spec"]
    model_versions = CACHE.list("ModelVersion", ns)
    observed = pipelines.Observed(
        dataset=CACHE.get("Dataset", ns, spec["datasetRef"]["name"]),
        jobs=observe_jobs(body),
        production=registry.production_version(model_versions, spec["modelName"]),
        champion=registry.serving_version(model_versions, CACHE.list("InferenceService", ns), spec["modelName"]),
    )
    now = now_rfc3339()
    result = pipelines.plan(body, observed, CONFIG, now)
    if result.refresh and datasets.refresh_request(observed.dataset) != result.refresh:
        _store(k8s.annotate(API_VERSION, "Dataset", ns, spec["datasetRef"]["name"],
                            {datasets.REFRESH_ANNOTATION: result.refresh}))
    for run_id, mv_spec in result.register:
        created = register(body, run_id, mv_spec)
        name = created["metadata"]["name"]
        run = next(r for r in result.status["runs"] if r["id"] == run_id)
        run.update(phase="Succeeded", modelVersion=name, finishedAt=now)
        result.event("Normal", "ModelVersionCreated", f"run {run_id} registered {name}"
                     + (f" in stage {spec['promoteTo']}" if spec.get("promoteTo") else ""))
        result.conditions = [c for c in result.conditions if c[0] != "Ready"]
        result.condition("Ready", "True", "Succeeded", f"run {run_id} produced {name}")
    act(body, result, always_post=("RunStarted", "ModelVersionCreated", "RunSkipped", "TrialFailed"))
    next_run = result.status.get("nextRun") or (body.get("status") or {}).get("nextRun")
    if spec.get("schedule") and next_run:
        due = datetime.fromisoformat(next_run.replace("Z", "+00:00")).timestamp()
        return max(due - datetime.now(timezone.utc).timestamp(), 0.0) + 1.0
    return None


def register(pipeline: dict[str, Any], run_id: str, mv_spec: dict[str, Any]) -> dict[str, Any]:
    """Creates the run's ModelVersion once, with the next free version number.

    Idempotent under restarts (the entry of the same pipeline and run is returned) and safe under
    concurrent runs: the create fails with a conflict when another run took the number, and the next
    number is tried. A new Production entry archives the model's previous ones that runs registered."""
    ns, model = pipeline["metadata"]["namespace"], pipeline["spec"]["modelName"]
    registered = CACHE.list("ModelVersion", ns)
    existing = registry.entry_of_run(registered, pipeline, run_id)
    if existing:
        return existing
    version = registry.next_version(registered, model)
    for _ in range(20):
        try:
            created = k8s.create(training.model_version(pipeline, run_id, version, mv_spec))
            break
        except k8s.Conflict:
            version += 1
    else:
        raise RuntimeError(f"could not find a free version number for model {model}")
    _store(created)
    name = created["metadata"]["name"]
    if created["spec"].get("stage") == "Production":
        for other in registry.to_archive(CACHE.list("ModelVersion", ns), model, keep=name):
            _store(k8s.patch_spec(API_VERSION, "ModelVersion", ns, other, {"stage": "Archived"}))
            log.info(f"archived {other}: {name} is now Production", **_ref(pipeline))
    return created


MODEL_VERSION = kind_by_name("ModelVersion")


def reconcile_model_version(body: dict[str, Any]) -> Wakeup:
    if not _validate(MODEL_VERSION, body):
        return None
    verify = observe_jobs(body).get(training.verify_job_name(body), JobView(None))
    serving = registry.served_by(body, CACHE.list("InferenceService", body["metadata"]["namespace"]))
    act(body, registry.plan_model_version(body, verify, CONFIG, now_rfc3339(), serving), always_post=("StageChanged",))
    return None


RECONCILERS: dict[str, Callable[[dict[str, Any]], Wakeup]] = {
    "InferenceService": reconcile_inference,
    "Dataset": reconcile_dataset,
    "TrainingPipeline": reconcile_pipeline,
    "ModelVersion": reconcile_model_version,
}
