"""The model registry: version numbering, stages and the audit trail of ModelVersions (docs/governance.md)."""

from __future__ import annotations

from typing import Any

from .api.kinds import API_VERSION
from .builders import training
from .builders.meta import LABEL_RUN
from .builders.training import Mv, Pipeline
from .config import OperatorConfig
from .jobs import JobView
from .plan import Plan

# The contract with `kubectl kiln promote --reason` (one merge patch sets spec.stage and this annotation)
# and with the promotion policy (charts/kiln/templates/admission-policies.yaml, docs/governance.md).
ANNOTATION_REASON = "kiln.dev/stage-reason"
# Stamped by the chart's MutatingAdmissionPolicy on every request that sets spec.stage, whatever the
# request said: who asked (request.userInfo.username), the stage they asked for, and the reason given in
# that same request ("" when the request left kiln.dev/stage-reason as it was). The validating policy
# refuses any other request that writes them, so nobody can forge them.
ANNOTATION_CHANGED_BY = "kiln.dev/stage-changed-by"
ANNOTATION_CHANGED_TO = "kiln.dev/stage-changed-to"
ANNOTATION_CHANGED_REASON = "kiln.dev/stage-changed-reason"
# `by` of a change no policy stamped but the operator made (its field manager wrote spec.stage).
OPERATOR = "kiln-operator"
OPERATOR_FIELD_MANAGER = "kiln"  # k8s.FIELD_MANAGER; registry stays free of the client


def versions_of(mvs: list[Mv], model: str) -> list[Mv]:
    return [m for m in mvs if m.spec.model_name == model]


def production_version(mvs: list[Mv], model: str) -> Mv | None:
    staged = [m for m in versions_of(mvs, model) if m.spec.stage == "Production"]
    return max(staged, key=lambda m: m.spec.version) if staged else None


def serving_version(mvs: list[Mv], isvcs: list[dict[str, Any]], model: str) -> Mv | None:
    """The version of `model` a new one must beat: its Production version, else the newest version an
    InferenceService serves. A version nothing serves and nobody promoted is no yardstick."""
    production = production_version(mvs, model)
    if production:
        return production
    by_name = {m.name: m for m in versions_of(mvs, model)}
    served = [by_name[n] for n in ((i.get("status") or {}).get("modelVersion") for i in isvcs) if n in by_name]
    return max(served, key=lambda m: m.spec.version) if served else None


def entry_of_run(mvs: list[Mv], pipeline: Pipeline, run_id: str) -> Mv | None:
    """The ModelVersion a pipeline's run already registered, if any (a restart must not register twice)."""
    for mv in versions_of(mvs, pipeline.spec.model_name):
        labels = mv.body["metadata"].get("labels") or {}
        if labels.get(LABEL_RUN) == run_id and labels.get("kiln.dev/pipeline") == pipeline.name:
            return mv
    return None


def next_version(mvs: list[Mv], model: str) -> int:
    return max((m.spec.version for m in versions_of(mvs, model)), default=0) + 1


