"""Spec validation beyond what the CRD schema can say, with messages that name the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from croniter import croniter
from pydantic import BaseModel, ValidationError

from .api import TrainingPipelineSpec
from .api.kinds import Kind, kind_by_name

S = TypeVar("S", bound=BaseModel)


class InvalidSpec(ValueError):
    """A spec the operator cannot act on; the message names the field."""


@dataclass(frozen=True)
class Parsed(Generic[S]):
    """A Kiln object whose spec validated. Plans and builders read `spec`, where the API's defaults are
    filled in (each lives once, in api/); `body` is the object as stored: its metadata, its status, and
    the specs the runtime is handed verbatim (docs/pod-contract.md)."""

    body: dict[str, Any]
    spec: S

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.body["metadata"]["namespace"]

    @property
    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}


def _field(loc: tuple[Any, ...]) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def parse_spec(kind: Kind, spec: dict[str, Any]) -> BaseModel:
    try:
        model = kind.spec.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InvalidSpec(f"{_field(first['loc'])}: {first['msg']}{more}") from None
    if isinstance(model, TrainingPipelineSpec) and model.schedule and not croniter.is_valid(model.schedule):
        raise InvalidSpec(f"spec.schedule: {model.schedule!r} is not a valid cron expression")
    return model


def parse(body: dict[str, Any]) -> Parsed:
    """A Kiln object with its spec parsed; raises InvalidSpec."""
    return Parsed(body, parse_spec(kind_by_name(body["kind"]), body.get("spec") or {}))


def usable(body: dict[str, Any]) -> Parsed | None:
    """A Kiln object another one's plan reads, parsed; None when its spec does not validate: no plan
    can use it (its own reconcile says why)."""
    try:
        return parse(body)
    except InvalidSpec:
        return None
