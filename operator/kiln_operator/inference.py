"""InferenceService reconcile, as a pure plan: observed state in, manifests, deletions, status and Events out.

The version a service is *serving* (`status.modelVersion`) only moves once the rollout of a new
version completed. A rollout that misses its deadline or whose server keeps failing (a bad digest,
a model that does not load) is rolled back to the serving version, and the bad version stays out
(`status.rolledBackVersion`) until the spec or the stage points at another one.

A canary's share is realised by the replica ratio, or, with `spec.gateway` on a cluster that serves the
Gateway API's HTTPRoute, by the route's backend weights (see builders/serving.py). Whether the cluster
serves it is observed, like everything else, so the plan stays a pure function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import registry
from .api.inference import Canary, ModelSelector
from .builders import serving
from .builders.meta import LABEL_ROLE, LABEL_VERSION
from .builders.serving import ROUTE_API_VERSION, Isvc, Mv
from .config import OperatorConfig
from .plan import Plan

ROLES = ("primary", "canary")
# Fewer answers than this say nothing about a version's error rate.
MIN_ANSWERS = 20
# Container states that mean "this version will not come up by waiting".
FATAL_WAITING = {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError",
                 "InvalidImageName", "CreateContainerError"}


@dataclass
class Observed:
    model_versions: list[Mv]  # those whose spec validates
    deployments: dict[str, dict[str, Any]]  # role -> Deployment
    pods: list[dict[str, Any]]
    # (5xx answers, all answers) of the primary pods of versions not yet serving (rollout_metrics).
    answers: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Whether the cluster serves gateway.networking.k8s.io/v1 httproutes (API discovery).
    route_api: bool = False
    # This service's own HTTPRoute, and the roles whose per-role Service exists: what to delete once
    # the route is no longer wanted.
    route: dict[str, Any] | None = None
    role_services: set[str] = field(default_factory=set)
    # Whether `pods` is every pod of the service (the operator's watch), so that ready replicas are
    # counted from the pods themselves: a killed pod shows at once, not when the controller-manager,
    # busy with other Deployments, next updates the Deployment's status.
    pods_complete: bool = False


class Unresolved(Exception):
    """The spec points at no usable ModelVersion; the message names what is missing."""


def resolve(selector: ModelSelector | Canary, model: str | None, mvs: list[Mv]) -> Mv:
    """`model`: whose version in `selector.stage` is meant (a canary's is the primary's model)."""
    if selector.version_ref:
        name = selector.version_ref.name
        found = next((m for m in mvs if m.name == name), None)
        if found is None:
            raise Unresolved(f"ModelVersion {name!r} does not exist")
        return found
    stage = selector.stage
    staged = [m for m in mvs if m.spec.model_name == model and m.spec.stage == stage]
    if not staged:
        raise Unresolved(f"no ModelVersion of model {model!r} is in stage {stage}")
    # Promotion leaves at most one version per stage; should two briefly coexist, the newest wins.
    return max(staged, key=lambda m: m.spec.version)


def unverified_reason(mv: Mv) -> tuple[str, str]:
    """(reason, message) for a version that may not be rolled out yet: still verifying, or failed."""
    name = mv.name
    check = next((c for c in mv.status.get("conditions") or [] if c.get("type") == "Verified"), {})
    if check.get("status") == "False":
        return "VersionNotVerified", (f"{name} failed verification ({check.get('reason')}: {check.get('message')}); "
                                      "it is never rolled out (spec.allowUnverified opts in)")
    return "WaitingForVerification", f"waiting for {name}'s artifact digest to be verified before rolling it out"


def version_of(deployment: dict[str, Any] | None) -> str | None:
    """The ModelVersion a Deployment's pod template serves."""
    if not deployment:
        return None
    return deployment["spec"]["template"]["metadata"]["labels"].get(LABEL_VERSION)


def rollout_complete(deployment: dict[str, Any] | None) -> bool:
    if not deployment:
        return False
    status = deployment.get("status") or {}
    wanted = status.get("replicas", 0)
    return (status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1)
            and wanted > 0
            and status.get("updatedReplicas", 0) == wanted
            and status.get("availableReplicas", 0) == wanted)


def rollout_failure(deployment: dict[str, Any] | None, pods: list[dict[str, Any]], version: str) -> str | None:
    """Why the rollout to `version` cannot succeed, or None while it still may."""
    for cond in (deployment or {}).get("status", {}).get("conditions", []):
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return f"not ready within the progress deadline ({cond.get('message', '')})"
    for pod in pods:
        if pod["metadata"].get("labels", {}).get(LABEL_VERSION) != version:
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses", []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if waiting.get("reason") in FATAL_WAITING or (last.get("exitCode") and cs.get("restartCount", 0) >= 1):
                # CrashLoopBackOff's own message only names the growing back-off delay: a condition
                # quoting it would change (and be written) at every restart.
                detail = waiting.get("reason") if waiting.get("reason") == "CrashLoopBackOff" else waiting.get("message")
                why = (last.get("message") or detail or waiting.get("reason") or "").strip()
                return f"container {cs['name']} keeps failing: {why or 'exit code ' + str(last.get('exitCode'))}"
    return None


