"""Children of an InferenceService: a Deployment per served version, a Service, HPAs and a PDB; with
`spec.gateway` on a cluster serving the Gateway API, also a Service per role and an HTTPRoute.

Deployments are named by role (primary, canary), not by version: promoting a new version changes the
primary's pod template, and the Deployment's rolling update (no unavailable pod, one surge pod, a
readiness gate on the model being loaded) moves traffic without a failed request.

The canary's share of requests is realised one of two ways. By default the one Service spreads requests
over the pods of both roles, so the replica ratio sets the share (`split_replicas`). With an HTTPRoute
the Gateway weighs the two role Services instead, so the share is exact and independent of how many
replicas each role has.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..api import InferenceServiceSpec, ModelVersionSpec
from ..api.base import served
from ..config import OperatorConfig
from ..validation import Parsed
from .meta import LABEL_MODEL, LABEL_ROLE, LABEL_VERSION, RESTRICTED_CONTAINER, RESTRICTED_POD, child_metadata, \
    pod_metadata, short_name, with_pod_settings

# The Gateway API's HTTPRoute: optional, only used when the cluster serves it (k8s.serves).
ROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
ROUTE_PLURAL = "httproutes"
SERVICE_PORT = 80
SERVER_PORT = 8080
# kiln-serve's Open Inference Protocol over gRPC (KILN_GRPC_PORT's default), the same number on the
# Service. Named `grpc` and marked h2c (HTTP/2 without TLS) so meshes and Gateway API GRPCRoutes
# treat it as gRPC rather than as plain TCP or HTTP/1.
GRPC_PORT = 8081
MONITOR_PORT = 9180
HANDOFF_DIR = "/var/run/kiln"
COMPONENT = "kiln-serve"


Isvc = Parsed[InferenceServiceSpec]
Mv = Parsed[ModelVersionSpec]


def deployment_name(isvc: Isvc, role: str) -> str:
    return short_name(isvc.name, role)


def service_name(isvc: Isvc) -> str:
    return isvc.name


def selector(isvc: Isvc) -> dict[str, str]:
    """Pods of every role: the Service spreads requests over them, so replicas set the traffic split."""
    return {"app.kubernetes.io/name": COMPONENT, "app.kubernetes.io/instance": isvc.name}


def split_replicas(total_min: int, canary_percent: int) -> tuple[int, int]:
    """Replicas (primary, canary) whose ratio realises the canary's share of requests."""
    if canary_percent <= 0:
        return total_min, 0
    if canary_percent >= 100:
        return 0, total_min
    canary = 1
    primary = max(total_min, round(canary * (100 - canary_percent) / canary_percent))
    # Keep the primary within a sensible size: a 1% canary is approximated, not 99 replicas.
    return min(primary, 19), canary


def env_vars(pairs: dict[str, Any]) -> list[dict[str, str]]:
    # Numbers as the stored object had them (1, not 1.0): the manifest's hash must not move.
    return [{"name": k, "value": str(served(v))} for k, v in pairs.items() if v is not None]


def server_env(isvc_spec: InferenceServiceSpec, mv: ModelVersionSpec, monitored: bool = True) -> list[dict[str, str]]:
    artifact = mv.artifact
    onnx = artifact.onnx if artifact.onnx and artifact.onnx.parity_verified else None
    return env_vars({
        "KILN_MODEL_NAME": mv.model_name,
        "KILN_MODEL_VERSION": mv.version,
        "KILN_MODEL_URI": artifact.uri,
        "KILN_MODEL_SHA256": artifact.sha256,
        "KILN_MODEL_FORMAT": artifact.format,
        "KILN_ALLOW_UNSAFE": "true" if artifact.allow_unsafe else "false",
        "KILN_ONNX_URI": onnx.uri if onnx else None,
        "KILN_ONNX_SHA256": onnx.sha256 if onnx else None,
        "KILN_SIGNATURE": json.dumps(mv.signature.wire(), separators=(",", ":"), sort_keys=True),
        "KILN_PORT": SERVER_PORT,
        "KILN_MAX_BATCH_SIZE": isvc_spec.batching.max_batch_size,
        "KILN_MAX_LATENCY_MS": isvc_spec.batching.max_latency_ms,
        # Without a sidecar every row would be counted as a dropped hand-off.
        "KILN_HANDOFF_SOCKET": f"{HANDOFF_DIR}/handoff.sock" if monitored else "off",
        # Feedback is joined by the sidecar, which holds the answers; the server only relays it.
        "KILN_MONITOR_URL": f"http://127.0.0.1:{MONITOR_PORT}" if monitored and isvc_spec.feedback else None,
    })


