"""Which reconciles a change calls for: the object itself, the owner of a child, and the objects that
depend on a ModelVersion or a Dataset. A pure function of the changed object and the cache."""

from __future__ import annotations

from typing import Any

from . import model_set
from .cache import KILN_KINDS, Cache, Key, owner_of
from .registry import serves


def _selectors(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = isvc.get("spec") or {}
    return [s for s in (spec.get("model"), spec.get("canary")) if isinstance(s, dict)]


def follows(isvc: dict[str, Any], mv: dict[str, Any], cache: Cache) -> bool:
    """Whether a change of `mv` (its stage, its verification, its existence) can change what `isvc` serves."""
    name, model = mv["metadata"]["name"], (mv.get("spec") or {}).get("modelName")
    status = isvc.get("status") or {}
    if name in serves(status) or name == status.get("rolledBackVersion"):
        return True
    models = (isvc.get("spec") or {}).get("models")
    if isinstance(models, dict):
        return model_set.matches(models, mv)
    for selector in _selectors(isvc):
        if (selector.get("versionRef") or {}).get("name") == name or selector.get("modelName") == model:
            return True
    # A selector by stage without a model name follows the model of the primary's version.
    if any(s.get("stage") and not s.get("modelName") for s in _selectors(isvc)):
        primary = ((isvc.get("spec") or {}).get("model") or {}).get("versionRef", {}).get("name") \
            or status.get("modelVersion")
        served = cache.get("ModelVersion", isvc["metadata"]["namespace"], primary) if primary else None
        return bool(served) and (served.get("spec") or {}).get("modelName") == model
    return False


def of(obj: dict[str, Any], cache: Cache) -> list[Key]:
    kind, meta = obj.get("kind"), obj["metadata"]
    ns = meta.get("namespace", "")
    if kind not in KILN_KINDS:
        owner = owner_of(obj)
        return [owner] if owner else []
    keys: list[Key] = [(kind, ns, meta["name"])]
    if kind == "ModelVersion":
        model = (obj.get("spec") or {}).get("modelName")
        keys += [("InferenceService", ns, i["metadata"]["name"]) for i in cache.list("InferenceService", ns)
                 if follows(i, obj, cache)]
        keys += [("TrainingPipeline", ns, p["metadata"]["name"]) for p in cache.list("TrainingPipeline", ns)
                 if (p.get("spec") or {}).get("modelName") == model]
    elif kind == "InferenceService":
        # What it serves is in its status: those versions' servedBy follows.
        keys += [("ModelVersion", ns, v) for v in serves(obj.get("status") or {}) if v]
        keys += [("ModelVersion", ns, m["metadata"]["name"]) for m in cache.list("ModelVersion", ns)
                 if meta["name"] in ((m.get("status") or {}).get("servedBy") or [])]
    elif kind == "Dataset":
        keys += [("TrainingPipeline", ns, p["metadata"]["name"]) for p in cache.list("TrainingPipeline", ns)
                 if ((p.get("spec") or {}).get("datasetRef") or {}).get("name") == meta["name"]]
    return keys
