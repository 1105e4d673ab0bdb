"""`kubectl kiln promote VERSION --to STAGE --reason ...`: the change a user could make with kubectl.

One merge patch of the ModelVersion sets spec.stage and the annotation kiln.dev/stage-reason together,
so the admission policy judging the change sees the reason on the same request (it requires one for
Production and records who asked). No reason removes an earlier one: a stale reason must not be
attributed to a new change.
"""

from __future__ import annotations

from typing import Any

REASON_ANNOTATION = "kiln.dev/stage-reason"


def patch_body(stage: str, reason: str | None) -> dict[str, Any]:
    reason = (reason or "").strip() or None
    return {"metadata": {"annotations": {REASON_ANNOTATION: reason}}, "spec": {"stage": stage}}


def unchanged(mv: dict[str, Any], stage: str) -> str | None:
    """A message when the version already holds `stage` (a patch would record nothing), else None."""
    if ((mv.get("spec") or {}).get("stage") or "None") == stage:
        return f'modelversion "{mv["metadata"]["name"]}" is already in stage {stage}: nothing changed'
    return None


def summary(name: str, before: str, after: dict[str, Any], reason: str | None, dry_run: bool) -> str:
    stage = (after.get("spec") or {}).get("stage")
    because = f' (reason: "{reason.strip()}")' if reason and reason.strip() else ""
    return f'modelversion "{name}" {before} -> {stage}{because}{" (server dry run)" if dry_run else ""}'
