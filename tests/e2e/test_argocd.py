"""Real GitOps: Argo CD, built from its Go module and running as pods (hack/argocd-up.sh), syncs a git
repository of Kiln manifests into the local cluster, and its health follows Kiln's conditions.

The repository is the staging folder of examples/gitops, one object per file, served by `git daemon` on
the pod bridge's host address (the repo-server reaches it there; nothing outside the machine can). The
Application is examples/gitops/application.yaml with the repository and namespace replaced. The Kiln
operator runs beside the test, serving this namespace only; the artifact store is moto on the bridge.

Each step commits, asks Argo CD to refresh (what a git webhook does), and prints the time from the
commit to the state it waits for. Argo CD's own fields are asserted: sync status, revision, operation
phase and message, each resource's health status and message.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from operator_process import OperatorProcess
from s3_server import moto_server

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BRIDGE_IP = "10.244.0.1"  # hack/lib.sh: the pod bridge's host side
OUTSIDE = "203.0.113.7"  # TEST-NET-3: an address outside the machine (tests/e2e/test_node.py)
FILES = {"Dataset": "dataset.yaml", "TrainingPipeline": "trainingpipeline.yaml",
         "InferenceService": "inferenceservice.yaml"}


def _run(*cmd: str, cwd: Path | None = None, timeout: float = 60) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def argocd(kubectl):
    was_up = kubectl.run("get", "namespace", "argocd", check=False).returncode == 0
    # A cold machine builds Argo CD from its Go module first (minutes; then cached).
    _run("bash", str(ROOT / "hack/argocd-up.sh"), timeout=3600)
    yield
    if not was_up and os.environ.get("KILN_KEEP_CLUSTER") != "1":
        subprocess.run(["bash", str(ROOT / "hack/argocd-down.sh")], capture_output=True, timeout=300)


class Repo:
    """A git repository the test commits to, served read-only to the cluster by git daemon."""

    def __init__(self, path: Path, url: str):
        self.path, self.url = path, url

    def write(self, name: str, doc: dict | None) -> None:
        target = self.path / "staging" / name
        if doc is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump(doc, sort_keys=False))

    def commit(self, message: str) -> tuple[str, float]:
        _run("git", "add", "-A", cwd=self.path)
        _run("git", "commit", "-q", "-m", message, cwd=self.path)
        return _run("git", "rev-parse", "HEAD", cwd=self.path).strip(), time.monotonic()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("git")
    path = base / "kiln"
    path.mkdir()
    _run("git", "init", "-q", "-b", "main", cwd=path)
    _run("git", "config", "user.email", "e2e@kiln.dev", cwd=path)
    _run("git", "config", "user.name", "Kiln e2e", cwd=path)
    with socket.socket() as s:
        s.bind((BRIDGE_IP, 0))  # fails at once, naming the address, when the node's bridge is missing
        port = s.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
                               f"--listen={BRIDGE_IP}", f"--port={port}", str(base)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex((BRIDGE_IP, port)) != 0:
            assert time.monotonic() < deadline and daemon.poll() is None, "git daemon did not start"
            time.sleep(0.1)
        yield Repo(path, f"git://{BRIDGE_IP}:{port}/kiln")
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


@pytest.fixture(scope="module")
def kiln(kubectl, kubeconfig, crds, tmp_path_factory):
    """A namespace served by a Kiln operator, with the examples' data in the store."""
    ns = f"t-argocd-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", ns)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kiln-store", "namespace": ns},
              "stringData": {"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": "e2e"}}
    kubectl.apply(json.dumps(secret))
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with moto_server(BRIDGE_IP) as url:
        _run(sys.executable, str(ROOT / "hack/demo.py"), "--s3-endpoint", url, "--upload-only", timeout=120)
        env = {"KILN_S3_ENDPOINT": url, "KILN_STORE_SECRET": "kiln-store",
               "KILN_ARTIFACT_ROOT": "s3://kiln-demo/artifacts"}
        with OperatorProcess(kubeconfig, log, "--namespace", ns, env=env):
            yield ns
    kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


def _examples() -> dict[str, dict]:
    docs = yaml.safe_load_all((ROOT / "examples/gitops/staging/iris.yaml").read_text())
    return {d["kind"]: d for d in docs}


class App:
    def __init__(self, kubectl, name: str):
        self.kubectl, self.name = kubectl, name

    def get(self) -> dict:
        return self.kubectl.json("get", "application", self.name, "-n", "argocd")

    def refresh(self) -> None:
        """What a git webhook does: Argo CD compares with the newest commit now, not at its next poll."""
        self.kubectl.run("annotate", "application", self.name, "-n", "argocd", "--overwrite",
                         "argocd.argoproj.io/refresh=normal")

    def wait(self, what: str, predicate, timeout: float = 600, every: float = 1.0) -> dict:
        deadline, app = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            app = self.get()
            if predicate(app.get("status") or {}):
                return app
            time.sleep(every)
        raise AssertionError(f"Argo CD: timed out after {timeout} s waiting for {what}; status:\n"
                             f"{json.dumps(app.get('status'), indent=1)[-5000:]}")


