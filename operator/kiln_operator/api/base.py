"""Shared pieces of the API: the camelCase base model, references, conditions, resources."""

from __future__ import annotations

from typing import Annotated, Any, Literal

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


def served(value: Any) -> Any:
    """A value as the apiserver serves it back: JSON has one kind of number and Go writes 1.0 as 1, so a
    whole float comes back an int. What is rendered from a model then reads as it did from the stored object."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: served(v) for k, v in value.items()}
    if isinstance(value, list):
        return [served(v) for v in value]
    return value


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
        return served(self.model_dump(by_alias=True, exclude_none=True, mode="json"))


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


# A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of up to 63 characters.
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# A label value: empty, or up to 63 characters starting and ending with an alphanumeric.
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
DNS_SUBDOMAIN_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_MAX_PAIRS = 64


def _keys_are_qualified(what: str) -> dict[str, Any]:
    """Map keys cannot carry a schema pattern: a CEL rule checks them (the map's maxProperties and the
    key's size bound keep its estimated cost within the apiserver's budget)."""
    return validations(cel(f"self.all(k, size(k) <= 317 && k.matches('{QUALIFIED_NAME}'))",
                           f"{what} keys must be valid Kubernetes keys: an optional DNS-subdomain prefix and "
                           "'/', then up to 63 alphanumerics, '-', '_' or '.', starting and ending with an "
                           "alphanumeric"))


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]


class Toleration(ApiModel):
    """A taint the pods tolerate, as in a Pod's `tolerations`."""

    model_config = {"json_schema_extra": validations(
        cel("has(self.key) || self.operator == 'Exists'",
            "a toleration without key must use operator Exists (it tolerates every taint)", ".key"),
        cel("self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists", ".value"),
        cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds applies to effect NoExecute only", ".tolerationSeconds"),
    )}

    key: str | None = Field(default=None, max_length=317, pattern=QUALIFIED_NAME)
    """Taint key the toleration matches; unset (with operator Exists): every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Equal: the taint's value must be `value`; Exists: any value."""
    value: LabelValue | None = None
    """Taint value matched with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect matched: NoSchedule, PreferNoSchedule or NoExecute; unset: all of them."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """With effect NoExecute: how long a pod stays on a node once the taint appears; unset: forever."""


class PodSettings(ApiModel):
    """Identity, scheduling and metadata of the pods Kiln creates for this object. Kiln's own labels and
    annotations win over the ones set here (its selectors and metrics scraping rely on them)."""

    service_account_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN_NAME)
    """ServiceAccount the pods run as, in the object's namespace (it must exist), e.g. for a cloud
    identity (IRSA, Workload Identity) that reads the data; unset: the namespace's `default`. The
    Kubernetes API token is not mounted either way: the pods never call the API."""
    node_selector: dict[str, LabelValue] | None = Field(
        default=None, max_length=_MAX_PAIRS, json_schema_extra=_keys_are_qualified("nodeSelector"))
    """Node labels the pods must run on, e.g. `{node.kubernetes.io/instance-type: m5.xlarge}`."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    """Taints the pods tolerate, e.g. of a node pool dedicated to ML."""
    annotations: dict[str, str] | None = Field(
        default=None, max_length=_MAX_PAIRS, json_schema_extra=_keys_are_qualified("annotation"))
    """Annotations added to the pods (merged with Kiln's, e.g. `prometheus.io/*`, which win)."""
    labels: dict[str, LabelValue] | None = Field(
        default=None, max_length=_MAX_PAIRS, json_schema_extra=_keys_are_qualified("label"))
    """Labels added to the pods (merged with Kiln's, which win: selectors keep working)."""


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
