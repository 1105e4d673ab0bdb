"""The operator never fights a GitOps sync: after it reconciled the examples, applying them again
(server-side, as Argo CD does) would change nothing, and no field of a user's spec has another owner.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MANAGER = "gitops"  # the field manager a GitOps tool applies with


def _examples() -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]


def _reconciled(kubectl, namespace: str) -> bool:
    for doc in _examples():
        obj = kubectl.json("get", doc["kind"].lower(), doc["metadata"]["name"], "-n", namespace)
        status, generation = obj.get("status") or {}, obj["metadata"]["generation"]
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        if status.get("observedGeneration") != generation or not ready or ready[0].get("observedGeneration") != generation:
            return False
    return True


def test_reapplying_the_examples_after_reconciliation_changes_nothing(kubectl, kubeconfig, crds, namespace, tmp_path):
    apply = ("apply", "--server-side", f"--field-manager={MANAGER}", "-n", namespace, "-f", str(EXAMPLES))
    with OperatorProcess(kubeconfig, tmp_path / "operator.log", "--namespace", namespace):
        kubectl.run(*apply)
        kubectl.wait_for(lambda: _reconciled(kubectl, namespace), timeout=90,
                         what="every example reconciled at its current generation")
        before = {doc["kind"]: kubectl.json("get", doc["kind"].lower(), doc["metadata"]["name"], "-n", namespace)
                  for doc in _examples()}

        # What a sync would store: the same spec and generation as now.
        dry = json.loads(kubectl.run(*apply, "--dry-run=server", "-o", "json").stdout)
        for obj in dry.get("items", [dry]):
            live = before[obj["kind"]]
            assert obj["spec"] == live["spec"], obj["kind"]
            assert obj["metadata"]["generation"] == live["metadata"]["generation"], obj["kind"]

        # kubectl diff exits 0 when a server-side apply would change nothing, 1 when it would.
        diff = kubectl.run("diff", "--server-side", f"--field-manager={MANAGER}", "-n", namespace,
                           "-f", str(EXAMPLES), check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr

    # Nobody but the user's manager owns a spec field: the operator wrote status and annotations only.
    for kind, obj in before.items():
        for entry in obj["metadata"].get("managedFields", []):
            if entry["manager"] != MANAGER:
                assert "f:spec" not in entry.get("fieldsV1", {}), (kind, entry["manager"], entry["operation"])


def test_the_examples_are_what_a_user_applies_unchanged():
    # The GitOps check above is only meaningful if the examples carry no status or server-set fields.
    for doc in _examples():
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, doc["kind"]
        assert set(doc["metadata"]) <= {"name", "labels", "annotations"}, doc["kind"]
    assert subprocess.run(["diff", "--version"], capture_output=True).returncode == 0  # kubectl diff needs it
