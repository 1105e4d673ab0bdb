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

from . import config, datasets, drift, drift_sources, events, inference, k8s, model_set, pipelines, quality, registry, rollout_metrics, sources
from .api.kinds import API_VERSION, Kind, kind_by_name
from .builders import serving, training
from .builders.meta import ANNOTATION_RUN_REQUEST, LABEL_ROLE, LABEL_VERSION
from .builders.serving import ROUTE_API_VERSION, ROUTE_PLURAL
from .cache import Cache
from .conditions import now_rfc3339
from .jobs import JobView, termination_summaries
from .plan import Plan
from .reconcile import decide, is_news, status_patch
from .validation import InvalidSpec, Parsed, parse

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


def _validate(kind: Kind, body: dict[str, Any]) -> Parsed | None:
    """The object with its spec parsed; None, after writing Ready=False for a spec the operator cannot
    act on, when there is nothing to reconcile."""
    if body["metadata"].get("deletionTimestamp"):
        return None  # going away: its children follow by ownerReference, nothing to reconcile
    try:
        return parse(body)
    except InvalidSpec:
        outcome = decide(kind, body)  # words the field and the reason, as for any other outcome
    if is_news(body, outcome):
        write_status(body, status_patch(body, outcome))
        events.post(body, "Warning", outcome.reason, outcome.message)
        log.warning(f"{kind.kind} {outcome.reason}: {outcome.message}", **_ref(body))
    return None


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
    for api_version, kind, name, annotations in result.annotate:
        try:
            _store(k8s.annotate(api_version, kind, ns, name, annotations))
        except k8s.NotFoundError:
            pass  # a pod that just went: its replacement is annotated when it appears
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


def observe_inference(isvc: serving.Isvc) -> inference.Observed:
    ns = isvc.namespace
    deployments = {}
    for role in inference.ROLES:
        dep = CACHE.get("Deployment", ns, serving.deployment_name(isvc, role))
        if _owned(dep, isvc.body):
            deployments[role] = dep
    pods = CACHE.children(isvc.body, "Pod")
    # Asked even without spec.gateway: a route made before the field was removed must be found to go.
    route_api = k8s.serves(ROUTE_API_VERSION, ROUTE_PLURAL)
    route = CACHE.get("HTTPRoute", ns, serving.service_name(isvc)) if route_api else None
    role_services = {svc["metadata"]["labels"][LABEL_ROLE] for svc in CACHE.children(isvc.body, "Service")
                     if LABEL_ROLE in (svc["metadata"].get("labels") or {})}
    serving_version = isvc.status.get("modelVersion")
    rolling = _rolling_version(deployments, serving_version)
    return inference.Observed(
        model_versions=CACHE.parsed("ModelVersion", ns),
        deployments=deployments,
        pods=pods,
        # Read only while a version rolls out: the pods' counters say how it answers.
        answers=rollout_metrics.answers(pods, serving_version) if rolling else {},
        route_api=route_api,
        route=route if _owned(route, isvc.body) else None,
        role_services=role_services,
        pods_complete=True,
    )


def _rolling_version(deployments: dict[str, dict[str, Any]], serving_version: str | None) -> str | None:
    """The version the primary Deployment rolls out, while it is not the one serving."""
    deployed = inference.version_of(deployments.get("primary"))
    return deployed if deployed != serving_version else None


def reconcile_inference(body: dict[str, Any]) -> Wakeup:
    isvc = _validate(ISVC, body)
    if not isvc:
        return None
    observed = observe_inference(isvc)
    result = (model_set if isvc.spec.models else inference).plan(isvc, observed, CONFIG)
    wake = watch_drift(isvc, observed, result)
    act(body, result, always_post=("RolledOut", "RolledBack", "ModelsUpdated", "RetrainRequested",
                                    "RetrainRequestFailed"))
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


