"""kopf handlers: thin adapters from kopf's events to the reconcile logic.

Every kind validates its spec the same way (`reconcile.decide`); kinds with children add an
observe → plan → act step. Handlers are sync: kopf runs them in its thread pool, so the blocking
Kubernetes client never stalls the event loop.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import config, datasets, drift, drift_sources, events, inference, k8s, pipelines, registry, rollout_metrics
from .api import GROUP, VERSION
from .api.kinds import API_VERSION, Kind, kind_by_name
from .builders import serving, training
from .builders.meta import ANNOTATION_RUN_REQUEST, LABEL_OWNER, LABEL_ROLE
from .builders.serving import ROUTE_API_VERSION, ROUTE_PLURAL
from .conditions import now_rfc3339
from .jobs import JobView, termination_summaries
from .plan import Plan
from .reconcile import decide, is_news, status_patch

CONFIG = config.from_env()


def _validate(kind: Kind, body: dict[str, Any], patch: kopf.Patch, logger: Any) -> bool:
    """Writes Ready=False for a spec the operator cannot act on; returns whether the spec is usable."""
    if body["metadata"].get("deletionTimestamp"):
        return False  # going away: its children follow by ownerReference, nothing to reconcile
    if not k8s.is_current(body):
        # A timer can outlive its object (deleted without kopf seeing it, e.g. a released finalizer):
        # acting on that stale body would recreate children owned by a uid that no longer exists,
        # which the garbage collector deletes again, and the live object's children with them.
        return False
    outcome = decide(kind, body)
    if outcome.ready == "True":
        return True
    if is_news(body, outcome):
        patch.status.update(status_patch(body, outcome))
        events.post(body, "Warning", outcome.reason, outcome.message)
        logger.warning(f"{kind.kind} {outcome.reason}: {outcome.message}")
    return False


ISVC = kind_by_name("InferenceService")


def _owned(obj: dict[str, Any] | None, owner: dict[str, Any]) -> bool:
    return bool(obj) and any(ref.get("uid") == owner["metadata"]["uid"]
                             for ref in obj["metadata"].get("ownerReferences") or [])


def observe_inference(isvc: dict[str, Any]) -> inference.Observed:
    ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
    selector = ",".join(f"{k}={v}" for k, v in serving.selector(isvc).items())
    deployments = {}
    for role in inference.ROLES:
        dep = k8s.get("apps/v1", "Deployment", ns, serving.deployment_name(isvc, role))
        if _owned(dep, isvc):
            deployments[role] = dep
    pods = k8s.list_("v1", "Pod", ns, label_selector=selector)
    # Asked even without spec.gateway: a route made before the field was removed must be found to go.
    route_api = k8s.serves(ROUTE_API_VERSION, ROUTE_PLURAL)
    route = k8s.get(ROUTE_API_VERSION, "HTTPRoute", ns, serving.service_name(isvc)) if route_api else None
    role_services = {svc["metadata"]["labels"][LABEL_ROLE]
                     for svc in k8s.list_("v1", "Service", ns, label_selector=serving.role_service_label_selector(isvc))
                     if _owned(svc, isvc)}
    return inference.Observed(
        model_versions=k8s.list_(API_VERSION, "ModelVersion", ns),
        deployments=deployments,
        pods=pods,
        answers=rollout_metrics.answers(pods, (isvc.get("status") or {}).get("modelVersion")),
        route_api=route_api,
        route=route if _owned(route, isvc) else None,
        role_services=role_services,
    )


def act(body: dict[str, Any], result: Plan, patch: kopf.Patch, logger: Any,
        always_post: tuple[str, ...] = ()) -> None:
    """Carries out a plan: apply and delete children, write the status that changed, post Events."""
    for manifest in result.apply:
        k8s.apply(manifest)
    for api_version, kind, name in result.delete:
        k8s.delete(api_version, kind, body["metadata"]["namespace"], name)
    conditions, changed = events.merge_conditions(body, result.conditions)
    current = body.get("status") or {}
    update = {k: v for k, v in result.status.items() if current.get(k) != v}
    if changed or update or current.get("observedGeneration") != body["metadata"].get("generation"):
        patch.status.update({**update, "conditions": conditions,
                             "observedGeneration": body["metadata"].get("generation")})
    for type_, reason, message in result.events:
        # A plan repeats its events while a state lasts; only news (a changed condition, or a
        # transition event) is posted, so a timer never floods the namespace.
        if changed or reason in always_post:
            events.post(body, type_, reason, message)
            logger.info(f"{reason}: {message}")


def reconcile_inference(body: dict[str, Any], patch: kopf.Patch, logger: Any) -> None:
    if not _validate(ISVC, body, patch, logger):
        return
    observed = observe_inference(body)
    result = inference.plan(body, observed, CONFIG)
    watch_drift(body, observed, result, logger)
    act(body, result, patch, logger, always_post=("RolledOut", "RolledBack", "RetrainRequested", "RetrainRequestFailed"))


def watch_drift(isvc: dict[str, Any], observed: inference.Observed, result: Plan, logger: Any) -> None:
    """Reads the serving version's drift now and then, and asks the pipeline for a run when told to."""
    spec = isvc["spec"].get("monitoring", {}).get("drift", {})
    serving_version = result.status.get("modelVersion") or (isvc.get("status") or {}).get("modelVersion")
    now = now_rfc3339()
    if not spec.get("enabled", True) or not serving_version or not drift.due(isvc, now):
        return
    mv = next((m for m in observed.model_versions if m["metadata"]["name"] == serving_version), None)
    if CONFIG.prometheus_url and mv:
        verdict = drift_sources.from_prometheus(CONFIG.prometheus_url, mv["spec"]["modelName"],
                                                str(mv["spec"]["version"]))
    else:
        verdict = drift.from_reports(drift_sources.sidecar_reports(observed.pods, serving_version))
    outcome = drift.plan(isvc, verdict, now)
    result.status.update(outcome.status)
    result.conditions.extend(outcome.conditions)
    result.events.extend(outcome.events)
    if outcome.request_run:
        name = spec["pipelineRef"]["name"]
        try:
            k8s.annotate(API_VERSION, "TrainingPipeline", isvc["metadata"]["namespace"], name,
                         {ANNOTATION_RUN_REQUEST: outcome.request_run})
        except Exception as exc:  # a missing pipeline must not stop serving; the condition says why
            result.status["drift"].pop("lastRetrainRequest", None)
            result.event("Warning", "RetrainRequestFailed", f"could not ask TrainingPipeline {name!r} for a run: {exc}")
            logger.warning(f"retrain request to {name} failed: {exc}")


