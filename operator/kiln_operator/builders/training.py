"""Jobs of the training loop: dataset validation, a run's trials (one Indexed Job of shards), selection.

The runtime reads one JSON configuration (docs/pod-contract.md, kiln-train): the Dataset and
TrainingPipeline specs as stored, the run's output prefix, the dataset version and lineage. It
reports through the termination message; its exit code says whether a retry can help, and the
Jobs' podFailurePolicy turns a permanent error into a failed Job at once (no retry storm).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..api import DatasetSpec, ModelVersionSpec, TrainingPipelineSpec
from ..api.base import PodSettings, Resources, served
from ..api.training import Search
from ..config import OperatorConfig
from ..validation import Parsed
from .meta import LABEL_RUN, RESTRICTED_CONTAINER, RESTRICTED_POD, child_metadata, pod_metadata, short_name, \
    with_pod_settings

EXIT_PERMANENT = 10  # kiln-train: bad spec, bad data, wrong credentials: retrying cannot help
EXIT_CRASH = 12  # kiln-train: unexpected; retried only within the Job's small backoff
COMPONENT = "kiln-train"
# Finished Jobs stay a day for `kubectl logs`; the run history limit prunes them sooner.
FINISHED_TTL = 24 * 3600


Dataset = Parsed[DatasetSpec]
Pipeline = Parsed[TrainingPipelineSpec]
Mv = Parsed[ModelVersionSpec]


def validation_job_name(dataset: Dataset, token: str) -> str:
    return short_name(dataset.name, "validate", token)


def run_job_name(pipeline: Pipeline, run_id: str, step: str) -> str:
    return short_name(pipeline.name, run_id, step)


# Marks the ModelVersions runs registered, whose stage the registry may move (registry.to_archive).
MANAGED_BY = "kiln-operator"
# kiln_runtime.store.SOURCE_ENV_PREFIX: where the runtime looks for a Dataset's own credentials.
SOURCE_ENV_PREFIX = "KILN_SOURCE_"


def _env_from(cfg: OperatorConfig, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The store Secret, and the Dataset's own (source.secretRef) under a prefix: a step that reads the
    data may read it from elsewhere than the store it writes to, with other credentials."""
    source_secret = (((config.get("dataset") or {}).get("source") or {}).get("secretRef") or {}).get("name")
    own = [{"prefix": SOURCE_ENV_PREFIX, "secretRef": {"name": source_secret}}] if source_secret else []
    return cfg.store_env_from() + own


