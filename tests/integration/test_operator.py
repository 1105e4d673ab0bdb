"""The operator as a user runs it (`python -m kiln_operator`) against the real apiserver."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
KINDS = ("dataset", "trainingpipeline", "modelversion", "inferenceservice")


@pytest.fixture()
def operator(kubeconfig, crds, namespace, tmp_path):
    with OperatorProcess(kubeconfig, tmp_path / "operator.log", "--namespace", namespace) as op:
        yield op


def _healthy(op: OperatorProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _ready(kubectl, namespace, kind, name):
    obj = kubectl.json("get", kind, name, "-n", namespace)
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)


def _owned_by(child, parent):
    return any(ref["uid"] == parent["metadata"]["uid"] for ref in child["metadata"].get("ownerReferences", []))


def test_examples_are_reconciled_with_children_events_and_health(kubectl, operator, namespace):
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLES))
    for kind, name in (("dataset", "iris"), ("trainingpipeline", "iris-forest"), ("modelversion", "iris-v1"),
                       ("inferenceservice", "iris")):
        kubectl.wait_for(lambda: _ready(kubectl, namespace, kind, name), timeout=60, what=f"{kind} Ready condition")
    # The Dataset is validated by a Job of the runtime image (the operator never reads data); the
    # pipeline waits for it; the InferenceService waits for a verified version. Their Ready=True with
    # real data and a real node is what the end-to-end tests show.
    dataset = kubectl.json("get", "dataset", "iris", "-n", namespace)
    jobs = kubectl.json("get", "jobs", "-n", namespace)["items"]
    assert [j["metadata"]["name"] for j in jobs if _owned_by(j, dataset)] == [dataset["status"]["validationJob"]]
    assert _ready(kubectl, namespace, "trainingpipeline", "iris-forest")["reason"] == "DatasetNotReady"
    # A registered model is Ready only once a Job of the runtime image confirmed its digest; the
    # example's digest is made up, so it never is.
    mv = kubectl.json("get", "modelversion", "iris-v1", "-n", namespace)
    assert [j["metadata"]["name"] for j in jobs if _owned_by(j, mv)] == ["iris-v1-verify-9f2c4e1b"]
    assert _ready(kubectl, namespace, "modelversion", "iris-v1")["status"] == "False"
    # So `kubectl apply -f examples/` serves nothing: the service names the version it waits for and why.
    waiting = _ready(kubectl, namespace, "inferenceservice", "iris")
    assert (waiting["status"], waiting["reason"]) == ("False", "WaitingForVerification"), waiting
    assert "iris-v1" in waiting["message"]
    assert kubectl.run("get", "deployment", "iris-primary", "-n", namespace, check=False).returncode != 0
    # Opting in to unverified artifacts builds the serving children at once.
    kubectl.run("patch", "kisvc", "iris", "-n", namespace, "--type=merge", "-p", '{"spec":{"allowUnverified":true}}')
    isvc = kubectl.json("get", "inferenceservice", "iris", "-n", namespace)
    for kind, name in (("deployment", "iris-primary"), ("service", "iris"), ("hpa", "iris-primary"),
                       ("pdb", "iris")):
        child = kubectl.wait_for(lambda: (lambda r: r.returncode == 0 and json.loads(r.stdout))(
            kubectl.run("get", kind, name, "-n", namespace, "-o", "json", check=False)), timeout=60, what=kind)
        assert _owned_by(child, isvc), kind
    for kind in KINDS:
        for obj in kubectl.json("get", kind, "-n", namespace)["items"]:
            status = obj["status"]
            assert status["observedGeneration"] == obj["metadata"]["generation"]
            (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
            assert set(ready) == {"type", "status", "reason", "message", "lastTransitionTime",
                                  "observedGeneration"}
    reasons = {(e["involvedObject"]["kind"], e["reason"]) for e in kubectl.json("get", "events", "-n", namespace)["items"]}
    assert ("Dataset", "Validating") in reasons, reasons
    assert _healthy(operator)
    lines = [line for line in operator.log.read_text().splitlines() if line.startswith("{")]
    assert lines and all("level" in json.loads(line) for line in lines)


def test_a_spec_the_schema_cannot_catch_is_reported_not_crashed(kubectl, operator, namespace):
    pipeline = yaml.safe_load((EXAMPLES / "02-trainingpipeline.yaml").read_text())
    pipeline["spec"]["schedule"] = "61 * * * *"  # five fields, but minute 61 does not exist
    kubectl.apply(yaml.safe_dump(pipeline), "-n", namespace)
    ready = kubectl.wait_for(lambda: _ready(kubectl, namespace, "trainingpipeline", "iris-forest"), timeout=60,
                             what="a Ready condition")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.schedule" in ready["message"]
    warnings = [e for e in kubectl.json("get", "events", "-n", namespace)["items"] if e["type"] == "Warning"]
    assert any("spec.schedule" in e["message"] for e in warnings)

    pipeline["spec"]["schedule"] = "0 3 * * *"
    kubectl.apply(yaml.safe_dump(pipeline), "-n", namespace)
    # Fixed, the pipeline moves on to waiting for its Dataset (not applied in this test).
    ready = kubectl.wait_for(
        lambda: (r := _ready(kubectl, namespace, "trainingpipeline", "iris-forest")) and r["reason"] != "InvalidSpec" and r,
        timeout=60, what="the InvalidSpec condition to clear after the fix")
    assert ready["reason"] == "DatasetNotFound" and "iris" in ready["message"], ready
    obj = kubectl.json("get", "trainingpipeline", "iris-forest", "-n", namespace)
    assert ready["observedGeneration"] == obj["metadata"]["generation"] == 2
    assert obj["spec"]["schedule"] == "0 3 * * *"  # the operator never writes the user's spec


def _api_requests(op: OperatorProcess) -> dict[str, float]:
    """The operator's own count of requests its reconciles sent, by verb and kind (kopf's watches are
    not counted)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5) as page:
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in page.read().decode().splitlines()
                if line.startswith("kiln_operator_api_requests_total{")}


