"""An InferenceService serving a model set (`spec.models`): what the table holds through promotions,
missing and unverified versions, and that no promotion touches the pod template."""

import json

from kiln_operator import dependents
from kiln_operator.builders import model_set as builders
from kiln_operator.cache import Cache
from kiln_operator.config import OperatorConfig
from kiln_operator.inference import Observed
from kiln_operator.model_set import plan
from kiln_operator.registry import served_by
from kiln_operator.validation import parse

from test_inference_plan import conditions, deployment_for, mv

CFG = OperatorConfig()


def model_set(status=None, **models):
    return parse({"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService",
                  "metadata": {"name": "tabular", "namespace": "ml", "uid": "isvc-1", "generation": 1},
                  "spec": {"models": {"stage": "Production", **models}}, "status": status or {}})


def table_of(result):
    (cm,) = [m for m in result.apply if m["kind"] == "ConfigMap"]
    return {e["name"]: e for e in json.loads(cm["data"]["models.json"])["models"]}


def template_of(result):
    (dep,) = [m for m in result.apply if m["kind"] == "Deployment"]
    return dep["spec"]["template"]


def test_each_model_in_the_stage_is_in_the_table_with_what_the_server_needs():
    versions = [mv(1, "Archived", "churn"), mv(2, "Production", "churn"), mv(1, "Production", "fraud"),
                mv(1, "Staging", "ltv")]
    result = plan(model_set(), Observed(versions, {}, []), CFG)
    table = table_of(result)
    assert sorted(table) == ["churn", "fraud"]  # ltv is only in Staging
    assert table["churn"]["modelVersion"] == "churn-v2" and table["churn"]["version"] == "2"
    assert table["churn"]["sha256"] == "a" * 64 and table["churn"]["signature"]["inputs"][0]["name"] == "x"
    assert result.status["models"] == [{"model": "churn", "version": "churn-v2"},
                                       {"model": "fraud", "version": "fraud-v1"}]
    env = {e["name"]: e["value"] for e in template_of(result)["spec"]["containers"][0]["env"]}
    assert env["KILN_MODELS_FILE"] == "/etc/kiln/models/models.json"
    assert env["KILN_MEMORY_BUDGET_BYTES"] == str(512 * 2**20)
    assert env["KILN_HANDOFF_SOCKET"] == "off" and "KILN_MODEL_URI" not in env


def test_a_promotion_changes_one_line_of_the_table_and_not_the_pod_template():
    before = plan(model_set(), Observed([mv(1, "Production", "churn"), mv(1, "Production", "fraud")], {}, []), CFG)
    serving = model_set(status={"models": before.status["models"]})
    after = plan(serving, Observed([mv(1, "Archived", "churn"), mv(2, "Production", "churn"),
                                    mv(1, "Production", "fraud")], {}, []), CFG)
    assert template_of(after) == template_of(before)  # no pod restarts
    assert table_of(after)["churn"]["modelVersion"] == "churn-v2"
    assert table_of(after)["fraud"] == table_of(before)["fraud"]
    assert ("Normal", "ModelsUpdated", "churn: churn-v1 -> churn-v2") in after.events


def test_serving_pods_are_annotated_with_the_table_hash_until_they_carry_it():
    versions = [mv(1, "Production", "churn")]
    first = plan(model_set(), Observed(versions, {}, [{"metadata": {"name": "p1"}}]), CFG)
    ((api, kind, name, annotations),) = first.annotate
    assert (api, kind, name) == ("v1", "Pod", "p1")
    marked = {"metadata": {"name": "p1", "annotations": annotations}}
    going = {"metadata": {"name": "p0", "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert plan(model_set(), Observed(versions, {}, [marked, going]), CFG).annotate == []


def test_names_and_labels_narrow_the_set_and_missing_models_are_named():
    labelled = mv(1, "Production", "churn")
    labelled.body["metadata"]["labels"] = {"team": "risk"}
    versions = [labelled, mv(1, "Production", "fraud")]
    by_label = plan(model_set(matchLabels={"team": "risk"}), Observed(versions, {}, []), CFG)
    assert sorted(table_of(by_label)) == ["churn"]
    named = plan(model_set(modelNames=["fraud", "ltv"]), Observed(versions, {}, []), CFG)
    assert sorted(table_of(named)) == ["fraud"]
    assert conditions(named)["Progressing"][:2] == ("False", "ModelsMissing")
    assert "'ltv'" in conditions(named)["Progressing"][2]


def test_version_refs_serve_fixed_versions_and_nothing_found_is_not_ready():
    refs = model_set(stage=None, versionRefs=[{"name": "churn-v1"}, {"name": "gone-v3"}])
    result = plan(refs, Observed([mv(1, "None", "churn"), mv(2, "Production", "churn")], {}, []), CFG)
    assert table_of(result)["churn"]["modelVersion"] == "churn-v1"
    assert "'gone-v3' does not exist" in conditions(result)["Progressing"][2]
    empty = plan(model_set(), Observed([mv(1, "Staging", "churn")], {}, []), CFG)
    assert conditions(empty)["Ready"][:2] == ("False", "ModelVersionNotFound")
    assert table_of(empty) == {}


def test_an_unverified_promotion_waits_while_the_previous_version_keeps_its_line():
    serving = model_set(status={"models": [{"model": "churn", "version": "churn-v1"}]})
    versions = [mv(1, "Archived", "churn"), mv(2, "Production", "churn", verified=False)]
    result = plan(serving, Observed(versions, {}, []), CFG)
    assert table_of(result)["churn"]["modelVersion"] == "churn-v1"
    assert "churn-v2" in conditions(result)["Progressing"][2]
    fresh = plan(model_set(), Observed(versions, {}, []), CFG)  # nothing served before: nothing to keep
    assert table_of(fresh) == {}


def test_ready_once_a_server_pod_is_ready():
    versions = [mv(1, "Production", "churn")]
    first = plan(model_set(), Observed(versions, {}, []), CFG)
    assert conditions(first)["Ready"][:2] == ("False", "NoReadyReplicas")
    pod = {"metadata": {"name": "p1", "labels": {"kiln.dev/role": "primary"}},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    ready = plan(model_set(), Observed(versions, {"primary": deployment_for(first)}, [pod], pods_complete=True), CFG)
    assert conditions(ready)["Ready"] == ("True", "Serving", "serving 1 model: churn (churn-v1)")
    assert conditions(ready)["Progressing"][1] == "RolloutComplete"


def test_the_registry_and_the_watches_follow_the_set():
    isvc = {"metadata": {"name": "tabular", "namespace": "ml"},
            "spec": {"models": {"stage": "Production", "modelNames": ["churn"]}},
            "status": {"models": [{"model": "churn", "version": "churn-v1"}]}}
    assert served_by(mv(1, "Production", "churn"), [isvc]) == ["tabular"]
    assert served_by(mv(1, "Production", "fraud"), [isvc]) == []
    assert dependents.follows(isvc, mv(2, "Staging", "churn").body, Cache())
    assert not dependents.follows(isvc, mv(1, "Production", "fraud").body, Cache())
    assert ("ModelVersion", "ml", "churn-v1") in dependents.of({**isvc, "kind": "InferenceService"}, Cache())


def test_memory_quantities():
    assert builders.memory_bytes("512Mi") == 512 * 2**20
    assert builders.memory_bytes("2G") == 2 * 10**9
    assert builders.memory_bytes("1048576") == 2**20
