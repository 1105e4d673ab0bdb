"""Two operator replicas with the chart's peering: exactly one acts, and the other takes over when it goes.

Both run beside the test with the same flags, as the chart's two replicas do, against the peering
object the chart renders. kopf pauses every operator that sees a live peer of its own priority, so
this also guards the operator's random peering priority (kiln_operator/settings.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
ISVC = ROOT / "examples/04-inferenceservice.yaml"
PAUSED = "Pausing operations in favour of"


def _ready(kubectl, namespace: str) -> dict | None:
    obj = kubectl.json("get", "inferenceservice", "iris", "-n", namespace)
    ready = [c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"]
    return ready[0] if ready and ready[0].get("observedGeneration") == obj["metadata"]["generation"] else None


def test_one_replica_acts_and_the_other_takes_over(kubectl, kubeconfig, crds, namespace, helm, tmp_path):
    peering = "kiln-peers"
    manifest = subprocess.run(
        [str(helm), "template", "kiln", str(ROOT / "charts/kiln"), "--namespace", namespace,
         "--show-only", "templates/peering.yaml", "--set", f"watchNamespaces={{{namespace}}}",
         "--set", f"peering.name={peering}"], capture_output=True, text=True, timeout=60, check=True).stdout
    kubectl.apply(manifest, "-n", namespace)
    args = ("--namespace", namespace, f"--peering={peering}", "--plain-logs")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with OperatorProcess(kubeconfig, logs[0], *args) as first, OperatorProcess(kubeconfig, logs[1], *args) as second:
        def peers():
            status = kubectl.json("get", "kopfpeering", peering, "-n", namespace).get("status") or {}
            return status if len(status) == 2 else None

        status = kubectl.wait_for(peers, timeout=30, what="both replicas' leases in the KopfPeering object")
        priorities = [p["priority"] for p in status.values()]
        assert len(set(priorities)) == 2, status  # equal priorities would pause both

        # One of them stands by, saying so; the other reconciles.
        standby = kubectl.wait_for(lambda: [i for i, log in enumerate(logs) if PAUSED in log.read_text()],
                                   timeout=30, what="one replica pausing in favour of the other")
        assert len(standby) == 1, [log.read_text()[-2000:] for log in logs]
        active, waiting = ((first, second) if standby == [1] else (second, first))
        kubectl.run("apply", "-n", namespace, "-f", str(ISVC))
        kubectl.wait_for(lambda: _ready(kubectl, namespace), timeout=30, what="the active replica's Ready condition")
        assert "iris" not in logs[standby[0]].read_text().split(PAUSED)[-1]  # the paused one did nothing since

        # The active one leaves (as a pod does on a rolling update): the other resumes and reconciles
        # the next change.
        active.__exit__(None, None, None)
        kubectl.run("patch", "inferenceservice", "iris", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"autoscaling": {"maxReplicas": 4}}}))
        condition = kubectl.wait_for(lambda: _ready(kubectl, namespace), timeout=60,
                                     what="the standby replica reconciling generation 2")
        assert condition["observedGeneration"] == 2
        assert waiting.alive()