# kiln_runtime.train.trial.POD_ENV: the pod's own name, which the runtime records beside what it trained,
# so the operator can read the image digest that trained a model from that pod's status.
POD_NAME_ENV = {"name": "KILN_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def _container(cfg: OperatorConfig, args: list[str], config: dict[str, Any],
               resources: Resources | None, trains: bool = False) -> dict[str, Any]:
    """`trains`: a step that fits models (the trials and the selection), which says in which pod it did."""
    return {
        "name": "train",
        "image": cfg.runtime_image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["kiln-train", *args],
        "env": [{"name": "KILN_TRAIN_CONFIG", "value": json.dumps(config, separators=(",", ":"), sort_keys=True)},
                *([POD_NAME_ENV] if trains else []), *cfg.store_env()],
        "envFrom": _env_from(cfg, config),
        "resources": (resources and resources.wire()) or {"requests": {"cpu": "250m", "memory": "256Mi"},
                                                          "limits": {"memory": "2Gi"}},
        "securityContext": RESTRICTED_CONTAINER,
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _job(owner: Parsed, name: str, container: dict[str, Any], *, labels: dict[str, str],
         pod: PodSettings | None = None, service_account: str | None = None,
         extra_spec: dict[str, Any] | None = None, on_permanent: str = "FailJob") -> dict[str, Any]:
    """`pod`: the owner's `spec.pod` (ServiceAccount, scheduling, labels, annotations; Kiln's labels win);
    `service_account`: the ServiceAccount when `pod` names none."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": RESTRICTED_POD,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    meta = child_metadata(owner, name, COMPONENT, **labels)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "ttlSecondsAfterFinished": FINISHED_TTL,
            "podFailurePolicy": {"rules": [
                {"action": on_permanent, "onExitCodes": {"containerName": "train", "operator": "In",
                                                      "values": [EXIT_PERMANENT]}},
            ]},
            **(extra_spec or {}),
            "template": {"metadata": pod_metadata(pod, meta["labels"]),
                         "spec": with_pod_settings(pod_spec, pod, service_account)},
        },
    }


def validation_job(dataset: Dataset, token: str, output: str, cfg: OperatorConfig,
                   keep_versions: list[str] | None = None) -> dict[str, Any]:
    """`keep_versions`: the snapshots retention keeps; the Job deletes the others under `output`."""
    config = {"dataset": dataset.body["spec"], "output": output}
    if keep_versions is not None:
        config["keepVersions"] = keep_versions
    job = _job(dataset, validation_job_name(dataset, token),
               _container(cfg, ["validate-dataset"], config, None), labels={"kiln.dev/step": "validate"},
               pod=dataset.spec.pod, extra_spec={"backoffLimit": 2})
    return job


def run_config(pipeline: Pipeline, dataset: Dataset, run_id: str, output: str,
               production: Mv | None, cfg: OperatorConfig,
               version: dict[str, Any] | None = None, champion: Mv | None = None,
               generation: int | None = None) -> dict[str, Any]:
    """`version`: the status.versions entry to train on (its snapshot, never the moving source);
    `champion`: the ModelVersion now serving the model, which the new one must beat on the same rows;
    `generation`: the pipeline's metadata.generation when the run started."""
    version = version or {"version": dataset.status.get("version")}
    lineage = {"pipeline": pipeline.name, "run": run_id, "dataset": dataset.name,
               "datasetVersion": version.get("version"), "image": cfg.runtime_image}
    if generation is not None:
        lineage["pipelineGeneration"] = generation
    config = {
        "dataset": dataset.body["spec"],
        "pipeline": pipeline.body["spec"],
        "output": output,
        "datasetVersion": version.get("version"),
        "lineage": lineage,
    }
    if version.get("snapshotUri") and version.get("snapshotSha256"):
        config["datasetSnapshot"] = {"uri": version["snapshotUri"], "sha256": version["snapshotSha256"]}
    if champion:
        config["champion"] = {"name": champion.name, "artifact": champion.spec.artifact.wire(),
                              "signature": champion.spec.signature.wire(),
                              "margin": served(pipeline.spec.gates.beat_production_by) or 0.0}
    elif production:
        config["production"] = {"name": production.name, "metrics": served(production.spec.metrics)}
    return config


def trial_count(search: Search) -> int:
    """`trials`, but never more than the space has combinations: an index beyond them would only pay
    for a pod that imports scikit-learn to find nothing to train."""
    combinations = math.prod(len(values) for values in search.space.values())
    return max(1, min(search.trials, combinations))


def shard_count(search: Search) -> int:
    """Pods of the trials' Job: each trains every P-th trial in one process (the data read once).
    Successive halving runs in one pod, its `parallelism` being worker processes."""
    if search.strategy == "halving":
        return 1
    return min(search.parallelism, trial_count(search))


def trials_job(pipeline: Pipeline, run_id: str, config: dict[str, Any], cfg: OperatorConfig) -> dict[str, Any]:
    """One Indexed Job of P shards: the pod of index i trains trials i, i+P, i+2P, ... (the runtime
    reads i from $JOB_COMPLETION_INDEX)."""
    spec = pipeline.spec
    shards = shard_count(spec.search)
    return _job(pipeline, run_job_name(pipeline, run_id, "trials"),
                _container(cfg, ["trial", "--shards", str(shards)], config, spec.resources, trains=True),
                labels={LABEL_RUN: run_id, "kiln.dev/step": "trials"},
                pod=spec.pod, service_account=spec.service_account_name,
                # A shard whose every trial failed permanently fails its own index only.
                on_permanent="FailIndex",
                extra_spec={
                    "completionMode": "Indexed",
                    "completions": shards,
                    "parallelism": shards,
                    # Each shard retries on its own (skipping the trials it already finished); a bad
                    # shard fails alone and the run goes on with the others' trials.
                    "backoffLimitPerIndex": spec.backoff_limit,
                    "maxFailedIndexes": shards - 1,
                })


def select_job(pipeline: Pipeline, run_id: str, config: dict[str, Any], cfg: OperatorConfig) -> dict[str, Any]:
    spec = pipeline.spec
    return _job(pipeline, run_job_name(pipeline, run_id, "select"),
                _container(cfg, ["select"], config, spec.resources, trains=True),
                labels={LABEL_RUN: run_id, "kiln.dev/step": "select"},
                pod=spec.pod, service_account=spec.service_account_name, extra_spec={"backoffLimit": 1})


def verify_job_name(mv: Mv) -> str:
    return short_name(mv.name, "verify", mv.spec.artifact.sha256[:8])


def verify_job(mv: Mv, cfg: OperatorConfig) -> dict[str, Any]:
    """Checks the artifact's digest (and that it loads without running code) in a pod of the runtime
    image, so the operator never fetches a model itself. No `spec.pod` here: a ModelVersion has no pod
    settings of its own (and may have no pipeline), so the check runs as the namespace's default."""
    artifact = mv.spec.artifact
    args = ["verify", "--uri", artifact.uri, "--sha256", artifact.sha256]
    if artifact.onnx:  # the server may serve this file instead: it is checked alike
        args += ["--uri", artifact.onnx.uri, "--sha256", artifact.onnx.sha256]
    if artifact.allow_unsafe:
        args.append("--allow-unsafe")
    return _job(mv, verify_job_name(mv), _container(cfg, args, {}, None), labels={},
                extra_spec={"backoffLimit": 1, "activeDeadlineSeconds": 600})


def model_version(pipeline: Pipeline, run_id: str, version: int, summary_mv: dict[str, Any]) -> dict[str, Any]:
    """The registry entry for a passing run. Not owned by the pipeline: deleting a pipeline never
    deletes the models it produced."""
    spec = pipeline.spec
    model = spec.model_name
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {
            "name": f"{model}-v{version}",
            "namespace": pipeline.namespace,
            "labels": {"app.kubernetes.io/part-of": "kiln", "app.kubernetes.io/managed-by": MANAGED_BY,
                       "kiln.dev/model": model, "kiln.dev/pipeline": pipeline.name,
                       LABEL_RUN: run_id},
        },
        "spec": {**summary_mv, "modelName": model, "version": version,
                 "stage": spec.promote_to or "None"},
    }
