"""The only module that talks to the Kubernetes API for the operator's own reads and writes.

Children are written with server-side apply under the field manager `kiln`: applying the same
manifest twice is a no-op, so every reconcile can simply apply what it wants (idempotent, restart-safe).
Handlers are sync functions that kopf runs in its thread pool, so these blocking calls never stall
kopf's event loop.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

FIELD_MANAGER = "kiln"
# How long an answer of API discovery is trusted: CRDs installed or removed later are seen this much
# later, and a timer reconciling every 3 s does not ask the apiserver each time.
DISCOVERY_TTL_SECONDS = 30.0
_served: dict[tuple[str, str], tuple[float, bool]] = {}
_served_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def dynamic() -> DynamicClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return DynamicClient(client.ApiClient())


def _resource(api_version: str, kind: str):
    return dynamic().resources.get(api_version=api_version, kind=kind)


def serves(group_version: str, plural: str) -> bool:
    """Whether the apiserver serves `plural` in `group_version` (e.g. an optional CRD's kind).

    Reads the discovery document, which every authenticated client may read: no RBAC rule is needed.
    A failed read other than "not served" keeps the last answer (or raises when there is none), so a
    passing apiserver hiccup does not flip the operator between two ways of serving."""
    key = (group_version, plural)
    with _served_lock:
        cached = _served.get(key)
    if cached and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
        return cached[1]
    try:
        doc = dynamic().request("GET", f"/apis/{group_version}").to_dict()
        found = any(r.get("name") == plural for r in doc.get("resources") or [])
    except NotFoundError:
        found = False
    except Exception:
        if cached:
            return cached[1]
        raise
    with _served_lock:
        _served[key] = (time.monotonic(), found)
    return found


def apply(manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply; the result is the object as stored."""
    res = _resource(manifest["apiVersion"], manifest["kind"])
    meta = manifest["metadata"]
    return res.server_side_apply(body=manifest, name=meta["name"], namespace=meta.get("namespace"),
                                 field_manager=FIELD_MANAGER, force_conflicts=True).to_dict()


def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


def list_(api_version: str, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
    result = _resource(api_version, kind).get(namespace=namespace, label_selector=label_selector)
    return [item.to_dict() for item in result.items]


def create(manifest: dict[str, Any]) -> dict[str, Any]:
    """Create that fails with a 409 when the name is taken: how version numbers stay unique."""
    res = _resource(manifest["apiVersion"], manifest["kind"])
    return res.create(body=manifest, namespace=manifest["metadata"].get("namespace")).to_dict()


def delete(api_version: str, kind: str, namespace: str, name: str) -> None:
    try:
        _resource(api_version, kind).delete(name=name, namespace=namespace,
                                            body={"propagationPolicy": "Background"})
    except NotFoundError:
        pass


def patch_status(api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    res = _resource(api_version, kind)
    res.status.patch(body={"status": status}, name=name, namespace=namespace,
                     content_type="application/merge-patch+json")


def pod_logs_tail(namespace: str, pod: str, container: str | None = None, lines: int = 20) -> str:
    try:
        return client.CoreV1Api(dynamic().client).read_namespaced_pod_log(
            pod, namespace, container=container, tail_lines=lines)
    except client.ApiException:
        return ""


def patch_spec(api_version: str, kind: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """A merge patch of a spec the operator itself created (a registry entry's stage), never a user's."""
    _resource(api_version, kind).patch(body={"spec": spec}, name=name, namespace=namespace,
                                       content_type="application/merge-patch+json")


def annotate(api_version: str, kind: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
    """Sets annotations on another object: how one Kiln object asks another for work (a run request)."""
    _resource(api_version, kind).patch(body={"metadata": {"annotations": annotations}}, name=name,
                                       namespace=namespace, content_type="application/merge-patch+json")


def is_current(obj: dict[str, Any]) -> bool:
    """Whether the object still exists as this very object (same uid), and not only by name."""
    meta = obj["metadata"]
    live = get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
    return live is not None and live["metadata"]["uid"] == meta["uid"]
