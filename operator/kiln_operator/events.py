"""Events and the merging of conditions shared by the reconcilers."""

from __future__ import annotations

import logging
from typing import Any

from . import k8s, metrics
from .conditions import get_condition, set_condition

log = logging.getLogger(__name__)


def post(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Posts an Event; one that cannot be posted is logged, never a reason to fail the reconcile."""
    metrics.EVENTS.labels(kind=body.get("kind", ""), type=type_, reason=reason).inc()
    try:
        k8s.post_event(body, type_, reason, message)
    except Exception as exc:  # e.g. the namespace is terminating
        log.warning(f"could not post Event {reason}: {exc}")


def merge_conditions(body: dict[str, Any], updates: list[tuple[str, str, str, str]]) -> tuple[list, list[str]]:
    """Applies (type, status, reason, message) updates; returns the conditions and the types that changed."""
    generation = body["metadata"].get("generation")
    conditions = (body.get("status") or {}).get("conditions") or []
    changed = []
    for type_, status, reason, message in updates:
        before = get_condition(conditions, type_)
        if not before or (before["status"], before["reason"], before.get("message")) != (status, reason, message) \
                or before.get("observedGeneration") != generation:
            changed.append(type_)
        conditions = set_condition(conditions, type_, status, reason, message, generation)
    return conditions, changed
