"""Names, labels and ownership shared by every child object."""

from __future__ import annotations

import hashlib
from typing import Any

from ..api.base import PodSettings
from ..api.kinds import API_VERSION
from ..validation import Parsed

PART_OF = "kiln"
MANAGED_BY = "kiln-operator"
LABEL_KIND = "kiln.dev/kind"
LABEL_OWNER = "kiln.dev/owner"
LABEL_MODEL = "kiln.dev/model"
LABEL_VERSION = "kiln.dev/model-version"
LABEL_RUN = "kiln.dev/run"
LABEL_ROLE = "kiln.dev/role"
ANNOTATION_RUN_REQUEST = "kiln.dev/run-requested"


def owner_reference(owner: Parsed) -> dict[str, Any]:
    meta = owner.body["metadata"]
    return {
        "apiVersion": owner.body.get("apiVersion", API_VERSION),
        "kind": owner.body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(owner: Parsed, component: str, **extra: str) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_KIND: owner.body["kind"].lower(),
        LABEL_OWNER: owner.name,
    }
    result.update({k: v for k, v in extra.items()})
    return result


def child_metadata(owner: Parsed, name: str, component: str, **extra_labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component, **extra_labels),
        "ownerReferences": [owner_reference(owner)],
    }


def short_name(*parts: str, limit: int = 63) -> str:
    """Joins parts into a DNS label; when too long, keeps a prefix and a hash so names stay unique."""
    name = "-".join(p for p in parts if p)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def pod_metadata(settings: PodSettings | None, labels: dict[str, str],
                 annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod template's metadata: the user's labels and annotations (`spec.pod`) under Kiln's own, which
    win, so selectors and Kiln's scrape annotations hold whatever the user sets."""
    settings = settings or PodSettings()
    meta: dict[str, Any] = {"labels": {**(settings.labels or {}), **labels}}
    merged = {**(settings.annotations or {}), **(annotations or {})}
    if merged:
        meta["annotations"] = merged
    return meta


def with_pod_settings(pod_spec: dict[str, Any], settings: PodSettings | None,
                      service_account: str | None = None) -> dict[str, Any]:
    """A pod spec with the user's ServiceAccount, node selector and tolerations (`spec.pod`);
    `service_account` is a fallback for when `spec.pod` names none."""
    settings = settings or PodSettings()
    account = settings.service_account_name or service_account
    extra: dict[str, Any] = {}
    if account:
        extra["serviceAccountName"] = account
    if settings.node_selector:
        extra["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        extra["tolerations"] = [t.wire() for t in settings.tolerations]
    return {**pod_spec, **extra}


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                  "seccompProfile": {"type": "RuntimeDefault"}}