def _apply_examples(kubectl, namespace, copies):
    """Every example, `copies` times (names suffixed -0, -1, ...)."""
    docs = []
    for i in range(copies):
        for path in sorted(EXAMPLES.glob("*.yaml")):
            body = yaml.safe_load(path.read_text())
            body["metadata"]["name"] = f"{body['metadata']['name']}-{i}"
            if body["kind"] == "InferenceService":
                # The example's version has a made-up digest and is never verified: opt in, so that
                # every service builds its serving children and the restart has them to duplicate.
                body["spec"]["allowUnverified"] = True
            docs.append(body)
    kubectl.apply(yaml.safe_dump_all(docs), "-n", namespace)


def _all_ready(kubectl, namespace, copies):
    return all(_ready(kubectl, namespace, kind, f"{name}-{i}") for i in range(copies)
               for kind, name in (("dataset", "iris"), ("trainingpipeline", "iris-forest"),
                                  ("modelversion", "iris-v1"), ("inferenceservice", "iris")))


@pytest.mark.parametrize("kill_after", [0.5, 2.5, 6.0])
def test_restarting_the_operator_mid_work_leaves_no_duplicates(kubectl, kubeconfig, crds, namespace, tmp_path, kill_after):
    _apply_examples(kubectl, namespace, copies=8)
    with OperatorProcess(kubeconfig, tmp_path / "op1.log", "--namespace", namespace) as first:
        time.sleep(kill_after)  # before, in the middle of, or after the first reconciles of the 32 objects
        first.proc.send_signal(signal.SIGKILL)
    with OperatorProcess(kubeconfig, tmp_path / "op2.log", "--namespace", namespace):
        kubectl.wait_for(lambda: _all_ready(kubectl, namespace, 8), timeout=120, what="every object reconciled")
        time.sleep(4)  # the Jobs' and Deployments' pods move on: their owners follow
    for kind in KINDS:
        items = kubectl.json("get", kind, "-n", namespace)["items"]
        assert len(items) == 8
        for obj in items:
            types = [c["type"] for c in obj["status"]["conditions"]]
            assert len(types) == len(set(types)), obj["metadata"]["name"]
            assert not obj["metadata"].get("finalizers"), obj["metadata"]["name"]
    # One set of children per parent, each owned by a live parent: no duplicate, no orphan.
    for parent_kind, kinds in (("inferenceservices", ("deployments", "services", "hpa", "pdb")),
                               ("datasets", ("jobs",)), ("modelversions", ("jobs",))):
        parents = {o["metadata"]["uid"] for o in kubectl.json("get", parent_kind, "-n", namespace)["items"]}
        for kind in kinds:
            children = [c for c in kubectl.json("get", kind, "-n", namespace)["items"]
                        if c["metadata"]["ownerReferences"][0]["kind"].lower() + "s" == parent_kind]
            assert len(children) == 8, kind
            assert {c["metadata"]["ownerReferences"][0]["uid"] for c in children} == parents, kind