def _synced_to(revision: str):
    return lambda s: s.get("sync", {}).get("status") == "Synced" and s["sync"].get("revision") == revision


def _healthy_at(revision: str):
    def check(s: dict) -> bool:
        return _synced_to(revision)(s) and s.get("health", {}).get("status") == "Healthy"
    return check


def _resource(status: dict, kind: str, name: str) -> dict:
    return next((r for r in status.get("resources", []) if r["kind"] == kind and r["name"] == name), {})


def _timed(step: str, since: float) -> None:
    print(f"argocd e2e: {step}: {time.monotonic() - since:.1f} s from the commit")


def _predict(kubectl, ns: str) -> list:
    ip = kubectl.json("get", "service", "iris", "-n", ns)["spec"]["clusterIP"]
    request = urllib.request.Request(f"http://{ip}/v1/models/iris:predict", data=json.dumps(
        {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["predictions"]


def test_argocd_syncs_kiln_from_git_and_its_health_follows_kiln(kubectl, argocd, repo, kiln):
    ns = kiln
    examples = _examples()
    for kind, doc in examples.items():
        repo.write(FILES[kind], doc)
    revision, t0 = repo.commit("iris in staging: data, training, serving")

    application = yaml.safe_load((ROOT / "examples/gitops/application.yaml").read_text())
    application["metadata"]["name"] = ns
    application["spec"]["source"]["repoURL"] = repo.url
    application["spec"]["destination"]["namespace"] = ns
    kubectl.apply(json.dumps(application))
    app = App(kubectl, ns)
    try:
        _story(kubectl, app, repo, ns, examples, revision, t0)
    finally:
        kubectl.run("delete", "application", ns, "-n", "argocd", "--wait=false", check=False)


def _story(kubectl, app: App, repo: Repo, ns: str, examples: dict, revision: str, t0: float) -> None:
    # 1. The first commit: synced at once, Progressing while Kiln validates, trains and rolls out,
    #    Healthy when every object is Ready, and the model answers.
    app.wait("the first commit synced", _synced_to(revision), timeout=180)
    _timed("first commit Synced", t0)
    progressing: list[str] = []

    def healthy_noting_progress(s: dict) -> bool:
        if s.get("health", {}).get("status") == "Progressing":
            progressing.extend(r["health"].get("message", "") for r in s.get("resources", [])
                               if r.get("health", {}).get("status") == "Progressing")
        return _healthy_at(revision)(s)

    status = app.wait("Healthy after training and rollout", healthy_noting_progress, timeout=900, every=2)["status"]
    _timed("first commit Healthy (validated, trained, verified, served)", t0)
    assert progressing, "Argo CD never showed the Kiln objects Progressing"
    assert any(m.startswith(("Validating", "Running", "RollingOut", "WaitingForVerification", "DatasetNotReady",
                             "NoRun", "Verifying", "the operator has not", "waiting for the Kiln"))
               for m in progressing), progressing
    for kind, doc in examples.items():
        # Argo CD's health message is Kiln's own Ready condition, "reason: message".
        resource = _resource(status, kind, doc["metadata"]["name"])
        assert resource.get("status") == "Synced" and resource["health"]["status"] == "Healthy", resource
        obj = kubectl.json("get", kind.lower(), doc["metadata"]["name"], "-n", ns)
        (ready,) = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
        assert resource["health"]["message"].startswith(f"{ready['reason']}: "), (resource, ready)
    kubectl.run("wait", "-n", ns, "--for=condition=Ready", "dataset/iris", "trainingpipeline/iris-forest",
                "inferenceservice/iris", "--timeout=10s")
    assert _predict(kubectl, ns) == ["setosa", "virginica"]
    syncs = len(app.get()["status"].get("history", []))

    # 2. A change of the InferenceService: a rollout, Healthy again, and no OutOfSync loop (Argo CD's
    #    diff against what the apiserver defaulted and the operator wrote stays empty).
    isvc = examples["InferenceService"]
    isvc["spec"]["autoscaling"]["minReplicas"] = 2
    repo.write(FILES["InferenceService"], isvc)
    revision, t0 = repo.commit("iris serves from two replicas at least")
    app.refresh()
    app.wait("the replicas change Healthy", _healthy_at(revision), timeout=300)
    _timed("minReplicas 1 -> 2 Healthy", t0)
    # Serving never stopped, so Kiln stayed Ready; the autoscaler's floor moved and the pods follow it.
    (hpa,) = kubectl.json("get", "hpa", "-n", ns)["items"]
    assert hpa["spec"]["minReplicas"] == 2
    kubectl.wait_for(lambda: kubectl.json("get", "deployment", "-n", ns, "-l", "kiln.dev/role=primary")["items"][0][
        "status"].get("readyReplicas") == 2, timeout=180, what="two ready serving pods")
    _timed("two serving pods ready", t0)
    # Argo CD compares again (a refresh, then one reconciliation period): still Synced, still one sync per
    # commit, so selfHeal never re-applied anything.
    stable_since = time.monotonic()
    app.refresh()
    while time.monotonic() - stable_since < 40:
        status = app.get()["status"]
        assert status["sync"]["status"] == "Synced", json.dumps(status.get("resources"), indent=1)
        time.sleep(2)
    assert len(status.get("history", [])) == syncs + 1, status.get("history")

    # 3. A valid-looking but broken object: a hand-registered ModelVersion whose digest is wrong.
    #    Degraded with Kiln's reason and message; reverting the commit brings Healthy back.
    served = kubectl.json("get", "modelversions", "-n", ns)["items"][0]["spec"]
    broken = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "iris-handmade-v1"},
              "spec": {"modelName": "iris-handmade", "version": 1, "signature": served["signature"],
                       "framework": served["framework"],
                       "artifact": {**served["artifact"], "sha256": "0" * 64}}}
    repo.write("modelversion.yaml", broken)
    revision, t0 = repo.commit("register iris-handmade v1 by hand (wrong digest)")
    app.refresh()
    status = app.wait("Degraded by the wrong digest", lambda s: _synced_to(revision)(s)
                      and s.get("health", {}).get("status") == "Degraded", timeout=300)["status"]
    _timed("wrong digest Degraded", t0)
    health = _resource(status, "ModelVersion", "iris-handmade-v1")["health"]
    assert health["status"] == "Degraded" and health["message"].startswith("DigestMismatch:"), health
    assert "sha256" in health["message"], health
    repo.write("modelversion.yaml", None)
    revision, t0 = repo.commit("Revert: the hand-registered version")
    app.refresh()
    app.wait("Healthy after the revert", _healthy_at(revision), timeout=180)
    _timed("revert Healthy", t0)
    kubectl.wait_for(lambda: kubectl.run("get", "modelversion", "iris-handmade-v1", "-n", ns,
                                         check=False).returncode != 0, timeout=60, what="the pruned ModelVersion gone")

    # 4. A commit the apiserver refuses: the sync fails with the CRD's message naming the field.
    bad = json.loads(json.dumps(isvc))
    bad["spec"]["autoscaling"]["minReplicas"] = -1
    repo.write(FILES["InferenceService"], bad)
    revision, t0 = repo.commit("iris with a negative replica count")
    app.refresh()
    refused = app.wait("the refused sync", lambda s: (s.get("operationState") or {}).get("syncResult", {}).get(
        "revision") == revision and s["operationState"].get("phase") in ("Failed", "Error"), timeout=180)["status"]
    _timed("refused by the apiserver, sync Failed", t0)
    message = refused["operationState"]["message"] + json.dumps(refused["operationState"]["syncResult"])
    assert "spec.autoscaling.minReplicas" in message, message
    assert refused["sync"]["status"] == "OutOfSync"
    repo.write(FILES["InferenceService"], isvc)
    revision, t0 = repo.commit("Revert: the negative replica count")
    app.refresh()
    app.wait("Healthy after the second revert", _healthy_at(revision), timeout=300)
    _timed("second revert Healthy", t0)

    # 5. A file deleted from git: prune removes the InferenceService, and its children go with it.
    children = kubectl.json("get", "deployments,services", "-n", ns, "-l", "app.kubernetes.io/instance=iris")["items"]
    assert children
    repo.write(FILES["InferenceService"], None)
    revision, t0 = repo.commit("iris is no longer served in staging")
    app.refresh()
    app.wait("synced without the InferenceService", _synced_to(revision), timeout=180)
    kubectl.wait_for(lambda: not kubectl.json("get", "inferenceservices,deployments", "-n", ns,
                                              "-l", "app.kubernetes.io/instance=iris")["items"]
                     and kubectl.run("get", "inferenceservice", "iris", "-n", ns, check=False).returncode != 0,
                     timeout=120, what="the InferenceService and its Deployments gone")
    _timed("deleted file pruned with its children", t0)
    assert not _resource(app.get()["status"], "InferenceService", "iris")


def test_argocd_reaches_nothing_outside_the_machine(kubectl, argocd):
    """The repo-server, the component that fetches from git, cannot open a connection off the machine."""
    pod = kubectl.json("get", "pods", "-n", "argocd", "-l", "app.kubernetes.io/name=argocd-repo-server")["items"][0]
    started = time.monotonic()
    tried = kubectl.run("exec", "-n", "argocd", pod["metadata"]["name"], "-c", "argocd-repo-server", "--",
                        "git", "ls-remote", f"git://{OUTSIDE}/repo.git", check=False, timeout=60)
    assert tried.returncode != 0 and "unreachable" in tried.stderr.lower(), tried.stderr
    assert time.monotonic() - started < 10, "the connection was not refused at once"
