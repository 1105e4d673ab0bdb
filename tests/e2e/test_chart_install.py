"""`helm install` of charts/kiln into the local cluster, as docs/helm.md tells a new user: the S3 store
(hack/store-up.sh) with the examples' data, the store Secret, the chart with the artifact store set, the
examples applied. The operator runs from the chart's Deployment (the operator image, on the node), takes
the examples to a Ready InferenceService that answers, and its RBAC is enough (no Forbidden).

The release serves this test's namespace only (`watchNamespaces`): a cluster-wide operator would act
on every other test's objects. Cluster-scoped names carry the release name, so runs never collide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import prometheus_local
import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DENIED = ("Forbidden", "forbidden", "403", "Not enough permissions")


def _helm(helm: Path, kubeconfig: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def _ready(kubectl, namespace: str, kind: str, name: str) -> dict | None:
    obj = kubectl.json("get", kind, name, "-n", namespace)
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)


@pytest.fixture(scope="session")
def prometheus(kubeconfig):
    yield from prometheus_local.session()


@pytest.fixture()
def store(kubeconfig):
    started = subprocess.run(["bash", str(ROOT / "hack/store-up.sh")], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    endpoint = started.stdout.strip().splitlines()[-1]
    uploaded = subprocess.run([sys.executable, str(ROOT / "hack/demo.py"), "--s3-endpoint", endpoint, "--upload-only"],
                              capture_output=True, text=True, timeout=120)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    yield endpoint
    subprocess.run(["bash", str(ROOT / "hack/store-down.sh")], capture_output=True, timeout=60)


@pytest.fixture()
def release(helm, kubeconfig, kubectl, crds, namespace, store):
    name = f"e2e{os.getpid()}"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kiln-store", "namespace": namespace},
              "stringData": {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}}
    kubectl.apply(json.dumps(secret))
    _helm(helm, kubeconfig, "install", name, str(ROOT / "charts/kiln"), "--namespace", namespace,
          "--set", f"watchNamespaces={{{namespace}}}", "--set", f"peering.name={name}",
          "--set", "artifactStore.root=s3://kiln-demo/artifacts", "--set", f"artifactStore.s3.endpoint={store}",
          "--set", "artifactStore.secretName=kiln-store",
          "--wait", "--timeout", "180s", timeout=240)
    yield name
    subprocess.run([str(helm), "--kubeconfig", str(kubeconfig), "uninstall", name, "--namespace", namespace,
                    "--wait", "--timeout", "60s"], capture_output=True, timeout=120)


def _pod_logs(kubectl, namespace: str, release: str) -> dict[str, str]:
    pods = kubectl.json("get", "pods", "-n", namespace, "-l",
                        f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator")["items"]
    return {p["metadata"]["name"]: kubectl.run("logs", "-n", namespace, p["metadata"]["name"], check=False).stdout
            for p in pods}


def _logs(kubectl, namespace: str, release: str) -> str:
    return "\n".join(_pod_logs(kubectl, namespace, release).values())


def _acting(log: str) -> bool:
    """kopf starts a peering operator paused and logs when it resumes (the highest priority) or pauses."""
    states = [line for line in log.splitlines() if "Resuming operations" in line or "Pausing operations" in line]
    return bool(states) and "Resuming operations" in states[-1]


def test_a_user_following_the_docs_gets_a_ready_inference_service_and_no_forbidden(kubectl, namespace, release,
                                                                                   prometheus):
    deployment = kubectl.json("get", "deployment", f"{release}-kiln-operator", "-n", namespace)
    assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"] == 2
    kubectl.run("apply", "-n", namespace, *(f"--filename={EXAMPLES / f}" for f in
                                            ("01-dataset.yaml", "02-trainingpipeline.yaml", "04-inferenceservice.yaml")))
    # What docs/helm.md has the user wait for: validation, 8 trials, the gate, verification, the rollout.
    waited = kubectl.run("wait", "-n", namespace, "--for=condition=Ready", "inferenceservice/iris", "--timeout=600s",
                         check=False, timeout=620)
    if waited.returncode != 0:
        state = kubectl.run("get", "kiln,jobs,pods", "-n", namespace, check=False).stdout
        raise AssertionError(f"{waited.stderr}\n{state}\noperator logs:\n{_logs(kubectl, namespace, release)[-3000:]}")
    # The registry's own digest check (a Job) may end after the server, which checks it too, is serving.
    kubectl.run("wait", "-n", namespace, "--for=condition=Ready", "dataset/iris", "trainingpipeline/iris-forest",
                "modelversion/iris-v1", "--timeout=180s", timeout=200)
    ip = kubectl.json("get", "service", "iris", "-n", namespace)["spec"]["clusterIP"]
    request = urllib.request.Request(f"http://{ip}/v1/models/iris:predict", data=json.dumps(
        {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.load(answer)["predictions"] == ["setosa", "virginica"]
    # Both replicas wrote their lease, named after their pods; exactly one of them acts.
    peers = kubectl.json("get", "kopfpeering", release, "-n", namespace).get("status") or {}
    pod_logs = _pod_logs(kubectl, namespace, release)
    assert set(peers) == set(pod_logs), (peers, list(pod_logs))
    acting = [name for name, log in pod_logs.items() if _acting(log)]
    assert len(acting) == 1, (acting, peers)
    logs = _logs(kubectl, namespace, release)
    denied = [line for line in logs.splitlines() if any(word in line for word in DENIED)]
    assert denied == [], "\n".join(denied[:20])

    # Both operator pods are scraped on their `metrics` port, as the chart's operator PodMonitor selects
    # them (the local Prometheus's kiln-operator job), and the Kiln / Operator board shows the acting
    # one's reconciles of this namespace's objects.
    def scraped():
        found = [t for t in prometheus.targets() if t["labels"].get("job") == "kiln-operator"
                 and t["labels"].get("namespace") == namespace and t["health"] == "up"]
        return found if len(found) == 2 else None

    prometheus.wait_for(scraped, timeout=60, what="both operator pods scraped")
    (reconciles,) = [exprs[0] for board, title, exprs in prometheus_local.dashboard_queries({"namespace": namespace})
                     if board == "kiln-operator" and title.startswith("Reconciles/s")]
    series = prometheus.wait_for(lambda: prometheus.query(reconciles), timeout=60, what="reconciles on the board")
    assert {"InferenceService", "Dataset"} <= {s["metric"]["kind"] for s in series}, series