@kopf.on.create(GROUP, VERSION, ISVC.plural, id="reconcile")
@kopf.on.update(GROUP, VERSION, ISVC.plural, id="reconcile")
@kopf.on.resume(GROUP, VERSION, ISVC.plural, id="reconcile")
def inferenceservice_changed(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile_inference(dict(body), patch, logger)


@kopf.timer(GROUP, VERSION, ISVC.plural, interval=3.0, initial_delay=3.0, id="observe")
def inferenceservice_observe(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    # Promotions (a ModelVersion's stage), rollouts and crashes happen outside this object: look again.
    reconcile_inference(dict(body), patch, logger)


def observe_jobs(owner: dict[str, Any]) -> dict[str, JobView]:
    ns, name = owner["metadata"]["namespace"], owner["metadata"]["name"]
    selector = f"{LABEL_OWNER}={name},kiln.dev/kind={owner['kind'].lower()}"
    pods_by_job: dict[str, list] = {}
    for pod in k8s.list_("v1", "Pod", ns, label_selector=selector):
        job = pod["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name")
        pods_by_job.setdefault(job, []).append(pod)
    def last_lines(pod: dict[str, Any]) -> str:
        return k8s.pod_logs_tail(ns, pod["metadata"]["name"], "train", lines=5)

    return {job["metadata"]["name"]: JobView(job, termination_summaries(pods_by_job.get(job["metadata"]["name"], []),
                                                                        last_lines))
            for job in k8s.list_("batch/v1", "Job", ns, label_selector=selector)
            if any(ref.get("uid") == owner["metadata"]["uid"] for ref in job["metadata"].get("ownerReferences") or [])}


DATASET = kind_by_name("Dataset")


def reconcile_dataset(body: dict[str, Any], patch: kopf.Patch, logger: Any) -> None:
    if not _validate(DATASET, body, patch, logger):
        return
    jobs = observe_jobs(body)
    token = datasets.validation_token(body)
    view = jobs.get(training.validation_job_name(body, token), JobView(None))
    act(body, datasets.plan(body, view, CONFIG, now_rfc3339()), patch, logger)


@kopf.on.create(GROUP, VERSION, DATASET.plural, id="reconcile")
@kopf.on.update(GROUP, VERSION, DATASET.plural, id="reconcile")
@kopf.on.resume(GROUP, VERSION, DATASET.plural, id="reconcile")
@kopf.timer(GROUP, VERSION, DATASET.plural, interval=3.0, initial_delay=3.0, id="observe")
def dataset_changed(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile_dataset(dict(body), patch, logger)


PIPELINE = kind_by_name("TrainingPipeline")


def reconcile_pipeline(body: dict[str, Any], patch: kopf.Patch, logger: Any) -> None:
    if not _validate(PIPELINE, body, patch, logger):
        return
    ns, spec = body["metadata"]["namespace"], body["spec"]
    observed = pipelines.Observed(
        dataset=k8s.get(API_VERSION, "Dataset", ns, spec["datasetRef"]["name"]),
        jobs=observe_jobs(body),
        production=registry.production_version(k8s.list_(API_VERSION, "ModelVersion", ns), spec["modelName"]),
    )
    now = now_rfc3339()
    result = pipelines.plan(body, observed, CONFIG, now)
    for run_id, mv_spec in result.register:
        name = registry.register(body, run_id, mv_spec)
        run = next(r for r in result.status["runs"] if r["id"] == run_id)
        run.update(phase="Succeeded", modelVersion=name, finishedAt=now)
        result.event("Normal", "ModelVersionCreated", f"run {run_id} registered {name}"
                     + (f" in stage {spec['promoteTo']}" if spec.get("promoteTo") else ""))
        result.conditions = [c for c in result.conditions if c[0] != "Ready"]
        result.condition("Ready", "True", "Succeeded", f"run {run_id} produced {name}")
    act(body, result, patch, logger, always_post=("RunStarted", "ModelVersionCreated", "RunSkipped"))


@kopf.on.create(GROUP, VERSION, PIPELINE.plural, id="reconcile")
@kopf.on.update(GROUP, VERSION, PIPELINE.plural, id="reconcile")
@kopf.on.resume(GROUP, VERSION, PIPELINE.plural, id="reconcile")
@kopf.timer(GROUP, VERSION, PIPELINE.plural, interval=3.0, initial_delay=3.0, id="observe")
def pipeline_changed(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile_pipeline(dict(body), patch, logger)


MODEL_VERSION = kind_by_name("ModelVersion")


def reconcile_model_version(body: dict[str, Any], patch: kopf.Patch, logger: Any) -> None:
    if not _validate(MODEL_VERSION, body, patch, logger):
        return
    verify = observe_jobs(body).get(training.verify_job_name(body), JobView(None))
    act(body, registry.plan_model_version(body, verify, CONFIG, now_rfc3339()), patch, logger,
        always_post=("StageChanged",))


@kopf.on.create(GROUP, VERSION, MODEL_VERSION.plural, id="reconcile")
@kopf.on.update(GROUP, VERSION, MODEL_VERSION.plural, id="reconcile")
@kopf.on.resume(GROUP, VERSION, MODEL_VERSION.plural, id="reconcile")
@kopf.timer(GROUP, VERSION, MODEL_VERSION.plural, interval=3.0, initial_delay=3.0, id="observe")
def model_version_changed(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile_model_version(dict(body), patch, logger)
