"""Shared pieces of the API: the camelCase base model, references, conditions, resources."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# DNS-1123 label: what Kubernetes accepts as a name, and what we use inside child object names.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL rule (`x-kubernetes-validations` entry); the message names the field it is about."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def defaulted(model: type[BaseModel]) -> Any:
    """An optional sub-object that is always present, with its defaults spelled out in the CRD, so the
    stored object shows them (defaults live in the schema, not in the operator, and a GitOps diff
    agrees with the cluster). The whole default object is given because the apiserver checks a
    default against the object's CEL rules as it stands."""
    default = model().model_dump(by_alias=True, exclude_none=True, mode="json")
    return Field(default_factory=model, json_schema_extra={"default": default})


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, field docstrings become schema descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalObjectReference(ApiModel):
    """A reference to an object of the same namespace."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the referenced object."""


Quantity = int | str


class Resources(ApiModel):
    """Compute resources of the containers Kiln starts, as in a Pod's `resources`."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. `cpu: 250m`, `memory: 256Mi`."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources, e.g. `cpu: "1"`, `memory: 1Gi`."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A status condition in the Kubernetes shape (metav1.Condition)."""

    type: str
    """Type of the condition, e.g. Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str
    """One CamelCase word saying why, for machines and for troubleshooting tables."""
    message: str = ""
    """A human-readable explanation."""
    last_transition_time: str
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The metadata.generation this condition was computed from."""


class StatusBase(ApiModel):
    """Fields every Kiln status has."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    """The metadata.generation the operator last reconciled."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Latest observations of the object's state; `Ready` summarises them."""
