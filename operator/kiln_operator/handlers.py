"""kopf handlers: thin adapters from kopf's events to the reconcile logic.

Every kind validates its spec the same way (`reconcile.decide`); kinds with children add an
observe → plan → act step. Handlers are sync: kopf runs them in its thread pool, so the blocking
Kubernetes client never stalls the event loop.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import config, events, inference, k8s
from .api import GROUP, KINDS, VERSION
from .api.kinds import API_VERSION, Kind, kind_by_name
from .builders import serving
from .reconcile import decide, is_news, status_patch

CONFIG = config.from_env()


def _validate(kind: Kind, body: dict[str, Any], patch: kopf.Patch, logger: Any) -> bool:
    """Writes Ready=False for a spec the operator cannot act on; returns whether the spec is usable."""
    outcome = decide(kind, body)
    if outcome.ready == "True":
        return True
    if is_news(body, outcome):
        patch.status.update(status_patch(body, outcome))
        events.post(body, "Warning", outcome.reason, outcome.message)
        logger.warning(f"{kind.kind} {outcome.reason}: {outcome.message}")
    return False


def _register_accepting(kind: Kind) -> None:
    """Kinds whose work arrives with later issues: a valid spec is reported as accepted."""

    def reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
        plain = dict(body)
        outcome = decide(kind, plain)
        if not is_news(plain, outcome):
            return
        patch.status.update(status_patch(plain, outcome))
        events.post(plain, "Warning" if outcome.warning else "Normal", outcome.reason, outcome.message)
        logger.info(f"{kind.kind} Ready={outcome.ready} reason={outcome.reason}: {outcome.message}")

    reconcile.__name__ = f"reconcile_{kind.singular}"
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(GROUP, VERSION, kind.plural, id="reconcile")(reconcile)


ISVC = kind_by_name("InferenceService")


def observe_inference(isvc: dict[str, Any]) -> inference.Observed:
    ns, name = isvc["metadata"]["namespace"], isvc["metadata"]["name"]
    selector = ",".join(f"{k}={v}" for k, v in serving.selector(isvc).items())
    deployments = {}
    for role in inference.ROLES:
        dep = k8s.get("apps/v1", "Deployment", ns, serving.deployment_name(isvc, role))
        if dep and any(ref.get("uid") == isvc["metadata"]["uid"]
                       for ref in dep["metadata"].get("ownerReferences") or []):
            deployments[role] = dep
    return inference.Observed(
        model_versions=k8s.list_(API_VERSION, "ModelVersion", ns),
        deployments=deployments,
        pods=k8s.list_("v1", "Pod", ns, label_selector=selector),
    )


def reconcile_inference(body: dict[str, Any], patch: kopf.Patch, logger: Any) -> None:
    if not _validate(ISVC, body, patch, logger):
        return
    result = inference.plan(body, observe_inference(body), CONFIG)
    for manifest in result.apply:
        k8s.apply(manifest)
    for api_version, kind, name in result.delete:
        k8s.delete(api_version, kind, body["metadata"]["namespace"], name)
    conditions, changed = events.merge_conditions(body, result.conditions)
    current = body.get("status") or {}
    update = {k: v for k, v in result.status.items() if current.get(k) != v}
    if changed or update or current.get("observedGeneration") != body["metadata"].get("generation"):
        patch.status.update({**update, "conditions": conditions,
                             "observedGeneration": body["metadata"].get("generation")})
    for type_, reason, message in result.events:
        # Plan events repeat while a state lasts; post them only when their condition is news.
        if reason in ("RolledOut", "RolledBack") or "Ready" in changed:
            events.post(body, type_, reason, message)
            logger.info(f"{reason}: {message}")


@kopf.on.create(GROUP, VERSION, ISVC.plural, id="reconcile")
@kopf.on.update(GROUP, VERSION, ISVC.plural, id="reconcile")
@kopf.on.resume(GROUP, VERSION, ISVC.plural, id="reconcile")
def inferenceservice_changed(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile_inference(dict(body), patch, logger)


@kopf.timer(GROUP, VERSION, ISVC.plural, interval=3.0, initial_delay=3.0, id="observe")
def inferenceservice_observe(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    # Promotions (a ModelVersion's stage), rollouts and crashes happen outside this object: look again.
    reconcile_inference(dict(body), patch, logger)


for _kind in KINDS:
    if _kind is not ISVC:
        _register_accepting(_kind)
