"""The only module that talks to the Kubernetes API for the operator's own reads and writes.

Children are written with server-side apply under the field manager `kiln`. Reconciles read the
cluster from the watch-fed cache (cache.py) and call here only to write what differs, so every call
in this module is a real change, and each is counted (`kiln_operator_api_requests_total`). Calls
block: the controller's worker threads make them, never kopf's event loop.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from . import metrics

FIELD_MANAGER = "kiln"
# How long an answer of API discovery is trusted: CRDs installed or removed later are seen this much
# later. Long, because at rest the operator should ask the apiserver nothing.
DISCOVERY_TTL_SECONDS = 300.0
_served: dict[tuple[str, str], tuple[float, bool]] = {}
_served_lock = threading.Lock()


class Conflict(Exception):
    """The name is taken (409): how version numbers stay unique."""


def namespace_terminating(exc: Exception) -> bool:
    """Whether a write was refused because its namespace is being deleted."""
    return getattr(exc, "status", None) == 403 and "being terminated" in str(getattr(exc, "body", "") or exc)


def _count(verb: str, kind: str) -> None:
    metrics.API_REQUESTS.labels(verb=verb, kind=kind).inc()


# Connections kept open to the apiserver: at least one per worker thread, or each request beyond the
# pool's size pays a new TLS handshake.
CONNECTIONS = 32


@functools.lru_cache(maxsize=1)
def dynamic() -> DynamicClient:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONNECTIONS
    return DynamicClient(client.ApiClient(configuration))


def _json(response) -> Any:
    """The answer as plain JSON: the dynamic client's own wrapping of every field costs more CPU than
    the request itself, and the cache stores plain dicts anyway."""
    return json.loads(response.data)


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
        _count("discover", group_version)
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
    _count("apply", manifest["kind"])
    return _json(res.server_side_apply(body=manifest, name=meta["name"], namespace=meta.get("namespace"),
                                       field_manager=FIELD_MANAGER, force_conflicts=True, serialize=False))


def can(verb: str, group: str, resource: str, namespace: str | None) -> bool:
    """Whether this process's identity may `verb` the resource: a SelfSubjectAccessReview, which every
    authenticated identity may ask (no grant needed)."""
    _count("create", "SelfSubjectAccessReview")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                              "namespace": namespace or ""}}}
    answer = client.AuthorizationV1Api(dynamic().client).create_self_subject_access_review(body=review)
    return bool(answer.status.allowed)


def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    _count("get", kind)
    try:
        return _resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


def list_(api_version: str, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
    _count("list", kind)
    result = _json(_resource(api_version, kind).get(namespace=namespace, label_selector=label_selector, serialize=False))
    return result["items"]


def list_kind(api_version: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
    """Every object of a kind, in one namespace or (None) all: for start-up housekeeping only."""
    return list_(api_version, kind, namespace)


def create(manifest: dict[str, Any]) -> dict[str, Any]:
    """Create that raises Conflict when the name is taken: how version numbers stay unique."""
    res = _resource(manifest["apiVersion"], manifest["kind"])
    _count("create", manifest["kind"])
    try:
        return _json(res.create(body=manifest, namespace=manifest["metadata"].get("namespace"), serialize=False))
    except client.ApiException as exc:
        if exc.status == 409:
            raise Conflict(str(exc.reason)) from None
        raise


def delete(api_version: str, kind: str, namespace: str, name: str) -> None:
    _count("delete", kind)
    try:
        _resource(api_version, kind).delete(name=name, namespace=namespace,
                                            body={"propagationPolicy": "Background"})
    except NotFoundError:
        pass


def patch_status(api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of the status; the result is the object as stored."""
    res = _resource(api_version, kind)
    _count("patch-status", kind)
    return _json(res.status.patch(body={"status": status}, name=name, namespace=namespace,
                                  content_type="application/merge-patch+json", serialize=False))


def pod_logs_tail(namespace: str, pod: str, container: str | None = None, lines: int = 20) -> str:
    _count("logs", "Pod")
    try:
        return client.CoreV1Api(dynamic().client).read_namespaced_pod_log(
            pod, namespace, container=container, tail_lines=lines)
    except client.ApiException:
        return ""


def patch_spec(api_version: str, kind: str, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of a spec the operator itself created (a registry entry's stage), never a user's."""
    _count("patch", kind)
    return _json(_resource(api_version, kind).patch(body={"spec": spec}, name=name, namespace=namespace,
                                                    content_type="application/merge-patch+json", serialize=False))


def annotate(api_version: str, kind: str, namespace: str, name: str, annotations: dict[str, str]) -> dict[str, Any]:
    """Sets annotations on another object: how one Kiln object asks another for work (a run request)."""
    _count("patch", kind)
    return _json(_resource(api_version, kind).patch(body={"metadata": {"annotations": annotations}}, name=name,
                                                    namespace=namespace, content_type="application/merge-patch+json",
                                                    serialize=False))


def remove_finalizer(api_version: str, kind: str, obj: dict[str, Any], finalizer: str) -> bool:
    """Drops one finalizer, only from the version read (resourceVersion): False when it changed since."""
    meta = obj["metadata"]
    remaining = [f for f in meta.get("finalizers") or [] if f != finalizer]
    _count("patch", kind)
    try:
        _resource(api_version, kind).patch(
            name=meta["name"], namespace=meta["namespace"], content_type="application/merge-patch+json",
            body={"metadata": {"finalizers": remaining, "resourceVersion": meta["resourceVersion"]}})
    except client.ApiException:
        return False
    return True


def post_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A core/v1 Event about a Kiln object, as `kubectl describe` shows it."""
    meta = obj["metadata"]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": "kiln-operator"}, "reportingComponent": "kiln-operator",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    _count("create", "Event")
    _resource("v1", "Event").create(body=event, namespace=meta["namespace"])


def _rfc3339(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def watch_namespaces(names: list[str], on_event) -> threading.Thread:
    """Follows the named namespaces themselves (deletion, re-creation) in a thread, calling
    `on_event(type, name, created, deleted)` with RFC 3339 times. For an operator serving a list of
    namespaces, whose watches kopf stops as soon as a namespace is being deleted."""
    from kubernetes import watch

    def loop() -> None:
        core = client.CoreV1Api(dynamic().client)
        while True:
            try:
                for event in watch.Watch().stream(core.list_namespace, timeout_seconds=3600):
                    meta = event["object"].metadata
                    if meta.name in names:
                        on_event(event["type"], meta.name, _rfc3339(meta.creation_timestamp),
                                 _rfc3339(meta.deletion_timestamp))
            except Exception:  # a dropped watch: start again after a breath
                time.sleep(5)

    thread = threading.Thread(target=loop, name="watch-namespaces", daemon=True)
    thread.start()
    return thread
