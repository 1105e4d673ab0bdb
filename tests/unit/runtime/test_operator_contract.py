"""The operator/runtime contract, end to end without a cluster: the operator's own Job builders decide the
command line and the configuration, kiln-train runs exactly that, and what it reports must pass the
operator's API models. The two packages share no imports (DESIGN.md §3); this test is where they meet,
so a change on either side that breaks the other fails here."""

from __future__ import annotations

import json

import pytest

from kiln_operator.api.dataset import DatasetSpec
from kiln_operator.api.model_version import ModelVersionSpec
from kiln_operator.api.training import TrainingPipelineSpec
from kiln_operator.builders import training
from kiln_operator.config import OperatorConfig
from kiln_operator.validation import parse
from kiln_runtime.train import cli
from registration import registered

from .conftest import write_dataset


def production(name: str, accuracy: float):
    """The model's Production registry entry, of which the operator passes on the name and metrics."""
    return parse({"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
                  "spec": {"modelName": "wine", "version": 1, "framework": {"version": "1.6.1"},
                           "artifact": {"uri": "s3://kiln/m.skops", "sha256": "c" * 64},
                           "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}},
                           "metrics": {"accuracy": accuracy}, "stage": "Production"}})


def _container(job: dict) -> dict:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container


def pod_name(job: dict, index: int | None) -> str:
    return f"{job['metadata']['name']}-{index or 0}-x7k2p"


def _run(job: dict, tmp_path, monkeypatch, index: int | None = None) -> tuple[int, dict]:
    """Runs the Job's container command in-process with the Job's environment."""
    container = _container(job)
    command, *args = container["command"]
    assert command == "kiln-train" and not container.get("args")
    for env in container["env"]:
        if env.get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.name"}}:  # what the kubelet resolves
            monkeypatch.setenv(env["name"], pod_name(job, index))
        else:
            monkeypatch.setenv(env["name"], env["value"])
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # file:// store here
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KILN_TERMINATION_LOG", str(log))
    if index is None:
        monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    else:
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))  # what an Indexed Job's pod gets
    code = cli.main(args)
    return code, json.loads(log.read_bytes())


@pytest.fixture
def objects(tmp_path):
    dataset_spec = DatasetSpec.model_validate(write_dataset(tmp_path, "wine")).wire()
    dataset = {"apiVersion": "kiln.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "wine", "namespace": "team-a", "uid": "u1", "generation": 1},
               "spec": dataset_spec, "status": {}}
    pipeline_spec = TrainingPipelineSpec.model_validate({
        "datasetRef": {"name": "wine"}, "modelName": "wine",
        "estimator": {"class": "RandomForestClassifier", "params": {"n_estimators": 10}},
        "search": {"strategy": "grid", "space": {"max_depth": [2, 4]}, "trials": 3, "parallelism": 2},
        "gates": {"metrics": [{"metric": "accuracy", "min": 0.5}], "beatProductionBy": 0.0},
    }).wire()
    pipeline = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "wine-forest", "namespace": "team-a", "uid": "u2", "generation": 1},
                "spec": pipeline_spec}
    cfg = OperatorConfig(artifact_root=f"file://{tmp_path}/artifacts")
    return dataset, pipeline, cfg


def test_the_operators_jobs_run_kiln_train_and_its_reports_fit_the_api(objects, tmp_path, monkeypatch):
    dataset, pipeline, cfg = objects
    code, v = _run(training.validation_job(parse(dataset), "g1", f"{cfg.artifact_root}/datasets/wine", cfg),
                   tmp_path, monkeypatch)
    assert code == 0 and v["result"] == "Succeeded", v
    dataset["status"] = {"version": v["version"], "rows": v["rows"], "profileUri": v["profileUri"]}

    entry = {"version": v["version"], "snapshotUri": v["snapshotUri"], "snapshotSha256": v["snapshotSha256"]}
    config = training.run_config(parse(pipeline), parse(dataset), "r1", f"{cfg.artifact_root}/runs/r1",
                                 production("wine-v1", 0.4), cfg, entry, generation=4)
    trials = training.trials_job(parse(pipeline), "r1", config, cfg)
    assert trials["spec"]["completionMode"] == "Indexed"
    results = [_run(trials, tmp_path, monkeypatch, index=i) for i in range(trials["spec"]["completions"])]
    # Two grid points for three trials asked: the operator starts only the two pods that have work.
    assert [(c, s["result"]) for c, s in results] == [(0, "Succeeded"), (0, "Succeeded")]

    select_job = training.select_job(parse(pipeline), "r1", config, cfg)
    code, sel = _run(select_job, tmp_path, monkeypatch)
    assert code == 0 and sel["result"] == "Succeeded", sel
    # The selection refitted the winner, in the pod the Downward API named: the operator reads that
    # pod's image digest from its status (as the cache keeps a pod: no spec).
    assert sel["trainedBy"] == {"step": "select", "pod": pod_name(select_job, None)}
    digest = "sha256:" + "d" * 64
    mv = registered(pipeline, sel, pod_name(select_job, None), v["version"], 4, "kiln-runtime:dev", digest, 2)
    spec = ModelVersionSpec.model_validate(mv["spec"])  # extra="forbid": no field the API lacks
    assert spec.artifact.onnx and spec.artifact.onnx.parity_verified
    assert spec.lineage.wire() == {
        "pipeline": "wine-forest", "run": "r1", "dataset": "wine", "datasetVersion": v["version"],
        "datasetSnapshotUri": v["snapshotUri"], "datasetSnapshotSha256": v["snapshotSha256"],
        "image": cfg.runtime_image, "imageDigest": digest, "pipelineGeneration": 4,
        "trial": sel["bestTrial"], "estimator": "RandomForestClassifier", "seed": 42,
        "testFraction": 0.2, "validationFraction": 0.2, "cvFolds": 0}

    # What the registry holds is enough to fit the model again and find its metrics exactly.
    path = tmp_path / "mv.json"
    path.write_text(json.dumps({**mv, "spec": spec.wire()}))
    assert cli.main(["reproduce", "--model-version", str(path)]) == 0
    again = json.loads((tmp_path / "termination-log").read_bytes())
    assert again["result"] == "Succeeded" and again["exact"] and again["metrics"] == sel["modelVersion"]["metrics"]

    stored = {**mv, "metadata": {**mv["metadata"], "uid": "u3"}, "spec": spec.wire()}
    code, ver = _run(training.verify_job(parse(stored), cfg), tmp_path, monkeypatch)
    assert code == 0 and ver["result"] == "Succeeded", ver
    assert ver["artifacts"][0]["sha256"] == spec.artifact.sha256


def test_a_failed_gate_names_the_production_version_the_operator_passed(objects, tmp_path, monkeypatch):
    dataset, pipeline, cfg = objects
    dataset["status"] = {}
    config = training.run_config(parse(pipeline), parse(dataset), "r2", f"{cfg.artifact_root}/runs/r2",
                                 production("wine-v7", 1.0), cfg)
    trials = training.trials_job(parse(pipeline), "r2", config, cfg)
    assert _run(trials, tmp_path, monkeypatch, index=0)[0] == 0
    code, sel = _run(training.select_job(parse(pipeline), "r2", config, cfg), tmp_path, monkeypatch)
    assert code == 0 and sel["result"] == "GateFailed"
    assert "does not beat Production version wine-v7 (1)" in sel["message"]
