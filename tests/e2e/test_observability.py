"""Observability end to end: real serving pods on the local node, scraped by the local Prometheus.

A small classifier and its baseline profile go to an S3 server (moto) on the bridge's host address,
where pods reach it. The serving Deployment is the operator's own (builders.serving.deployment: the
server and the drift sidecar, labels, annotations, named ports), applied without its owner so no
operator is needed. Traffic goes to the pod over the bridge, with payload logging on and outcomes fed
back for half the requests. Then every panel of every dashboard must return data from the real Prometheus, and shifting one feature must show as drift there and turn the
KilnDriftDetected alert pending. Needs the node (hack/node-up.sh) and the runtime image (make images).
"""

from __future__ import annotations

import json
import time
import urllib.request

import boto3
import numpy as np
import pandas as pd
import prometheus_local
import pytest
import serve_models
import sklearn

from kiln_operator import drift_sources
from kiln_operator.builders import serving
from kiln_operator.config import OperatorConfig
from kiln_operator.validation import parse
from kiln_runtime.profile import profile_column, profile_frame
from s3_server import moto_server

pytestmark = pytest.mark.cluster

BRIDGE_IP = "10.244.0.1"  # hack/lib.sh: the pod bridge's host side, reachable from pods
BUCKET = "kiln-e2e"
WINDOW = 400  # rows in the sidecar's window: drift is decided from 100 rows on


@pytest.fixture(scope="session")
def prometheus(kubeconfig):
    yield from prometheus_local.session()


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on the bridge's host address: pods reach it, nothing outside does."""
    with moto_server(BRIDGE_IP) as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="e2e", aws_secret_access_key="e2e")
        client.create_bucket(Bucket=BUCKET)
        yield url, client


@pytest.fixture(scope="module")
def model(s3, tmp_path_factory):
    """A logistic regression on 20 numeric features, its signature and its baseline, in S3."""
    url, client = s3
    files = serve_models.build(tmp_path_factory.mktemp("model"), "lr")
    signature = json.loads(files.signature.read_text())
    signature.pop("onnx", None)
    frame = pd.DataFrame(files.X, columns=serve_models.FEATURES)
    baseline = profile_frame(frame, {n: "number" for n in serve_models.FEATURES})
    baseline["predictions"] = profile_column([str(v) for v in files.labels], "category")
    client.upload_file(str(files.skops), BUCKET, "m/1/model.skops")
    client.put_object(Bucket=BUCKET, Key="m/1/profile.json", Body=json.dumps(baseline).encode())
    mv = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "m-v1"}, "spec": {
        "modelName": "m", "version": 1, "signature": signature, "baselineUri": f"s3://{BUCKET}/m/1/profile.json",
        "framework": {"version": sklearn.__version__},
        "artifact": {"uri": f"s3://{BUCKET}/m/1/model.skops", "sha256": files.sha["model.skops"], "format": "skops"}}}
    return mv, files


def deploy(kubectl, namespace: str, mv: dict, s3_url: str) -> str:
    """Applies the operator's serving Deployment; returns the ready pod's IP."""
    isvc = {"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "m", "namespace": namespace, "uid": "unused"},
            "spec": {"model": {"modelName": "m", "stage": "Production"},
                     "monitoring": {"drift": {"enabled": True, "windowRows": WINDOW}},
                     "logging": {"uri": f"s3://{BUCKET}/payloads/", "flushSeconds": 2},
                     "feedback": {"windowRows": 200},
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}}
    cfg = OperatorConfig(s3_endpoint=s3_url, extra_env={"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": "e2e"})
    # Typed as the operator's reconcile hands them over, the API's defaults filled in.
    dep = serving.deployment(parse(isvc), parse(mv), "primary", cfg)
    dep["metadata"].pop("ownerReferences")  # no InferenceService object: the GC would delete an orphan
    dep["spec"]["replicas"] = 1
    kubectl.apply(json.dumps(dep), "-n", namespace)
    name = dep["metadata"]["name"]
    rollout = kubectl.run("-n", namespace, "rollout", "status", f"deploy/{name}", "--timeout=180s",
                          check=False, timeout=200)
    if rollout.returncode != 0:
        describe = kubectl.run("-n", namespace, "describe", "pods", check=False).stdout[-4000:]
        logs = kubectl.run("-n", namespace, "logs", f"deploy/{name}", "--all-containers", "--tail=30",
                           check=False).stdout
        raise AssertionError(f"the serving pod did not become ready:\n{rollout.stderr}\n{describe}\n{logs}")
    pods = kubectl.json("-n", namespace, "get", "pods", "-l", "kiln.dev/role=primary")["items"]
    (ip,) = [p["status"]["podIP"] for p in pods if p["metadata"].get("deletionTimestamp") is None]
    return ip


