"""Spec validation beyond what the CRD schema can say, with messages that name the field."""

from __future__ import annotations

from typing import Any

from croniter import croniter
from pydantic import BaseModel, ValidationError

from .api import TrainingPipelineSpec
from .api.kinds import Kind


class InvalidSpec(ValueError):
    """A spec the operator cannot act on; the message names the field."""


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
