"""The CRDs in crds/ are exactly what the pydantic models generate, are structural, and are what the
kiln-crds chart ships (its rendering is checked in test_chart.py)."""

from pathlib import Path

import pytest

from kiln_operator.api import KINDS
from kiln_operator.api.crdgen import all_crds, render

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,body", sorted(all_crds().items()))
def test_crd_files_match_the_models(name, body):
    path = ROOT / "crds" / name
    assert path.exists(), f"crds/{name} is missing: run `make crds`"
    assert path.read_text() == render(body), f"crds/{name} is stale: run `make crds`"


# kopf's peering kinds ship beside Kiln's (hand-written: their schema is kopf's): the chart's two
# operator replicas elect the active one through them (docs/helm.md, "Peering").
PEERING_CRDS = ["kopf.dev_clusterkopfpeerings.yaml", "kopf.dev_kopfpeerings.yaml"]
# The kiln-crds chart's copy, which its template turns into CRDs Helm upgrades (docs/upgrade.md).
CHART_FILES = "charts/kiln-crds/files"


@pytest.mark.parametrize("directory", ["crds", CHART_FILES])
def test_no_stray_or_missing_crd_files(directory):
    assert sorted(p.name for p in (ROOT / directory).glob("*.yaml")) == sorted([*all_crds(), *PEERING_CRDS])


@pytest.mark.parametrize("name", sorted([*all_crds(), *PEERING_CRDS]))
def test_the_chart_ships_the_same_crds(name):
    assert (ROOT / CHART_FILES / name).read_text() == (ROOT / "crds" / name).read_text(), \
        f"{CHART_FILES}/{name} differs from crds/{name}: run `make crds`"


def test_the_operator_chart_ships_no_crds():
    """Helm installs a chart's crds/ once and never upgrades them: the CRDs live in kiln-crds only."""
    assert not (ROOT / "charts/kiln/crds").exists()


def _walk(node, path="$"):
    yield path, node
    for key in ("properties", "additionalProperties"):
        children = node.get(key)
        if isinstance(children, dict) and key == "properties":
            for name, child in children.items():
                yield from _walk(child, f"{path}.{name}")
        elif isinstance(children, dict):
            yield from _walk(children, f"{path}[*]")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind):
    schema = all_crds()[f"kiln.dev_{kind.plural}.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        free = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert free or node.get("type"), f"{path} has no type"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_spec_field_is_documented(kind):
    schema = all_crds()[f"kiln.dev_{kind.plural}.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    undocumented = [p for p, n in _walk(schema["properties"]["spec"], "spec") if not n.get("description")
                    and not p.endswith("[]") and not p.endswith("[*]")]
    assert undocumented == []


def test_kinds_have_short_names_category_and_status_subresource():
    for body in all_crds().values():
        names = body["spec"]["names"]
        version = body["spec"]["versions"][0]
        assert names["shortNames"] and names["categories"] == ["kiln"]
        assert version["subresources"] == {"status": {}}
        assert any(c["name"] == "Age" for c in version["additionalPrinterColumns"])


def test_defaults_live_in_the_schema():
    spec = all_crds()["kiln.dev_trainingpipelines.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]["properties"]
    assert spec["search"]["default"]["trials"] == 1
    assert spec["search"]["properties"]["trials"]["default"] == 1
    assert spec["artifactFormat"]["default"] == "skops"


def test_the_kinds_that_make_pods_share_one_pod_settings_schema():
    def spec_of(plural):
        return all_crds()[f"kiln.dev_{plural}.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]["spec"]
    pods = {plural: spec_of(plural)["properties"]["pod"]
            for plural in ("inferenceservices", "trainingpipelines", "datasets")}
    shapes = [{k: v for k, v in p.items() if k != "description"} for p in pods.values()]
    assert shapes[0] == shapes[1] == shapes[2]
    fields = shapes[0]["properties"]
    assert set(fields) == {"serviceAccountName", "nodeSelector", "tolerations", "annotations", "labels"}
    toleration = fields["tolerations"]["items"]
    assert toleration["properties"]["operator"]["enum"] == ["Exists", "Equal"]
    assert toleration["properties"]["effect"]["enum"] == ["NoSchedule", "PreferNoSchedule", "NoExecute"]
    assert {r["fieldPath"] for r in toleration["x-kubernetes-validations"]} == {".key", ".value", ".tolerationSeconds"}
    for name in ("nodeSelector", "annotations", "labels"):  # keys checked by CEL, bounded for its cost
        assert fields[name]["maxProperties"] and fields[name]["x-kubernetes-validations"]
    # The pipeline's older field stays, and must agree with pod.serviceAccountName when both are set.
    pipeline = spec_of("trainingpipelines")
    assert "serviceAccountName" in pipeline["properties"]
    assert any(r.get("fieldPath") == ".serviceAccountName" for r in pipeline["x-kubernetes-validations"])
