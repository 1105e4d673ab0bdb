"""The chart's RBAC is enough: the operator, authenticated as the chart's ServiceAccount, reconciles the
examples without one Forbidden.

The operator runs beside the test (not in a pod), with a token of the chart's ServiceAccount, so this
holds on the control plane alone. It serves one namespace (the chart's `watchNamespaces` mode): a
cluster-wide operator would act on every other test's objects. tests/e2e/test_chart_install.py runs
the operator from the chart's own Deployment.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from operator_process import OperatorProcess, token_kubeconfig

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/kiln"
RBAC_TEMPLATES = ("serviceaccount.yaml", "rbac.yaml", "rbac-bindings.yaml", "peering.yaml")
DENIED = ("Forbidden", "forbidden", "403", "Not enough permissions")


def _ready(kubectl, namespace, kind, name):
    obj = kubectl.json("get", kind, name, "-n", namespace)
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)


def chart_rbac(helm, namespace: str, release: str) -> str:
    """The chart's ServiceAccount, Roles and bindings for an operator serving `namespace`."""
    show = [arg for t in RBAC_TEMPLATES for arg in ("--show-only", f"templates/{t}")]
    return subprocess.run(
        [str(helm), "template", release, str(CHART), "--namespace", namespace, *show,
         "--set", f"watchNamespaces={{{namespace}}}", "--set", f"peering.name={release}"],
        capture_output=True, text=True, timeout=60, check=True).stdout


def service_account_kubeconfig(kubectl, kubeconfig, namespace: str, release: str, out: Path) -> Path:
    token = kubectl.run("create", "token", f"{release}-kiln-operator", "-n", namespace, "--duration=30m").stdout.strip()
    return token_kubeconfig(kubeconfig, token, out)


def test_the_chart_service_account_reconciles_without_forbidden(kubectl, kubeconfig, crds, namespace, helm, tmp_path):
    release = f"rbac{os.getpid()}"  # cluster-scoped names (ClusterRoles, bindings) unique to this run
    manifest = chart_rbac(helm, namespace, release)
    kubectl.apply(manifest)
    try:
        config = service_account_kubeconfig(kubectl, kubeconfig, namespace, release, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        with OperatorProcess(config, log, "--namespace", namespace, f"--peering={release}") as op:
            kubectl.run("apply", "-n", namespace, "-f", str(ROOT / "examples"))
            # The example version's digest is made up: opt in so the service builds its children here.
            kubectl.run("patch", "kisvc", "iris", "-n", namespace, "--type=merge", "-p",
                        '{"spec":{"allowUnverified":true}}')
            # Each kind's reconcile ran to its status write; the InferenceService built its children.
            kubectl.wait_for(lambda: all(_ready(kubectl, namespace, kind, name) for kind, name in (
                ("dataset", "iris"), ("trainingpipeline", "iris-forest"), ("modelversion", "iris-v1"),
                ("inferenceservice", "iris"))), timeout=90, what="a Ready condition on every example")
            for kind, name in (("deployment", "iris-primary"), ("service", "iris"), ("hpa", "iris-primary"),
                               ("pdb", "iris")):
                kubectl.wait_for(lambda: kubectl.run("get", kind, name, "-n", namespace, check=False).returncode == 0,
                                 timeout=60, what=f"{kind} {name}")
            # The peering lease was written (patch on the KopfPeering object).
            kubectl.wait_for(lambda: kubectl.json("get", "kopfpeering", release, "-n", namespace).get("status"),
                             timeout=30, what="this operator's entry in the KopfPeering object")
            kubectl.wait_for(lambda: kubectl.json("get", "events", "-n", namespace)["items"], timeout=30,
                             what="an Event posted by the operator")
            assert op.alive(), log.read_text()[-3000:]
        text = log.read_text()
        denied = [line for line in text.splitlines() if any(word in line for word in DENIED)]
        assert denied == [], "\n".join(denied[:20])
    finally:
        kubectl.run("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=manifest, check=False)


def test_without_a_grant_it_needs_the_operator_refuses_to_start_naming_it(kubectl, kubeconfig, crds, namespace, helm,
                                                                          tmp_path):
    # The chart's RBAC without its ConfigMap rule: as a hand-made Role, or an image newer than its chart.
    release = f"rbacless{os.getpid()}"
    docs = [d for d in yaml.safe_load_all(chart_rbac(helm, namespace, release)) if d]
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            doc["rules"] = [r for r in doc.get("rules") or [] if "configmaps" not in r.get("resources", [])]
    manifest = yaml.safe_dump_all(docs)
    kubectl.apply(manifest)
    try:
        config = service_account_kubeconfig(kubectl, kubeconfig, namespace, release, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        with OperatorProcess(config, log, "--namespace", namespace, f"--peering={release}") as op:
            assert op.proc.wait(timeout=90) == 1
        text = log.read_text()
        assert f"may not list configmaps in namespace {namespace}; watch configmaps in namespace {namespace}" in text, \
            text[-3000:]
    finally:
        kubectl.run("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=manifest, check=False)