def monitor_env(isvc_spec: InferenceServiceSpec, mv: ModelVersionSpec) -> list[dict[str, str]]:
    drift = isvc_spec.monitoring.drift
    logging = isvc_spec.logging
    feedback = isvc_spec.feedback
    output = mv.signature.output
    payload_env = {
        "KILN_PAYLOAD_URI": logging.uri,
        "KILN_PAYLOAD_SAMPLE_RATE": logging.sample_rate,
        "KILN_PAYLOAD_FLUSH_SECONDS": logging.flush_seconds,
    } if logging is not None else {}
    feedback_env = {
        "KILN_FEEDBACK_TTL_SECONDS": feedback.ttl_seconds,
        "KILN_QUALITY_WINDOW_ROWS": feedback.window_rows,
        "KILN_LABELLED_URI": feedback.labelled_uri,
        # Labelled rows become training data: their label column is named as the model's target.
        "KILN_LABEL_COLUMN": output.name,
        "KILN_TASK": "classification" if output.type == "label" else "regression",
    } if feedback is not None else {}
    return env_vars({
        "KILN_MODEL_NAME": mv.model_name,
        "KILN_MODEL_VERSION": mv.version,
        "KILN_BASELINE_URI": mv.baseline_uri,
        "KILN_HANDOFF_SOCKET": f"{HANDOFF_DIR}/handoff.sock",
        "KILN_MONITOR_PORT": MONITOR_PORT,
        "KILN_MONITOR_WINDOW_ROWS": drift.window_rows,
        "KILN_MONITOR_PSI_THRESHOLD": drift.psi_threshold,
        **payload_env,
        **feedback_env,
    })


def _resources(spec: InferenceServiceSpec) -> dict[str, Any]:
    # Requests are needed for the CPU autoscaler to have a denominator.
    return (spec.resources and spec.resources.wire()) or {"requests": {"cpu": "250m", "memory": "256Mi"},
                                                          "limits": {"memory": "1Gi"}}


def deployment(isvc: Isvc, mv: Mv, role: str, cfg: OperatorConfig) -> dict[str, Any]:
    """The Deployment of one role. It sets no `replicas`: the HPA owns that field (its minReplicas
    realises the canary split), and an applied replica count would fight it on every reconcile."""
    spec = isvc.spec
    version_labels = {LABEL_MODEL: mv.spec.model_name, LABEL_VERSION: mv.name, LABEL_ROLE: role}
    # The sidecar watches drift, and is also what writes payload logs and joins feedback.
    sidecar_work = spec.monitoring.drift.enabled or spec.logging is not None or spec.feedback is not None
    drift_on = bool(sidecar_work and mv.spec.baseline_uri)
    containers = [server_container(isvc, cfg, server_env(spec, mv.spec, monitored=drift_on))]
    if drift_on:
        containers.append({
            "name": "monitor",
            "image": cfg.runtime_image,
            "imagePullPolicy": cfg.image_pull_policy,
            "command": ["kiln-monitor"],
            "env": monitor_env(spec, mv.spec) + cfg.store_env(),
            "envFrom": cfg.store_env_from(),
            "ports": [{"name": "monitor", "containerPort": MONITOR_PORT}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "monitor"}, "periodSeconds": 5},
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "securityContext": RESTRICTED_CONTAINER,
            "volumeMounts": _POD_MOUNTS,
        })
    return serving_deployment(isvc, role, version_labels, containers)


_POD_MOUNTS = [{"name": "handoff", "mountPath": HANDOFF_DIR}, {"name": "tmp", "mountPath": "/tmp"}]


