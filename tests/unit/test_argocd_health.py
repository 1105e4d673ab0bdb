"""The Argo CD health check (Lua), run with Lua 5.1 (the dialect of Argo CD's gopher-lua) on sample objects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from lupa.lua51 import LuaRuntime

from kiln_operator.api import KINDS
from kiln_operator.reconcile import Outcome, status_patch

ROOT = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((ROOT / "deploy/argocd-values.yaml").read_text())["configs"]["cm"]
KEY = "resource.customizations.health.kiln.dev_{}"
SCRIPT = VALUES[KEY.format("Dataset")]
WAITING = set(re.findall(r"(\w+) = true", SCRIPT))
# Ready=False reasons that need a person: the health check must call them Degraded.
DEGRADED = {"InvalidSpec", "ModelVersionNotFound", "CanaryNotFound", "NoReadyReplicas", "DatasetNotFound",
            "RunFailed", "ValidationFailed", "DatasetVersionNotFound", "VersionNotVerified"}


def health(obj: dict) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    # Argo CD runs the script as a chunk with `obj` set; its return value is the health.
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


def sample(generation: int = 1, observed: int | None = 1, *conditions: dict) -> dict:
    obj = {"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService",
           "metadata": {"name": "iris", "namespace": "ml", "generation": generation}, "spec": {}}
    if observed is not None or conditions:
        obj["status"] = {"conditions": list(conditions)}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


def ready(status: str, reason: str, generation: int = 1, message: str = "because") -> dict:
    return {"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}


def test_every_kind_has_the_same_check():
    assert {k for k in VALUES if k.startswith("resource.customizations.health.")} == {
        KEY.format(k.kind) for k in KINDS}
    assert all(VALUES[KEY.format(k.kind)] == SCRIPT for k in KINDS)


@pytest.mark.parametrize("obj,expected", [
    (sample(1, None), "Progressing"),                                             # never reconciled
    (sample(1, 1), "Progressing"),                                                # no Ready yet
    (sample(1, 1, {"type": "Progressing", "status": "True", "reason": "RollingOut"}), "Progressing"),
    (sample(1, 1, ready("True", "Serving")), "Healthy"),
    (sample(2, 1, ready("True", "Serving", 1)), "Progressing"),                   # new spec not seen yet
    (sample(2, 2, ready("True", "Serving", 1)), "Progressing"),                   # Ready is about the old spec
    (sample(1, 1, ready("Unknown", "Pending")), "Progressing"),
    (sample(1, 1, ready("Unknown", "Anything")), "Progressing"),
    (sample(1, 1, ready("False", "RollingOut")), "Progressing"),
    (sample(1, 1, ready("False", "Validating")), "Progressing"),
    (sample(1, 1, ready("False", "Running")), "Progressing"),
    (sample(1, 1, ready("False", "InvalidSpec")), "Degraded"),
    (sample(1, 1, ready("False", "NoReadyReplicas")), "Degraded"),
    (sample(3, 3, {"type": "Progressing", "status": "False", "reason": "RolloutFailed"},
            ready("False", "ModelVersionNotFound", 3)), "Degraded"),
])
def test_health_from_conditions(obj, expected):
    assert health(obj)[0] == expected


def test_message_says_why():
    status, message = health(sample(1, 1, ready("False", "CanaryNotFound", message="no ModelVersion 'v9'")))
    assert (status, message) == ("Degraded", "CanaryNotFound: no ModelVersion 'v9'")


def test_a_condition_without_message_or_generation_still_evaluates():
    obj = sample(None, None, {"type": "Ready", "status": "True", "reason": "Accepted"})
    del obj["metadata"]["generation"]
    assert health(obj) == ("Healthy", "Accepted: ")


@pytest.mark.parametrize("ready_status,reason,expected", [("True", "Accepted", "Healthy"),
                                                          ("False", "InvalidSpec", "Degraded")])
def test_status_the_operator_writes(ready_status, reason, expected):
    # The operator's own status writer, so a change to the condition shape shows up here.
    obj = sample(4, None)
    obj["status"] = status_patch(obj, Outcome(ready_status, reason, "from the operator"))
    assert health(obj)[0] == expected


def _ready_false_reasons() -> set[str]:
    found = set()
    for path in (ROOT / "operator/kiln_operator").rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'"Ready", "False", "([A-Z]\w+)"', text))
        found |= set(re.findall(r'Outcome\("False", "([A-Z]\w+)"', text))
    return found


def test_every_ready_false_reason_is_classified():
    reasons = _ready_false_reasons()
    assert {"InvalidSpec", "RollingOut", "ModelVersionNotFound"} <= reasons  # the scan works
    unclassified = reasons - WAITING - DEGRADED
    assert unclassified == set(), (f"new Ready=False reasons {unclassified}: add them to the waiting set in "
                                   "deploy/argocd-values.yaml, or to DEGRADED here, and to docs/troubleshooting.md")
    for reason in reasons & DEGRADED:
        assert health(sample(1, 1, ready("False", reason)))[0] == "Degraded", reason


def test_the_docs_show_the_shipped_script():
    docs = (ROOT / "docs/argocd.md").read_text()
    blocks = re.findall(r"```lua\n(.*?)```", docs, re.S)
    assert SCRIPT in blocks


def test_the_docs_list_the_waiting_reasons():
    docs = (ROOT / "docs/argocd.md").read_text()
    row = next(line for line in docs.splitlines() if "a reason that means waiting" in line)
    assert set(re.findall(r"`(\w+)`", row.split("|")[1])) == WAITING
