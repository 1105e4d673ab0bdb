"""`helm install` of charts/kiln into the local cluster: the operator runs from the chart's Deployment
(the operator image, on the node), reconciles the examples, and its RBAC is enough (no Forbidden).

The release serves this test's namespace only (`watchNamespaces`): a cluster-wide operator would act
on every other test's objects. Cluster-scoped names carry the release name, so runs never collide.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


@pytest.fixture()
def release(helm, kubeconfig, kubectl, crds, namespace):
    name = f"e2e{os.getpid()}"
    _helm(helm, kubeconfig, "install", name, str(ROOT / "charts/kiln"), "--namespace", namespace,
          "--set", f"watchNamespaces={{{namespace}}}", "--set", f"peering.name={name}",
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


def test_the_chart_runs_the_operator_with_enough_rbac(kubectl, namespace, release):
    deployment = kubectl.json("get", "deployment", f"{release}-kiln-operator", "-n", namespace)
    assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"] == 2
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLES))
    examples = (("dataset", "iris"), ("trainingpipeline", "iris-forest"), ("modelversion", "iris-v1"),
                ("inferenceservice", "iris"))
    try:
        kubectl.wait_for(lambda: all(_ready(kubectl, namespace, k, n) for k, n in examples), timeout=120,
                         what="a Ready condition on every example")
    except AssertionError as e:
        raise AssertionError(f"{e}\noperator logs:\n{_logs(kubectl, namespace, release)[-3000:]}") from None
    kubectl.run("get", "deployment", "iris-primary", "-n", namespace)
    # Both replicas wrote their lease, named after their pods; exactly one of them acts.
    peers = kubectl.json("get", "kopfpeering", release, "-n", namespace).get("status") or {}
    pod_logs = _pod_logs(kubectl, namespace, release)
    assert set(peers) == set(pod_logs), (peers, list(pod_logs))
    acting = [name for name, log in pod_logs.items() if _acting(log)]
    assert len(acting) == 1, (acting, peers)
    logs = _logs(kubectl, namespace, release)
    denied = [line for line in logs.splitlines() if any(word in line for word in DENIED)]
    assert denied == [], "\n".join(denied[:20])
