"""The stage history of ModelVersions (docs/governance.md): who, when, from which stage and why, from the
promotion policy's stamps; what a promotion archives, and that the operator's own changes say so."""

from __future__ import annotations

import copy

import pytest

from kiln_operator import reconcilers, registry
from kiln_operator.api.crdgen import all_crds
from kiln_operator.cache import Cache
from kiln_operator.config import OperatorConfig
from kiln_operator.jobs import JobView
from kiln_operator.validation import parse

CFG = OperatorConfig()
NOW = "2026-12-02T06:00:00Z"
EARLIER = "2026-12-01T10:00:00Z"
ALICE = "system:serviceaccount:ml:alice"
OPERATOR_SA = "system:serviceaccount:kiln-system:kiln-operator"
RUN_LABELS = {"app.kubernetes.io/managed-by": "kiln-operator", "kiln.dev/pipeline": "iris", "kiln.dev/run": "r7"}


def version(stage="Staging", history=None, annotations=None, labels=None, n=1, model="iris",
            managed_fields=None) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": f"{model}-v{n}", "namespace": "ml", "uid": f"uid-{model}-{n}", "generation": 2,
                         "resourceVersion": "1", "labels": labels or {}, "annotations": annotations or {},
                         "managedFields": managed_fields or []},
            "spec": {"modelName": model, "version": n, "stage": stage, "framework": {"version": "1.6.1"},
                     "artifact": {"uri": "s3://kiln/m.skops", "sha256": "c" * 64},
                     "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}}},
            "status": {"stageHistory": history or [], "verifiedSha256": "c" * 64}}


def stamps(by: str, to: str, reason: str = "") -> dict[str, str]:
    return {registry.ANNOTATION_CHANGED_BY: by, registry.ANNOTATION_CHANGED_TO: to,
            registry.ANNOTATION_CHANGED_REASON: reason}


def history_after(mv: dict) -> list[dict]:
    return registry.plan_model_version(parse(mv), JobView(None), CFG, NOW).status["stageHistory"]


def test_a_promotion_records_the_requesting_user_the_stage_left_and_the_reason():
    mv = version("Production", history=[{"stage": "Staging", "time": EARLIER}],
                 annotations={registry.ANNOTATION_REASON: "beats v1 on the March holdout",
                              **stamps(ALICE, "Production", "beats v1 on the March holdout")})
    result = registry.plan_model_version(parse(mv), JobView(None), CFG, NOW)
    assert result.status["stageHistory"][-1] == {"stage": "Production", "from": "Staging", "time": NOW, "by": ALICE,
                                                 "reason": "beats v1 on the March holdout"}
    assert ("Normal", "StageChanged",
            f"iris-v1: Staging -> Production by {ALICE}: beats v1 on the March holdout") in result.events
    # Recorded once: the next reconcile of the same object adds nothing.
    mv["status"]["stageHistory"] = result.status["stageHistory"]
    again = registry.plan_model_version(parse(mv), JobView(None), CFG, NOW)
    assert "stageHistory" not in again.status and again.events == []


def test_the_stamped_reason_wins_over_a_reason_left_from_an_earlier_change():
    # The request changed the stage but not kiln.dev/stage-reason: the policy stamped an empty reason.
    mv = version("Archived", history=[{"stage": "Production", "time": EARLIER, "reason": "release 3"}],
                 annotations={registry.ANNOTATION_REASON: "release 3", **stamps(ALICE, "Archived")})
    assert history_after(mv)[-1] == {"stage": "Archived", "from": "Production", "time": NOW, "by": ALICE}


def test_a_stamp_for_another_stage_is_left_from_an_earlier_change_and_not_trusted():
    # No policy stamped this change (stamped to=Production, the stage is now Staging): `by` falls back to
    # the field manager that wrote spec.stage, which is a client's name, not a user's.
    fields = [{"manager": "kubectl-client-side-apply", "time": EARLIER, "fieldsV1": {"f:spec": {"f:stage": {}}}},
              {"manager": "kubectl-patch", "time": NOW, "fieldsV1": {"f:spec": {"f:stage": {}}}},
              {"manager": "kiln", "time": NOW, "subresource": "status", "fieldsV1": {"f:status": {}}}]
    mv = version("Staging", history=[{"stage": "Production", "time": EARLIER, "by": ALICE, "reason": "go"}],
                 annotations={registry.ANNOTATION_REASON: "canary looked bad", **stamps(ALICE, "Production", "go")},
                 managed_fields=fields)
    assert history_after(mv)[-1] == {"stage": "Staging", "from": "Production", "time": NOW,
                                     "by": "fieldManager:kubectl-patch", "reason": "canary looked bad"}


def test_without_stamps_a_reason_the_previous_change_recorded_is_not_repeated():
    mv = version("None", history=[{"stage": "Staging", "time": EARLIER, "reason": "QA"}],
                 annotations={registry.ANNOTATION_REASON: "QA"})
    assert history_after(mv)[-1] == {"stage": "None", "from": "Staging", "time": NOW}


