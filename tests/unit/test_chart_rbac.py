"""The chart's RBAC is exactly what the operator uses: every rule needed, none unused, no wildcard.

What the operator needs is read from its code, not from a list kept by hand:
- calls into `k8s.py` (get, list_, delete, create, patch_spec, patch_status, pod_logs_tail) whose first
  two arguments name the kind (literals or module constants);
- the manifests its builders return (`apiVersion`, `kind` and `metadata` in one dict literal), written
  with server-side apply, which needs `create` (an absent object is created) and `patch`;
- `(apiVersion, kind, name)` tuples added to a plan's `delete` list;
- the kinds kopf handlers are registered for (kopf lists, watches and patches them and their status);
- kopf's own needs, which no Kiln code shows: CRD discovery, Events, peering, namespaces.
A new call or child kind in the operator fails this test until the chart grants it, and a rule left
behind after the code stops using it fails it too.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
from pathlib import Path

import kopf
import pytest
import yaml

from kiln_operator import k8s as k8s_client
from kiln_operator.api import KINDS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator/kiln_operator"
CHART = ROOT / "charts/kiln"

Need = tuple[str, str, str]  # (apiGroup, resource, verb)

K8S_CALLS = {"get": ("", {"get"}), "list_": ("", {"list"}), "delete": ("", {"delete"}),
             "patch_spec": ("", {"patch"}), "patch_status": ("/status", {"patch"}),
             "pod_logs_tail": ("/log", {"get"})}
# A plan's lists of (apiVersion, kind, name, ...) that reconcilers.act carries out, and the verb each needs.
PLAN_VERBS = {"delete": "delete", "annotate": "patch"}
API_VERSION = re.compile(r"^([a-z0-9.-]+/)?v\d+\w*$")
KIND = re.compile(r"^[A-Z][A-Za-z]+$")


def resource_of(api_version: str, kind: str) -> tuple[str, str]:
    group = api_version.rpartition("/")[0]
    plurals = {k.kind: k.plural for k in KINDS}
    return group, plurals.get(kind, kind.lower() + "s")


def _constant(node: ast.AST, module) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and isinstance(getattr(module, node.id, None), str):
        return getattr(module, node.id)
    return None


def _kind_tuple(node: ast.AST, module) -> tuple[str, str] | None:
    if isinstance(node, ast.Tuple) and len(node.elts) >= 2:
        api_version, kind = (_constant(e, module) for e in node.elts[:2])
        if api_version and kind and API_VERSION.match(api_version) and KIND.match(kind):
            return api_version, kind
    return None


def needs_from_code() -> set[Need]:
    needs: set[Need] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "k8s.py" or "api" in path.relative_to(PACKAGE).parts:
            continue
        module = importlib.import_module(".".join(("kiln_operator", *path.relative_to(PACKAGE).with_suffix("").parts)))
        uses_client = getattr(module, "k8s", None) is k8s_client  # not a local variable that happens to be named k8s
        for node in ast.walk(ast.parse(path.read_text())):
            # k8s.get("apps/v1", "Deployment", ...) and the like.
            if (uses_client and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "k8s"
                    and node.func.attr in K8S_CALLS):
                suffix, verbs = K8S_CALLS[node.func.attr]
                if node.func.attr == "pod_logs_tail":
                    needs |= {("", "pods/log", v) for v in verbs}
                    continue
                args = [_constant(a, module) for a in node.args[:2]]
                if None in args:
                    # Only deletions name their kind elsewhere (the plan's delete tuples below), and status
                    # writes go to the Kiln kinds only (granted with kopf's needs below).
                    assert node.func.attr in ("delete", "patch_status"), \
                        f"{path.name}:{node.lineno}: k8s.{node.func.attr} with a kind this test cannot read"
                    continue
                group, resource = resource_of(*args)
                needs |= {(group, resource + suffix, v) for v in verbs}
            # A builder's manifest: applied server-side (create or patch).
            elif isinstance(node, ast.Dict):
                keys = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
                if {"apiVersion", "kind", "metadata"} <= keys.keys():
                    api_version, kind = _constant(keys["apiVersion"], module), _constant(keys["kind"], module)
                    if api_version and kind:
                        group, resource = resource_of(api_version, kind)
                        needs |= {(group, resource, "create"), (group, resource, "patch")}
            # plan.delete.append(("batch/v1", "Job", name)) and plan.delete += [(...), ...]; plan.annotate alike
            elif isinstance(node, (ast.Call, ast.AugAssign)):
                target = node.func if isinstance(node, ast.Call) else node.target
                if isinstance(node, ast.Call):
                    target = target.value if isinstance(target, ast.Attribute) and target.attr in ("append", "extend") else None
                if isinstance(target, ast.Attribute) and target.attr in PLAN_VERBS:
                    for sub in ast.walk(node):
                        if found := _kind_tuple(sub, module):
                            group, resource = resource_of(*found)
                            needs.add((group, resource, PLAN_VERBS[target.attr]))
    return needs


def needs_from_kopf(clusterwide: bool) -> set[Need]:
    importlib.import_module("kiln_operator.handlers")  # registers the handlers
    registry = kopf.get_default_registry()
    handled = {(h.selector.group, h.selector.plural or h.selector.any_name)
               for reg in (registry._changing, registry._spawning, registry._watching, registry._indexing)
               for h in reg.get_all_handlers() if h.selector is not None}
    assert handled, "no kopf handler registered"
    needs: set[Need] = set()
    for group, plural in handled:
        # Every kind the cache holds is listed and watched.
        needs |= {(group, plural, "list"), (group, plural, "watch")}
    for kind in KINDS:
        # The Kiln kinds' status is written by every reconcile (reconcilers.act); the objects themselves
        # are patched for a run request (annotate), an archived stage (patch_spec) and the removal of an
        # earlier version's finalizer.
        needs |= {("kiln.dev", kind.plural, "patch"), ("kiln.dev", f"{kind.plural}/status", "patch")}
    needs |= {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    needs.add(("", "events", "create"))  # events.post → k8s.post_event
    peering = "clusterkopfpeerings" if clusterwide else "kopfpeerings"
    needs |= {("kopf.dev", peering, v) for v in ("list", "watch", "patch")}
    if not clusterwide:
        needs |= {("", "namespaces", v) for v in ("list", "watch")}
    return needs


def rendered_rules(helm: Path, *args: str) -> list[dict]:
    out = subprocess.run([str(helm), "template", "kiln", str(CHART), *args], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [rule for doc in yaml.safe_load_all(out) if doc and doc["kind"] in ("ClusterRole", "Role")
            for rule in doc["rules"]]


def granted(rules: list[dict]) -> set[Need]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


@pytest.mark.parametrize("values,clusterwide", [("default-values.yaml", True), ("namespaced-values.yaml", False)])
def test_rbac_grants_exactly_what_the_operator_uses(helm, values, clusterwide):
    rules = rendered_rules(helm, "-f", str(CHART / "ci" / values))
    need = needs_from_code() | needs_from_kopf(clusterwide)
    have = granted(rules)
    assert sorted(need - have) == [], "the operator uses these but the chart does not grant them"
    assert sorted(have - need) == [], "the chart grants these but the operator does not use them"


def test_peering_writes_only_its_own_object(helm):
    for values in ("default-values.yaml", "namespaced-values.yaml"):
        name = yaml.safe_load((CHART / "ci" / values).read_text()).get("peering", {}).get("name", "kiln")
        for rule in rendered_rules(helm, "-f", str(CHART / "ci" / values)):
            if rule["apiGroups"] == ["kopf.dev"] and "patch" in rule["verbs"]:
                assert rule["resourceNames"] == [name] and rule["verbs"] == ["patch"]


@pytest.mark.parametrize("values", sorted(p.name for p in (CHART / "ci").glob("*.yaml")))
def test_no_wildcard_anywhere(helm, values):
    for rule in rendered_rules(helm, "-f", str(CHART / "ci" / values)):
        assert "nonResourceURLs" not in rule, rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in item for item in rule.get(field, [])), rule


def test_the_code_scan_sees_the_known_children():
    # Guards the scanner itself: if it stopped seeing these, the exactness test above would prove little.
    need = needs_from_code()
    assert {("apps", "deployments", "create"), ("", "services", "patch"), ("batch", "jobs", "delete"),
            ("autoscaling", "horizontalpodautoscalers", "delete"), ("policy", "poddisruptionbudgets", "create"),
            ("", "pods/log", "get"), ("kiln.dev", "modelversions", "create"), ("", "pods", "patch")} <= need
