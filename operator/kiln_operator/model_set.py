"""InferenceService with `spec.models`, as a pure plan: many models from one Deployment.

Which version of each model is served is a table (builders/model_set.py), not the pod template, so a
promotion changes one line of it and restarts nothing. What a single-model service does per version
(rollout deadline, error-rate rollback, canary) has no place here: kiln-serve loads a model's new
version beside the old one and switches only once it loaded, and keeps the old one if it cannot
(docs/multi-model.md). `status.models` is the table the servers are given.
"""

from __future__ import annotations

from . import registry
from .api.inference import ModelSet
from .builders import model_set, serving
from .config import OperatorConfig
from .inference import Observed, observed_status, route_children, rollout_complete, unverified_reason
from .builders.serving import Isvc, Mv
from .plan import Plan

_LISTED = 5  # models named in the Ready message; the rest are counted


def matches(models: dict, mv: dict) -> bool:
    """Whether ModelVersion `mv`, as stored, can be one of the set's versions, its stage aside: named in
    `versionRefs`, or of a model in `modelNames` (all when unset) carrying every `matchLabels` label.
    On stored dicts, because the watches (dependents.py) ask it of cached objects too."""
    refs = models.get("versionRefs")
    if refs:
        return any((ref or {}).get("name") == mv["metadata"]["name"] for ref in refs)
    names = models.get("modelNames")
    labels = mv["metadata"].get("labels") or {}
    return ((not names or (mv.get("spec") or {}).get("modelName") in names)
            and all(labels.get(k) == v for k, v in (models.get("matchLabels") or {}).items()))


def selected(models: ModelSet, mvs: list[Mv]) -> tuple[dict[str, Mv], list[str]]:
    """Each selected model's wanted version by model name, and what could not be found."""
    missing: list[str] = []
    wanted: dict[str, Mv] = {}
    if models.version_refs:
        by_name = {m.name: m for m in mvs}
        for ref in models.version_refs:
            mv = by_name.get(ref.name)
            if mv is None:
                missing.append(f"ModelVersion {ref.name!r} does not exist")
            elif _newer(mv, wanted.get(mv.spec.model_name)):
                wanted[mv.spec.model_name] = mv
        return wanted, missing
    names = set(models.model_names or ())
    stored = models.wire()
    for mv in mvs:
        model = mv.spec.model_name
        if mv.spec.stage == models.stage and matches(stored, mv.body) and _newer(mv, wanted.get(model)):
            wanted[model] = mv
    missing += [f"no ModelVersion of model {name!r} is in stage {models.stage}" for name in sorted(names - set(wanted))]
    return wanted, missing


def _newer(mv: Mv, than: Mv | None) -> bool:
    # Promotion leaves one version per stage; should two briefly coexist, the newest wins.
    return than is None or mv.spec.version > than.spec.version


def plan(isvc: Isvc, observed: Observed, cfg: OperatorConfig) -> Plan:
    spec, status = isvc.spec, isvc.status
    out = Plan()
    by_name = {m.name: m for m in observed.model_versions}
    before = {entry["model"]: entry["version"] for entry in status.get("models") or []}
    wanted, notes = selected(spec.models, observed.model_versions)
    served: dict[str, Mv] = {}
    for model, mv in sorted(wanted.items()):
        if spec.allow_unverified or registry.verified(mv) or before.get(model) == mv.name:
            served[model] = mv
            continue
        notes.append(unverified_reason(mv)[1])
        kept = by_name.get(before.get(model) or "")
        if kept is not None:  # keep serving what serves; the version's verification wakes us again
            served[model] = kept

    table = model_set.table(isvc, list(served.values()))
    out.apply.append(table)
    out.apply.append(model_set.deployment(isvc, cfg))
    scaling = spec.autoscaling
    out.apply.append(serving.hpa(isvc, "primary", scaling.min_replicas, scaling.max_replicas))
    if "canary" in observed.deployments:  # left by a single-model spec this one replaced
        name = serving.deployment_name(isvc, "canary")
        out.delete += [("apps/v1", "Deployment", name), ("autoscaling/v2", "HorizontalPodAutoscaler", name)]
    out.apply.append(serving.service(isvc))
    out.apply.append(serving.pdb(isvc))
    routed = spec.gateway is not None and observed.route_api
    route_children(out, isvc, observed, serving.route_weights(None) if routed else None)

    # The kubelet refreshes a mounted ConfigMap when it syncs the pod: a changed annotation makes it.
    digest = model_set.table_hash(table)
    for pod in observed.pods:
        meta = pod["metadata"]
        if not meta.get("deletionTimestamp") and (meta.get("annotations") or {}).get(model_set.TABLE_ANNOTATION) != digest:
            out.annotate.append(("v1", "Pod", meta["name"], {model_set.TABLE_ANNOTATION: digest}))

    now = {model: mv.name for model, mv in served.items()}
    out.status.update(observed_status(isvc, observed, None, None, None))
    out.status.update(modelVersion=None, models=[{"model": m, "version": v} for m, v in sorted(now.items())])
    changes = _changes(before, now)
    if changes and before:
        out.events.append(("Normal", "ModelsUpdated", changes))

    ready_pods = out.status["readyReplicas"]
    if not served:
        why = "; ".join(notes) or "no ModelVersion matches spec.models"
        out.conditions.append(("Ready", "False", "ModelVersionNotFound", why))
        out.events.append(("Warning", "ModelVersionNotFound", why))
    elif ready_pods > 0:
        out.conditions.append(("Ready", "True", "Serving", f"serving {_listing(now)}"))
    else:
        out.conditions.append(("Ready", "False", "NoReadyReplicas", f"no ready replica for {_listing(now)}"))
    if notes and served:
        out.conditions.append(("Progressing", "False", "ModelsMissing", "; ".join(notes)))
    elif not rollout_complete(observed.deployments.get("primary")):
        out.conditions.append(("Progressing", "True", "RollingOut", "the model servers are rolling out"))
    else:
        out.conditions.append(("Progressing", "False", "RolloutComplete", f"{len(served)} models in the table"))
    return out


def _listing(versions: dict[str, str]) -> str:
    names = [f"{model} ({version})" for model, version in sorted(versions.items())]
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{len(names)} model{'s' if len(names) != 1 else ''}: " + ", ".join(names[:_LISTED]) + more


def _changes(before: dict[str, str], now: dict[str, str]) -> str:
    """What a new table changes, in words: `churn: churn-v3 -> churn-v4; fraud added (fraud-v1)`."""
    parts = []
    for model in sorted(before.keys() | now.keys()):
        old, new = before.get(model), now.get(model)
        if old == new:
            continue
        parts.append(f"{model} added ({new})" if old is None else
                     f"{model} removed (was {old})" if new is None else f"{model}: {old} -> {new}")
    return "; ".join(parts)
