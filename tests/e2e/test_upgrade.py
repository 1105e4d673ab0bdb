"""The upgrade and uninstall paths of docs/upgrade.md and docs/uninstall.md, on the real cluster.

A cluster is put where the previous release (chart 0.1.0, taken from git history) leaves it: that
release's CRDs, installed by its `crds/` directory (no Helm ownership), its chart as a release, Kiln
objects with a status from its operator. Then the documented upgrade: the CRDs adopted into the kiln-crds
release and upgraded by it, the operator chart upgraded. The objects are all still there, reconciled by
the new operator, and a field only the new schema has is kept (the old schema pruned it). Then the
documented uninstall: objects first, their children collected, operator, kiln-crds (the CRDs kept, as
asked), and a namespace still holding objects, deleted with no operator running, is not stuck.

The cluster is shared. The releases and the namespaces are this test's own (the operator watches those
namespaces only); the CRDs are cluster-wide, so: while the old CRDs are served (about a minute), other
objects with fields they lack read pruned, which only matters if something writes them meanwhile, so
no operator may be acting on such objects (the test waits, then fails naming it), and their specs are
put back if anything was lost all the same; and no other Kiln object may have been written in the last
30 seconds (another test at work would see its objects through the old schema). Whatever happens, the CRDs end at the working tree's version
with the Helm ownership they had before. They are never deleted.

The old and the new chart run the same images, the ones hack/build-images.sh imported (named as the new
chart names them by default; the old chart's defaults, kiln/operator:dev and kiln/runtime:dev, are set
aside with its own value names, image.repository/.tag and runtime.image): what is tested is the chart
and CRD upgrade path, not an operator's own migration.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / name for name in
            ("01-dataset.yaml", "02-trainingpipeline.yaml", "03-modelversion.yaml", "04-inferenceservice.yaml")]
# The previous release: the last commit of chart 0.1.0 before its CRDs gained the data loop's fields
# (Dataset spec.window, InferenceService spec.feedback, ...). KILN_UPGRADE_FROM names another revision.
# Grants the working tree's operator needs beyond the previous chart's (charts/kiln/templates/rbac.yaml).
NEW_IMAGE_NEEDS = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch", "create", "patch"]},
                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
PREVIOUS = os.environ.get("KILN_UPGRADE_FROM", "0a13b6799d5d5ff71c36880bee94c539f2a0c621")
KINDS = ["datasets", "trainingpipelines", "modelversions", "inferenceservices"]
# The images the local build imports: the new chart's default names, tagged with its appVersion.
NEW_VALUES = yaml.safe_load((ROOT / "charts/kiln/values.yaml").read_text())
APP_VERSION = yaml.safe_load((ROOT / "charts/kiln/Chart.yaml").read_text())["appVersion"]
OPERATOR_IMAGE = (NEW_VALUES["image"]["repository"], APP_VERSION)
RUNTIME_IMAGE = f"{NEW_VALUES['runtime']['repository']}:{APP_VERSION}"
# What Helm's ownership of an object is made of, and what the kiln-crds chart adds: restored at the end.
OWNERSHIP = {"labels": ["app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                        "helm.sh/chart"],
             "annotations": ["meta.helm.sh/release-name", "meta.helm.sh/release-namespace", "helm.sh/resource-policy"]}
# Children the operator makes, owned by a Kiln object (ownerReferences).
CHILD_KINDS = "jobs,deployments,services,horizontalpodautoscalers,poddisruptionbudgets,pods"


def _helm(helm: Path, kubeconfig: Path, *args: str, timeout: float = 240) -> str:
    result = subprocess.run([str(helm), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _crd_files(directory: Path) -> dict[str, dict]:
    return {body["metadata"]["name"]: body for body in
            (yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml")))}


def _unknown_paths(value, schema: dict, path: str) -> list[str]:
    """The fields of value that a structural schema prunes (what the apiserver would drop)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return []
    if isinstance(value, dict):
        properties, extra = schema.get("properties"), schema.get("additionalProperties")
        found = []
        for key, child in value.items():
            if properties is not None and key in properties:
                found += _unknown_paths(child, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += _unknown_paths(child, extra, f"{path}.{key}")
            elif extra is not True:
                found.append(f"{path}.{key}")
        return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [p for i, item in enumerate(value) for p in _unknown_paths(item, schema["items"], f"{path}[{i}]")]
    return []


def _others(kubectl, ours: set[str]):
    """Other live Kiln objects (namespaces being deleted left out), with their plural."""
    terminating = {n["metadata"]["name"] for n in kubectl.json("get", "namespaces")["items"]
                   if n["status"].get("phase") == "Terminating"}
    for plural in KINDS:
        for obj in kubectl.json("get", f"{plural}.kiln.dev", "-A")["items"]:
            meta = obj["metadata"]
            if not (meta["namespace"] in ours | terminating or meta.get("deletionTimestamp")):
                yield plural, obj


def _at_risk(kubectl, old_crds: dict[str, dict], ours: set[str]) -> list[str]:
    """Other live objects whose spec the old CRDs would prune while they are served."""
    found = []
    for plural, obj in _others(kubectl, ours):
        schema = old_crds[f"{plural}.kiln.dev"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        lost = _unknown_paths(obj.get("spec") or {}, schema["properties"]["spec"], "spec")
        if lost:
            found.append(f"{plural}/{obj['metadata']['namespace']}/{obj['metadata']['name']}: {', '.join(lost)}")
    return found


def _busy(kubectl, ours: set[str], quiet: float = 30) -> list[str]:
    """Other objects written in the last `quiet` seconds: another test (or an operator) at work, which
    would see its objects through the old schema (an operator at rest writes nothing)."""
    now = datetime.now(timezone.utc)
    found = []
    for plural, obj in _others(kubectl, ours):
        times = [datetime.fromisoformat(f["time"].replace("Z", "+00:00"))
                 for f in obj["metadata"].get("managedFields") or [] if f.get("time")]
        if times and (now - max(times)).total_seconds() < quiet:
            found.append(f"{plural}/{obj['metadata']['namespace']}/{obj['metadata']['name']} was written "
                         f"{(now - max(times)).total_seconds():.0f} s ago")
    return found


def _served_by_an_operator(kubectl, namespaces: set[str], ours: str) -> list[str]:
    """In-cluster Kiln operators (the chart's Deployments) that act on any of these namespaces."""
    found = []
    for d in kubectl.json("get", "deployments", "-A", "-l",
                          "app.kubernetes.io/part-of=kiln,app.kubernetes.io/component=operator")["items"]:
        if d["metadata"]["labels"].get("app.kubernetes.io/instance") == ours or not d["spec"].get("replicas"):
            continue
        args = d["spec"]["template"]["spec"]["containers"][0].get("args") or []
        served = {a.split("=", 1)[1] for a in args if a.startswith("--namespace=")}
        if not served or served & namespaces:
            found.append(f"{d['metadata']['namespace']}/{d['metadata']['name']} serves "
                         f"{', '.join(sorted(served & namespaces)) or 'every namespace'}")
    return found


def _put_crd(kubectl, name: str, spec: dict, labels: dict, annotations: dict) -> None:
    """Replaces a CRD's spec and metadata in one write (an update with its resourceVersion)."""
    live = kubectl.json("get", "crd", name)
    live["spec"] = spec
    live["metadata"]["labels"], live["metadata"]["annotations"] = labels, annotations
    live.pop("status", None)
    kubectl.run("replace", "-f", "-", input=json.dumps(live))


def _without_ownership(meta: dict, field: str) -> dict:
    return {k: v for k, v in (meta.get(field) or {}).items() if k not in OWNERSHIP[field]}


def _ready(obj: dict) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), None)


