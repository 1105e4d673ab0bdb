"""Training on the real local cluster, driven by the operator: a new dataset version retrains with
`onDatasetChange`, and a gate set too high registers nothing and says by how much.

scikit-learn's wine data goes to an S3 server (moto) on the bridge's host address, where the Jobs'
pods reach it. One Dataset, two pipelines on it: `wine` (gate reachable, onDatasetChange) and
`wine-strict` (accuracy ≥ 0.999, which a depth-1 tree never reaches), and `wine-shards` (24 trials in
2 pods, compared with one process per trial). The demo (test_lifecycle.py)
covers the 8-trial search itself; runs here are kept small. Needs the node and the runtime image.
"""

from __future__ import annotations

import io
import json
import time
import uuid

import boto3
import numpy as np
import pandas as pd
import pytest
from sklearn import datasets
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from operator_process import OperatorProcess
from s3_server import moto_server

pytestmark = pytest.mark.cluster

BRIDGE_IP = "10.244.0.1"  # hack/lib.sh: the pod bridge's host side, reachable from pods
BUCKET = "kiln-training"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": "e2e"}


def wine_csv(rows: slice) -> tuple[bytes, list[dict]]:
    bunch = datasets.load_wine(as_frame=True)
    frame = bunch.data.copy()
    frame.columns = [c.replace("/", "_") for c in frame.columns]
    frame["cultivar"] = np.asarray(["a", "b", "c"])[bunch.target.to_numpy()]
    columns = [{"name": c, "type": "number", "nullable": False} for c in frame.columns[:-1]]
    columns.append({"name": "cultivar", "type": "category", "allowed": ["a", "b", "c"], "nullable": False})
    # Shuffled with a fixed seed so that any prefix holds every class.
    frame = frame.sample(frac=1.0, random_state=0).iloc[rows]
    return frame.to_csv(index=False).encode(), columns


def pipeline(name: str, estimator: dict, gate: float, space: dict) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingPipeline", "metadata": {"name": name},
            "spec": {"datasetRef": {"name": "wine"}, "modelName": name, "estimator": estimator,
                     "search": {"strategy": "grid", "trials": 2, "parallelism": 2, "metric": "accuracy",
                                "space": space},
                     "evaluation": {"testFraction": 0.25, "seed": 3},
                     "gates": {"metrics": [{"metric": "accuracy", "min": gate}]},
                     "triggers": {"onDatasetChange": True},
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}}


@pytest.fixture(scope="module")
def cluster_setup(kubectl, kubeconfig, crds, tmp_path_factory):
    ns = f"t-training-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", ns)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kiln-store", "namespace": ns},
              "stringData": CREDENTIALS}
    kubectl.apply(json.dumps(secret))
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with moto_server(BRIDGE_IP) as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **{
            "aws_access_key_id": "e2e", "aws_secret_access_key": "e2e"})
        client.create_bucket(Bucket=BUCKET)
        data, columns = wine_csv(slice(0, 150))
        client.put_object(Bucket=BUCKET, Key="wine.csv", Body=data)
        env = {"KILN_S3_ENDPOINT": url, "KILN_STORE_SECRET": "kiln-store", "KILN_ARTIFACT_ROOT": f"s3://{BUCKET}/kiln"}
        with OperatorProcess(kubeconfig, log, "--namespace", ns, env=env):
            dataset = {"apiVersion": "kiln.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "wine"},
                       "spec": {"source": {"uri": f"s3://{BUCKET}/wine.csv", "format": "csv"}, "target": "cultivar",
                                "schema": {"columns": columns}, "checks": {"minRows": 100}}}
            kubectl.apply(json.dumps(dataset), "-n", ns)
            kubectl.apply(json.dumps(pipeline("wine", {"class": "RandomForestClassifier",
                                                       "params": {"random_state": 0}}, 0.8,
                                              {"n_estimators": [20], "max_depth": [3, 6]})), "-n", ns)
            shards = pipeline("wine-shards", {"class": "RandomForestClassifier", "params": {"random_state": 0}},
                              0.8, {"n_estimators": [5, 10, 20], "max_depth": [2, 3, 4, 6], "min_samples_leaf": [1, 3]})
            shards["spec"]["search"].update(trials=24, parallelism=2)
            shards["spec"]["triggers"] = {"onDatasetChange": False}
            kubectl.apply(json.dumps(shards), "-n", ns)
            kubectl.apply(json.dumps(pipeline("wine-strict", {"class": "DecisionTreeClassifier",
                                                              "params": {"random_state": 0}}, 0.999,
                                              {"max_depth": [1], "min_samples_leaf": [1, 5]})), "-n", ns)
            yield ns, client
    kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


def runs(kubectl, ns: str, name: str) -> list[dict]:
    return (kubectl.json("get", "trainingpipeline", name, "-n", ns).get("status") or {}).get("runs", [])


def wait_run(kubectl, ns: str, name: str, count: int, timeout: float = 420) -> dict:
    """The `count`-th run once it finished."""
    deadline = time.monotonic() + timeout
    seen: list[dict] = []
    while time.monotonic() < deadline:
        seen = runs(kubectl, ns, name)
        if len(seen) >= count and seen[count - 1]["phase"] in ("Succeeded", "Failed", "GateFailed", "Cancelled"):
            return seen[count - 1]
        time.sleep(2)
    jobs = kubectl.run("get", "jobs,pods", "-n", ns, check=False).stdout
    raise AssertionError(f"run {count} of {name} did not finish in {timeout} s; runs: {json.dumps(seen, indent=1)}\n{jobs}")