def watch_drift(isvc: serving.Isvc, observed: inference.Observed, result: Plan) -> Wakeup:
    """Reads the serving version's drift and live quality every READ_EVERY_SECONDS, and asks the
    pipeline for a run when told to; returns when to read again."""
    drift_spec, floor = isvc.spec.monitoring.drift, isvc.spec.monitoring.quality
    watch_quality = isvc.spec.feedback is not None
    serving_version = result.status.get("modelVersion") or isvc.status.get("modelVersion")
    if not (drift_spec.enabled or watch_quality) or not serving_version:
        return None
    wait = _drift_read.remaining(isvc.body, drift.READ_EVERY_SECONDS)
    if wait:
        return wait
    _drift_read.done(isvc.body)
    now = now_rfc3339()
    mv = next((m for m in observed.model_versions if m.name == serving_version), None)
    outcomes = []
    reports, where = None, None
    if CONFIG.prometheus_url and mv:
        where = drift_sources.selector(isvc.namespace, mv.spec.model_name, str(mv.spec.version))
    else:
        reports = drift_sources.sidecar_reports(observed.pods, serving_version)
    if drift_spec.enabled:
        if where:
            verdict = drift_sources.from_prometheus(CONFIG.prometheus_url, where)
        else:
            verdict = drift.from_reports(reports)
        outcomes.append((drift.plan(isvc, verdict, now), drift_spec.pipeline_ref))
    if watch_quality:
        if where:
            live = drift_sources.quality_from_prometheus(CONFIG.prometheus_url, where)
        else:
            live = quality.from_reports(reports)
        outcomes.append((quality.plan(isvc, live, serving_version, now), floor and floor.pipeline_ref))
    asked = False
    for outcome, pipeline_ref in outcomes:
        result.status.update(outcome.status)
        result.conditions.extend(outcome.conditions)
        result.events.extend(outcome.events)
        if outcome.request_run and not asked:  # drift and quality at once: one run answers both
            asked = True
            _request_run(isvc.body, pipeline_ref.name, outcome.request_run, result)
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
                                                                        last_lines),
                                             pods_by_job.get(job["metadata"]["name"], []))
            for job in CACHE.children(owner, "Job")}


DATASET = kind_by_name("Dataset")


_source_checked = Cadence()


def check_source(dataset: training.Dataset, result_conditions: list) -> tuple[str | None, Wakeup]:
    """The source's fingerprint to validate (a new listing when one is due, else the last one) and when
    to list again. A source that cannot be listed keeps the last fingerprint: nothing is validated
    and the last version stays usable; the SourceAvailable condition says why."""
    last = dataset.status.get("sourceFingerprint")
    interval = dataset.spec.source.check_interval_seconds
    if not interval:
        return None, None
    wait = _source_checked.remaining(dataset.body, interval)
    if wait and last:
        return last, wait
    _source_checked.done(dataset.body)
    try:
        listing = sources.list_source(dataset.spec.source.uri, CONFIG.s3_endpoint, CONFIG.s3_region)
    except sources.SourceUnavailable as exc:
        result_conditions.append(("SourceAvailable", "False", "SourceUnavailable", str(exc)))
        return last, interval
    result_conditions.append(("SourceAvailable", "True", "Listed",
                              f"{listing.files} file(s), {listing.bytes} bytes at the last check"))
    return listing.fingerprint, interval


def trained_on(dataset: training.Dataset) -> frozenset[str]:
    """The versions of this Dataset that ModelVersions were trained on."""
    lineages = [m.spec.lineage for m in CACHE.parsed("ModelVersion", dataset.namespace)]
    return frozenset(lin.dataset_version for lin in lineages if lin.dataset == dataset.name and lin.dataset_version)


def reconcile_dataset(body: dict[str, Any]) -> Wakeup:
    dataset = _validate(DATASET, body)
    if not dataset:
        return None
    checked: list = []
    fingerprint, wake = check_source(dataset, checked)
    jobs = observe_jobs(body)
    token = datasets.validation_token(dataset, fingerprint)
    view = jobs.get(training.validation_job_name(dataset, token), JobView(None))
    result = datasets.plan(dataset, view, CONFIG, now_rfc3339(), fingerprint, trained_on(dataset))
    result.conditions.extend(checked)
    if fingerprint and fingerprint != dataset.status.get("sourceFingerprint") \
            and dataset.status.get("sourceFingerprint"):
        result.event("Normal", "SourceChanged", f"the source's listing changed; validating with Job "
                     f"{training.validation_job_name(dataset, token)}")
    act(body, result, always_post=("SourceChanged",))
    return wake


PIPELINE = kind_by_name("TrainingPipeline")


