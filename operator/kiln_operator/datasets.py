"""Dataset reconcile: a validation Job per (generation, refresh request, source listing), its summary
into status.

The operator never reads the data: the runtime's `kiln-train validate-dataset` Job does. It snapshots
the validated table into the artifact store, content-addressed (`<prefix>/versions/<version>/`), and
reports the version, rows, snapshot, profile and failed checks through its termination message.
Validation runs again when the spec changes, when someone asks with the `kiln.dev/refresh`
annotation, and when the source's listing changed (`source.checkIntervalSeconds`); a changed source
then yields a new version, and every kept version stays trainable. A failed validation after a good
one leaves the last version usable: the Dataset stays Ready on it and says why the newest failed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .builders import training
from .builders.training import Dataset
from .config import OperatorConfig
from .jobs import JobView
from .plan import Plan

REFRESH_ANNOTATION = "kiln.dev/refresh"


def refresh_request(dataset: Dataset) -> str:
    return (dataset.body["metadata"].get("annotations") or {}).get(REFRESH_ANNOTATION, "")


def validation_token(dataset: Dataset, fingerprint: str | None = None) -> str:
    """Names the validation of this spec, refresh request and source listing: any of them changing
    makes a new Job; none changing finds the Job already made."""
    meta = dataset.body["metadata"]
    refresh = refresh_request(dataset)
    token = f"g{meta.get('generation', 1)}"
    if refresh:
        token += "-" + hashlib.sha256(refresh.encode()).hexdigest()[:6]
    if fingerprint:
        token += "-s" + fingerprint[:6]
    return token


def kept_versions(dataset: Dataset, trained_on: set[str]) -> list[dict[str, Any]]:
    """The status.versions entries to keep: the newest `retention.versions`, and every version a
    ModelVersion was trained on (its lineage must stay reproducible while it exists)."""
    versions = dataset.status.get("versions") or []
    limit = dataset.spec.retention.versions
    newest = {v["version"] for v in versions[-limit:]}
    return [v for v in versions if v["version"] in newest or v["version"] in trained_on]


def _with_version(versions: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """`entry` as the newest version; a version seen before keeps when it was first validated."""
    earlier = next((v for v in versions if v["version"] == entry["version"]), None)
    if earlier and earlier.get("validatedAt"):
        entry = {**entry, "validatedAt": earlier["validatedAt"]}
    return [v for v in versions if v["version"] != entry["version"]] + [entry]


def output_prefix(dataset: Dataset, cfg: OperatorConfig) -> str:
    return f"{cfg.artifact_root}/datasets/{dataset.namespace}/{dataset.name}"


def plan(dataset: Dataset, job: JobView, cfg: OperatorConfig, now: str,
         fingerprint: str | None = None, trained_on: frozenset[str] = frozenset()) -> Plan:
    """`fingerprint`: the source's newest listing (None when the source is not checked);
    `trained_on`: the versions ModelVersions of this Dataset were trained on."""
    out = Plan()
    status = dataset.status
    token = validation_token(dataset, fingerprint)
    name = training.validation_job_name(dataset, token)
    out.status["validationJob"] = name
    if fingerprint:
        out.status["sourceFingerprint"] = fingerprint
    kept = kept_versions(dataset, set(trained_on))
    if job.job is None:
        keep = [v["version"] for v in kept]
        out.apply.append(training.validation_job(dataset, token, output_prefix(dataset, cfg), cfg, keep))
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
        entry = {"version": version, "rows": summary.get("rows"), "snapshotUri": summary.get("snapshotUri"),
                 "snapshotSha256": summary.get("snapshotSha256"), "validatedAt": now}
        entry = {k: v for k, v in entry.items() if v is not None}
        out.status.update(version=version, rows=summary.get("rows"), profileUri=summary.get("profileUri"),
                          snapshotUri=summary.get("snapshotUri"), snapshotSha256=summary.get("snapshotSha256"),
                          versions=_with_version(kept, entry), failures=[], lastRefresh=refresh_request(dataset))
        message = summary.get("message") or f"{summary.get('rows')} rows validated"
        out.condition("Validated", "True", "ChecksPassed", message)
        out.condition("Ready", "True", "Validated", f"version {version[:12]}: {message}")
        return out
    reason = summary.get("reason") or "ValidationFailed"
    message = summary.get("message") or job.failure_message()
    out.status["failures"] = [{k: f[k] for k in ("column", "check", "message") if f.get(k) is not None}
                              for f in summary.get("failures") or [] if f.get("check") and f.get("message")]
    out.status["lastRefresh"] = refresh_request(dataset)
    out.event("Warning", reason, message)
    out.condition("Validated", "False", reason, message)
    if status.get("version"):
        # The newest content is bad (or gone): the last version stays as it was, snapshot and all,
        # and runs keep training on it (each trial validates it again against the current spec).
        out.condition("Ready", "True", "LastVersionUsable", f"version {status['version'][:12]} is still "
                      f"usable; the newest validation failed: {message}")
    else:
        out.condition("Ready", "False", reason, message)
    return out
