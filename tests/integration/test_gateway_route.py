"""A canary's share by Gateway API HTTPRoute weights, against the real apiserver with the Gateway API CRDs.

hack/gateway-api-crds.sh installs the standard-channel CRDs (pinned release of sigs.k8s.io/gateway-api).
No Gateway controller runs in the local cluster and no Gateway exists: the apiserver accepts and stores
the HTTPRoute, but nothing routes by it and its status stays empty. What is tested is the operator's
side: the route it writes, its weights, its owner, and how it follows the spec.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def model_version(version: int) -> dict:
    # Never Ready (made-up digest, nothing to verify against): the InferenceService resolves it by name.
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": f"iris-v{version}"},
            "spec": {"modelName": "iris", "version": version, "framework": {"version": "1.6.1"},
                     "artifact": {"uri": f"s3://kiln-test/iris/v{version}/model.skops", "sha256": f"{version}" * 64},
                     "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}}}}


ISVC = {"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "iris"},
        "spec": {"model": {"versionRef": {"name": "iris-v1"}},
                 "canary": {"versionRef": {"name": "iris-v2"}, "trafficPercent": 20},
                 "gateway": {"parentRefs": [{"name": "web", "sectionName": "http"}],
                             "hostnames": ["iris.kiln.test"]},
                 "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
                 "monitoring": {"drift": {"enabled": False}},
                 "allowUnverified": True}}  # made-up digests: these tests are about routes


@pytest.fixture(scope="module")
def gateway_api(kubeconfig) -> None:
    done = subprocess.run(["bash", str(ROOT / "hack/gateway-api-crds.sh")], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    if done.returncode != 0:
        pytest.fail(f"hack/gateway-api-crds.sh exited {done.returncode}:\n{done.stdout}\n{done.stderr}", pytrace=False)


@pytest.fixture()
def operator(kubeconfig, crds, gateway_api, namespace, tmp_path):
    with OperatorProcess(kubeconfig, tmp_path / "operator.log", "--namespace", namespace) as op:
        yield op


def _route_weights(kubectl, namespace) -> dict[str, int] | None:
    found = kubectl.run("get", "httproute", "iris", "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    route = json.loads(found.stdout)
    return {b["name"]: b.get("weight") for rule in route["spec"]["rules"] for b in rule["backendRefs"]}


def _exists(kubectl, namespace, kind, name) -> bool:
    return kubectl.run("get", kind, name, "-n", namespace, check=False).returncode == 0


def _routed(kubectl, namespace):
    status = kubectl.json("get", "inferenceservice", "iris", "-n", namespace).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Routed"), None)


def test_canary_share_is_set_by_httproute_weights_and_follows_the_spec(kubectl, operator, namespace):
    manifests = [model_version(1), model_version(2), ISVC]
    kubectl.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}), "-n", namespace)

    kubectl.wait_for(lambda: _route_weights(kubectl, namespace) == {"iris-primary": 80, "iris-canary": 20},
                     timeout=60, what="the HTTPRoute weighing primary 80, canary 20")
    isvc = kubectl.json("get", "inferenceservice", "iris", "-n", namespace)
    route = kubectl.json("get", "httproute", "iris", "-n", namespace)
    (owner,) = route["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("InferenceService", isvc["metadata"]["uid"], True)
    assert route["spec"]["parentRefs"][0]["name"] == "web" and route["spec"]["hostnames"] == ["iris.kiln.test"]
    for role in ("primary", "canary"):
        svc = kubectl.json("get", "service", f"iris-{role}", "-n", namespace)
        assert svc["spec"]["selector"]["kiln.dev/role"] == role
        assert svc["metadata"]["ownerReferences"][0]["uid"] == isvc["metadata"]["uid"]
    assert _exists(kubectl, namespace, "service", "iris")  # all pods, for in-cluster clients
    # The weights set the share, so the primary is not grown to 4 replicas to make the canary 20%.
    assert kubectl.json("get", "hpa", "iris-primary", "-n", namespace)["spec"]["minReplicas"] == 1
    routed = kubectl.wait_for(lambda: _routed(kubectl, namespace), timeout=30, what="the Routed condition")
    assert (routed["status"], routed["reason"]) == ("True", "HTTPRoute")

    # Without the canary the route sends everything to the primary, and the canary's Service goes.
    kubectl.run("patch", "inferenceservice", "iris", "-n", namespace, "--type", "json",
                "-p", '[{"op": "remove", "path": "/spec/canary"}]')
    kubectl.wait_for(lambda: _route_weights(kubectl, namespace) == {"iris-primary": 100}, timeout=60,
                     what="the HTTPRoute with the primary only")
    kubectl.wait_for(lambda: not _exists(kubectl, namespace, "service", "iris-canary"), timeout=30,
                     what="the canary Service to be deleted")

    # Without spec.gateway the route and the role Services go; the all-pods Service stays.
    kubectl.run("patch", "inferenceservice", "iris", "-n", namespace, "--type", "json",
                "-p", '[{"op": "remove", "path": "/spec/gateway"}]')
    kubectl.wait_for(lambda: _route_weights(kubectl, namespace) is None, timeout=60, what="the HTTPRoute to be deleted")
    kubectl.wait_for(lambda: not _exists(kubectl, namespace, "service", "iris-primary"), timeout=30,
                     what="the primary's Service to be deleted")
    assert _exists(kubectl, namespace, "service", "iris")
    assert _routed(kubectl, namespace)["reason"] == "NoGateway"