def post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        return json.load(r), r.headers["X-Request-Id"]


def predict(ip: str, rows: np.ndarray, classes: list[str], batch: int = 20) -> None:
    """Answers, and for every other request the outcome fed back (the model's own answer but the first,
    so live accuracy has something to show)."""
    base = f"http://{ip}:{serving.SERVER_PORT}"
    for start in range(0, len(rows), batch):
        answer, request_id = post(f"{base}/v1/models/m:predict", {"instances": rows[start:start + batch].tolist()})
        if (start // batch) % 2 == 0:
            labels = answer["predictions"]
            labels[0] = classes[(classes.index(str(labels[0])) + 1) % len(classes)]
            joined, _ = post(f"{base}/v2/models/m/feedback", {"id": request_id, "labels": labels})
            assert joined["joined"] == len(labels)


def test_every_panel_returns_data_and_drift_fires_an_alert(kubectl, namespace, prometheus, model, s3):
    mv, files = model
    ip = deploy(kubectl, namespace, mv, s3[0])
    rng = np.random.default_rng(1)
    in_distribution = rng.normal(size=(WINDOW, len(serve_models.FEATURES)))
    classes = mv["spec"]["signature"]["output"]["classes"]
    predict(ip, in_distribution, classes)

    # The model dashboards; no operator runs in this test's Prometheus scrape (kiln-operator.json's
    # queries are checked against what the operator documents and exports in tests/unit/test_dashboards.py).
    # A single model is served here: the model-set panels' queries are checked on a model set's
    # exposition in tests/integration/test_prometheus.py.
    queries = [q for q in prometheus_local.dashboard_queries({"namespace": namespace, "model": "m"})
               if q[0] != "kiln-operator" and not q[1].startswith("Model sets")]

    def empty_panels():
        # A panel shows data when any of its queries returns a series: a classifier has no
        # regression buckets.
        return [f"{board} / {title}" for board, title, exprs in queries
                if not any(prometheus.query(e) for e in exprs)]

    # The sidecar evaluates every 15 s, Prometheus scrapes every 5 s, rate() needs two scrapes.
    # Traffic keeps flowing meanwhile so that rates are not zero.
    deadline = time.monotonic() + 90
    while (missing := empty_panels()) and time.monotonic() < deadline:
        predict(ip, rng.normal(size=(40, len(serve_models.FEATURES))), classes)
        time.sleep(2)
    assert not missing, f"panels without data: {missing}"
    # The operator's reading of live quality through Prometheus: every fed-back request had one wrong
    # label in 20, so the window's accuracy is 0.95 exactly.
    live = prometheus.wait_for(lambda: drift_sources.quality_from_prometheus(
        prometheus.url, drift_sources.selector(namespace, "m", "1")),
                               timeout=30, what="live quality in Prometheus")
    assert live.rows == 200 and live.metrics["accuracy"] == pytest.approx(0.95)
    up = prometheus.query(f'up{{namespace="{namespace}"}}')
    assert {(s["metric"]["container"], s["value"][1]) for s in up} == {("server", "1"), ("monitor", "1")}

    # Shift f0 by three standard deviations: the sidecar sees it, Prometheus records it, the alert
    # rule turns pending.
    shifted = rng.normal(size=(WINDOW, len(serve_models.FEATURES)))
    shifted[:, 0] += 3.0
    predict(ip, shifted, classes)

    def f0_drifts():
        return prometheus.query(f'kiln_feature_drift_detected{{namespace="{namespace}", feature="f0"}} == 1')

    prometheus.wait_for(f0_drifts, timeout=60, what="f0 drifting in Prometheus")

    def alert():
        return [a for a in prometheus.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == "KilnDriftDetected" and a["labels"].get("namespace") == namespace]

    (a,) = prometheus.wait_for(alert, timeout=30, what="KilnDriftDetected pending")
    assert a["labels"]["model"] == "m" and a["labels"]["version"] == "1"