def reconcile_pipeline(body: dict[str, Any]) -> Wakeup:
    pipeline = _validate(PIPELINE, body)
    if not pipeline:
        return None
    ns, spec = pipeline.namespace, pipeline.spec
    model_versions = CACHE.parsed("ModelVersion", ns)
    observed = pipelines.Observed(
        dataset=CACHE.parsed_get("Dataset", ns, spec.dataset_ref.name),
        jobs=observe_jobs(body),
        production=registry.production_version(model_versions, spec.model_name),
        champion=registry.serving_version(model_versions, CACHE.list("InferenceService", ns), spec.model_name),
    )
    now = now_rfc3339()
    result = pipelines.plan(pipeline, observed, CONFIG, now)
    if result.refresh and datasets.refresh_request(observed.dataset) != result.refresh:
        _store(k8s.annotate(API_VERSION, "Dataset", ns, spec.dataset_ref.name,
                            {datasets.REFRESH_ANNOTATION: result.refresh}))
    for run_id, mv_spec in result.register:
        created = register(pipeline, run_id, mv_spec)
        name = created["metadata"]["name"]
        run = next(r for r in result.status["runs"] if r["id"] == run_id)
        run.update(phase="Succeeded", modelVersion=name, finishedAt=now)
        result.event("Normal", "ModelVersionCreated", f"run {run_id} registered {name}"
                     + (f" in stage {spec.promote_to}" if spec.promote_to else ""))
        result.conditions = [c for c in result.conditions if c[0] != "Ready"]
        result.condition("Ready", "True", "Succeeded", f"run {run_id} produced {name}")
    act(body, result, always_post=("RunStarted", "ModelVersionCreated", "RunSkipped", "TrialFailed"))
    next_run = result.status.get("nextRun") or pipeline.status.get("nextRun")
    if spec.schedule and next_run:
        due = datetime.fromisoformat(next_run.replace("Z", "+00:00")).timestamp()
        return max(due - datetime.now(timezone.utc).timestamp(), 0.0) + 1.0
    return None


def register(pipeline: training.Pipeline, run_id: str, mv_spec: dict[str, Any]) -> dict[str, Any]:
    """Creates the run's ModelVersion once, with the next free version number.

    Idempotent under restarts (the entry of the same pipeline and run is returned) and safe under
    concurrent runs: the create fails with a conflict when another run took the number, and the next
    number is tried. A new Production entry archives the model's previous ones that runs registered."""
    ns, model = pipeline.namespace, pipeline.spec.model_name
    registered = CACHE.parsed("ModelVersion", ns)
    existing = registry.entry_of_run(registered, pipeline, run_id)
    if existing:
        return existing.body
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
    archive_superseded(CACHE.parsed_get("ModelVersion", ns, name))
    return created


MODEL_VERSION = kind_by_name("ModelVersion")


def archive_superseded(mv: training.Mv | None) -> None:
    """A version newly in Production, by a run, by hand or restored after a rollback, archives the
    versions it supersedes that runs registered (registry.superseded); a hand-registered one is never
    written (docs/argocd.md)."""
    if mv is None or not registry.newly_in_production(mv):
        return
    isvcs = CACHE.list("InferenceService", mv.namespace)
    for other in registry.superseded(CACHE.parsed("ModelVersion", mv.namespace), mv):
        reason = registry.archive_reason(CACHE.parsed_get("ModelVersion", mv.namespace, other), mv.name, isvcs)
        _store(k8s.apply(registry.staged(mv.namespace, other, "Archived", reason)))
        log.info(f"archived {other}: {reason}", **_ref(mv.body))


def restore_after_rollback(mv: training.Mv) -> training.Mv:
    """Hands Production back to the version a rollback kept serving (registry.restore_reason); the
    rolled-back version then leaves Production through archive_superseded. Returns `mv` as now stored."""
    reason = registry.restore_reason(mv, CACHE.parsed("ModelVersion", mv.namespace),
                                     CACHE.list("InferenceService", mv.namespace))
    if not reason:
        return mv
    _store(k8s.apply(registry.staged(mv.namespace, mv.name, "Production", reason)))
    log.info(f"{mv.name} back in Production: {reason}", **_ref(mv.body))
    return CACHE.parsed_get("ModelVersion", mv.namespace, mv.name) or mv


def reconcile_model_version(body: dict[str, Any]) -> Wakeup:
    mv = _validate(MODEL_VERSION, body)
    if not mv:
        return None
    mv = restore_after_rollback(mv)
    archive_superseded(mv)
    verify = observe_jobs(body).get(training.verify_job_name(mv), JobView(None))
    serving = registry.served_by(mv, CACHE.list("InferenceService", mv.namespace))
    act(body, registry.plan_model_version(mv, verify, CONFIG, now_rfc3339(), serving), always_post=("StageChanged",))
    return None


RECONCILERS: dict[str, Callable[[dict[str, Any]], Wakeup]] = {
    "InferenceService": reconcile_inference,
    "Dataset": reconcile_dataset,
    "TrainingPipeline": reconcile_pipeline,
    "ModelVersion": reconcile_model_version,
}