def test_a_version_a_run_registered_says_so_in_its_first_entry():
    mv = version("Production", labels=RUN_LABELS, annotations=stamps(OPERATOR_SA, "Production"))
    assert history_after(mv) == [{"stage": "Production", "time": NOW, "by": OPERATOR_SA,
                                  "reason": "registered by run r7 of TrainingPipeline iris"}]
    # Without the policy: the operator is named all the same, not the client library that created it.
    created = [{"manager": "OpenAPI-Generator", "time": EARLIER, "fieldsV1": {"f:spec": {"f:stage": {}}}}]
    assert history_after(version("Staging", labels=RUN_LABELS, managed_fields=created))[0]["by"] == "kiln-operator"


def test_a_hand_registered_version_records_who_registered_it():
    mv = version("Staging", annotations={registry.ANNOTATION_REASON: "candidate", **stamps(ALICE, "Staging",
                                                                                           "candidate")})
    assert history_after(mv) == [{"stage": "Staging", "time": NOW, "by": ALICE, "reason": "candidate"}]


def test_an_archive_by_the_operator_names_the_version_that_superseded_it():
    manifest = registry.staged("ml", "iris-v2", "Archived", "superseded by iris-v3")
    assert manifest == {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion",
                        "metadata": {"name": "iris-v2", "namespace": "ml",
                                     "annotations": {"kiln.dev/stage-reason": "superseded by iris-v3"}},
                        "spec": {"stage": "Archived"}}
    # As the apiserver stores it: the policy stamped the operator's ServiceAccount and that reason.
    mv = version("Archived", n=2, labels=RUN_LABELS,
                 history=[{"stage": "Production", "time": EARLIER, "by": OPERATOR_SA}],
                 annotations={"kiln.dev/stage-reason": "superseded by iris-v3",
                              **stamps(OPERATOR_SA, "Archived", "superseded by iris-v3")})
    assert history_after(mv)[-1] == {"stage": "Archived", "from": "Production", "time": NOW, "by": OPERATOR_SA,
                                     "reason": "superseded by iris-v3"}
    # Without the policy the operator's field manager wrote the stage.
    del mv["metadata"]["annotations"][registry.ANNOTATION_CHANGED_TO]
    mv["metadata"]["managedFields"] = [{"manager": "kiln", "time": NOW, "fieldsV1": {"f:spec": {"f:stage": {}}}}]
    assert history_after(mv)[-1] == {"stage": "Archived", "from": "Production", "time": NOW, "by": "kiln-operator",
                                     "reason": "superseded by iris-v3"}


def production(n: int, by_run: bool = True, recorded: bool = True, model: str = "iris") -> dict:
    history = [{"stage": "Production", "time": EARLIER}] if recorded else [{"stage": "Staging", "time": EARLIER}]
    return version("Production", history=history, labels=RUN_LABELS if by_run else {}, n=n, model=model)


def test_a_promotion_supersedes_only_recorded_production_versions_runs_registered():
    promoted = version("Production", history=[{"stage": "Staging", "time": EARLIER}], n=5)
    mvs = [production(1), production(2, by_run=False), production(3, recorded=False), version("Staging", n=4),
           production(1, model="wine"), promoted]
    parsed = [parse(m) for m in mvs]
    assert registry.newly_in_production(parse(promoted))
    # v2 was registered by hand (GitOps: never written); v3 moved into Production after the last
    # reconcile: the newer promotion, which archives v5 in its turn.
    assert registry.superseded(parsed, parse(promoted)) == ["iris-v1"]
    assert not registry.newly_in_production(parse(production(1)))
    assert registry.superseded(parsed, parse(version("Staging", n=4))) == []


@pytest.fixture()
def cluster(monkeypatch):
    """The reconciler's cache and writes, without an apiserver: server-side applies are recorded and
    stored as the apiserver would (the policy's stamps left out)."""
    cache, applied = Cache(), []
    monkeypatch.setattr(reconcilers, "CACHE", cache)

    def apply(manifest):
        applied.append(manifest)
        stored = copy.deepcopy(cache.get("ModelVersion", "ml", manifest["metadata"]["name"]))
        stored["spec"].update(manifest["spec"])
        stored["metadata"]["annotations"].update(manifest["metadata"]["annotations"])
        return stored

    monkeypatch.setattr(reconcilers.k8s, "apply", apply)
    monkeypatch.setattr(reconcilers.k8s, "patch_status", lambda *a: None)
    monkeypatch.setattr(reconcilers.events, "post", lambda *a: None)
    return cache, applied