def _reconciled(obj: dict) -> bool:
    """The operator has written a status about this generation: observedGeneration and Ready's."""
    generation, ready = obj["metadata"]["generation"], _ready(obj)
    return ((obj.get("status") or {}).get("observedGeneration") == generation and ready is not None
            and ready.get("observedGeneration") == generation)


def _objects(kubectl, namespace: str) -> dict[str, dict]:
    return {f"{plural}/{o['metadata']['name']}": o for plural in KINDS
            for o in kubectl.json("get", f"{plural}.kiln.dev", "-n", namespace)["items"]}


def _children(kubectl, namespace: str) -> list[str]:
    items = kubectl.json("get", CHILD_KINDS, "-n", namespace)["items"]
    return [f"{o['kind']}/{o['metadata']['name']}" for o in items
            if any(r["apiVersion"].startswith("kiln.dev/") for r in o["metadata"].get("ownerReferences") or [])]


def _all_reconciled(kubectl, namespaces: list[str], count: int):
    objs = {f"{ns}/{key}": o for ns in namespaces for key, o in _objects(kubectl, ns).items()}
    waiting = sorted(key for key, o in objs.items() if not _reconciled(o))
    return objs if len(objs) == count and not waiting else None


def _operator_pods(kubectl, namespace: str, release: str) -> set[str]:
    pods = kubectl.json("get", "pods", "-n", namespace, "-l",
                        f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator")["items"]
    return {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}


@pytest.fixture()
def previous_chart(tmp_path: Path) -> Path:
    """charts/kiln as the previous release shipped it, CRDs in its crds/ directory."""
    archive = tmp_path / "previous.tar"
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--output", str(archive), PREVIOUS, "charts/kiln"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"git archive {PREVIOUS} charts/kiln (a clone with history is needed): {done.stderr}"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "previous", filter="data")
    chart = tmp_path / "previous/charts/kiln"
    old, new = (yaml.safe_load((c / "Chart.yaml").read_text())["version"] for c in (chart, ROOT / "charts/kiln"))
    assert old != new, f"charts/kiln/Chart.yaml's version ({new}) must differ from the previous release's"
    assert (chart / "crds").is_dir(), f"the chart at {PREVIOUS} has no crds/"
    return chart


def test_upgrade_from_the_previous_chart_then_uninstall_in_order(kubectl, kubeconfig, helm, namespace,
                                                                 previous_chart, tmp_path):
    start = time.monotonic()
    other = f"{namespace[:55]}-b"  # a second namespace, deleted at the end with its objects in it
    release, crd_release = f"up{os.getpid()}", f"up{os.getpid()}-crds"
    old_crds, new_crds = _crd_files(previous_chart / "crds"), _crd_files(ROOT / "crds")
    assert sorted(old_crds) == sorted(new_crds), "the upgrade test expects the same kinds in both releases"
    before = {name: kubectl.json("get", "crd", name)["metadata"] for name in new_crds
              if kubectl.run("get", "crd", name, check=False).returncode == 0}
    saved: dict[tuple[str, str, str], dict] = {}  # other objects' specs, put back if pruned meanwhile
    kubectl.run("create", "namespace", other)
    try:
        # --- where 0.1.0 left a cluster: its CRDs (from its crds/, so no Helm ownership) ------------
        # Other objects whose spec the old schema lacks fields of read pruned while it is served; that
        # is harmless unless something writes them meanwhile (an operator's status write stores the
        # pruned spec). So: no operator may act on them (the test waits, then fails naming it), and
        # their specs are put back afterwards if anything was lost all the same.
        # Likewise, nothing else may be at work on Kiln objects right now (another test on the cluster).
        acting = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            risk = _at_risk(kubectl, old_crds, {namespace, other})
            acting = _served_by_an_operator(kubectl, {r.split("/")[1] for r in risk}, release) if risk else []
            acting += _busy(kubectl, {namespace, other})
            if not acting:
                break
            time.sleep(5)
        assert not acting, ("other Kiln objects are being written, or operators act on objects that use fields "
                            "the previous CRDs lack; serving those CRDs now could have them written pruned, so "
                            "the test does not:\n" + "\n".join(acting + risk))
        for entry in risk:
            plural, ns, name = entry.split(":")[0].split("/")
            saved[(plural, ns, name)] = kubectl.json("get", f"{plural}.kiln.dev", name, "-n", ns)["spec"]
        for name, crd in old_crds.items():
            if name in before:
                _put_crd(kubectl, name, crd["spec"], _without_ownership(before[name], "labels"),
                         _without_ownership(before[name], "annotations"))
            else:
                kubectl.apply(json.dumps(crd))
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in old_crds))
        downgraded = {n: kubectl.json("get", "crd", n)["metadata"]["generation"] for n in old_crds}
        # The 0.1.0 chart: its crds/ exist already, which Helm skips, as it did on every upgrade since.
        values = tmp_path / "values.yaml"
        values.write_text(json.dumps({"replicas": 1, "watchNamespaces": [namespace, other],
                                      "peering": {"enabled": True, "name": release},
                                      # The images as 0.1.0's values name them (see the docstring); the
                                      # upgrade reuses them (--reset-then-reuse-values), which the new
                                      # chart reads the same (runtime.image, a whole reference, wins).
                                      "image": {"repository": OPERATOR_IMAGE[0], "tag": OPERATOR_IMAGE[1]},
                                      "runtime": {"image": RUNTIME_IMAGE},
                                      # The new image under the old chart's RBAC: what it needs beyond
                                      # 0.1.0's grants (a model set's table ConfigMap, its pods' table
                                      # annotation) comes through 0.1.0's own extraRules; without the list
                                      # of one watched kind, kopf starts no handler at all.
                                      "rbac": {"extraRules": NEW_IMAGE_NEEDS},
                                      # No store: runs fail fast; a status is all this test needs.
                                      "artifactStore": {"root": "s3://kiln-upgrade/artifacts",
                                                        "s3": {"endpoint": "http://127.0.0.1:9"}}}))
        _helm(helm, kubeconfig, "install", release, str(previous_chart), "-n", namespace, "-f", str(values),
              "--wait", "--timeout", "150s", timeout=200)
        old_pods = _operator_pods(kubectl, namespace, release)
        for ns in (namespace, other):
            kubectl.run("apply", "-n", ns, *(f"--filename={f}" for f in EXAMPLES))
        first = kubectl.wait_for(lambda: _all_reconciled(kubectl, [namespace, other], 8), timeout=90,
                                 what="a status from the previous release's operator on all 8 objects")
        # The old schema is what is served: it prunes the new field.
        window = {"spec": {"window": {"rows": 120}}}
        probe = kubectl.run("patch", "dataset", "iris", "-n", namespace, "--type=merge", "-p", json.dumps(window),
                            "--dry-run=server", "-o", "json")
        changed = [n for n, v in downgraded.items() if kubectl.json("get", "crd", n)["metadata"]["generation"] != v]
        assert not changed, f"someone else changed {changed} meanwhile (another test applying crds/?): run again"
        assert "window" not in json.loads(probe.stdout)["spec"], "the previous CRDs already have spec.window"

        # --- the upgrade, as docs/upgrade.md has it ------------------------------------------------
        names = sorted(new_crds)
        kubectl.run("label", "crd", *names, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        kubectl.run("annotate", "crd", *names, f"meta.helm.sh/release-name={crd_release}",
                    f"meta.helm.sh/release-namespace={namespace}", "--overwrite")
        _helm(helm, kubeconfig, "upgrade", "--install", crd_release, str(ROOT / "charts/kiln-crds"), "-n", namespace,
              "--wait", "--timeout", "60s")
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
        _helm(helm, kubeconfig, "upgrade", release, str(ROOT / "charts/kiln"), "-n", namespace,
              "--reset-then-reuse-values", "--wait", "--timeout", "150s", timeout=200)
        kubectl.wait_for(lambda: (pods := _operator_pods(kubectl, namespace, release)) and not pods & old_pods,
                         timeout=90, what="the old operator pods replaced")
        chart = kubectl.json("get", "deployment", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
        assert chart["items"][0]["metadata"]["labels"]["helm.sh/chart"] == "kiln-0.2.0"

        # The new CRDs are served, Helm owns them, and they are kept when the release goes.
        for name in names:
            crd = kubectl.json("get", "crd", name)
            assert crd["metadata"]["labels"]["helm.sh/chart"] == "kiln-crds-0.2.0", name
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", name
        served = {n: kubectl.json("get", "crd", f"{n}.kiln.dev")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                  ["properties"]["spec"]["properties"] for n in ("datasets", "inferenceservices")}
        assert "window" in served["datasets"] and "feedback" in served["inferenceservices"]
        # Every object is still there, the same object, and the new operator reconciles it.
        after = _objects(kubectl, namespace) | {f"b:{k}": v for k, v in _objects(kubectl, other).items()}
        assert {o["metadata"]["uid"] for o in after.values()} == {o["metadata"]["uid"] for o in first.values()}
        kubectl.run("patch", "dataset", "iris", "-n", namespace, "--type=merge", "-p", json.dumps(window))
        kubectl.run("patch", "inferenceservice", "iris", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"feedback": {}}}))
        dataset = kubectl.json("get", "dataset", "iris", "-n", namespace)
        assert dataset["spec"]["window"] == {"rows": 120}, "spec.window was pruned after the upgrade"
        service = kubectl.json("get", "inferenceservice", "iris", "-n", namespace)
        assert service["spec"]["feedback"] == {"ttlSeconds": 3600, "windowRows": 1000}, service["spec"]  # defaults
        assert dataset["metadata"]["generation"] > first[f"{namespace}/datasets/iris"]["metadata"]["generation"]
        kubectl.wait_for(lambda: _all_reconciled(kubectl, [namespace, other], 8), timeout=90,
                         what="every object reconciled by the new operator at its current generation")
        # A field the operator's model does not know would read InvalidSpec: the new one is valid.
        for key, obj in _objects(kubectl, namespace).items():
            assert _ready(obj)["reason"] != "InvalidSpec", (key, _ready(obj))

        # --- the uninstall, as docs/uninstall.md has it: objects first -------------------------------
        assert _children(kubectl, namespace), "the operator made no child objects to be collected"
        kubectl.run("delete", "kiln", "--all", "-n", namespace, "--wait", "--timeout=60s", timeout=90)
        kubectl.wait_for(lambda: not _children(kubectl, namespace), timeout=90,
                         what="the Kiln objects' children collected by the garbage collector")
        _helm(helm, kubeconfig, "uninstall", release, "-n", namespace, "--wait", "--timeout", "90s", timeout=120)
        kept = _helm(helm, kubeconfig, "uninstall", crd_release, "-n", namespace, "--wait", "--timeout", "60s")
        assert "kept due to the resource policy" in kept, kept
        for name in names:  # kept, as asked, with the objects of `other` in them
            assert kubectl.run("get", "crd", name, check=False).returncode == 0, f"{name} was deleted"
        assert len(_objects(kubectl, other)) == 4
        left = [o for o in kubectl.json("get", "clusterroles,clusterrolebindings,clusterkopfpeerings")["items"]
                if o["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == release]
        assert left == [], [o["metadata"]["name"] for o in left]
        kubectl.wait_for(lambda: kubectl.run("get", "all,kopfpeerings,rolebindings", "-n", namespace, "-o",
                                             "name").stdout.strip() == "", timeout=60,
                         what=f"nothing of the releases left in {namespace}")
        assert kubectl.run("get", "configmaps,serviceaccounts,secrets", "-n", namespace, "-o", "name", "-l",
                           f"app.kubernetes.io/instance={release}").stdout.strip() == ""
        assert kubectl.run("get", "secrets", "-n", namespace, "-o", "name", "-l", "owner=helm").stdout.strip() == ""

        # No operator any more, objects still in `other`: without finalizers the namespace goes anyway.
        kubectl.run("delete", "namespace", other, namespace, "--wait=false")
        kubectl.run("wait", "--for=delete", f"namespace/{other}", f"namespace/{namespace}", "--timeout=90s",
                    timeout=100)
    finally:
        subprocess.run([str(helm), "--kubeconfig", str(kubeconfig), "uninstall", release, crd_release, "-n", namespace,
                        "--ignore-not-found", "--wait", "--timeout", "60s"], capture_output=True, timeout=120)
        kubectl.run("delete", "namespace", other, "--wait=false", "--ignore-not-found", check=False)
        # The CRDs at the working tree's version, with the ownership they had before (none, or a release's).
        for name, crd in new_crds.items():
            meta = copy.deepcopy(before.get(name) or crd["metadata"])
            live = kubectl.run("get", "crd", name, check=False)
            if live.returncode != 0:
                kubectl.apply(json.dumps(crd))
                continue
            labels = {**_without_ownership(crd["metadata"], "labels"), **(meta.get("labels") or {})}
            _put_crd(kubectl, name, crd["spec"], labels, meta.get("annotations") or {})
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in new_crds),
                    check=False)
        for (plural, ns, name), spec in saved.items():
            live = kubectl.run("get", f"{plural}.kiln.dev", name, "-n", ns, "-o", "json", check=False)
            if live.returncode == 0 and json.loads(live.stdout)["spec"] != spec:
                kubectl.run("patch", f"{plural}.kiln.dev", name, "-n", ns, "--type=merge",
                            "-p", json.dumps({"spec": spec}), check=False)
    assert time.monotonic() - start < 240, f"the upgrade test took {time.monotonic() - start:.0f} s"