def error_rate_failure(answers: tuple[float, float], max_error_rate: float) -> str | None:
    errors, total = answers
    if total >= MIN_ANSWERS and errors / total > max_error_rate:
        return (f"{errors:.0f} of its {total:.0f} answers were 5xx ({errors / total:.0%}), "
                f"above maxErrorRate {max_error_rate:.0%}")
    return None


def plan(isvc: Isvc, observed: Observed, cfg: OperatorConfig) -> Plan:
    spec, status = isvc.spec, isvc.status
    out = Plan()
    serving_name = status.get("modelVersion")
    rolled_back = status.get("rolledBackVersion")
    by_name = {m.name: m for m in observed.model_versions}

    try:
        target = resolve(spec.model, spec.model.model_name, observed.model_versions)
    except Unresolved as exc:
        out.conditions.append(("Ready", "False", "ModelVersionNotFound", str(exc)))
        out.events.append(("Warning", "ModelVersionNotFound", str(exc)))
        return out
    target_name = target.name
    allow_unverified = spec.allow_unverified
    if target_name != serving_name and not allow_unverified and not registry.verified(target):
        reason, message = unverified_reason(target)
        if serving_name not in by_name:
            out.conditions.append(("Ready", "False", reason, message))
            return out
        # Keep serving what serves; the version's own verification wakes this service again.
        out.conditions.append(("Progressing", "False", reason, f"{message}; still serving {serving_name}"))
        target, target_name = by_name[serving_name], serving_name

    primary_dep = observed.deployments.get("primary")
    deployed = version_of(primary_dep)
    # Stay on the serving version while the target is the one that was rolled back.
    desired = by_name.get(serving_name, target) if target_name == rolled_back else target
    desired_name = desired.name

    if desired_name != serving_name and deployed == desired_name:
        rollout = spec.rollout
        failure = (rollout_failure(primary_dep, observed.pods, desired_name)
                   or error_rate_failure(observed.answers.get(desired_name, (0, 0)), rollout.max_error_rate))
        if failure and rollout.auto_rollback and serving_name in by_name:
            message = f"rolled back {desired_name} to {serving_name}: {failure}"
            out.events.append(("Warning", "RolledBack", message))
            out.conditions.append(("RolledBack", "True", "RolloutFailed", message))
            out.status["rolledBackVersion"] = desired_name
            desired, desired_name = by_name[serving_name], serving_name
        elif failure:
            out.conditions.append(("Progressing", "False", "RolloutFailed", f"{desired_name}: {failure}"))
        elif rollout_complete(primary_dep):
            out.events.append(("Normal", "RolledOut", f"now serving {desired_name}"))
            out.status["modelVersion"] = serving_name = desired_name
    elif desired_name == serving_name == deployed and not rollout_complete(primary_dep):
        pass  # scaling or restarting: nothing to decide
    if target_name != rolled_back and rolled_back and "rolledBackVersion" not in out.status:
        # The spec or the stage moved on: forget the bad version.
        out.status["rolledBackVersion"] = None
        out.conditions.append(("RolledBack", "False", "NewTarget", f"now targeting {target_name}"))

    scaling = spec.autoscaling
    canary_spec = spec.canary
    canary = None
    if canary_spec and canary_spec.traffic_percent > 0:
        try:
            canary = resolve(canary_spec, target.spec.model_name, observed.model_versions)
        except Unresolved as exc:
            out.conditions.append(("Ready", "False", "CanaryNotFound", str(exc)))
            out.events.append(("Warning", "CanaryNotFound", str(exc)))
            return out
        if not allow_unverified and not registry.verified(canary) and canary.name != status.get("canaryVersion"):
            reason, message = unverified_reason(canary)
            out.conditions.append(("Progressing", "False", reason, f"canary: {message}"))
            canary = by_name.get(status.get("canaryVersion") or "")
    percent = canary_spec.traffic_percent if canary else 0
    routed = spec.gateway is not None and observed.route_api
    if routed:
        # The route's weights set the share: each role only needs enough replicas for its own load.
        primary_min, canary_min = scaling.min_replicas, 1
    else:
        primary_min, canary_min = serving.split_replicas(scaling.min_replicas, percent)
    max_replicas = scaling.max_replicas

    out.apply.append(serving.deployment(isvc, desired, "primary", cfg))
    out.apply.append(serving.hpa(isvc, "primary", max(primary_min, 1), max_replicas))
    if canary is not None:
        out.apply.append(serving.deployment(isvc, canary, "canary", cfg))
        out.apply.append(serving.hpa(isvc, "canary", canary_min, serving.canary_max_replicas(max_replicas, percent)))
    elif "canary" in observed.deployments:
        name = serving.deployment_name(isvc, "canary")
        out.delete += [("apps/v1", "Deployment", name), ("autoscaling/v2", "HorizontalPodAutoscaler", name)]
    out.apply.append(serving.service(isvc))
    out.apply.append(serving.pdb(isvc))
    weights = serving.route_weights(percent if canary else None) if routed else None
    route_children(out, isvc, observed, weights)

    out.status.update(observed_status(isvc, observed, serving_name, canary, weights))
    ready_pods = out.status["readyReplicas"]
    rolling = desired_name != serving_name
    if serving_name and ready_pods > 0:
        out.conditions.append(("Ready", "True", "Serving", f"serving {serving_name}"
                               + (f", canary {canary.name} at {percent}%" if canary else "")))
    elif serving_name:
        out.conditions.append(("Ready", "False", "NoReadyReplicas", f"{serving_name} has no ready replica"))
    else:
        out.conditions.append(("Ready", "False", "RollingOut", f"waiting for {desired_name} to become ready"))
    if not any(c[0] == "Progressing" for c in out.conditions):
        out.conditions.append(("Progressing", "True" if rolling else "False",
                               "RollingOut" if rolling else "RolloutComplete",
                               f"rolling out {desired_name}" if rolling else f"{serving_name} is rolled out"))
    return out


