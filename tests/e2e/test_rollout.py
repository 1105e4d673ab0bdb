"""Serving rollouts on the real local cluster, driven by the operator: a 20% canary, a promotion under
steady load, and a broken version refused, then (opted in) rolled back while the good one keeps serving;
last, a run's broken version rolled back leaves Production to the version that kept serving.

Three ModelVersions of one model `m` (a logistic regression on 20 features) are registered by hand,
the artifacts in an S3 server (moto) on the bridge's host address: v1 and v2 are sound, v3 names a
digest that is not its file's. An InferenceService follows the Production stage. Requests go to the
Service's ClusterIP from the host, a new connection each, so kube-proxy spreads them over the pods as
it does for any client. Needs the node (hack/node-up.sh) and the runtime image (make images).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter

import boto3
import pytest
import serve_models
from prometheus_client.parser import text_string_to_metric_families

import cluster_support
from cluster_support import isvc_status, operator_env, store_namespace, wait_isvc_status
from operator_process import OperatorProcess
from s3_server import moto_server

pytestmark = pytest.mark.cluster

BRIDGE_IP = "10.244.0.1"  # hack/lib.sh: the pod bridge's host side, reachable from pods
BUCKET = "kiln-rollout"


@pytest.fixture(scope="module")
def ns(kubectl, crds):
    with store_namespace(kubectl, "rollout") as name:
        yield name


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with moto_server(BRIDGE_IP) as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="e2e", aws_secret_access_key="e2e")
        client.create_bucket(Bucket=BUCKET)
        files = serve_models.build(tmp_path_factory.mktemp("model"), "lr")
        client.upload_file(str(files.skops), BUCKET, "m/model.skops")
        yield url, files


def model_version(files, version: int, stage: str, sha256: str | None = None) -> dict:
    signature = json.loads(files.signature.read_text())
    signature.pop("onnx", None)
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"m-v{version}"},
            "spec": {"modelName": "m", "version": version, "stage": stage, "signature": signature,
                     "framework": {"name": "scikit-learn", "version": "1.8.0"},
                     "artifact": {"uri": f"s3://{BUCKET}/m/model.skops", "format": "skops",
                                  "sha256": sha256 or files.sha["model.skops"]}}}


@pytest.fixture(scope="module")
def service(kubectl, kubeconfig, ns, model, tmp_path_factory):
    """The operator running, v1 in Production, and an InferenceService serving it; yields its ClusterIP."""
    url, files = model
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(kubeconfig, log, "--namespace", ns, env=operator_env(url, f"s3://{BUCKET}/runs")):
        kubectl.apply(json.dumps(model_version(files, 1, "Production")), "-n", ns)
        kubectl.apply(json.dumps(model_version(files, 2, "Staging")), "-n", ns)
        isvc = {"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "m"},
                "spec": {"model": {"modelName": "m", "stage": "Production"},
                         "autoscaling": {"minReplicas": 2, "maxReplicas": 2},
                         "rollout": {"progressDeadlineSeconds": 120},
                         "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}}}
        kubectl.apply(json.dumps(isvc), "-n", ns)
        try:
            wait_status(kubectl, ns, lambda s: s.get("modelVersion") == "m-v1" and s.get("readyReplicas") == 2,
                        "m-v1 served by 2 ready replicas", timeout=240)
            ip = kubectl.json("get", "service", "m", "-n", ns)["spec"]["clusterIP"]
            yield f"http://{ip}"
        except BaseException:
            print(log.read_text()[-6000:])
            print(kubectl.run("get", "kiln,deploy,pods", "-n", ns, "-o", "wide", check=False).stdout)
            raise


def wait_status(kubectl, ns, predicate, what: str, timeout: float) -> dict:
    return wait_isvc_status(kubectl, ns, "m", predicate, what, timeout)


def infer(base: str, row) -> int:
    """One V2 request on a new connection; returns the version that answered."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 20], "datatype": "FP64", "data": list(row)}]})
    req = urllib.request.Request(f"{base}/v2/models/m/infer", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as answer:
        return int(json.load(answer)["model_version"])


class SteadyLoad(cluster_support.SteadyLoad):
    """Clients sending V2 requests over `rows` back to back; answers counted by the version that answered."""

    def __init__(self, base: str, rows, clients: int = 4):
        super().__init__(lambda i: infer(base, rows[i % len(rows)]), clients)


def requests_by_pod(kubectl, ns, protocol: str | None = None) -> dict[str, tuple[str, float]]:
    """kiln_requests_total answered 200 by every serving pod (of one protocol, or all): {pod: (model
    version, count)}."""
    counts: dict[str, tuple[str, float]] = {}
    for pod in kubectl.json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=m")["items"]:
        ip = pod["status"].get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "kiln_requests_total" and sample.labels.get("code") == "200" \
                        and protocol in (None, sample.labels.get("protocol")):
                    version, seen = counts.get(pod["metadata"]["name"], (sample.labels["version"], 0.0))
                    counts[pod["metadata"]["name"]] = (version, seen + sample.value)
    return counts


def served_requests(kubectl, ns) -> Counter:
    """kiln_requests_total answered 200, summed over every serving pod, by model version."""
    counts: Counter = Counter()
    for version, count in requests_by_pod(kubectl, ns).values():
        counts[version] += count
    return counts


def wait_every_pod_answers(kubectl, ns, base: str, rows, pods: int, timeout: float = 60) -> None:
    """Until each of `pods` pods has answered through the Service: kube-proxy's rules hold them all (ready
    endpoints alone do not prove it; a pod missing from the rules skews any measured share). V1 requests,
    which no probe sends, so a pod's V1 counter moves only when it answered one of them."""
    before = requests_by_pod(kubectl, ns, "v1")
    deadline = time.monotonic() + timeout
    while True:
        for i in range(25):
            body = json.dumps({"instances": [list(rows[i % len(rows)])]}).encode()
            req = urllib.request.Request(f"{base}/v1/models/m:predict", data=body,
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5).close()
        moved = [p for p, (_, n) in requests_by_pod(kubectl, ns, "v1").items() if n > before.get(p, ("", 0.0))[1]]
        if len(moved) >= pods:
            return
        assert time.monotonic() < deadline, f"only {len(moved)} of {pods} pods answered through the Service"


def wait_ready_endpoints(kubectl, ns, count: int, timeout: float = 60) -> None:
    def ready() -> int:
        slices = kubectl.json("get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=m")["items"]
        return sum(1 for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready"))
    deadline = time.monotonic() + timeout
    while ready() != count:
        assert time.monotonic() < deadline, f"the Service has {ready()} ready endpoints, not {count}"
        time.sleep(0.5)


def wait_for_answer(base: str, rows, version: int, timeout: float = 60) -> None:
    """Until `version` has answered a request through the Service: kube-proxy routes to its pod."""
    deadline = time.monotonic() + timeout
    i = 0
    while infer(base, rows[i % len(rows)]) != version:
        assert time.monotonic() < deadline, f"version {version} never answered through the Service"
        i += 1


def test_a_20_percent_canary_gets_about_a_fifth_of_the_requests(kubectl, ns, service, model):
    _, files = model
    kubectl.run("patch", "inferenceservice", "m", "-n", ns, "--type=merge",
                "-p", json.dumps({"spec": {"canary": {"versionRef": {"name": "m-v2"}, "trafficPercent": 20}}}))
    status = wait_status(kubectl, ns, lambda s: s.get("canaryVersion") == "m-v2" and s.get("readyReplicas") == 5,
                         "4 primary and 1 canary replicas ready", timeout=240)
    assert {t["version"]: t["percent"] for t in status["traffic"]} == {"m-v1": 80, "m-v2": 20}
    # Ready pods are in the status at once; the Service's endpoints and kube-proxy's rules follow a
    # moment later. Measure the split only once all five pods are endpoints and the canary answers.
    wait_ready_endpoints(kubectl, ns, 5)
    wait_for_answer(service, files.X, version=2)
    wait_every_pod_answers(kubectl, ns, service, files.X, 5)
    before = served_requests(kubectl, ns)
    answered = Counter(infer(service, files.X[i % len(files.X)]) for i in range(1000))
    after = served_requests(kubectl, ns)
    share = (after["2"] - before["2"]) / sum(after[v] - before[v] for v in after)
    print(f"canary at 20%: {share:.1%} of 1000 requests by the pods' kiln_requests_total, "
          f"{answered[2] / 10:.1f}% by the answers' model_version")
    assert 0.13 <= share <= 0.27, share
    # The counters saw what the clients saw, plus the kubelet's readiness probes (every 2 s per pod).
    assert 0 <= (after["2"] - before["2"]) - answered[2] <= 15, (answered, after, before)

    kubectl.run("patch", "inferenceservice", "m", "-n", ns, "--type=merge", "-p", '{"spec": {"canary": null}}')
    wait_status(kubectl, ns, lambda s: not s.get("canaryVersion") and len(s.get("traffic", [])) == 1,
                "the canary removed", timeout=120)


def test_promoting_v2_moves_traffic_with_no_failed_request(kubectl, ns, service, model):
    _, files = model
    with SteadyLoad(service, files.X) as load:
        time.sleep(3)
        kubectl.run("patch", "modelversion", "m-v2", "-n", ns, "--type=merge", "-p", '{"spec": {"stage": "Production"}}')
        wait_status(kubectl, ns, lambda s: s.get("modelVersion") == "m-v2", "m-v2 rolled out", timeout=300)
        time.sleep(3)
    print(load.report("promotion v1 -> v2 under steady load"))
    assert not load.failures, load.failures[:5]
    assert load.answers[1] > 0 and load.answers[2] > 0
    assert set(load.timeline[-20:]) == {2}, "the last answers must all come from v2"
    events = kubectl.json("get", "events", "-n", ns, "--field-selector", "reason=RolledOut")["items"]
    assert any("m-v2" in e["message"] for e in events)


def test_a_broken_v3_is_never_served_and_when_opted_in_is_rolled_back_while_v2_keeps_serving(
        kubectl, ns, service, model):
    _, files = model
    kubectl.apply(json.dumps(model_version(files, 3, "Production", sha256="0" * 64)), "-n", ns)
    # By default the registry's failed digest check keeps v3 out altogether.
    refused = wait_status(kubectl, ns, lambda s: {c["type"]: c.get("reason") for c in s.get("conditions", [])}
                          .get("Progressing") == "VersionNotVerified", "v3 refused as unverified", timeout=120)
    assert refused["modelVersion"] == "m-v2"
    assert "m-v3" in {c["type"]: c for c in refused["conditions"]}["Progressing"]["message"]
    # A user who opts in to unverified artifacts still has the rollout's own safety net.
    kubectl.run("patch", "kisvc", "m", "-n", ns, "--type=merge", "-p", '{"spec":{"allowUnverified":true}}')
    with SteadyLoad(service, files.X, clients=2) as load:
        status = wait_status(kubectl, ns, lambda s: s.get("rolledBackVersion") == "m-v3", "m-v3 rolled back",
                             timeout=300)
        time.sleep(3)
    print(load.report("bad v3 rolled back"))
    assert status["modelVersion"] == "m-v2"
    rolled = {c["type"]: c for c in status["conditions"]}["RolledBack"]
    assert rolled["status"] == "True" and "m-v3" in rolled["message"] and "m-v2" in rolled["message"]
    assert not load.failures and set(load.answers) == {2}, (load.answers, load.failures[:5])
    events = kubectl.json("get", "events", "-n", ns, "--field-selector", "reason=RolledBack")["items"]
    assert any(e["type"] == "Warning" and "m-v3" in e["message"] for e in events)
    # The primary is back on v2's pod template, and no v3 pod is left.
    wait_status(kubectl, ns, lambda s: {c["type"]: c["status"] for c in s["conditions"]}.get("Progressing") == "False",
                "the rollback complete", timeout=120)
    pods = kubectl.json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=m")["items"]
    assert {p["metadata"]["labels"]["kiln.dev/model-version"] for p in pods
            if not p["metadata"].get("deletionTimestamp")} == {"m-v2"}


def mv_stage_history(kubectl, ns, name: str) -> tuple[str, list[dict]]:
    mv = kubectl.json("get", "modelversion", name, "-n", ns)
    return mv["spec"]["stage"], (mv.get("status") or {}).get("stageHistory") or []


def test_a_runs_version_that_is_rolled_back_leaves_production_to_the_version_still_serving(
        kubectl, ns, service, model):
    """What the retraining loop meets: a run registers its version in Production, which archives the
    serving one, and the service cannot run it. Production must end up naming what serves."""
    _, files = model
    kubectl.run("patch", "modelversion", "m-v3", "-n", ns, "--type=merge", "-p", '{"spec":{"stage":"Archived"}}')
    # m-v2 serves; from here on it is a run's version (what the operator may move), as is m-v4.
    kubectl.run("label", "modelversion", "m-v2", "-n", ns, "app.kubernetes.io/managed-by=kiln-operator",
                "kiln.dev/pipeline=m", "kiln.dev/run=r2")
    bad = model_version(files, 4, "Production", sha256="0" * 64)
    bad["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "kiln-operator", "kiln.dev/pipeline": "m",
                                 "kiln.dev/run": "r4"}
    with SteadyLoad(service, files.X, clients=2) as load:
        kubectl.apply(json.dumps(bad), "-n", ns)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            (v2_stage, v2_history), (v4_stage, v4_history) = (mv_stage_history(kubectl, ns, n) for n in ("m-v2", "m-v4"))
            if v2_stage == "Production" and v4_stage == "Archived" and v4_history[-1:] and v4_history[-1]["stage"] == "Archived":
                break
            time.sleep(1.0)
        else:
            raise AssertionError(f"m-v4 still in {v4_stage}, m-v2 in {v2_stage}; "
                                 f"status: {json.dumps(isvc_status(kubectl, ns, 'm'), indent=1)}")
    print(load.report("a run's bad m-v4 rolled back, m-v2 handed Production back"))
    assert not load.failures and set(load.answers) == {2}, (load.answers, load.failures[:5])
    # Both moves in the histories, with why: v2 archived for v4, handed back when v4 was rolled back.
    assert [(e["stage"], e.get("reason")) for e in v2_history[-2:]] == [
        ("Archived", "superseded by m-v4"), ("Production", "restored: m-v4 was rolled back by InferenceService m")]
    assert v4_history[-1]["reason"] == "rolled back by InferenceService m; m-v2 restored"
    # The service targets v2 again: nothing is held back any more.
    status = wait_status(kubectl, ns, lambda s: not s.get("rolledBackVersion"), "the rollback forgotten", timeout=60)
    assert status["modelVersion"] == "m-v2"
