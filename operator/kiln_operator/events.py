"""Events and status writes shared by the handlers."""

from __future__ import annotations

from typing import Any

import kopf

from .conditions import get_condition, set_condition


def post(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    (kopf.warn if type_ == "Warning" else kopf.info)(body, reason=reason, message=message)


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
