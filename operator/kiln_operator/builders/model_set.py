"""Children of an InferenceService serving a model set (`spec.models`): one Deployment of kiln-serve in
its multi-model mode, and the ConfigMap `<name>-models` holding the table of what it serves.

The table is a mounted file, not part of the pod template: a promotion of one model rewrites the
ConfigMap and every server picks the change up by itself (it polls the file), so no pod restarts and
the other models never stop answering. The kubelet refreshes a mounted ConfigMap when it next syncs
the pod; the operator makes that happen at once by annotating the pods with the table's hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..api.inference import ModelSet
from ..config import OperatorConfig
from .meta import LABEL_ROLE, child_metadata
from .serving import COMPONENT, SERVER_PORT, Isvc, Mv, env_vars, server_container, serving_deployment

MODELS_DIR = "/etc/kiln/models"
MODELS_KEY = "models.json"
# On the serving pods: the hash of the table they should have, so the kubelet syncs them (and so
# refreshes the mounted file) as soon as it changes.
TABLE_ANNOTATION = "kiln.dev/models-hash"
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def memory_bytes(quantity: str) -> int:
    """`512Mi` -> 536870912 (the API's pattern admits only these suffixes)."""
    number, unit = re.fullmatch(r"([0-9]+)([A-Za-z]*)", quantity).groups()
    return int(number) * _UNITS[unit]


def table_name(isvc: Isvc) -> str:
    return f"{isvc.name}-models"


def table_entry(mv: Mv) -> dict[str, Any]:
    """One model of kiln-serve's table (docs/pod-contract.md, "Many models per server")."""
    spec = mv.spec
    artifact = spec.artifact
    onnx = artifact.onnx if artifact.onnx and artifact.onnx.parity_verified else None
    entry = {"name": spec.model_name, "version": str(spec.version), "modelVersion": mv.name,
             "uri": artifact.uri, "sha256": artifact.sha256, "format": artifact.format,
             "allowUnsafe": artifact.allow_unsafe, "signature": spec.signature.wire()}
    if onnx:
        entry.update(onnxUri=onnx.uri, onnxSha256=onnx.sha256)
    return entry


def table(isvc: Isvc, served: list[Mv]) -> dict[str, Any]:
    """The ConfigMap of the table: one entry per model, sorted by model name."""
    models = [table_entry(mv) for mv in sorted(served, key=lambda m: m.spec.model_name)]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(isvc, table_name(isvc), COMPONENT),
        "data": {MODELS_KEY: json.dumps({"models": models}, sort_keys=True, separators=(",", ":"))},
    }


def table_hash(configmap: dict[str, Any]) -> str:
    return hashlib.sha256(configmap["data"][MODELS_KEY].encode()).hexdigest()[:20]


def server_env(isvc: Isvc, models: ModelSet) -> list[dict[str, str]]:
    batching = isvc.spec.batching
    return env_vars({
        "KILN_MODELS_FILE": f"{MODELS_DIR}/{MODELS_KEY}",
        "KILN_MEMORY_BUDGET_BYTES": memory_bytes(models.memory_budget),
        "KILN_PORT": SERVER_PORT,
        "KILN_MAX_BATCH_SIZE": batching.max_batch_size,
        "KILN_MAX_LATENCY_MS": batching.max_latency_ms,
        # No drift sidecar: the hand-off is per model (docs/multi-model.md, "What a model set leaves out").
        "KILN_HANDOFF_SOCKET": "off",
    })


def deployment(isvc: Isvc, cfg: OperatorConfig) -> dict[str, Any]:
    """The one Deployment of a model set: its pod template names no model, so no promotion restarts it."""
    mount = {"name": "models", "mountPath": MODELS_DIR, "readOnly": True}
    container = server_container(isvc, cfg, server_env(isvc, isvc.spec.models), (mount,))
    volume = {"name": "models", "configMap": {"name": table_name(isvc)}}
    return serving_deployment(isvc, "primary", {LABEL_ROLE: "primary"}, [container], (volume,))
