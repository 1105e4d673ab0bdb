"""Dataset reconcile: a validation Job per (generation, refresh request), its summary into status.

The operator never reads the data: the runtime's `kiln-train validate-dataset` Job does, and reports
the version (content sha256), rows, profile URI and the failed checks through its termination message.
Validation runs again when the spec changes or when a user (or a schedule) asks for a refresh with
the `kiln.dev/refresh` annotation; a changed source then yields a new version.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .builders import training
from .config import OperatorConfig
from .jobs import JobView
from .plan import Plan

REFRESH_ANNOTATION = "kiln.dev/refresh"


def validation_token(dataset: dict[str, Any]) -> str:
    meta = dataset["metadata"]
    refresh = (meta.get("annotations") or {}).get(REFRESH_ANNOTATION, "")
    suffix = hashlib.sha256(refresh.encode()).hexdigest()[:6] if refresh else ""
    return f"g{meta.get('generation', 1)}" + (f"-{suffix}" if suffix else "")


def output_prefix(dataset: dict[str, Any], cfg: OperatorConfig) -> str:
    meta = dataset["metadata"]
    return f"{cfg.artifact_root}/datasets/{meta['namespace']}/{meta['name']}"


def plan(dataset: dict[str, Any], job: JobView, cfg: OperatorConfig, now: str) -> Plan:
    out = Plan()
    status = dataset.get("status") or {}
    token = validation_token(dataset)
    name = training.validation_job_name(dataset, token)
    out.status["validationJob"] = name
    if job.job is None:
        out.apply.append(training.validation_job(dataset, token, output_prefix(dataset, cfg), cfg))
        out.event("Normal", "Validating", f"validating the source with Job {name}")
        out.condition("Validated", "Unknown", "Validating", f"Job {name} is validating the source")
        if not status.get("version"):
            out.condition("Ready", "False", "Validating", "the data has not been validated yet")
        return out
    state = job.state
    summary = job.summary(0) or {}
    if state is None:
        out.condition("Validated", "Unknown", "Validating", f"Job {name} is validating the source")
        if not status.get("version"):
            out.condition("Ready", "False", "Validating", "the data has not been validated yet")
        return out
    if state == "Complete" and summary.get("result") == "Succeeded":
        version = summary["version"]
        if status.get("version") != version:
            previous = status.get("version")
            out.event("Normal", "NewVersion", f"version {version[:12]} ({summary.get('rows')} rows)"
                      + (f", was {previous[:12]}" if previous else ""))
            out.status["lastValidated"] = now
        out.status.update(version=version, rows=summary.get("rows"), profileUri=summary.get("profileUri"),
                          failures=[])
        message = summary.get("message") or f"{summary.get('rows')} rows validated"
        out.condition("Validated", "True", "ChecksPassed", message)
        out.condition("Ready", "True", "Validated", f"version {version[:12]}: {message}")
        return out
    reason = summary.get("reason") or "ValidationFailed"
    message = summary.get("message") or job.failure_message()
    out.status["failures"] = [{k: f[k] for k in ("column", "check", "message") if f.get(k) is not None}
                              for f in summary.get("failures") or [] if f.get("check") and f.get("message")]
    out.event("Warning", reason, message)
    out.condition("Validated", "False", reason, message)
    out.condition("Ready", "False", reason, message)
    return out
