"""Two operator replicas with the chart's peering: exactly one acts, and the other takes over when it goes.

Both run beside the test with the same flags, as the chart's two replicas do, against the peering
object the chart renders. kopf pauses every operator that sees a live peer of its own priority, so
this also guards the operator's random peering priority (kiln_operator/settings.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
ISVC = ROOT / "examples/04-inferenceservice.yaml"
# kopf starts a peering operator paused; it logs RESUMED when it finds itself the highest, and PAUSED
# when a higher one appears later.
RESUMED, PAUSED = "Resuming operations", "Pausing operations"


def _acting(log: Path) -> bool:
    states = [line for line in log.read_text().splitlines() if RESUMED in line or PAUSED in line]
    return bool(states) and RESUMED in states[-1]


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

        # One of them acts; the other stands by.
        def acting():
            time.sleep(2)  # a pause follows a resume within a keep-alive round: look twice, apart
            return [i for i, log in enumerate(logs) if _acting(log)]

        kubectl.wait_for(lambda: len(acting()) == 1, timeout=30, what="exactly one replica acting")
        (index,) = acting()
        active, standby = (first, second) if index == 0 else (second, first)
        standby_log = logs[1 - index]
        seen = len(standby_log.read_text())
        kubectl.run("apply", "-n", namespace, "-f", str(ISVC))
        kubectl.wait_for(lambda: _ready(kubectl, namespace), timeout=30, what="the active replica's Ready condition")
        assert "iris" not in standby_log.read_text()[seen:]  # the standby did nothing meanwhile

        # The active one leaves (as a pod does on a rolling update): the other resumes and reconciles
        # the next change.
        active.__exit__(None, None, None)
        kubectl.run("patch", "inferenceservice", "iris", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"autoscaling": {"maxReplicas": 4}}}))
        condition = kubectl.wait_for(lambda: _ready(kubectl, namespace), timeout=60,
                                     what="the standby replica reconciling generation 2")
        assert condition["observedGeneration"] == 2
        assert standby.alive()