def _run_registered(mv: Mv) -> bool:
    return (mv.body["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == training.MANAGED_BY


def to_archive(mvs: list[Mv], model: str, keep: str) -> list[str]:
    """The other Production versions of `model` that runs registered. A version a person registered
    keeps the stage they gave it: the operator never writes a user's spec (serving takes the newest
    Production version anyway)."""
    return [mv.name for mv in versions_of(mvs, model)
            if mv.name != keep and mv.spec.stage == "Production" and _run_registered(mv)]


def superseded(mvs: list[Mv], mv: Mv) -> list[str]:
    """The versions `mv` supersedes now that it is in Production: the model's other Production versions
    that runs registered and whose move into Production the registry has already recorded. One moved
    meanwhile but not yet recorded is the newer promotion: it archives `mv` when its turn comes, rather
    than both archiving each other. Hand-registered versions are never written (docs/argocd.md)."""
    if mv.spec.stage != "Production":
        return []
    recorded = {m.name for m in mvs if (m.status.get("stageHistory") or [{}])[-1].get("stage") == "Production"}
    return [name for name in to_archive(mvs, mv.spec.model_name, keep=mv.name) if name in recorded]


def newly_in_production(mv: Mv) -> bool:
    """Whether `mv` is in Production and its history does not say so yet: a promotion to act on once."""
    history = mv.status.get("stageHistory") or []
    return mv.spec.stage == "Production" and (not history or history[-1].get("stage") != "Production")


# The reason of an archive by supersession: the promotion policy lets the operator hand Production back
# to a version archived so (and to no other), when the version that superseded it was rolled back.
SUPERSEDED_BY = "superseded by "


def _rolled_back_by(isvcs: list[dict[str, Any]], name: str, serving: str | None = None) -> list[str]:
    """The InferenceServices that follow the Production stage and rolled `name` back (and, given
    `serving`, kept serving that version)."""
    return sorted(i["metadata"]["name"] for i in isvcs
                  if (i.get("status") or {}).get("rolledBackVersion") == name
                  and ((i.get("spec") or {}).get("model") or {}).get("stage") == "Production"
                  and serving in (None, (i.get("status") or {}).get("modelVersion")))


def archive_reason(mv: Mv, successor: str, isvcs: list[dict[str, Any]]) -> str:
    """Why `mv` leaves Production for `successor`: a rollback, or a newer promotion."""
    rolled_back = _rolled_back_by(isvcs, mv.name)
    if rolled_back:
        return f"rolled back by InferenceService {rolled_back[0]}; {successor} restored"
    return SUPERSEDED_BY + successor


def restore_reason(mv: Mv, mvs: list[Mv], isvcs: list[dict[str, Any]]) -> str | None:
    """Why `mv` goes back to Production, or None: a version runs registered, archived when X superseded
    it, which an InferenceService following Production kept serving because it rolled X back. X then
    leaves Production (archive_reason), so the stage names what serves and "beat Production" compares
    against it, never against a version nothing serves. Only run-registered versions are moved either
    way: a hand-registered one is the user's (GitOps) to move."""
    history = mv.status.get("stageHistory") or []
    if mv.spec.stage != "Archived" or not history or not _run_registered(mv):
        return None
    last = history[-1]
    reason = last.get("reason") or ""
    if last.get("stage") != "Archived" or last.get("from") != "Production" or not reason.startswith(SUPERSEDED_BY):
        return None
    successor = reason[len(SUPERSEDED_BY):]
    holder = next((m for m in mvs if m.name == successor), None)
    if holder is None or holder.spec.stage != "Production" or not _run_registered(holder):
        return None
    services = _rolled_back_by(isvcs, successor, serving=mv.name)
    if not services:
        return None
    return f"restored: {successor} was rolled back by InferenceService {services[0]}"


def staged(namespace: str, name: str, stage: str, reason: str) -> dict[str, Any]:
    """The server-side apply by which the operator moves a version (archives a superseded or rolled-back
    one, restores a predecessor): stage and reason in one request, so the promotion policy stamps that
    very reason (a reason written by an earlier request would count as stale) and the operator's
    ServiceAccount as `by`."""
    return {"apiVersion": API_VERSION, "kind": "ModelVersion",
            "metadata": {"name": name, "namespace": namespace, "annotations": {ANNOTATION_REASON: reason}},
            "spec": {"stage": stage}}


def _stage_manager(meta: dict[str, Any]) -> str | None:
    """The field manager that last wrote spec.stage: who changed it when no policy stamped the change.
    A manager is a client's name (kubectl-patch, argocd-controller), not a user's."""
    writers = [m for m in meta.get("managedFields") or []
               if "f:stage" in ((m.get("fieldsV1") or {}).get("f:spec") or {})]
    if not writers:
        return None
    manager = max(writers, key=lambda m: m.get("time") or "").get("manager")
    if not manager:
        return None
    return OPERATOR if manager == OPERATOR_FIELD_MANAGER else f"fieldManager:{manager}"


def stage_change(mv: Mv, history: list[dict[str, Any]], now: str) -> dict[str, Any]:
    """The history entry for the stage `mv` is in now, which differs from the last recorded one.

    With the promotion policy, who and why are the stamps of the request that set this stage. Without
    it (a cluster older than 1.36 serves no MutatingAdmissionPolicy, or promotion.enabled=false), `by` is
    the field manager of spec.stage and the reason is kiln.dev/stage-reason unless it is the one the
    previous change already recorded (a reason left over from an earlier change is no reason)."""
    meta = mv.body["metadata"]
    annotations = meta.get("annotations") or {}
    stage = mv.spec.stage
    entry: dict[str, Any] = {"stage": stage}
    if history:
        entry["from"] = history[-1].get("stage")
    entry["time"] = now
    # A stamp is about the change that wrote it: one for another stage is left from an earlier change.
    stamped = annotations.get(ANNOTATION_CHANGED_TO) == stage and bool(annotations.get(ANNOTATION_CHANGED_BY))
    if stamped:
        by = annotations[ANNOTATION_CHANGED_BY]
        reason = annotations.get(ANNOTATION_CHANGED_REASON) or None
    else:
        by = _stage_manager(meta)
        reason = annotations.get(ANNOTATION_REASON) or None
        if history and reason == history[-1].get("reason"):
            reason = None
    labels = meta.get("labels") or {}
    if not history and _run_registered(mv) and labels.get(LABEL_RUN):
        # Registered by a run straight into its pipeline's promoteTo stage (or None): the run is the reason.
        # Unstamped, the create's field manager is the client library's name: the operator is who.
        by = by if stamped else OPERATOR
        reason = reason or f"registered by run {labels[LABEL_RUN]} of TrainingPipeline {labels.get('kiln.dev/pipeline')}"
    if by:
        entry["by"] = by
    if reason:
        entry["reason"] = reason
    return entry


def verified(mv: Mv) -> bool:
    """Whether the registry checked this version's artifact against its digest."""
    return mv.status.get("verifiedSha256") == mv.spec.artifact.sha256


def served_by(mv: Mv, isvcs: list[dict[str, Any]]) -> list[str]:
    """The InferenceServices serving this version (as primary or canary), by name."""
    name = mv.name
    return sorted(i["metadata"]["name"] for i in isvcs if name in serves(i.get("status") or {}))


def serves(status: dict[str, Any]) -> set[str]:
    """The versions a service's status names as primary, canary or one of its model set."""
    return {status.get("modelVersion"), status.get("canaryVersion"),
            *((entry or {}).get("version") for entry in status.get("models") or [])}


def plan_model_version(mv: Mv, verify: JobView, cfg: OperatorConfig, now: str,
                       serving: list[str] | None = None) -> Plan:
    """`serving`: the InferenceServices that serve this version now (status.servedBy)."""
    out = Plan()
    spec, status = mv.spec, mv.status
    if serving is not None:
        out.status["servedBy"] = serving
    history = list(status.get("stageHistory") or [])
    stage = spec.stage
    if not history or history[-1].get("stage") != stage:
        entry = stage_change(mv, history, now)
        history.append(entry)
        out.status["stageHistory"] = history
        if len(history) > 1:
            who = f" by {entry['by']}" if entry.get("by") else ""
            why = f": {entry['reason']}" if entry.get("reason") else ""
            out.event("Normal", "StageChanged", f"{mv.name}: {history[-2]['stage']} -> {stage}{who}{why}")
    registered = f"{spec.model_name} v{spec.version} in stage {stage}"
    digest = spec.artifact.sha256
    if verified(mv):
        out.condition("Verified", "True", "DigestMatches", f"sha256 {digest[:12]} checked")
        out.condition("Ready", "True", "Verified", registered)
        return out
    if verify.job is None or verify.state is None:
        if verify.job is None:
            out.apply.append(training.verify_job(mv, cfg))
            out.event("Normal", "Verifying", f"checking the artifact's digest with Job {training.verify_job_name(mv)}")
        out.condition("Verified", "Unknown", "Verifying", "the artifact's digest is being checked")
        out.condition("Ready", "False", "Verifying", f"{registered}; verifying the artifact")
        return out
    summary = verify.summary(0) or {}
    if verify.state == "Complete" and summary.get("result", "Succeeded") == "Succeeded":
        out.status["verifiedSha256"] = digest
        out.condition("Verified", "True", "DigestMatches", f"sha256 {digest[:12]} checked")
        out.condition("Ready", "True", "Verified", registered)
        return out
    reason = summary.get("reason") or "VerificationFailed"
    message = summary.get("message") or verify.failure_message()
    out.event("Warning", reason, message)
    out.condition("Verified", "False", reason, message)
    out.condition("Ready", "False", reason, message)
    return out
