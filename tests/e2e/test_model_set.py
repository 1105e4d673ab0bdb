"""Many models from one InferenceService on the real local cluster (`spec.models`, issue 19 item 3).

Twelve small models (logistic regressions on 20 features, each fitted to different data) are
registered by hand in Production, their artifacts in an S3 server (moto) on the bridge's host address,
each verified by its Job as any version is. One InferenceService serves them all from one pod: every
model answers under its own route with its own predictions, the server's resident memory stays within
the set's budget, and a promotion of one model switches that model's answers under steady load on all
of them, with no failed request and no pod restarted. Needs the node and the runtime image.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import boto3
import numpy as np
import pytest
import serve_models
import tritonclient.grpc as grpcclient

from cluster_support import SteadyLoad, operator_env, store_namespace, wait_isvc_status
from operator_process import OperatorProcess
from s3_server import moto_server

pytestmark = pytest.mark.cluster

BRIDGE_IP = "10.244.0.1"  # hack/lib.sh: the pod bridge's host side, reachable from pods
BUCKET = "kiln-models"
MODELS = [f"m{i}" for i in range(12)]
PROMOTED = "m3"
BUDGET = 320 * 2**20  # memoryBudget: 320Mi


@pytest.fixture(scope="module")
def ns(kubectl, crds):
    with store_namespace(kubectl, "models") as name:
        yield name


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(S3 URL, {(model, version): ModelFiles}): version 1 of every model, and a version 2 of PROMOTED."""
    root = tmp_path_factory.mktemp("models")
    with moto_server(BRIDGE_IP) as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="e2e", aws_secret_access_key="e2e")
        client.create_bucket(Bucket=BUCKET)
        files = {}
        for seed, (model, version) in enumerate([*((m, 1) for m in MODELS), (PROMOTED, 2)]):
            built = serve_models.build(root / f"{model}-v{version}", "lr", seed=seed)
            client.upload_file(str(built.skops), BUCKET, f"{model}/v{version}/model.skops")
            files[model, version] = built
        yield url, files


def model_version(files, model: str, version: int, stage: str) -> dict:
    built = files[model, version]
    signature = json.loads(built.signature.read_text())
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"{model}-v{version}"},
            "spec": {"modelName": model, "version": version, "stage": stage, "signature": signature,
                     "framework": {"name": "scikit-learn", "version": "1.8.0"},
                     "artifact": {"uri": f"s3://{BUCKET}/{model}/v{version}/model.skops", "format": "skops",
                                  "sha256": built.sha["model.skops"]}}}


def wait_status(kubectl, ns, predicate, what: str, timeout: float) -> dict:
    return wait_isvc_status(kubectl, ns, "tabular", predicate, what, timeout)


