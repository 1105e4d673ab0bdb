"""The chart's promotion policy (charts/kiln/templates/admission-policies.yaml, docs/governance.md) in the
real apiserver, with real identities: ServiceAccount tokens of the test's namespace, one allowed to
promote and one not, the chart's operator ServiceAccount, and the admin (group system:masters).

The policy is rendered from the chart with `helm template` under a release name of this run's own and
bound to the test's namespace only (watchNamespaces), so no other test sees it; the cluster-scoped
objects are deleted afterwards. The history is read from the ModelVersions' status, which an operator
process serving that namespace writes, not from Events."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from operator_process import OperatorProcess, token_kubeconfig

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "c" * 64
OPERATOR_SA = "kiln-op"
PREFIX = "kiln.dev promotion policy: "


def model_version(name: str, version: int, stage: str, labels: dict | None = None, reason: str | None = None) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": name, "labels": labels or {},
                         "annotations": {"kiln.dev/stage-reason": reason} if reason else {}},
            "spec": {"modelName": "iris", "version": version, "stage": stage, "framework": {"version": "1.6.1"},
                     "artifact": {"uri": "s3://kiln/iris.skops", "sha256": DIGEST},
                     "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}}}}


RUN_LABELS = {"app.kubernetes.io/managed-by": "kiln-operator", "kiln.dev/pipeline": "iris", "kiln.dev/run": "r1"}


@pytest.fixture()
def policy(kubectl, helm, crds, namespace, tmp_path):
    """The chart's policies, bound to `namespace`; the names of the ServiceAccounts that may promote."""
    served = kubectl.run("api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name").stdout.split()
    # The pinned Kubernetes (1.37) serves both in v1, with no flag: the test is about the mutating one too.
    assert {"validatingadmissionpolicies.admissionregistration.k8s.io",
            "mutatingadmissionpolicies.admissionregistration.k8s.io"} <= set(served), served
    release = f"kiln-promo-{os.getpid()}-{secrets.token_hex(2)}"
    rendered = subprocess.run(
        [str(helm), "template", release, str(ROOT / "charts/kiln"), "--namespace", namespace,
         "--show-only", "templates/admission-policies.yaml",
         "--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
         "--set", f"watchNamespaces={{{namespace}}}", "--set", f"serviceAccount.name={OPERATOR_SA}",
         "--set", f"promotion.allowed.serviceAccounts={{{namespace}/promoter}}"],
        capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / "policies.yaml"
    manifest.write_text(rendered.stdout)
    # Identities: two people (ServiceAccounts) with the same rights on ModelVersions, and the operator's.
    kubectl.apply(json.dumps({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "mv-editor", "namespace": namespace},
        "rules": [{"apiGroups": ["kiln.dev"], "resources": ["modelversions"],
                   "verbs": ["get", "list", "create", "patch", "update"]}]}))
    for sa in ("promoter", "intruder", OPERATOR_SA):
        kubectl.run("create", "serviceaccount", sa, "-n", namespace)
        kubectl.run("create", "rolebinding", f"mv-editor-{sa}", "-n", namespace, "--role=mv-editor",
                    f"--serviceaccount={namespace}:{sa}")
    try:
        kubectl.run("apply", "-f", str(manifest))
        # Admission policies take effect a moment after they are stored: probe with a dry run.
        probe = model_version("probe", 99, "Production")
        as_intruder = as_sa(kubectl, namespace, "intruder", tmp_path)
        kubectl.wait_for(lambda: PREFIX in as_intruder.run(
            "create", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False).stderr,
            timeout=30, what="the promotion policy in force")
        # The mutating policy takes effect on its own schedule: until it stamps, the validating one refuses
        # every stage change for carrying no stamps (seen once on a busy machine).
        as_promoter = as_sa(kubectl, namespace, "promoter", tmp_path)

        def stamped() -> bool:
            done = as_promoter.run("create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
                                   input=json.dumps(model_version("probe", 99, "Staging")), check=False)
            return done.returncode == 0 and "kiln.dev/stage-changed-by" in (
                json.loads(done.stdout)["metadata"].get("annotations") or {})

        kubectl.wait_for(stamped, timeout=30, what="the stamping policy in force")
        for kind in ("validatingadmissionpolicy", "mutatingadmissionpolicy"):
            status = kubectl.json("get", kind, f"{release}-promotion").get("status") or {}
            # The CEL was checked against the ModelVersion schema: any warning is a mistake in the chart.
            assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status
        yield release
    finally:
        kubectl.run("delete", "-f", str(manifest), "--ignore-not-found", check=False)


