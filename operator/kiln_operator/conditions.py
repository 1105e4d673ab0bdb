"""Status conditions in the Kubernetes shape, changed only when something changed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(conditions: list[dict[str, Any]] | None, type_: str, status: str, reason: str,
                  message: str, generation: int | None, now: str | None = None) -> list[dict[str, Any]]:
    """Returns the conditions with `type_` set; lastTransitionTime moves only when the status does."""
    result = [dict(c) for c in conditions or [] if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    moved = previous is None or previous.get("status") != status
    result.append({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (now or now_rfc3339()) if moved else previous["lastTransitionTime"],
        "observedGeneration": generation,
    })
    return sorted(result, key=lambda c: c["type"])


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