def route_children(out: Plan, isvc: Isvc, observed: Observed, weights: dict[str, int] | None) -> None:
    """The HTTPRoute and the role Services it weighs when `weights` are given; otherwise removes the
    ones a former route left, and says why a wanted route is not there."""
    name = serving.service_name(isvc)
    if weights is not None:
        for role in weights:
            out.apply.append(serving.role_service(isvc, role))
        out.apply.append(serving.http_route(isvc, weights))
        shares = ", ".join(f"{role} {weight}%" for role, weight in weights.items())
        out.conditions.append(("Routed", "True", "HTTPRoute", f"HTTPRoute {name} weighs {shares}"))
    elif isvc.spec.gateway:
        message = (f"spec.gateway is set but the cluster serves no {ROUTE_API_VERSION} HTTPRoute "
                   "(install the Gateway API CRDs): the canary's share is set by the replica ratio")
        out.conditions.append(("Routed", "False", "GatewayAPIMissing", message))
        out.events.append(("Warning", "GatewayAPIMissing", message))
    elif any(c.get("type") == "Routed" for c in isvc.status.get("conditions") or []):
        # Only a service that was routed before says so: the others never had this condition.
        out.conditions.append(("Routed", "False", "NoGateway",
                               "spec.gateway is not set: the canary's share is set by the replica ratio"))
    if observed.route is not None and weights is None:
        out.delete.append((ROUTE_API_VERSION, "HTTPRoute", name))
    for role in sorted(observed.role_services - set(weights or ())):
        out.delete.append(("v1", "Service", serving.role_service_name(isvc, role)))


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _serving_ready(pod: dict[str, Any], role: str) -> bool:
    meta = pod["metadata"]
    return meta.get("labels", {}).get(LABEL_ROLE) == role and not meta.get("deletionTimestamp") and pod_ready(pod)


def observed_status(isvc: Isvc, observed: Observed, serving_name: str | None,
                     canary: Mv | None, weights: dict[str, int] | None) -> dict[str, Any]:
    if observed.pods_complete:
        ready = {role: sum(1 for p in observed.pods if _serving_ready(p, role)) for role in ROLES}
    else:
        ready = {role: (observed.deployments.get(role) or {}).get("status", {}).get("readyReplicas", 0) or 0
                 for role in ROLES}
    replicas = {role: (observed.deployments.get(role) or {}).get("status", {}).get("replicas", 0) or 0
                for role in ROLES}
    total_ready = sum(ready.values())
    traffic = []
    if serving_name:
        if weights is not None:  # the route's weights, whatever the replicas
            primary_share = weights["primary"]
        else:
            primary_share = 100 if not canary else round(100 * ready["primary"] / max(total_ready, 1))
        traffic.append({"version": serving_name, "percent": primary_share})
        if canary:
            traffic.append({"version": canary.name, "percent": 100 - primary_share})
    return {
        "url": serving.service_url(isvc),
        "canaryVersion": canary.name if canary else None,
        "traffic": traffic,
        "replicas": sum(replicas.values()),
        "readyReplicas": total_ready,
    }