def as_sa(kubectl, namespace: str, sa: str, tmp_path: Path):
    token = kubectl.run("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    # The same wrapper as the `kubectl` fixture's (tests/conftest.py), with the ServiceAccount's token.
    return type(kubectl)(token_kubeconfig(kubectl.kubeconfig, token, tmp_path / f"{sa}.kubeconfig"))


def create(kubectl, namespace: str, mv: dict) -> subprocess.CompletedProcess:
    return kubectl.run("create", "-n", namespace, "-f", "-", input=json.dumps(mv), check=False)


def verify(kubectl, namespace: str, name: str) -> None:
    """What the operator's verification Job leads to, written directly: the digest checked."""
    kubectl.run("patch", "modelversion", name, "-n", namespace, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"verifiedSha256": DIGEST}}))


def promote(kubectl, namespace: str, name: str, stage: str, reason: str | None = None,
            annotations: dict | None = None) -> subprocess.CompletedProcess:
    """What `kubectl kiln promote --to STAGE --reason R` sends: one merge patch."""
    meta = {**(annotations or {}), **({"kiln.dev/stage-reason": reason} if reason is not None else {})}
    body = {"spec": {"stage": stage}, **({"metadata": {"annotations": meta}} if meta else {})}
    return kubectl.run("patch", "modelversion", name, "-n", namespace, "--type=merge", "-p", json.dumps(body),
                       check=False)


def refused(result: subprocess.CompletedProcess, rule: str) -> bool:
    return result.returncode != 0 and PREFIX in result.stderr and rule in result.stderr


def history(kubectl, namespace: str, name: str) -> list[dict]:
    return (kubectl.json("get", "modelversion", name, "-n", namespace).get("status") or {}).get("stageHistory") or []


def test_only_allowed_users_promote_with_a_reason_and_the_history_records_who(kubectl, policy, namespace, kubeconfig,
                                                                               tmp_path):
    promoter, intruder = as_sa(kubectl, namespace, "promoter", tmp_path), as_sa(kubectl, namespace, "intruder", tmp_path)
    promoter_name, intruder_name = (f"system:serviceaccount:{namespace}:{sa}" for sa in ("promoter", "intruder"))
    # A run's version straight in Production (the admin here, as an operator process would), and two
    # versions registered by hand in Staging: a hand-registered version cannot be created in Production.
    assert create(kubectl, namespace, model_version("iris-v1", 1, "Production", RUN_LABELS)).returncode == 0
    assert refused(create(promoter, namespace, model_version("iris-v2", 2, "Production", reason="new")),
                   "only once verified")
    for name, n in (("iris-v2", 2), ("iris-v3", 3), ("iris-v4", 4)):
        assert create(intruder, namespace, model_version(name, n, "Staging")).returncode == 0
    for name in ("iris-v1", "iris-v2", "iris-v3"):
        verify(kubectl, namespace, name)  # iris-v4 stays unverified

    # (a) Not allowed: refused whatever the reason, naming who may.
    result = promote(intruder, namespace, "iris-v2", "Production", "looks good to me")
    assert refused(result, f"only members of group system:masters, service account {namespace}/promoter may move "
                           f"a ModelVersion into Production ({intruder_name} may not)"), result.stderr
    # (b) Allowed, but no reason; then a reason but no verified artifact.
    assert refused(promote(promoter, namespace, "iris-v2", "Production"), "must carry a new kiln.dev/stage-reason")
    assert refused(promote(promoter, namespace, "iris-v4", "Production", "trust me"), "only once verified")
    # Nobody writes the stamps but the apiserver.
    forged = promoter.run("annotate", "modelversion", "iris-v2", "-n", namespace, "kiln.dev/stage-changed-by=alice",
                          "--overwrite", check=False)
    assert refused(forged, "may not set or change them"), forged.stderr

    with OperatorProcess(kubeconfig, tmp_path / "operator.log", "--namespace", namespace):
        # Each version's first entry: who registered it, in which stage.
        kubectl.wait_for(lambda: all(history(kubectl, namespace, n) for n in ("iris-v1", "iris-v2", "iris-v3")),
                         timeout=60, what="the first history entries")
        assert history(kubectl, namespace, "iris-v2")[0]["by"] == intruder_name
        assert history(kubectl, namespace, "iris-v1")[0]["reason"] == "registered by run r1 of TrainingPipeline iris"

        # Allowed, with a reason, verified: in. A stamp in the request is overwritten with the real user.
        result = promote(promoter, namespace, "iris-v2", "Production", "beats v1 on the March holdout",
                         annotations={"kiln.dev/stage-changed-by": "alice"})
        assert result.returncode == 0, result.stderr
        annotations = kubectl.json("get", "modelversion", "iris-v2", "-n", namespace)["metadata"]["annotations"]
        assert annotations["kiln.dev/stage-changed-by"] == promoter_name
        assert annotations["kiln.dev/stage-changed-reason"] == "beats v1 on the March holdout"
        entry = kubectl.wait_for(lambda: (h := history(kubectl, namespace, "iris-v2"))[-1:] != [] and
                                 h[-1]["stage"] == "Production" and h[-1], timeout=60, what="iris-v2's promotion")
        assert {k: entry.get(k) for k in ("stage", "from", "by", "reason")} == {
            "stage": "Production", "from": "Staging", "by": promoter_name, "reason": "beats v1 on the March holdout"}

        # The run's version iris-v2 supersedes is archived by the operator, which says why.
        archived = kubectl.wait_for(lambda: (h := history(kubectl, namespace, "iris-v1"))[-1]["stage"] == "Archived"
                                    and h[-1], timeout=60, what="iris-v1 archived")
        assert archived["from"] == "Production" and archived["reason"] == "superseded by iris-v2"
        assert archived["by"] == "kiln-admin", archived  # the operator process runs as the admin here

        # A hand-registered holder is never written: promoting iris-v3 leaves iris-v2 in Production.
        assert promote(promoter, namespace, "iris-v3", "Production", "v3 is calibrated").returncode == 0
        kubectl.wait_for(lambda: history(kubectl, namespace, "iris-v3")[-1]["stage"] == "Production", timeout=60,
                         what="iris-v3's promotion recorded")
        assert kubectl.json("get", "modelversion", "iris-v2", "-n", namespace)["spec"]["stage"] == "Production"

        # Out of Production needs no permission; back in needs a new reason, not the one left from before.
        assert promote(intruder, namespace, "iris-v3", "Staging").returncode == 0
        assert refused(promote(promoter, namespace, "iris-v3", "Production"), "must carry a new kiln.dev/stage-reason")
        kubectl.wait_for(lambda: history(kubectl, namespace, "iris-v3")[-1]["stage"] == "Staging", timeout=60,
                         what="iris-v3's demotion recorded")
        demoted = history(kubectl, namespace, "iris-v3")[-1]
        # The demotion left the earlier reason in place: it is not this change's, so none is recorded.
        assert demoted["by"] == intruder_name and "reason" not in demoted, demoted
    # All of it is in status, not in Events.
    stages = [(e["stage"], e.get("by")) for e in history(kubectl, namespace, "iris-v3")]
    assert stages == [("Staging", intruder_name), ("Production", promoter_name), ("Staging", intruder_name)]


