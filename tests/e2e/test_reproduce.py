"""A registered model trains again from its ModelVersion alone, and scores exactly the metrics it records.

The run is the operator's: its builders make the configuration and the Jobs' containers (command, env,
the Downward API's pod name), and each Job's pods run as `kiln-train` processes against a moto S3 server,
as pods would. Its ModelVersion is what the operator registers: the selection summary's fragment, its
lineage completed from the pods' status (image digest) and the run (data version, generation), passed
through the API model as the apiserver stores it. Then the run's output and the Dataset's source are
deleted, and `kiln-train reproduce --model-version mv.json`, in a process that has nothing but that file
and the store's credentials, fits the model again from the dataset snapshot the lineage names.

Those run without a cluster (`kiln-train` and the operator's pure functions). The last test, marked
`cluster`, is the same on the local cluster with the operator running: the digest is the one the
selection pod's status reports, and the ModelVersion read back from the apiserver reproduces.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from sklearn import datasets

from kiln_operator import pipelines
from kiln_operator.builders import training
from kiln_operator.config import OperatorConfig
from kiln_operator.jobs import image_digest
from kiln_operator.validation import parse
from operator_process import OperatorProcess
from registration import registered
from s3_server import moto_server

BUCKET = "kiln-repro"
KILN_TRAIN = str(Path(sys.executable).with_name("kiln-train"))
DIGEST = "sha256:" + "5e" * 32  # what the kubelet would report for the runtime image
TIMEOUT = 300


@pytest.fixture(scope="module")
def s3():
    with moto_server() as url:
        env = {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "kiln",
               "AWS_SECRET_ACCESS_KEY": "kiln-secret"}
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="kiln",
                              aws_secret_access_key="kiln-secret")
        client.create_bucket(Bucket=BUCKET)
        yield {"env": env, "client": client}


def _table(name: str) -> tuple[bytes, dict]:
    """A scikit-learn dataset as csv, and its Dataset spec: iris with a category target, breast_cancer
    with an integer one, diabetes a regression."""
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame = bunch.data.copy()
    frame.columns = [f"f{i}" for i in range(frame.shape[1])]
    columns = [{"name": c, "type": "number"} for c in frame.columns]
    if name == "iris":
        frame["label"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
        columns.append({"name": "label", "type": "category", "allowed": list(bunch.target_names)})
    else:
        frame["label"] = bunch.target.to_numpy()
        columns.append({"name": "label", "type": "integer" if name == "breast_cancer" else "number"})
    return frame.to_csv(index=False).encode(), {"target": "label", "schema": {"columns": columns},
                                                "checks": {"minRows": 50}}


CASES = {
    # A random search in two pods; the winner is refitted by the selection step on its fit rows.
    "forest-random-2-pods": ("iris", {
        "estimator": {"class": "RandomForestClassifier", "params": {"min_samples_leaf": 2}},
        "search": {"strategy": "random", "trials": 4, "parallelism": 2, "metric": "f1",
                   "space": {"n_estimators": [10, 25, 50], "max_depth": [2, 4, 8]}},
        "evaluation": {"testFraction": 0.3, "validationFraction": 0.25, "seed": 11}}),
    # Cross-validation: the registered model is fitted on the whole training part.
    "boosting-grid-cv": ("breast_cancer", {
        "estimator": {"class": "GradientBoostingClassifier", "params": {"subsample": 0.8}},
        "search": {"strategy": "grid", "trials": 2, "cvFolds": 3, "metric": "roc_auc",
                   "space": {"max_depth": [1, 2]}},
        "evaluation": {"testFraction": 0.25, "seed": 5}}),
    # Successive halving: the finalists train with the resource the last round gave them.
    "extra-trees-halving": ("diabetes", {
        "estimator": {"class": "ExtraTreesRegressor", "params": {}},
        "search": {"strategy": "halving", "trials": 4, "parallelism": 1, "metric": "rmse",
                   "space": {"max_depth": [3, 6], "min_samples_leaf": [1, 4]},
                   "halving": {"factor": 2, "resource": "n_estimators", "minResources": 5, "maxResources": 20}},
        "evaluation": {"seed": 3}}),
}


def _objects(case: str, data_uri: str) -> tuple[dict, dict]:
    name, spec = CASES[case]
    _, dataset_spec = _table(name)
    dataset = {"apiVersion": "kiln.dev/v1alpha1", "kind": "Dataset",
               "metadata": {"name": name.replace("_", "-"), "namespace": "team-a", "uid": "u1", "generation": 1},
               "spec": {**dataset_spec, "source": {"uri": data_uri, "format": "csv"}}, "status": {}}
    pipeline = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingPipeline",
                "metadata": {"name": case, "namespace": "team-a", "uid": "u2", "generation": 3},
                "spec": {"datasetRef": {"name": dataset["metadata"]["name"]}, "modelName": "m",
                         "gates": {"metrics": []}, **copy.deepcopy(spec)}}
    return dataset, pipeline


def _pod_name(job: dict, index: int) -> str:
    return f"{job['metadata']['name']}-{index}-q8w2z"


def _run_pod(s3, job: dict, index: int, tmp_path: Path) -> dict:
    """One pod of `job`: its container's command with its env (the Downward API's pod name, an Indexed
    Job's index), the store pointed at moto; returns the termination message."""
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KILN_"))}
    for var in container["env"]:
        if var.get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.name"}}:
            env[var["name"]] = _pod_name(job, index)
        elif "value" in var:
            env[var["name"]] = var["value"]
    env.update(s3["env"])
    term = tmp_path / f"{_pod_name(job, index)}.log"
    env["KILN_TERMINATION_LOG"] = str(term)
    if job["spec"].get("completionMode") == "Indexed":
        env["JOB_COMPLETION_INDEX"] = str(index)
    _, *args = container["command"]
    done = subprocess.run([KILN_TRAIN, *args], env=env, capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads(term.read_bytes())


def _reproduce(s3, mv_path: Path, tmp_path: Path) -> tuple[int, dict]:
    """`kiln-train reproduce` with nothing but the ModelVersion and the store's credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KILN_", "JOB_"))}
    term = tmp_path / "reproduce.log"
    env.update(s3["env"], KILN_TERMINATION_LOG=str(term))
    done = subprocess.run([KILN_TRAIN, "reproduce", "--model-version", str(mv_path)], env=env,
                          capture_output=True, timeout=TIMEOUT)
    summary = json.loads(term.read_bytes())
    assert json.loads(done.stdout.decode().strip().splitlines()[-1]) == summary
    return done.returncode, summary


def _delete(s3, prefix: str) -> None:
    for obj in s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        s3["client"].delete_object(Bucket=BUCKET, Key=obj["Key"])


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_version_trains_again_from_its_lineage_to_the_same_metrics(s3, tmp_path, case):
    name, _ = CASES[case]
    data, _ = _table(name)
    source_key = f"sources/{case}/{name}.csv"
    s3["client"].put_object(Bucket=BUCKET, Key=source_key, Body=data)
    dataset, pipeline = _objects(case, f"s3://{BUCKET}/{source_key}")
    cfg = OperatorConfig(artifact_root=f"s3://{BUCKET}/artifacts", runtime_image="kiln-runtime:test")

    # The Dataset's validation Job stores the version's snapshot; its status lists it.
    v = _run_pod(s3, training.validation_job(parse(dataset), "g1", f"{cfg.artifact_root}/datasets/{name}", cfg),
                 0, tmp_path)
    assert v["result"] == "Succeeded", v
    entry = {"version": v["version"], "snapshotUri": v["snapshotUri"], "snapshotSha256": v["snapshotSha256"]}
    dataset["status"] = {"version": v["version"], "versions": [entry]}

    # Run r1 as the operator starts it: the trials' Indexed Job, then the selection Job.
    output = pipelines.output_prefix(parse(pipeline), "r1", cfg)
    config = training.run_config(parse(pipeline), parse(dataset), "r1", output, None, cfg, entry,
                                 generation=pipeline["metadata"]["generation"])
    trials = training.trials_job(parse(pipeline), "r1", config, cfg)
    shards = [_run_pod(s3, trials, i, tmp_path) for i in range(trials["spec"]["completions"])]
    assert all(s["result"] in ("Succeeded", "Skipped") for s in shards), shards
    select = training.select_job(parse(pipeline), "r1", config, cfg)
    sel = _run_pod(s3, select, 0, tmp_path)
    assert sel["result"] == "Succeeded", sel
    assert sel["trainedBy"] == {"step": "select", "pod": _pod_name(select, 0)}

    # What the operator registers: the pod the summary names reports the image digest it ran.
    mv = registered(pipeline, sel, _pod_name(select, 0), v["version"], 3, "kiln-runtime:test", DIGEST)
    recorded = mv["spec"]["lineage"]
    assert (recorded["imageDigest"], recorded["image"], recorded["pipelineGeneration"]) == (DIGEST, "kiln-runtime:test", 3)
    assert (recorded["datasetVersion"], recorded["datasetSnapshotUri"]) == (v["version"], v["snapshotUri"])
    assert recorded["trial"] == sel["bestTrial"] and recorded["estimator"] == CASES[case][1]["estimator"]["class"]
    assert mv["spec"]["params"]["random_state"] == recorded["seed"] == CASES[case][1]["evaluation"]["seed"]

    # Nothing of the run is left, nor the source: only the snapshot the lineage names.
    _delete(s3, output.split("/", 3)[3] + "/")
    s3["client"].delete_object(Bucket=BUCKET, Key=source_key)
    mv_path = tmp_path / "mv.json"
    mv_path.write_text(json.dumps(mv))

    code, again = _reproduce(s3, mv_path, tmp_path)
    assert code == 0 and again["result"] == "Succeeded", again
    assert again["exact"] and again["differences"] == []
    assert again["metrics"] == mv["spec"]["metrics"] and len(again["metrics"]) >= 3
    assert again["rows"]["test"] == sel["measuredOn"]["rows"] and again["imageDigest"] == DIGEST


def test_a_reproduction_says_what_does_not_match(s3, tmp_path):
    """The same check fails, naming why, when the ModelVersion and the data disagree."""
    case = "forest-random-2-pods"
    data, _ = _table("iris")
    key = f"sources/{tmp_path.name}/iris.csv"
    s3["client"].put_object(Bucket=BUCKET, Key=key, Body=data)
    dataset, pipeline = _objects(case, f"s3://{BUCKET}/{key}")
    pipeline["spec"]["search"].update(trials=1, parallelism=1)
    cfg = OperatorConfig(artifact_root=f"s3://{BUCKET}/{tmp_path.name}")
    v = _run_pod(s3, training.validation_job(parse(dataset), "g1", f"{cfg.artifact_root}/datasets/iris", cfg),
                 0, tmp_path)
    entry = {"version": v["version"], "snapshotUri": v["snapshotUri"], "snapshotSha256": v["snapshotSha256"]}
    dataset["status"] = {"version": v["version"], "versions": [entry]}
    config = training.run_config(parse(pipeline), parse(dataset), "r1", f"{cfg.artifact_root}/runs/r1", None, cfg,
                                 entry, generation=3)
    _run_pod(s3, training.trials_job(parse(pipeline), "r1", config, cfg), 0, tmp_path)
    sel = _run_pod(s3, training.select_job(parse(pipeline), "r1", config, cfg), 0, tmp_path)
    spec = sel["modelVersion"]

    def reproduce(changed: dict) -> dict:
        path = tmp_path / "mv.json"
        path.write_text(json.dumps({"metadata": {"name": "m-v1"}, "spec": changed}))
        code, summary = _reproduce(s3, path, tmp_path)
        assert code == 10, summary
        return summary

    # Other parameters than the ones recorded: another model, other metrics, each difference listed.
    other = reproduce({**spec, "params": {**spec["params"], "min_samples_leaf": 9}})
    assert other["reason"] == "NotReproducible" and other["differences"] and not other["exact"]
    assert "m-v1 does not reproduce" in other["message"]
    # A lineage from before Kiln recorded the snapshot and the split.
    old = {k: v for k, v in spec["lineage"].items() if k in ("pipeline", "run", "dataset", "datasetVersion", "image")}
    assert "datasetSnapshotUri" in reproduce({**spec, "lineage": old})["message"]
    # The snapshot's bytes replaced: refused before anything is fitted.
    snapshot_key = v["snapshotUri"].split("/", 3)[3]
    s3["client"].put_object(Bucket=BUCKET, Key=snapshot_key, Body=b"PAR1 not the table")
    assert reproduce(spec)["reason"] == "DigestMismatch"


BRIDGE_IP = "10.244.0.1"  # hack/lib.sh: the pod bridge's host side, which pods reach


@pytest.mark.cluster
def test_on_the_cluster_the_digest_is_the_selection_pods_and_the_version_reproduces(kubectl, kubeconfig, crds,
                                                                                   tmp_path):
    ns = f"t-repro-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", ns)
    creds = {"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": "e2e"}
    kubectl.apply(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kiln-store", "namespace": ns},
                              "stringData": creds}))
    try:
        with moto_server(BRIDGE_IP) as url:
            client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="e2e",
                                  aws_secret_access_key="e2e")
            client.create_bucket(Bucket=BUCKET)
            data, dataset_spec = _table("iris")
            client.put_object(Bucket=BUCKET, Key="iris.csv", Body=data)
            env = {"KILN_S3_ENDPOINT": url, "KILN_STORE_SECRET": "kiln-store", "KILN_ARTIFACT_ROOT": f"s3://{BUCKET}/kiln"}
            with OperatorProcess(kubeconfig, tmp_path / "operator.log", "--namespace", ns, env=env):
                kubectl.apply(json.dumps({"apiVersion": "kiln.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "iris"},
                                          "spec": {**dataset_spec, "source": {"uri": f"s3://{BUCKET}/iris.csv",
                                                                              "format": "csv"}}}), "-n", ns)
                tp = {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": "iris-repro"},
                      "spec": {"datasetRef": {"name": "iris"}, "modelName": "iris-repro",
                               "estimator": {"class": "RandomForestClassifier", "params": {"n_estimators": 20}},
                               "search": {"strategy": "grid", "trials": 2, "parallelism": 2, "metric": "accuracy",
                                          "space": {"max_depth": [2, 4]}},
                               "evaluation": {"testFraction": 0.25, "seed": 9}, "gates": {"metrics": []},
                               "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                             "limits": {"memory": "1Gi"}}}}
                kubectl.apply(json.dumps(tp), "-n", ns)
                deadline = time.monotonic() + 420
                run = {}
                while time.monotonic() < deadline:
                    runs = (kubectl.json("get", "trainingpipeline", "iris-repro", "-n", ns).get("status") or {}).get("runs")
                    run = (runs or [{}])[0]
                    if run.get("phase") in ("Succeeded", "Failed", "GateFailed"):
                        break
                    time.sleep(2)
                assert run.get("phase") == "Succeeded", (run, kubectl.run("get", "jobs,pods", "-n", ns).stdout)
                mv = kubectl.json("get", "modelversion", run["modelVersion"], "-n", ns)
                generation = kubectl.json("get", "trainingpipeline", "iris-repro", "-n", ns)["metadata"]["generation"]
                pods = kubectl.json("get", "pods", "-n", ns, "-l", "kiln.dev/step=select")["items"]
            lineage = mv["spec"]["lineage"]
            [status] = [c for p in pods for c in p["status"]["containerStatuses"] if c["name"] == "train"
                        if (c.get("state") or {}).get("terminated", {}).get("exitCode") == 0]
            print(f"select pod imageID {status['imageID']}; lineage {json.dumps(lineage)}")
            assert lineage["imageDigest"] == image_digest(status["imageID"]) is not None
            assert lineage["pipelineGeneration"] == generation and lineage["trial"] in (0, 1)
            mv_path = tmp_path / "mv.json"
            mv_path.write_text(json.dumps(mv))
            code, again = _reproduce({"env": {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", **creds}},
                                     mv_path, tmp_path)
            assert code == 0 and again["exact"] and again["metrics"] == mv["spec"]["metrics"], again
    finally:
        kubectl.run("delete", "namespace", ns, "--wait=false", check=False)