def test_a_gate_set_too_high_registers_nothing_and_names_the_numbers(kubectl, cluster_setup):
    ns, _ = cluster_setup
    run = wait_run(kubectl, ns, "wine-strict", 1)
    assert run["phase"] == "GateFailed", run
    print(f"gate too high: {run['message']}")
    assert "accuracy" in run["message"] and "0.999" in run["message"], run["message"]
    mvs = kubectl.json("get", "modelversions", "-n", ns)["items"]
    assert not [m for m in mvs if m["spec"]["modelName"] == "wine-strict"]
    reasons = {e["reason"] for e in kubectl.json("get", "events", "-n", ns, "--field-selector",
                                                  "involvedObject.name=wine-strict")["items"]}
    assert "RunGateFailed" in reasons, reasons


def test_new_dataset_content_gives_a_new_version_and_with_on_dataset_change_v2(kubectl, cluster_setup):
    ns, client = cluster_setup
    first = wait_run(kubectl, ns, "wine", 1)
    assert first["phase"] == "Succeeded" and first["modelVersion"] == "wine-v1", first
    # v1's held-out accuracy is scikit-learn's own on the same rows, split and seed.
    mv1 = kubectl.json("get", "modelversion", "wine-v1", "-n", ns)["spec"]
    frame = pd.read_csv(io.BytesIO(wine_csv(slice(0, 150))[0]))
    X, y = frame.drop(columns="cultivar"), frame["cultivar"].to_numpy()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=3, stratify=y)
    # Trials fit on the training part less its validation split (the default 0.2), which picked them.
    X_fit, _, y_fit, _ = train_test_split(X_train, y_train, test_size=0.2, random_state=3, stratify=y_train)
    direct = RandomForestClassifier(**mv1["params"]).fit(X_fit, y_fit)
    assert mv1["metrics"]["accuracy"] == pytest.approx(accuracy_score(y_test, direct.predict(X_test)), abs=1e-12)
    before = kubectl.json("get", "dataset", "wine", "-n", ns)["status"]
    assert before["rows"] == 150

    data, _ = wine_csv(slice(0, 178))
    client.put_object(Bucket=BUCKET, Key="wine.csv", Body=data)
    kubectl.run("annotate", "dataset", "wine", "-n", ns, "kiln.dev/refresh=after-upload", "--overwrite")
    after = kubectl.wait_for(lambda: (lambda s: s if s.get("rows") == 178 else None)(
        kubectl.json("get", "dataset", "wine", "-n", ns)["status"]), timeout=180, interval=2,
        what="the Dataset's new version")
    assert after["version"] != before["version"]

    second = wait_run(kubectl, ns, "wine", 2)
    assert second["trigger"] == "datasetChange" and second["phase"] == "Succeeded", second
    assert second["modelVersion"] == "wine-v2" and second["datasetVersion"] == after["version"]
    mv2 = kubectl.json("get", "modelversion", "wine-v2", "-n", ns)
    assert mv2["spec"]["lineage"]["datasetVersion"] == after["version"]
    kubectl.wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in
                                 kubectl.json("get", "modelversion", "wine-v2", "-n", ns)["status"]["conditions"]),
                     timeout=180, interval=2, what="wine-v2 verified and Ready")
    # The strict pipeline saw the same new version, and failed its gate again: still nothing registered.
    strict = wait_run(kubectl, ns, "wine-strict", 2)
    assert strict["phase"] == "GateFailed" and strict["trigger"] == "datasetChange"


def test_24_trials_at_parallelism_2_run_in_2_pods_and_register_what_one_pod_per_trial_would(
        kubectl, cluster_setup, monkeypatch):
    from kiln_runtime.train import select, spec, trial

    ns, client = cluster_setup
    run = wait_run(kubectl, ns, "wine-shards", 1)
    assert run["phase"] == "Succeeded" and run["trialsPlanned"] == 24 and run["trialsSucceeded"] == 24, run
    pods = kubectl.json("get", "pods", "-n", ns, "-l", f"kiln.dev/run={run['id']},kiln.dev/step=trials")["items"]
    trial_pods = [p for p in pods if p["metadata"]["labels"].get("job-name") == run["job"]]
    assert len(trial_pods) == 2, [p["metadata"]["name"] for p in pods]

    # One process per trial, as one pod per trial ran them: the same configuration (data version,
    # seed, space) into another prefix of the same store, then the same selection.
    job = kubectl.json("get", "job", run["job"], "-n", ns)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    config = json.loads(env["KILN_TRAIN_CONFIG"])
    config["output"] += "-one-per-trial"
    for name, value in {"AWS_ENDPOINT_URL": client.meta.endpoint_url, "AWS_REGION": "us-east-1",
                        **CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    cfg = spec.parse(config, needs_pipeline=True)
    for index in range(24):
        assert trial.run(cfg, index)["result"] == "Succeeded"
    chosen = select.run(cfg)
    mv = kubectl.json("get", "modelversion", run["modelVersion"], "-n", ns)["spec"]
    print(f"24 trials in {len(trial_pods)} pods: {run['modelVersion']} {mv['params']} {mv['metrics']}")
    assert mv["params"] == chosen["modelVersion"]["params"]
    assert mv["metrics"] == pytest.approx(chosen["modelVersion"]["metrics"], abs=1e-12)