@pytest.fixture(scope="module")
def service(kubectl, kubeconfig, ns, models, tmp_path_factory):
    """The operator running, every model's v1 in Production, one InferenceService serving them all;
    yields the Service's base URL."""
    url, files = models
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(kubeconfig, log, "--namespace", ns, env=operator_env(url, f"s3://{BUCKET}/runs")):
        kubectl.apply("\n---\n".join(json.dumps(model_version(files, m, 1, "Production")) for m in MODELS), "-n", ns)
        isvc = {"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "tabular"},
                "spec": {"models": {"stage": "Production", "memoryBudget": "320Mi"},
                         "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}}}
        kubectl.apply(json.dumps(isvc), "-n", ns)
        try:
            wait_status(kubectl, ns, lambda s: len(s.get("models") or []) == len(MODELS) and s.get("readyReplicas") == 1,
                        f"{len(MODELS)} models in the table and a ready server", timeout=300)
            ip = kubectl.json("get", "service", "tabular", "-n", ns)["spec"]["clusterIP"]
            # status.models is the table the servers are given; the server reads it a moment later.
            deadline = time.monotonic() + 60
            while {entry["name"] for entry in repository_index(f"http://{ip}")} != set(MODELS):
                assert time.monotonic() < deadline, f"the server's table: {repository_index(f'http://{ip}')}"
                time.sleep(0.5)
            yield f"http://{ip}"
        except BaseException:
            print(log.read_text()[-6000:])
            print(kubectl.run("get", "kiln,deploy,pods,cm", "-n", ns, "-o", "wide", check=False).stdout)
            raise


def repository_index(base: str) -> list[dict]:
    """The server's V2 repository index: every model of its table, its state and why."""
    req = urllib.request.Request(f"{base}/v2/repository/index", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        return json.load(answer)


def infer(base: str, model: str, rows: np.ndarray) -> tuple[str, list]:
    """(version that answered, labels) for `rows` sent to `model`'s V2 route."""
    body = json.dumps({"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64",
                                   "data": rows.ravel().tolist()}]})
    req = urllib.request.Request(f"{base}/v2/models/{model}/infer", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        doc = json.load(answer)
    return doc["model_version"], doc["outputs"][0]["data"]


def own_labels(files, model: str, version: int, rows: np.ndarray) -> list:
    return [str(v) for v in files[model, version].model.predict(rows)]


def server_pod(kubectl, ns) -> dict:
    (pod,) = [p for p in kubectl.json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=tabular")["items"]
              if not p["metadata"].get("deletionTimestamp")]
    return pod


def resident_bytes(kubectl, ns, pod: str) -> int:
    """kiln-serve's resident set, as the kernel counts it (VmRSS of PID 1 in the server container)."""
    out = kubectl.run("exec", "-n", ns, pod, "-c", "server", "--", "grep", "VmRSS", "/proc/1/status").stdout
    return int(out.split()[1]) * 1024


def test_every_model_answers_with_its_own_predictions_within_the_memory_budget(kubectl, ns, service, models):
    _, files = models
    rows = files["m0", 1].X[:8]
    pod = server_pod(kubectl, ns)["metadata"]["name"]
    answers = {}
    peak = 0
    for _ in range(2):  # round-robin twice: the second round finds them loaded, or loads them again
        for model in MODELS:
            version, labels = infer(service, model, rows)
            assert version == "1"
            assert [str(v) for v in labels] == own_labels(files, model, 1, rows), model
            answers[model] = tuple(labels)
        peak = max(peak, resident_bytes(kubectl, ns, pod))
    assert len(set(answers.values())) > 1, "every model gave the same answers: the routes do not reach their own models"
    assert peak < BUDGET, f"server resident set {peak / 2**20:.0f} MiB above the budget {BUDGET / 2**20:.0f} MiB"
    # The Open Inference Protocol over gRPC, through the Service's grpc port, reaches the same models.
    grpc = grpcclient.InferenceServerClient(url=f"{service.removeprefix('http://')}:8081")
    tensor = grpcclient.InferInput("x", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    for model in MODELS[:3]:
        result = grpc.infer(model, [tensor])
        assert [str(v) for v in result.as_numpy("predict").tolist()] == own_labels(files, model, 1, rows), model
    with pytest.raises(urllib.error.HTTPError) as unknown:
        infer(service, "nope", rows)
    assert unknown.value.code == 404 and "nope" in unknown.value.read().decode()
    index = repository_index(service)
    assert {entry["name"] for entry in index} == set(MODELS)
    assert {entry["state"] for entry in index} == {"READY"} or any(e["reason"].startswith("evicted") for e in index)


def steady_load(base: str, rows: np.ndarray) -> SteadyLoad:
    """Clients sending V2 requests round-robin over every model: answers counted by (model, version)."""
    def request(i: int) -> tuple[str, str]:
        model = MODELS[i % len(MODELS)]
        return model, infer(base, model, rows)[0]
    return SteadyLoad(request)


def test_promoting_one_model_switches_it_alone_with_no_failed_request_and_no_restart(kubectl, ns, service, models):
    _, files = models
    rows = files["m0", 1].X[:4]
    before = server_pod(kubectl, ns)
    with steady_load(service, rows) as load:
        time.sleep(2)
        kubectl.apply(json.dumps(model_version(files, PROMOTED, 2, "Staging")), "-n", ns)
        wait_for = f"{PROMOTED}-v2 verified"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            mv = kubectl.json("get", "modelversion", f"{PROMOTED}-v2", "-n", ns)
            if (mv.get("status") or {}).get("verifiedSha256"):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"timed out waiting for {wait_for}")
        promoted_at = time.monotonic()
        kubectl.run("patch", "modelversion", f"{PROMOTED}-v2", "-n", ns, "--type", "merge",
                    "-p", '{"spec":{"stage":"Production"}}')
        kubectl.run("patch", "modelversion", f"{PROMOTED}-v1", "-n", ns, "--type", "merge",
                    "-p", '{"spec":{"stage":"Archived"}}')
        deadline = time.monotonic() + 120
        while (PROMOTED, "2") not in load.first_seen and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
    served = sum(load.answers.values())
    print(f"promotion under load: {served} requests, {len(load.failures)} failed; {PROMOTED}-v2 answered "
          f"{load.first_seen.get((PROMOTED, '2'), float('nan')) - promoted_at:.1f} s after the stage change; by (model, version) "
          f"{dict(sorted(load.answers.items()))}")
    assert load.failures == [], load.failures[:5]
    assert (PROMOTED, "2") in load.first_seen, f"{PROMOTED} never answered with version 2"
    assert {v for (m, v) in load.answers if m != PROMOTED} == {"1"}, "another model changed version"
    assert all(load.answers[m, "1"] > 0 for m in MODELS if m != PROMOTED)
    version, labels = infer(service, PROMOTED, rows)
    assert (version, [str(v) for v in labels]) == ("2", own_labels(files, PROMOTED, 2, rows))
    after = server_pod(kubectl, ns)
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "the promotion replaced the server pod"
    assert after["status"]["containerStatuses"][0]["restartCount"] == before["status"]["containerStatuses"][0]["restartCount"]
    status = wait_status(kubectl, ns, lambda s: {"model": PROMOTED, "version": f"{PROMOTED}-v2"} in (s.get("models") or []),
                         f"status.models naming {PROMOTED}-v2", timeout=30)
    assert len(status["models"]) == len(MODELS)
    events = kubectl.json("get", "events", "-n", ns, "--field-selector", "reason=ModelsUpdated")["items"]
    assert any(f"{PROMOTED}: {PROMOTED}-v1 -> {PROMOTED}-v2" in e["message"] for e in events)