def test_promoting_by_hand_archives_the_run_registered_holder_once(cluster):
    cache, applied = cluster
    for mv in (production(1), production(2, by_run=False)):
        cache.put(mv)
    promoted = version("Production", n=3, history=[{"stage": "Staging", "time": EARLIER}],
                       annotations={registry.ANNOTATION_REASON: "better", **stamps(ALICE, "Production", "better")})
    cache.put(promoted)
    reconcilers.archive_superseded(parse(promoted))
    assert applied == [registry.staged("ml", "iris-v1", "Archived", "superseded by iris-v3")]
    assert cache.get("ModelVersion", "ml", "iris-v1")["spec"]["stage"] == "Archived"
    assert cache.get("ModelVersion", "ml", "iris-v2")["spec"]["stage"] == "Production"
    # Once recorded, the promotion is no news: nothing more is written.
    promoted["status"]["stageHistory"] = history_after(promoted)
    reconcilers.archive_superseded(parse(promoted))
    assert len(applied) == 1


def following(name="iris", rolled_back=None, serving=None, stage="Production", version_ref=None) -> dict:
    model = {"versionRef": {"name": version_ref}} if version_ref else {"modelName": "iris", "stage": stage}
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": {"model": model},
            "status": {"modelVersion": serving, "rolledBackVersion": rolled_back}}


def rollback_registry(v2_by_run: bool = True, v1_reason: str = "superseded by iris-v2") -> list[dict]:
    """iris-v1 served Production until a run's iris-v2 superseded it; both recorded."""
    v1 = version("Archived", n=1, labels=RUN_LABELS, annotations={registry.ANNOTATION_REASON: v1_reason},
                 history=[{"stage": "Production", "time": EARLIER},
                          {"stage": "Archived", "from": "Production", "time": EARLIER, "by": OPERATOR_SA,
                           "reason": v1_reason}])
    v2 = production(2, by_run=v2_by_run)
    return [v1, v2]


def test_a_rolled_back_version_hands_production_back_to_the_version_still_serving(cluster):
    cache, applied = cluster
    for mv in rollback_registry():
        cache.put(mv)
    isvc = following(rolled_back="iris-v2", serving="iris-v1")
    cache.put({"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService", **isvc})
    v1 = reconcilers.restore_after_rollback(parse(cache.get("ModelVersion", "ml", "iris-v1")))
    restored = "restored: iris-v2 was rolled back by InferenceService iris"
    assert applied == [registry.staged("ml", "iris-v1", "Production", restored)]
    assert v1.spec.stage == "Production"
    # Back in Production, v1 archives v2, saying why: "beat Production" now compares against v1.
    reconcilers.archive_superseded(v1)
    assert applied[1] == registry.staged("ml", "iris-v2", "Archived", "rolled back by InferenceService iris; iris-v1 restored")
    assert cache.get("ModelVersion", "ml", "iris-v2")["spec"]["stage"] == "Archived"
    assert registry.production_version([parse(m) for m in cache.list("ModelVersion", "ml")], "iris").name == "iris-v1"
    # The entry v1's history gets names the restore.
    stored = cache.get("ModelVersion", "ml", "iris-v1")
    stored["metadata"]["annotations"].update(stamps(OPERATOR_SA, "Production", restored))
    assert history_after(stored)[-1] == {"stage": "Production", "from": "Archived", "time": NOW, "by": OPERATOR_SA,
                                         "reason": restored}


@pytest.mark.parametrize("case", ["hand-registered successor", "archived by a person", "pinned by versionRef",
                                  "serving another version", "following Staging", "not rolled back"])
def test_production_is_handed_back_only_after_a_rollback_of_the_run_registered_successor(case):
    mvs = rollback_registry(v2_by_run=case != "hand-registered successor",
                            v1_reason="retired" if case == "archived by a person" else "superseded by iris-v2")
    isvc = {"pinned by versionRef": following(rolled_back="iris-v2", serving="iris-v1", version_ref="iris-v1"),
            "serving another version": following(rolled_back="iris-v2", serving="iris-v0"),
            "following Staging": following(rolled_back="iris-v2", serving="iris-v1", stage="Staging"),
            "not rolled back": following(serving="iris-v1")}.get(case, following(rolled_back="iris-v2", serving="iris-v1"))
    parsed = [parse(m) for m in mvs]
    assert registry.restore_reason(parsed[0], parsed, [isvc]) is None
    if case not in ("hand-registered successor", "archived by a person"):
        # The same registry with a service that rolled v2 back while following Production: handed back.
        rolled_back = following(rolled_back="iris-v2", serving="iris-v1")
        assert registry.restore_reason(parsed[0], parsed, [isvc, rolled_back]) is not None


def test_the_crd_records_from_and_reason():
    (mv_crd,) = [c for c in all_crds().values() if c["spec"]["names"]["kind"] == "ModelVersion"]
    status = mv_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    entry = status["properties"]["stageHistory"]["items"]["properties"]
    assert {"stage", "from", "time", "by", "reason"} <= entry.keys()