def server_container(isvc: Isvc, cfg: OperatorConfig, env: list[dict[str, str]],
                     mounts: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """kiln-serve's container, given what it serves (`env`)."""
    return {
        "name": "server",
        "image": cfg.runtime_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["kiln-serve"],
        "env": env + cfg.store_env(),
        "envFrom": cfg.store_env_from(),
        "ports": [{"name": "http", "containerPort": SERVER_PORT}, {"name": "grpc", "containerPort": GRPC_PORT}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                           "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                          "periodSeconds": 10, "failureThreshold": 3, "initialDelaySeconds": 5},
        # Endpoints are removed asynchronously: keep serving a moment after SIGTERM so no client is
        # sent to a pod that already stopped listening.
        "lifecycle": {"preStop": {"sleep": {"seconds": 3}}},
        "resources": _resources(isvc.spec),
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [*_POD_MOUNTS, *mounts],
    }


def serving_deployment(isvc: Isvc, role: str, labels: dict[str, str], containers: list[dict[str, Any]],
                       volumes: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """A Deployment of serving pods of `role`, labelled `labels` (which include the role)."""
    spec = isvc.spec
    meta = child_metadata(isvc, deployment_name(isvc, role), COMPONENT, **labels)
    pod_labels = {**selector(isvc), **labels, "app.kubernetes.io/part-of": "kiln"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {**selector(isvc), LABEL_ROLE: role}},
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            # spec.pod: the user's ServiceAccount, scheduling, labels and annotations; Kiln's labels
            # (the selector's among them) and prometheus.io/* annotations win over the user's.
            "template": {
                "metadata": pod_metadata(spec.pod, pod_labels, {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(SERVER_PORT),
                    "prometheus.io/path": "/metrics"}),
                "spec": with_pod_settings({
                    "securityContext": RESTRICTED_POD,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 30,
                    "enableServiceLinks": False,
                    "containers": containers,
                    "volumes": [{"name": "handoff", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}, *volumes],
                }, spec.pod),
            },
        },
    }


_SERVICE_PORTS = [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"},
                  {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                   "appProtocol": "kubernetes.io/h2c"}]


def service(isvc: Isvc) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(isvc, service_name(isvc), COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(isvc),
            "ports": _SERVICE_PORTS,
        },
    }


def role_service_name(isvc: Isvc, role: str) -> str:
    return short_name(isvc.name, role)


def role_service_label_selector(isvc: Isvc) -> str:
    """Finds the role Services (and not the all-pods Service, which has no role label)."""
    return ",".join([*(f"{k}={v}" for k, v in selector(isvc).items()), LABEL_ROLE])


def role_service(isvc: Isvc, role: str) -> dict[str, Any]:
    """A Service of one role's pods only: a backend the HTTPRoute can weigh on its own."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(isvc, role_service_name(isvc, role), COMPONENT, **{LABEL_ROLE: role}),
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector(isvc), LABEL_ROLE: role},
            "ports": _SERVICE_PORTS,
        },
    }


def route_weights(canary_percent: int | None) -> dict[str, int]:
    """Backend weight per role; None (no canary) sends everything to the primary. Weights are relative
    in the Gateway API, so summing to 100 makes each one read as a percentage."""
    if canary_percent is None:
        return {"primary": 100}
    return {"primary": 100 - canary_percent, "canary": canary_percent}


def http_route(isvc: Isvc, weights: dict[str, int]) -> dict[str, Any]:
    """The HTTPRoute `<name>`: one rule, every path, the role Services weighed by `weights`."""
    gateway = isvc.spec.gateway
    # Group and kind are left to the CRD's defaults (a Gateway): only what the user said is applied.
    spec: dict[str, Any] = {"parentRefs": [r.wire() for r in gateway.parent_refs]}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    spec["rules"] = [{"backendRefs": [{"name": role_service_name(isvc, role), "port": SERVICE_PORT, "weight": weight}
                                      for role, weight in weights.items()]}]
    return {
        "apiVersion": ROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": child_metadata(isvc, service_name(isvc), COMPONENT),
        "spec": spec,
    }


def service_url(isvc: Isvc) -> str:
    return f"http://{service_name(isvc)}.{isvc.namespace}.svc.cluster.local"


def hpa(isvc: Isvc, role: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    scaling = isvc.spec.autoscaling
    metrics: list[dict[str, Any]] = [{
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization",
                                               "averageUtilization": scaling.target_cpu_utilization}},
    }]
    if scaling.target_requests_per_second:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": "kiln_requests_per_second"},
            "target": {"type": "AverageValue", "averageValue": str(scaling.target_requests_per_second)}}})
    name = deployment_name(isvc, role)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(isvc, name, COMPONENT, **{LABEL_ROLE: role}),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min_replicas,
            "maxReplicas": max(min_replicas, max_replicas),
            "metrics": metrics,
        },
    }


def pdb(isvc: Isvc) -> dict[str, Any]:
    # maxUnavailable rather than minAvailable: a one-replica service must not block node drains forever.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata(isvc, service_name(isvc), COMPONENT),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(isvc)}},
    }


def canary_max_replicas(max_replicas: int, percent: int) -> int:
    return max(1, math.ceil(max_replicas * percent / 100))