def test_at_rest_the_operator_sends_nothing(kubectl, kubeconfig, crds, namespace, tmp_path):
    # No pod may start here, so once every object is reconciled nothing changes any more: what the
    # operator sends then is what it costs at rest (a timer per object used to send 2.5 requests/s each).
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    kubectl.apply(json.dumps(quota), "-n", namespace)
    _apply_examples(kubectl, namespace, copies=4)
    with OperatorProcess(kubeconfig, tmp_path / "op.log", "--namespace", namespace) as op:
        kubectl.wait_for(lambda: _all_ready(kubectl, namespace, 4), timeout=120, what="every object reconciled")
        # Settled: the last writes of the first reconciles are done when two reads 2 s apart agree.
        reads = [_api_requests(op)]

        def settled() -> bool:
            time.sleep(2)
            reads.append(_api_requests(op))
            return reads[-1] == reads[-2]
        kubectl.wait_for(settled, timeout=60, what="the first reconciles' writes to end")
        before = reads[-1]
        time.sleep(10)
        after = _api_requests(op)
        assert after == before, f"the operator sent requests with nothing changing: {after} after {before}"
        assert before.get('kiln_operator_api_requests_total{kind="Deployment",verb="apply"}') == 4  # once each


def test_a_namespace_is_deleted_with_no_operator_running(kubectl, kubeconfig, crds, tmp_path):
    namespace = f"t-gone-{int(time.time() * 1000) % 100000}"
    kubectl.run("create", "namespace", namespace)
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLES / "04-inferenceservice.yaml"))
    with OperatorProcess(kubeconfig, tmp_path / "op1.log", "--namespace", namespace):
        kubectl.wait_for(lambda: _ready(kubectl, namespace, "inferenceservice", "iris"), timeout=60,
                         what="the first reconcile")
    assert not kubectl.json("get", "inferenceservice", "iris", "-n", namespace)["metadata"].get("finalizers")
    kubectl.run("delete", "namespace", namespace, "--wait=false")
    kubectl.wait_for(lambda: kubectl.run("get", "namespace", namespace, check=False).returncode != 0,
                     timeout=90, what=f"namespace {namespace} to be gone without an operator")


def test_the_finalizer_an_earlier_version_left_is_removed_at_start(kubectl, kubeconfig, crds, namespace, tmp_path):
    body = yaml.safe_load((EXAMPLES / "04-inferenceservice.yaml").read_text())
    body["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]  # what 0.3's timers put there
    kubectl.apply(yaml.safe_dump(body), "-n", namespace)
    with OperatorProcess(kubeconfig, tmp_path / "op.log", "--namespace", namespace):
        kubectl.wait_for(lambda: not kubectl.json("get", "inferenceservice", "iris", "-n", namespace)["metadata"].get(
            "finalizers"), timeout=60, what="the old finalizer to go")
