"""The reconcile step every kind shares: validate the spec, record the outcome in status, emit an Event.

Kind-specific work (Jobs, Deployments, ...) plugs in as a `Reconciler` that returns the Ready outcome;
until a kind has one, a valid spec is reported as accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from .api.kinds import Kind
from .conditions import get_condition, set_condition
from .validation import InvalidSpec, parse_spec


@dataclass(frozen=True)
class Outcome:
    """What a reconcile decided: the Ready condition and any extra status fields."""

    ready: str  # "True", "False" or "Unknown"
    reason: str
    message: str
    status: dict[str, Any] | None = None
    warning: bool = False


Reconciler = Callable[[BaseModel, dict[str, Any]], Outcome]


def accept(spec: BaseModel, body: dict[str, Any]) -> Outcome:
    return Outcome("True", "Accepted", "the spec is valid")


def decide(kind: Kind, body: dict[str, Any], reconciler: Reconciler = accept) -> Outcome:
    try:
        spec = parse_spec(kind, body.get("spec") or {})
    except InvalidSpec as exc:
        return Outcome("False", "InvalidSpec", str(exc), warning=True)
    return reconciler(spec, body)


def status_patch(body: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """The status fields to write for an outcome: observedGeneration, conditions and extras."""
    generation = body.get("metadata", {}).get("generation")
    conditions = (body.get("status") or {}).get("conditions")
    patch = dict(outcome.status or {})
    patch["observedGeneration"] = generation
    patch["conditions"] = set_condition(conditions, "Ready", outcome.ready, outcome.reason,
                                        outcome.message, generation)
    return patch


def is_news(body: dict[str, Any], outcome: Outcome) -> bool:
    """Whether the outcome differs from what status already says: only news earns an Event."""
    status = body.get("status") or {}
    ready = get_condition(status.get("conditions"), "Ready")
    return not (ready and ready["status"] == outcome.ready and ready["reason"] == outcome.reason
                and ready.get("message") == outcome.message
                and status.get("observedGeneration") == body.get("metadata", {}).get("generation"))