def test_the_operator_account_does_only_what_runs_do(kubectl, policy, namespace, tmp_path):
    operator = as_sa(kubectl, namespace, OPERATOR_SA, tmp_path)
    # A run's version, in its pipeline's promoteTo stage: no reason, no verification yet.
    assert create(operator, namespace, model_version("iris-v1", 1, "Production", RUN_LABELS)).returncode == 0
    assert create(operator, namespace, model_version("iris-v2", 2, "Staging", RUN_LABELS)).returncode == 0
    # Not a run's: refused, as is any promotion it is not the one to make.
    assert refused(create(operator, namespace, model_version("iris-v3", 3, "Production")), "the Kiln operator")
    verify(kubectl, namespace, "iris-v2")
    assert refused(promote(operator, namespace, "iris-v2", "Production", "self-promotion"), "the Kiln operator")
    # Archiving a superseded Production version, as it does after a promotion, with its reason.
    assert promote(operator, namespace, "iris-v1", "Archived", "superseded by iris-v9").returncode == 0
    annotations = kubectl.json("get", "modelversion", "iris-v1", "-n", namespace)["metadata"]["annotations"]
    assert annotations["kiln.dev/stage-changed-by"] == f"system:serviceaccount:{namespace}:{OPERATOR_SA}"
    assert annotations["kiln.dev/stage-changed-reason"] == "superseded by iris-v9"
    # And only that: no stage from Archived.
    assert refused(promote(operator, namespace, "iris-v1", "Staging"), "the Kiln operator")
    # Handing Production back after a rollback: only to a run's version whose recorded history says the
    # operator archived it as superseded (here written as the operator records it).
    assert refused(promote(operator, namespace, "iris-v1", "Production", "restored"), "the Kiln operator")
    record(kubectl, namespace, "iris-v1", "superseded by iris-v9")
    restored = "restored: iris-v9 was rolled back by InferenceService iris"
    assert promote(operator, namespace, "iris-v1", "Production", restored).returncode == 0
    annotations = kubectl.json("get", "modelversion", "iris-v1", "-n", namespace)["metadata"]["annotations"]
    assert annotations["kiln.dev/stage-changed-reason"] == restored
    # A version archived because a rollback rejected it is not handed anything back.
    assert promote(operator, namespace, "iris-v1", "Archived", "rolled back by InferenceService iris").returncode == 0
    record(kubectl, namespace, "iris-v1", "rolled back by InferenceService iris")
    assert refused(promote(operator, namespace, "iris-v1", "Production", "again"), "the Kiln operator")


def record(kubectl, namespace: str, name: str, reason: str) -> None:
    """The history entry the operator writes after it archived `name` (no operator runs in this test)."""
    entries = [{"stage": "Production", "time": "2026-12-01T10:00:00Z"},
               {"stage": "Archived", "from": "Production", "time": "2026-12-01T11:00:00Z", "reason": reason}]
    kubectl.run("patch", "modelversion", name, "-n", namespace, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"stageHistory": entries}}))
