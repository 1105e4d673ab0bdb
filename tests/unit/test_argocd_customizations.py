"""The health checks in Argo CD's own layout (deploy/argocd/resource_customizations/kiln.dev/<Kind>/):
each health.lua is the script of deploy/argocd-values.yaml, and passes its health_test.yaml the way
Argo CD's resource-customization tests run it (Lua 5.1, the object as global `obj`, status and message
compared exactly)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lupa.lua51 import LuaRuntime

from kiln_operator.api import KINDS
from kiln_operator.api.kinds import API_VERSION, GROUP
from kiln_operator.validation import InvalidSpec, parse_spec
from test_argocd_health import DEGRADED  # the operator's Ready=False reasons that need a person

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "deploy/argocd/resource_customizations" / GROUP
VALUES = yaml.safe_load((ROOT / "deploy/argocd-values.yaml").read_text())["configs"]["cm"]
BY_KIND = {k.kind: k for k in KINDS}
# The statuses Argo CD accepts from a health script.
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


class KubeLoader(yaml.SafeLoader):
    """YAML as the apiserver reads it: timestamps stay strings (JSON has no date type)."""


KubeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load(path: Path):
    return yaml.load(path.read_text(), Loader=KubeLoader)


def health(script: str, obj: dict) -> dict:
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)  # a chunk that returns {status = ..., message = ...}
    return {"status": result["status"], "message": result["message"]}


def cases() -> list:
    found = []
    for test_file in sorted(CUSTOMIZATIONS.glob("*/health_test.yaml")):
        for test in load(test_file)["tests"]:
            found.append(pytest.param(test_file.parent, test, id=f"{test_file.parent.name}/{test['inputPath']}"))
    return found


def test_every_kind_has_a_customization():
    assert {p.name for p in CUSTOMIZATIONS.iterdir()} == set(BY_KIND)
    for kind in BY_KIND:
        assert (CUSTOMIZATIONS / kind / "health.lua").is_file(), kind
        assert (CUSTOMIZATIONS / kind / "health_test.yaml").is_file(), kind


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_health_lua_is_the_script_of_the_values_file(kind):
    # deploy/argocd-values.yaml is the source of truth; hack/argocd-health.py writes the files.
    shipped = VALUES[f"resource.customizations.health.{GROUP}_{kind}"]
    assert (CUSTOMIZATIONS / kind / "health.lua").read_text() == shipped, \
        f"{kind}/health.lua differs from deploy/argocd-values.yaml: run `python hack/argocd-health.py`"


def test_the_generator_agrees():
    done = subprocess.run([sys.executable, str(ROOT / "hack/argocd-health.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("directory,test", cases())
def test_health(directory, test):
    obj = load(directory / test["inputPath"])
    expected = {"status": test["healthStatus"]["status"], "message": test["healthStatus"].get("message", "")}
    assert expected["status"] in ARGO_STATUSES
    assert health((directory / "health.lua").read_text(), obj) == expected


@pytest.mark.parametrize("kind", sorted(BY_KIND))
def test_testdata_are_real_objects_of_the_kind_and_all_tested(kind):
    directory = CUSTOMIZATIONS / kind
    tests = load(directory / "health_test.yaml")["tests"]
    used = {t["inputPath"] for t in tests}
    present = {p.relative_to(directory).as_posix() for p in (directory / "testdata").rglob("*.yaml")}
    assert used == present, f"unused testdata {present - used}, missing testdata {used - present}"
    assert {"Healthy", "Progressing", "Degraded"} <= {t["healthStatus"]["status"] for t in tests}
    for path in sorted(used):
        obj = load(directory / path)
        assert (obj["apiVersion"], obj["kind"]) == (API_VERSION, kind), path
        # The file name says the expected health, as in Argo CD's testdata.
        status = next(t["healthStatus"]["status"] for t in tests if t["inputPath"] == path)
        assert Path(path).name.startswith(status.lower() + "_"), path
        # The objects are what the apiserver would store: a spec of the current API (or one the
        # operator rejects as InvalidSpec, if that is the Ready reason) and a status of its schema.
        status_obj = obj.get("status") or {}
        ready = next((c for c in status_obj.get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("reason") == "InvalidSpec":
            with pytest.raises(InvalidSpec):
                parse_spec(BY_KIND[kind], obj["spec"])
        else:
            parse_spec(BY_KIND[kind], obj["spec"])
        BY_KIND[kind].status.model_validate(status_obj)


def test_every_degraded_reason_of_the_operator_has_a_case():
    reasons = set()
    for test_file in CUSTOMIZATIONS.glob("*/health_test.yaml"):
        for test in load(test_file)["tests"]:
            if test["healthStatus"]["status"] == "Degraded":
                obj = load(test_file.parent / test["inputPath"])
                reasons |= {c["reason"] for c in obj["status"]["conditions"] if c["type"] == "Ready"}
    assert DEGRADED - reasons == set(), "add a degraded_<reason>.yaml case for these reasons"
