"""The InferenceService plan: what a user sees through promotions, canaries and failed rollouts."""

import copy

from kiln_operator.config import OperatorConfig
from kiln_operator.inference import Observed, plan
from kiln_operator.validation import parse

CFG = OperatorConfig()


def mv(version, stage="None", model="iris", verified=True):
    return parse({"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion",
                  "metadata": {"name": f"{model}-v{version}", "namespace": "ml", "uid": f"mv-{version}"},
                  "spec": {"modelName": model, "version": version, "stage": stage, "framework": {"version": "1.6.1"},
                           "artifact": {"uri": "s3://b/m", "sha256": "a" * 64},
                           "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}}},
                  "status": {"verifiedSha256": "a" * 64} if verified else {}})


def test_an_unverified_version_is_never_rolled_out_and_the_service_says_which_it_waits_for():
    waiting = plan(isvc(), Observed([mv(1, "Production", verified=False)], {}, []), CFG)
    assert waiting.apply == []
    assert conditions(waiting)["Ready"][:2] == ("False", "WaitingForVerification")
    assert "iris-v1" in conditions(waiting)["Ready"][2]
    failed = mv(1, "Production", verified=False)
    failed.body["status"]["conditions"] = [{"type": "Verified", "status": "False", "reason": "DigestMismatch",
                                       "message": "sha256 of s3://b/m is bbb"}]
    refused = plan(isvc(), Observed([failed], {}, []), CFG)
    assert conditions(refused)["Ready"][:2] == ("False", "VersionNotVerified")
    assert "DigestMismatch" in conditions(refused)["Ready"][2]
    opted_in = plan(isvc(allowUnverified=True), Observed([mv(1, "Production", verified=False)], {}, []), CFG)
    assert any(m["kind"] == "Deployment" for m in opted_in.apply)


def test_a_promoted_version_waits_for_its_verification_while_the_old_one_serves():
    serving = isvc(status={"modelVersion": "iris-v1"})
    old, new = mv(1, "Archived"), mv(2, "Production", verified=False)
    first = plan(isvc(), Observed([mv(1, "Production")], {}, []), CFG)
    result = plan(serving, Observed([old, new], {"primary": deployment_for(first)}, []), CFG)
    (dep,) = [m for m in result.apply if m["kind"] == "Deployment"]
    assert dep["metadata"]["labels"]["kiln.dev/model-version"] == "iris-v1"
    assert conditions(result)["Progressing"][:2] == ("False", "WaitingForVerification")
    assert "still serving iris-v1" in conditions(result)["Progressing"][2]
    new.body["status"]["verifiedSha256"] = "a" * 64
    moving = plan(serving, Observed([old, new], {"primary": deployment_for(first)}, []), CFG)
    (dep,) = [m for m in moving.apply if m["kind"] == "Deployment"]
    assert dep["metadata"]["labels"]["kiln.dev/model-version"] == "iris-v2"


def isvc(status=None, **spec):
    return parse({"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService",
                  "metadata": {"name": "iris", "namespace": "ml", "uid": "isvc-1", "generation": 1},
                  "spec": {"model": {"modelName": "iris", "stage": "Production"}, **spec},
                  "status": status or {}})


def deployment_for(result, role="primary", ready=1, complete=True):
    dep = copy.deepcopy(next(m for m in result.apply if m["kind"] == "Deployment"
                             and m["metadata"]["name"].endswith(role)))
    dep["metadata"]["generation"] = 1
    dep["status"] = {"observedGeneration": 1, "replicas": ready, "readyReplicas": ready,
                     "updatedReplicas": ready if complete else 0, "availableReplicas": ready if complete else 0}
    return dep


def conditions(result):
    return {c[0]: c[1:] for c in result.conditions}


def crashing_pod(version, message="digest mismatch: expected sha256 aaa"):
    return {"metadata": {"labels": {"kiln.dev/model-version": version}},
            "status": {"containerStatuses": [{"name": "server", "restartCount": 2, "state": {"waiting": {
                "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1, "message": message}}}]}}


def test_unknown_version_is_not_ready_and_names_it():
    result = plan(isvc(model={"versionRef": {"name": "iris-v9"}}), Observed([mv(1)], {}, []), CFG)
    assert conditions(result)["Ready"][:2] == ("False", "ModelVersionNotFound")
    assert "iris-v9" in conditions(result)["Ready"][2]
    assert result.apply == []


def test_first_rollout_then_serving():
    first = plan(isvc(), Observed([mv(1, "Production")], {}, []), CFG)
    kinds = sorted(m["kind"] for m in first.apply)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert conditions(first)["Ready"][:2] == ("False", "RollingOut")
    done = plan(isvc(), Observed([mv(1, "Production")], {"primary": deployment_for(first)}, []), CFG)
    assert done.status["modelVersion"] == "iris-v1"
    assert conditions(done)["Ready"][:2] == ("True", "Serving")
    assert ("Normal", "RolledOut", "now serving iris-v1") in done.events


def test_promotion_rolls_out_the_new_version_while_the_old_one_serves():
    observed = Observed([mv(1, "Archived"), mv(2, "Production")], {}, [])
    first = plan(isvc(), Observed([mv(1, "Production")], {}, []), CFG)
    observed.deployments["primary"] = deployment_for(first)
    result = plan(isvc({"modelVersion": "iris-v1"}), observed, CFG)
    dep = next(m for m in result.apply if m["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["kiln.dev/model-version"] == "iris-v2"
    assert conditions(result)["Ready"][:2] == ("True", "Serving")
    assert conditions(result)["Progressing"][:2] == ("True", "RollingOut")


def test_a_crashing_new_version_is_rolled_back_and_kept_out():
    versions = [mv(2, "Archived"), mv(3, "Production")]
    rolling = plan(isvc({"modelVersion": "iris-v2"}), Observed(versions, {}, []), CFG)
    dep = deployment_for(rolling, complete=False)
    result = plan(isvc({"modelVersion": "iris-v2"}), Observed(versions, {"primary": dep}, [crashing_pod("iris-v3")]),
                  CFG)
    assert result.status["rolledBackVersion"] == "iris-v3"
    assert conditions(result)["RolledBack"][0] == "True"
    assert "digest mismatch" in conditions(result)["RolledBack"][2]
    back = next(m for m in result.apply if m["kind"] == "Deployment")
    assert back["spec"]["template"]["metadata"]["labels"]["kiln.dev/model-version"] == "iris-v2"
    # Later reconciles keep v2 while Production still points at v3.
    later = plan(isvc({"modelVersion": "iris-v2", "rolledBackVersion": "iris-v3"}),
                 Observed(versions, {"primary": deployment_for(result)}, []), CFG)
    kept = next(m for m in later.apply if m["kind"] == "Deployment")
    assert kept["spec"]["template"]["metadata"]["labels"]["kiln.dev/model-version"] == "iris-v2"
    # A new Production version clears the block.
    newer = plan(isvc({"modelVersion": "iris-v2", "rolledBackVersion": "iris-v3"}),
                 Observed(versions + [mv(4, "Production")], {"primary": deployment_for(result)}, []), CFG)
    assert newer.status["rolledBackVersion"] is None


def test_canary_gets_its_own_deployment_and_the_replica_split():
    spec = {"canary": {"versionRef": {"name": "iris-v2"}, "trafficPercent": 20}}
    result = plan(isvc(**spec), Observed([mv(1, "Production"), mv(2)], {}, []), CFG)
    hpas = {m["metadata"]["name"]: m["spec"]["minReplicas"] for m in result.apply
            if m["kind"] == "HorizontalPodAutoscaler"}
    assert hpas == {"iris-primary": 4, "iris-canary": 1}
    assert result.status["canaryVersion"] == "iris-v2"


def test_removing_the_canary_deletes_its_children():
    result = plan(isvc(), Observed([mv(1, "Production")], {"canary": {"spec": {}}}, []), CFG)
    assert ("apps/v1", "Deployment", "iris-canary") in result.delete


def _rolling_to_v3(answers):
    versions = [mv(2, "Archived"), mv(3, "Production")]
    spec = {"rollout": {"maxErrorRate": 0.1}}
    rolling = plan(isvc({"modelVersion": "iris-v2"}, **spec), Observed(versions, {}, []), CFG)
    dep = deployment_for(rolling, complete=False)
    return plan(isvc({"modelVersion": "iris-v2"}, **spec),
                Observed(versions, {"primary": dep}, [], answers={"iris-v3": answers}), CFG)


def test_a_new_version_answering_too_many_5xx_is_rolled_back():
    result = _rolling_to_v3((12, 40))
    assert result.status["rolledBackVersion"] == "iris-v3"
    assert "12 of its 40 answers were 5xx (30%), above maxErrorRate 10%" in conditions(result)["RolledBack"][2]


def test_few_answers_or_a_rate_within_the_bound_do_not_roll_back():
    for answers in ((3, 10), (4, 40)):
        result = _rolling_to_v3(answers)
        assert "rolledBackVersion" not in result.status, answers
        assert conditions(result)["Progressing"][:2] == ("True", "RollingOut")


def serving_pod(version, role="primary", ready=True, deleting=False):
    meta = {"name": f"{version}-{role}-x", "labels": {"kiln.dev/model-version": version, "kiln.dev/role": role}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_a_killed_pod_shows_before_the_deployment_status_catches_up():
    first = plan(isvc(), Observed([mv(1, "Production")], {}, []), CFG)
    dep = deployment_for(first)  # the Deployment still says 1 ready replica
    serving = isvc({"modelVersion": "iris-v1"})
    up = plan(serving, Observed([mv(1, "Production")], {"primary": dep}, [serving_pod("iris-v1")], pods_complete=True), CFG)
    assert conditions(up)["Ready"][:2] == ("True", "Serving")
    for gone in ([], [serving_pod("iris-v1", deleting=True)], [serving_pod("iris-v1", ready=False)]):
        down = plan(serving, Observed([mv(1, "Production")], {"primary": dep}, gone, pods_complete=True), CFG)
        assert conditions(down)["Ready"][:2] == ("False", "NoReadyReplicas"), gone
        assert down.status["readyReplicas"] == 0
