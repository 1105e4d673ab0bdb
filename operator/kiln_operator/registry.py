"""The model registry: version numbering, stages and the audit trail of ModelVersions."""

from __future__ import annotations

from typing import Any

from .builders import training
from .builders.meta import LABEL_RUN
from .builders.training import Mv, Pipeline
from .config import OperatorConfig
from .jobs import JobView
from .plan import Plan


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


def to_archive(mvs: list[Mv], model: str, keep: str) -> list[str]:
    """The other Production versions of `model` that runs registered. A version a person registered
    keeps the stage they gave it: the operator never writes a user's spec (serving takes the newest
    Production version anyway)."""
    return [mv.name for mv in versions_of(mvs, model)
            if mv.name != keep and mv.spec.stage == "Production"
            and (mv.body["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == training.MANAGED_BY]


def verified(mv: Mv) -> bool:
    """Whether the registry checked this version's artifact against its digest."""
    return mv.status.get("verifiedSha256") == mv.spec.artifact.sha256


def served_by(mv: Mv, isvcs: list[dict[str, Any]]) -> list[str]:
    """The InferenceServices serving this version (as primary or canary), by name."""
    name = mv.name
    return sorted(i["metadata"]["name"] for i in isvcs
                  if name in ((i.get("status") or {}).get("modelVersion"), (i.get("status") or {}).get("canaryVersion")))


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
        history.append({"stage": stage, "time": now})
        out.status["stageHistory"] = history
        if len(history) > 1:
            out.event("Normal", "StageChanged", f"{mv.name}: {history[-2]['stage']} -> {stage}")
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
