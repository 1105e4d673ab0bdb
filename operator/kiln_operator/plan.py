"""A reconcile's decision: what to apply and delete, the status to write and the Events to post."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Plan:
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str, str]] = field(default_factory=list)  # (apiVersion, kind, name)
    status: dict[str, Any] = field(default_factory=dict)
    conditions: list[tuple[str, str, str, str]] = field(default_factory=list)  # type, status, reason, message
    events: list[tuple[str, str, str]] = field(default_factory=list)  # Normal|Warning, reason, message
    # Annotations to set on objects Kiln made but does not apply (its serving pods): (apiVersion, kind,
    # name, annotations).
    annotate: list[tuple[str, str, str, dict[str, str]]] = field(default_factory=list)
    # Registry entries to create (pipeline runs only): (run id, ModelVersion spec from the select step).
    register: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # A pipeline asking its Dataset for the newest data (the kiln.dev/refresh value to set) before a run.
    refresh: str | None = None

    def condition(self, type_: str, status: str, reason: str, message: str) -> None:
        self.conditions.append((type_, status, reason, message))

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))
