"""Dataset and TrainingPipeline plans: what a user sees as validation and runs move through their Jobs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from kiln_operator import datasets, jobs, pipelines, registry
from kiln_operator.api.crdgen import all_crds
from kiln_operator.api.training import TrainingPipelineSpec
from kiln_operator.builders import training
from kiln_operator.config import OperatorConfig
from kiln_operator.jobs import JobView, termination_summaries, trial_totals, whole_summary
from kiln_operator.validation import parse

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CFG = OperatorConfig()
NOW = "2026-11-23T10:00:00Z"
VERSION = "ab" * 32


def example(name: str) -> dict:
    body = yaml.safe_load((EXAMPLES / name).read_text())
    body["metadata"].update(namespace="ml", uid=f"uid-{body['metadata']['name']}", generation=1)
    return body


def conditions(result) -> dict:
    return {c[0]: c[1:] for c in result.conditions}


def job(state: str | None = None, succeeded: int = 0, failed_indexes: str = "", name: str = "j") -> dict:
    status = {"succeeded": succeeded, "failedIndexes": failed_indexes}
    if state:
        status["conditions"] = [{"type": state, "status": "True", "reason": "X", "message": "m"}]
    return {"metadata": {"name": name}, "status": status}


def ready_dataset(version: str = VERSION) -> dict:
    ds = example("01-dataset.yaml")
    ds["status"] = {"version": version, "rows": 150,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Validated"}]}
    return ds


# --- Dataset ---------------------------------------------------------------------------------------

def test_a_new_dataset_gets_one_validation_job_of_the_runtime_image():
    ds = example("01-dataset.yaml")
    result = datasets.plan(parse(ds), JobView(None), CFG, NOW)
    (manifest,) = result.apply
    assert manifest["kind"] == "Job"
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["kiln-train", "validate-dataset"]
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-iris"
    assert conditions(result)["Ready"][:2] == ("False", "Validating")


def test_a_datasets_own_secret_reaches_the_steps_that_read_it_under_a_prefix():
    cfg = OperatorConfig(store_secret="kiln-store")
    ds = ready_dataset()
    ds["spec"]["source"]["secretRef"] = {"name": "warehouse"}
    tp = example("02-trainingpipeline.yaml")
    own = {"prefix": "KILN_SOURCE_", "secretRef": {"name": "warehouse"}}
    store = {"secretRef": {"name": "kiln-store"}}
    validation = datasets.plan(parse(ds), JobView(None), cfg, NOW).apply[0]
    (trials,) = pipelines.plan(parse(tp), observed(ds), cfg, NOW).apply
    for job_ in (validation, trials):
        assert job_["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [store, own]
    mv = registered()
    verify = training.verify_job(parse(mv), cfg)  # reads the model only: no data credentials
    assert verify["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [store]


def test_a_refresh_request_or_spec_change_names_a_new_job():
    ds = example("01-dataset.yaml")
    first = datasets.validation_token(parse(ds))
    ds["metadata"]["annotations"] = {datasets.REFRESH_ANNOTATION: "2026-11-23T10:00:00Z"}
    refreshed = datasets.validation_token(parse(ds))
    ds["metadata"]["generation"] = 2
    assert len({first, refreshed, datasets.validation_token(parse(ds))}) == 3


def test_passed_validation_sets_version_rows_and_ready():
    ds = example("01-dataset.yaml")
    view = JobView(job("Complete", 1), {0: {"result": "Succeeded", "version": VERSION, "rows": 150,
                                             "profileUri": "s3://kiln/p.json"}})
    result = datasets.plan(parse(ds), view, CFG, NOW)
    assert result.apply == []
    assert result.status["version"] == VERSION and result.status["rows"] == 150
    assert conditions(result)["Ready"][0] == "True"
    assert any(e[1] == "NewVersion" for e in result.events)


def test_a_changed_source_listing_names_a_new_validation_and_is_recorded():
    ds = ready_dataset()
    assert datasets.validation_token(parse(ds), "f1" * 32) != datasets.validation_token(parse(ds), "f2" * 32)
    result = datasets.plan(parse(ds), JobView(None), CFG, NOW, fingerprint="f2" * 32)
    assert result.status["sourceFingerprint"] == "f2" * 32 and len(result.apply) == 1


def test_retention_keeps_the_newest_versions_and_every_version_a_model_was_trained_on():
    ds = ready_dataset()
    ds["spec"]["retention"] = {"versions": 2}
    ds["status"]["versions"] = [{"version": v * 64} for v in "1234"]
    validation = datasets.plan(parse(ds), JobView(None), CFG, NOW, trained_on=frozenset({"1" * 64})).apply[0]
    config = json.loads(validation["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
    assert config["keepVersions"] == ["1" * 64, "3" * 64, "4" * 64]
    view = JobView(job("Complete", 1), {0: {"result": "Succeeded", "version": "5" * 64, "rows": 9,
                                             "snapshotUri": "s3://kiln/5.parquet", "snapshotSha256": "e" * 64}})
    done = datasets.plan(parse(ds), view, CFG, NOW, trained_on=frozenset({"1" * 64}))
    assert [v["version"][0] for v in done.status["versions"]] == ["1", "3", "4", "5"]
    assert done.status["snapshotUri"] == "s3://kiln/5.parquet"


def test_a_failed_validation_after_a_good_one_leaves_the_last_version_usable():
    ds = ready_dataset()
    summary = {"result": "Failed", "reason": "SourceEmpty", "message": "s3://d/x/: no .csv or .parquet file"}
    result = datasets.plan(parse(ds), JobView(job("Failed"), {0: summary}), CFG, NOW)
    assert conditions(result)["Validated"][:2] == ("False", "SourceEmpty")
    assert conditions(result)["Ready"][:2] == ("True", "LastVersionUsable")
    assert "version" not in result.status  # the last version is left as it was


def test_failed_checks_are_named_with_their_column():
    ds = example("01-dataset.yaml")
    summary = {"result": "Failed", "reason": "ChecksFailed", "message": "1 check failed",
               "failures": [{"column": "sepal_length", "check": "type", "message": "'abc' is not a number"}]}
    result = datasets.plan(parse(ds), JobView(job("Failed"), {0: summary}), CFG, NOW)
    assert conditions(result)["Ready"][:2] == ("False", "ChecksFailed")
    assert result.status["failures"] == [{"column": "sepal_length", "check": "type",
                                          "message": "'abc' is not a number"}]


def test_a_pod_that_never_wrote_a_summary_still_explains_the_failure():
    ds = example("01-dataset.yaml")
    failed = job("Failed")
    failed["status"]["conditions"][0].update(reason="DeadlineExceeded", message="Job was active longer than allowed")
    result = datasets.plan(parse(ds), JobView(failed), CFG, NOW)
    assert conditions(result)["Ready"][:2] == ("False", "ValidationFailed")
    assert "DeadlineExceeded" in conditions(result)["Ready"][2]


# --- TrainingPipeline ------------------------------------------------------------------------------

def observed(dataset=None, jobs=None, production=None) -> pipelines.Observed:
    return pipelines.Observed(dataset=dataset and parse(dataset), jobs=jobs or {},
                              production=production and parse(production))


def test_a_pipeline_waits_for_its_dataset():
    tp = example("02-trainingpipeline.yaml")
    missing = pipelines.plan(parse(tp), observed(None), CFG, NOW)
    assert conditions(missing)["Ready"][:2] == ("False", "DatasetNotFound")
    unready = example("01-dataset.yaml")
    waiting = pipelines.plan(parse(tp), observed(unready), CFG, NOW)
    assert conditions(waiting)["Ready"][:2] == ("False", "DatasetNotReady")
    assert waiting.apply == []


def test_creation_starts_run_one_as_an_indexed_trials_job():
    tp = example("02-trainingpipeline.yaml")  # 8 trials, two at a time
    result = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW)
    (trials,) = result.apply
    assert trials["spec"]["completionMode"] == "Indexed"
    assert trials["spec"]["completions"] == 2 and trials["spec"]["parallelism"] == 2
    assert "backoffLimitPerIndex" in trials["spec"]
    config = json.loads(trials["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
    assert config["datasetVersion"] == VERSION
    (run,) = result.status["runs"]
    assert (run["id"], run["phase"], run["trigger"], run["trialsPlanned"]) == ("r1", "Running", "create", 8)
    assert conditions(result)["Ready"][:2] == ("False", "Running")


def trials_of(tp: dict) -> tuple[dict, str]:
    result = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW)
    (trials,) = result.apply
    (started,) = [e[2] for e in result.events if e[1] == "RunStarted"]
    return trials, started


def test_parallelism_is_pods_each_training_every_pth_trial():
    tp = example("02-trainingpipeline.yaml")
    tp["spec"]["search"].update(trials=24, parallelism=2, space={"max_depth": [2, 4, 8, 16],
                                                                 "n_estimators": [10, 20, 50, 100, 200, 400]})
    trials, started = trials_of(tp)
    spec = trials["spec"]
    assert (spec["completions"], spec["parallelism"], spec["maxFailedIndexes"]) == (2, 2, 1)
    assert spec["template"]["spec"]["containers"][0]["command"] == ["kiln-train", "trial", "--shards", "2"]
    assert "24 trial(s) in 2 pod(s)" in started


def test_no_more_trial_pods_than_the_space_has_combinations():
    tp = example("02-trainingpipeline.yaml")
    tp["spec"]["search"].update(trials=20, parallelism=8, space={"max_depth": [2, 4], "n_estimators": [10, 50, 100]})
    trials, started = trials_of(tp)
    assert trials["spec"]["completions"] == 6 and trials["spec"]["maxFailedIndexes"] == 5
    assert trials["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--shards", "6"]
    assert "6 trial(s) in 6 pod(s)" in started


def test_successive_halving_runs_in_one_pod():
    tp = example("02-trainingpipeline.yaml")
    tp["spec"]["search"].update(strategy="halving", trials=64, parallelism=4, halving={"factor": 3},
                                space={"max_depth": [2, 4, 8, 16], "min_samples_leaf": [1, 2, 4, 8],
                                       "n_estimators": [10, 50, 100, 200]})
    trials, started = trials_of(tp)
    spec = trials["spec"]
    assert (spec["completions"], spec["parallelism"], spec["maxFailedIndexes"]) == (1, 1, 0)
    assert spec["template"]["spec"]["containers"][0]["command"] == ["kiln-train", "trial", "--shards", "1"]
    assert "64 candidate(s), successive halving in 1 pod" in started


POD = {"serviceAccountName": "trainer", "nodeSelector": {"pool": "training"},
       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                       {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
       "annotations": {"example.com/cost-center": "ml"},
       "labels": {"team": "risk", "kiln.dev/run": "r99", "kiln.dev/step": "mine",
                  "app.kubernetes.io/instance": "other"}}


def assert_pod_settings(job_: dict, account: str = "trainer") -> None:
    template = job_["spec"]["template"]
    pod = template["spec"]
    assert pod["serviceAccountName"] == account and pod["nodeSelector"] == {"pool": "training"}
    assert pod["tolerations"] == POD["tolerations"]
    assert template["metadata"]["annotations"] == {"example.com/cost-center": "ml"}
    labels = template["metadata"]["labels"]
    assert labels["team"] == "risk"
    # Kiln's own labels win: runs, steps and owners are still found by them.
    assert job_["metadata"]["labels"].items() <= labels.items()


def test_spec_pod_reaches_the_trial_selection_and_validation_pods():
    ds = ready_dataset()
    ds["spec"]["pod"] = POD
    validation = datasets.plan(parse(ds), JobView(None), CFG, NOW).apply[0]
    assert_pod_settings(validation)
    assert validation["spec"]["template"]["metadata"]["labels"]["kiln.dev/step"] == "validate"
    tp = example("02-trainingpipeline.yaml")
    tp["spec"]["pod"] = POD
    (trials,) = pipelines.plan(parse(tp), observed(ds), CFG, NOW).apply
    assert_pod_settings(trials)
    assert trials["spec"]["template"]["metadata"]["labels"]["kiln.dev/run"] == "r1"
    tp = running(tp)
    name = training.run_job_name(parse(tp), "r1", "trials")
    (select,) = pipelines.plan(parse(tp), observed(ds, {name: JobView(job("Complete", 8))}), CFG, NOW).apply
    assert_pod_settings(select)
    assert select["spec"]["template"]["metadata"]["labels"]["kiln.dev/step"] == "select"
    # The verify Job belongs to a ModelVersion, which has no pod settings: untouched.
    verify = training.verify_job(parse(registered()), CFG)["spec"]["template"]
    assert "annotations" not in verify["metadata"] and "serviceAccountName" not in verify["spec"]


def test_the_older_service_account_field_still_works_and_spec_pod_wins():
    tp = example("02-trainingpipeline.yaml")
    tp["spec"]["serviceAccountName"] = "legacy"
    (trials,) = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW).apply
    pod = trials["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "legacy" and "nodeSelector" not in pod and "tolerations" not in pod
    assert "annotations" not in trials["spec"]["template"]["metadata"]
    tp["spec"]["pod"] = {"nodeSelector": {"pool": "training"}}
    (trials,) = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW).apply
    assert trials["spec"]["template"]["spec"]["serviceAccountName"] == "legacy"
    tp["spec"]["pod"] = POD
    (trials,) = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW).apply
    assert_pod_settings(trials)


def running(tp: dict, phase: str = "Running", run_id: str = "r1") -> dict:
    tp = copy.deepcopy(tp)
    tp["status"] = {"lastRun": run_id, "lastRunGeneration": 1, "lastDatasetVersion": VERSION,
                    "runs": [{"id": run_id, "phase": phase, "trigger": "create", "datasetVersion": VERSION}]}
    return tp


def shard(index: int, succeeded: int, failed: tuple[int, ...] = (), shards: int = 2, **extra) -> dict:
    """A shard's termination summary as kiln-train writes it (at most 5 failures listed)."""
    failures = [{"trial": t, "reason": "InvalidParameter", "message": f"max_depth must be >= 1, got -{t}"}
                for t in failed]
    summary = {"v": 1, "command": "trial", "shard": index, "shards": shards,
               "result": "Succeeded" if succeeded else "Failed",
               "trials": {"assigned": succeeded + len(failed), "succeeded": succeeded, "failed": len(failed),
                          "stopped": 0, "reused": 0},
               "failures": failures[:5], "message": f"shard {index} of {shards}"}
    if not succeeded:
        summary["reason"] = "InvalidParameter"
    return {**summary, **extra}


def trials_done(tp: dict, state: str | None, *summaries: dict) -> pipelines.Observed:
    ok = sum(s["result"] == "Succeeded" for s in summaries)
    failed = ",".join(str(s["shard"]) for s in summaries if s["result"] == "Failed")
    view = JobView(job(state, ok, failed), {s["shard"]: s for s in summaries})
    return observed(ready_dataset(), {training.run_job_name(parse(tp), "r1", "trials"): view})


def trial_events(result) -> list[str]:
    return [e[2] for e in result.events if e[1] == "TrialFailed"]


def test_finished_trials_start_the_selection_step_with_the_shards_counts_added_up():
    tp = running(example("02-trainingpipeline.yaml"))
    result = pipelines.plan(parse(tp), trials_done(tp, "Complete", shard(0, 12), shard(1, 11, failed=(5,))), CFG, NOW)
    (select,) = result.apply
    assert select["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["kiln-train", "select"]
    run = result.status["runs"][0]
    assert (run["phase"], run["trialsSucceeded"], run["trialsFailed"]) == ("Selecting", 23, 1)
    assert run["failedTrials"] == [{"trial": 5, "reason": "InvalidParameter",
                                    "message": "max_depth must be >= 1, got -5"}]
    assert trial_events(result) == ["run r1: trial 5 failed: InvalidParameter: max_depth must be >= 1, got -5"]


def test_a_job_failed_by_one_shard_still_selects_among_the_trials_that_succeeded():
    tp = running(example("02-trainingpipeline.yaml"))
    bad = shard(1, 0, failed=tuple(range(1, 24, 2)))  # all 12 of shard 1's trials; 5 listed
    result = pipelines.plan(parse(tp), trials_done(tp, "Failed", shard(0, 12), bad), CFG, NOW)
    run = result.status["runs"][0]
    assert (run["phase"], run["trialsSucceeded"], run["trialsFailed"]) == ("Selecting", 12, 12)
    assert [f["trial"] for f in run["failedTrials"]] == [1, 3, 5, 7, 9]
    assert len(trial_events(result)) == 5
    assert [m["command"][1] for j in result.apply for m in j["spec"]["template"]["spec"]["containers"]] == ["select"]


def test_a_run_whose_every_trial_failed_names_the_first_trial_and_why():
    tp = running(example("02-trainingpipeline.yaml"))
    result = pipelines.plan(parse(tp), trials_done(tp, "Failed", shard(0, 0, failed=(0, 2)),
                                                   shard(1, 0, failed=(1, 3))), CFG, NOW)
    run = result.status["runs"][0]
    assert run["phase"] == "Failed" and run["trialsFailed"] == 4
    assert "trial 0: InvalidParameter: max_depth must be >= 1, got -0" in run["message"]
    assert conditions(result)["Ready"][:2] == ("False", "RunFailed")
    assert result.apply == []  # no retry storm: a failed run stays failed until something changes


def test_a_shard_that_stopped_before_any_trial_still_explains_the_failed_run():
    tp = running(example("02-trainingpipeline.yaml"))
    denied = {"command": "trial", "shard": 0, "shards": 1, "result": "Failed", "reason": "AccessDenied",
              "message": "s3://kiln/iris.csv: AccessDenied"}
    result = pipelines.plan(parse(tp), trials_done(tp, "Failed", denied), CFG, NOW)
    assert "AccessDenied s3://kiln/iris.csv" in result.status["runs"][0]["message"]


def test_a_failed_trial_raises_one_event_however_often_the_run_is_reconciled():
    tp = running(example("02-trainingpipeline.yaml"))
    first = pipelines.plan(parse(tp), trials_done(tp, None, shard(1, 11, failed=(5,))), CFG, NOW)
    assert trial_events(first) == ["run r1: trial 5 failed: InvalidParameter: max_depth must be >= 1, got -5"]
    assert "(11 trial(s) done, 1 failed)" in conditions(first)["Ready"][2]
    tp["status"]["runs"] = first.status["runs"]
    again = pipelines.plan(parse(tp), trials_done(tp, None, shard(1, 11, failed=(5,))), CFG, NOW)
    assert trial_events(again) == [] and again.status["runs"] == first.status["runs"]
    # Shard 0 finishes with a failure of its own: that one is news.
    later = pipelines.plan(parse(tp), trials_done(tp, "Complete", shard(0, 11, failed=(4,)), shard(1, 11, failed=(5,))),
                           CFG, NOW)
    assert trial_events(later) == ["run r1: trial 4 failed: InvalidParameter: max_depth must be >= 1, got -4"]
    assert [f["trial"] for f in later.status["runs"][0]["failedTrials"]] == [4, 5]


def test_successive_halving_reports_its_rounds_and_its_record():
    tp = running(example("02-trainingpipeline.yaml"))
    rounds = [{"round": 0, "resources": 12, "candidates": 64, "kept": 22},
              {"round": 1, "resources": 36, "candidates": 22, "kept": 8},
              {"round": 2, "resources": 108, "candidates": 8, "kept": 3}]
    halving = shard(0, 3, shards=1, rounds=rounds, searchRecordUri="s3://kiln/r1/search/halving.json")
    halving["trials"].update(assigned=64, stopped=61)
    run = pipelines.plan(parse(tp), trials_done(tp, "Complete", halving), CFG, NOW).status["runs"][0]
    assert (run["phase"], run["trialsSucceeded"], run["trialsStopped"], run["trialsFailed"]) == ("Selecting", 3, 61, 0)
    assert run["rounds"] == rounds and run["searchRecord"] == "s3://kiln/r1/search/halving.json"


def test_a_run_started_before_shards_is_counted_one_trial_per_completion():
    old = {i: {"command": "trial", "trial": i, "result": "Succeeded", "score": 0.9} for i in range(3)}
    old[3] = {"command": "trial", "trial": 3, "result": "Failed", "reason": "InvalidParameter", "message": "no"}
    totals = trial_totals(old)
    assert (totals.succeeded, totals.failed, totals.failures) == (
        3, 1, [{"trial": 3, "reason": "InvalidParameter", "message": "no"}])


def test_the_selection_steps_counts_are_the_runs_final_ones():
    mv = {"artifact": {"uri": "s3://kiln/m.skops", "sha256": "c" * 64, "format": "skops"},
          "signature": {"inputs": [{"name": "x", "type": "number"}]}, "metrics": {"accuracy": 0.97}}
    tp, obs = select_done({"result": "Succeeded", "modelVersion": mv,
                           "trials": {"planned": 24, "succeeded": 17, "failed": 7, "stopped": 0}})
    run = pipelines.plan(parse(tp), obs, CFG, NOW).status["runs"][0]
    assert (run["trialsSucceeded"], run["trialsFailed"], run["trialsStopped"]) == (17, 7, 0)


def test_the_crd_refuses_halving_settings_that_cannot_work():
    """The rules as the apiserver gets them (their verdicts on a real one: tests/integration/test_crds_apiserver.py)."""
    spec = all_crds()["kiln.dev_trainingpipelines.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]
    rules = {r["fieldPath"]: r for r in spec["x-kubernetes-validations"]}
    assert rules[".search.halving"]["rule"] == "!has(self.search.halving) || self.search.strategy == 'halving'"
    assert "search.halving.maxResources is required" in rules[".search.halving.maxResources"]["message"]
    assert "minResources <= self.search.halving.maxResources" in rules[".search.halving.minResources"]["rule"]
    halving = spec["properties"]["search"]["properties"]["halving"]["properties"]
    assert (halving["factor"]["minimum"], halving["factor"]["maximum"], halving["factor"]["default"]) == (2, 10, 3)
    base = example("02-trainingpipeline.yaml")["spec"]
    for bad in ({"factor": 1}, {"resource": "n-estimators"}, {"minResources": 0}):
        with pytest.raises(ValueError):
            TrainingPipelineSpec.model_validate({**base, "search": {"strategy": "halving", "halving": bad}})


def select_done(summary: dict, pods: list[dict] | None = None) -> tuple[dict, pipelines.Observed]:
    tp = running(example("02-trainingpipeline.yaml"), phase="Selecting")
    view = JobView(job("Complete" if summary["result"] != "Failed" else "Failed", 1), {0: summary}, pods or [])
    return tp, observed(ready_dataset(), {training.run_job_name(parse(tp), "r1", "select"): view})


def test_a_passing_selection_asks_the_registry_for_a_model_version():
    mv = {"artifact": {"uri": "s3://kiln/m.skops", "sha256": "c" * 64, "format": "skops"},
          "signature": {"inputs": [{"name": "x", "type": "number"}]}, "metrics": {"accuracy": 0.97},
          "lineage": {"pipeline": "iris-forest", "run": "r1", "datasetVersion": VERSION, "image": "kiln-runtime:dev",
                      "pipelineGeneration": 1, "trial": 3, "seed": 7}}
    summary = {"result": "Succeeded", "modelVersion": mv, "metrics": {"accuracy": 0.97},
               "trainedBy": {"step": "select", "pod": "iris-forest-r1-select-abcde"}}
    tp, obs = select_done(summary, pods=[train_pod("iris-forest-r1-select-abcde", DIGEST, summary)])
    result = pipelines.plan(parse(tp), obs, CFG, NOW)
    assert result.register == [("r1", {**mv, "lineage": {**mv["lineage"], "imageDigest": DIGEST}})]
    assert result.status["runs"][0]["phase"] == "Registering"
    assert "ImageDigestUnknown" not in [e[1] for e in result.events]


DIGEST, OTHER = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def train_pod(name: str, digest: str | None, summary: dict | None = None, index: int | None = None,
              finished: str = "2026-11-23T09:59:00Z") -> dict:
    """A Job's pod as the cache keeps it (no spec): the train container's status, terminated with `summary`."""
    status = {"name": "train", "image": "docker.io/library/kiln-runtime:dev",
              "state": {"terminated": {"exitCode": 0, "finishedAt": finished,
                                       **({"message": json.dumps(summary)} if summary else {})}}}
    if digest:
        status["imageID"] = f"docker.io/library/kiln-runtime@{digest}"
    annotations = {} if index is None else {"batch.kubernetes.io/job-completion-index": str(index)}
    return {"metadata": {"name": name, "annotations": annotations}, "status": {"containerStatuses": [status]}}


def registered_lineage(summary: dict, select_pods=(), trial_pods=(), completions: int = 2, **status) -> dict:
    tp, obs = select_done(summary, pods=list(select_pods))
    tp["status"].update(status)
    trials_name = training.run_job_name(parse(tp), "r1", "trials")
    trials_job = {**job("Complete", completions), "spec": {"completions": completions}}
    obs.jobs[trials_name] = JobView(trials_job, {}, list(trial_pods))
    result = pipelines.plan(parse(tp), obs, CFG, NOW)
    ((_, mv),) = result.register
    return mv["lineage"], result


def passing(trained_by: dict | None, lineage: dict | None = None) -> dict:
    summary = {"result": "Succeeded", "metrics": {"accuracy": 0.97},
               "modelVersion": {"artifact": {"uri": "s3://kiln/m.skops", "sha256": "c" * 64},
                                "signature": {"inputs": [{"name": "x", "type": "number"}]},
                                "metrics": {"accuracy": 0.97}, "lineage": lineage or {"run": "r1"}}}
    if trained_by is not None:
        summary["trainedBy"] = trained_by
    return summary


def test_the_image_digest_is_the_one_the_pod_that_fitted_the_model_ran():
    # The selection refitted the winner in its second attempt, after the image tag had moved: the
    # digest is that attempt's, the one the Downward API named, not the first's nor a trial pod's.
    summary = passing({"step": "select", "pod": "sel-2"})
    first, second = train_pod("sel-1", OTHER, index=0), train_pod("sel-2", DIGEST, summary, index=0)
    lineage, _ = registered_lineage(summary, [first, second], [train_pod("t-0", OTHER, index=0)])
    assert lineage["imageDigest"] == DIGEST

    # A stored trial model registered as it was (keepTrialModels): the trial pod's image trained it.
    summary = passing({"step": "trials", "trial": 5, "pod": "t-1-b"})
    trial_pods = [train_pod("t-1-a", OTHER, index=1), train_pod("t-1-b", DIGEST, index=1)]
    lineage, _ = registered_lineage(summary, [train_pod("sel", OTHER, summary)], trial_pods)
    assert lineage["imageDigest"] == DIGEST

    # An older runtime names no pod: trial 5 of 2 shards is shard 1's; its attempts agree, or nothing is claimed.
    summary = passing({"step": "trials", "trial": 5})
    shard1 = [train_pod("t-1-a", DIGEST, index=1), train_pod("t-1-b", DIGEST, index=1)]
    lineage, _ = registered_lineage(summary, [train_pod("sel", OTHER, summary)], [train_pod("t-0", OTHER, index=0), *shard1])
    assert lineage["imageDigest"] == DIGEST
    lineage, result = registered_lineage(summary, [train_pod("sel", OTHER, summary)],
                                         [shard1[0], train_pod("t-1-c", OTHER, index=1)])
    assert "imageDigest" not in lineage
    assert ("Warning", "ImageDigestUnknown") in [e[:2] for e in result.events]

    # No trainedBy at all (a runtime from before it): the selection pod, the one that reported.
    summary = passing(None)
    lineage, _ = registered_lineage(summary, [train_pod("sel", DIGEST, summary, index=0)])
    assert lineage["imageDigest"] == DIGEST


def test_the_lineage_names_the_data_version_and_the_generation_the_run_started_from():
    # The runtime's lineage wins; what it lacks comes from the run (an older runtime's summary).
    summary = passing({"step": "select", "pod": "sel"}, lineage={"run": "r1", "datasetVersion": None})
    lineage, _ = registered_lineage(summary, [train_pod("sel", DIGEST, summary)], lastRunGeneration=3)
    assert lineage == {"run": "r1", "datasetVersion": VERSION, "pipelineGeneration": 3, "imageDigest": DIGEST,
                       "image": "docker.io/library/kiln-runtime:dev"}
    summary = passing({"step": "select", "pod": "sel"}, lineage={"run": "r1", "datasetVersion": "cd" * 32,
                                                                "pipelineGeneration": 2, "image": "kiln-runtime:dev"})
    lineage, _ = registered_lineage(summary, [train_pod("sel", DIGEST, summary)], lastRunGeneration=3)
    assert (lineage["datasetVersion"], lineage["pipelineGeneration"], lineage["image"]) == ("cd" * 32, 2, "kiln-runtime:dev")


def test_a_run_passes_the_generation_it_started_from_and_its_pods_learn_their_names():
    tp = example("02-trainingpipeline.yaml")
    tp["metadata"]["generation"] = 6
    (trials,) = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW).apply
    [container] = trials["spec"]["template"]["spec"]["containers"]
    config = json.loads(container["env"][0]["value"])
    assert config["lineage"]["pipelineGeneration"] == 6
    assert {"name": "KILN_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    # The selection Job, made later, passes the run's generation, not the spec's newest.
    tp = running(tp, phase="Running")
    tp["metadata"]["generation"] = 7
    tp["status"]["lastRunGeneration"] = 6
    name = training.run_job_name(parse(tp), "r1", "trials")
    (select,) = pipelines.plan(parse(tp), observed(ready_dataset(), {name: JobView(job("Complete", 2))}), CFG, NOW).apply
    [container] = select["spec"]["template"]["spec"]["containers"]
    assert json.loads(container["env"][0]["value"])["lineage"]["pipelineGeneration"] == 6
    assert "KILN_POD_NAME" in [e["name"] for e in container["env"]]


@pytest.mark.parametrize("image_id, digest", [
    ("docker.io/library/kiln-runtime@sha256:" + "a" * 64, "sha256:" + "a" * 64),
    ("docker-pullable://registry.example/kiln-runtime@sha256:" + "b" * 64, "sha256:" + "b" * 64),
    ("sha256:" + "c" * 64, "sha256:" + "c" * 64),  # loaded into the node, no registry: its image ID
    ("", None), ("kiln-runtime:dev", None), ("sha256:" + "A" * 64, None),
])
def test_image_digests_are_read_from_every_runtimes_image_id(image_id, digest):
    assert jobs.image_digest(image_id) == digest


def test_a_failed_gate_creates_nothing_and_quotes_the_numbers():
    message = "gate accuracy >= 0.99 failed: best trial reached 0.9474 (short by 0.0426)"
    tp, obs = select_done({"result": "GateFailed", "message": message})
    result = pipelines.plan(parse(tp), obs, CFG, NOW)
    assert result.register == []
    assert conditions(result)["Ready"] == ("False", "RunGateFailed", f"run r1: {message}")


def test_a_truncated_selection_summary_fails_the_run_instead_of_registering_half_a_model():
    tp, obs = select_done({"result": "Succeeded", "modelVersion": {"metrics": {}}, "manifestUri": "s3://m"})
    result = pipelines.plan(parse(tp), obs, CFG, NOW)
    assert result.register == [] and result.status["runs"][0]["phase"] == "Failed"


def finished(tp: dict, n: int) -> dict:
    tp = copy.deepcopy(tp)
    tp["status"] = {"lastRun": f"r{n}", "lastRunGeneration": 1, "lastDatasetVersion": VERSION,
                    "runs": [{"id": f"r{i}", "phase": "Succeeded"} for i in range(1, n + 1)]}
    return tp


def test_a_new_dataset_version_starts_a_run_when_asked_to():
    tp = finished(example("02-trainingpipeline.yaml"), 1)
    result = pipelines.plan(parse(tp), observed(ready_dataset("cd" * 32)), CFG, NOW)
    assert result.status["runs"][-1]["trigger"] == "datasetChange"
    tp["spec"]["triggers"] = {"onDatasetChange": False}
    assert pipelines.plan(parse(tp), observed(ready_dataset("cd" * 32)), CFG, NOW).apply == []


def test_a_run_request_starts_once_and_respects_forbid():
    tp = finished(example("02-trainingpipeline.yaml"), 1)
    tp["metadata"]["annotations"] = {"kiln.dev/run-requested": "manual-2026-11-23T10:00:00Z"}
    result = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW)
    assert result.status["runs"][-1]["trigger"] == "requested"
    assert result.status["lastRunRequest"] == "manual-2026-11-23T10:00:00Z"
    # The same request seen again (the next timer tick) starts nothing.
    tp["status"].update(result.status)
    tp["status"]["runs"][-1]["phase"] = "Succeeded"
    assert pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW).apply == []
    # A new request while a run is active is skipped under Forbid, with an Event saying so.
    busy = running(example("02-trainingpipeline.yaml"), run_id="r2")
    busy["metadata"]["annotations"] = {"kiln.dev/run-requested": "manual-1"}
    name = training.run_job_name(parse(busy), "r2", "trials")
    skipped = pipelines.plan(parse(busy), observed(ready_dataset(), {name: JobView(job())}), CFG, NOW)
    assert skipped.apply == [] and any(e[1] == "RunSkipped" for e in skipped.events)


def champion(version: str = VERSION) -> dict:
    mv = registered("Production")
    mv["spec"].update(signature={"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}},
                      lineage={"dataset": "iris", "datasetVersion": version})
    return mv


def test_a_drift_run_first_asks_the_dataset_for_its_newest_data_and_waits():
    tp = finished(example("02-trainingpipeline.yaml"), 1)
    tp["metadata"]["annotations"] = {"kiln.dev/run-requested": "drift-2026-11-23T10:00:00Z"}
    waiting = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW)
    assert waiting.refresh == "drift-2026-11-23T10:00:00Z" and waiting.apply == []
    assert conditions(waiting)["Ready"][:2] == ("False", "WaitingForData")
    assert "lastRunRequest" not in waiting.status  # the request stands until the data answered it


def test_a_drift_run_on_new_data_trains_on_its_snapshot_against_the_serving_model():
    tp = finished(example("02-trainingpipeline.yaml"), 1)
    tp["metadata"]["annotations"] = {"kiln.dev/run-requested": "drift-2026-11-23T10:00:00Z"}
    tp["spec"]["gates"] = {"beatProductionBy": 0.01}
    newer = "cd" * 32
    ds = ready_dataset(newer)
    ds["status"].update(lastRefresh="drift-2026-11-23T10:00:00Z", versions=[
        {"version": VERSION, "snapshotUri": "s3://kiln/v1.parquet", "snapshotSha256": "1" * 64},
        {"version": newer, "snapshotUri": "s3://kiln/v2.parquet", "snapshotSha256": "2" * 64}])
    seen = observed(ds)
    seen.champion = parse(champion(VERSION))
    result = pipelines.plan(parse(tp), seen, CFG, NOW)
    run = result.status["runs"][-1]
    assert run["trigger"] == "drift" and run["datasetVersion"] == newer
    config = json.loads(result.apply[0]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
    assert config["datasetSnapshot"] == {"uri": "s3://kiln/v2.parquet", "sha256": "2" * 64}
    assert config["champion"]["name"] == "iris-v1" and config["champion"]["margin"] == 0.01
    assert config["champion"]["artifact"]["sha256"] == "c" * 64
    assert any("to beat iris-v1" in e[2] for e in result.events if e[1] == "RunStarted")


def test_a_drift_run_on_the_data_the_serving_model_was_trained_on_is_skipped():
    tp = finished(example("02-trainingpipeline.yaml"), 1)
    tp["metadata"]["annotations"] = {"kiln.dev/run-requested": "drift-2026-11-23T10:00:00Z"}
    ds = ready_dataset()
    ds["status"]["lastRefresh"] = "drift-2026-11-23T10:00:00Z"
    seen = observed(ds)
    seen.champion = parse(champion(VERSION))
    result = pipelines.plan(parse(tp), seen, CFG, NOW)
    assert result.apply == [] and result.status["lastRunRequest"] == "drift-2026-11-23T10:00:00Z"
    assert any(e[1] == "RunSkipped" and "learn nothing new" in e[2] for e in result.events)


def test_a_pinned_version_trains_again_on_its_snapshot_or_says_it_is_gone():
    tp = finished(example("02-trainingpipeline.yaml"), 1)
    tp["metadata"]["generation"] = 2  # the pin is a spec change: a run
    ds = ready_dataset("cd" * 32)
    ds["status"]["versions"] = [{"version": VERSION, "snapshotUri": "s3://kiln/v1.parquet",
                                 "snapshotSha256": "1" * 64}, {"version": "cd" * 32}]
    tp["spec"]["datasetVersion"] = VERSION
    result = pipelines.plan(parse(tp), observed(ds), CFG, NOW)
    assert result.status["runs"][-1]["datasetVersion"] == VERSION
    config = json.loads(result.apply[0]["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
    assert config["datasetSnapshot"]["uri"] == "s3://kiln/v1.parquet"
    tp["spec"]["datasetVersion"] = "ef" * 32
    gone = pipelines.plan(parse(tp), observed(ds), CFG, NOW)
    assert gone.apply == [] and conditions(gone)["Ready"][:2] == ("False", "DatasetVersionNotFound")


def test_the_model_to_beat_is_production_else_what_a_service_serves():
    staged = parse(registered("Staging"))
    isvc = {"status": {"modelVersion": "iris-v1"}}
    assert registry.serving_version([staged], [], "iris") is None
    assert registry.serving_version([staged], [isvc], "iris") is staged
    prod = copy.deepcopy(staged.body)
    prod["metadata"]["name"], prod["spec"]["stage"], prod["spec"]["version"] = "iris-v2", "Production", 2
    prod = parse(prod)
    assert registry.serving_version([staged, prod], [isvc], "iris") is prod


def test_replace_cancels_the_active_run_and_starts_another():
    busy = running(example("02-trainingpipeline.yaml"), run_id="r2")
    busy["spec"]["concurrencyPolicy"] = "Replace"
    busy["metadata"]["annotations"] = {"kiln.dev/run-requested": "manual-1"}
    name = training.run_job_name(parse(busy), "r2", "trials")
    result = pipelines.plan(parse(busy), observed(ready_dataset(), {name: JobView(job())}), CFG, NOW)
    assert [r["phase"] for r in result.status["runs"]] == ["Cancelled", "Running"]
    assert ("batch/v1", "Job", name) in result.delete


def test_run_history_is_pruned_with_its_jobs():
    tp = finished(example("02-trainingpipeline.yaml"), 7)
    tp["spec"]["runHistoryLimit"] = 5
    result = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW)
    assert [r["id"] for r in result.status["runs"]] == ["r3", "r4", "r5", "r6", "r7"]
    assert ("batch/v1", "Job", training.run_job_name(parse(tp), "r1", "trials")) in result.delete


def test_a_schedule_starts_runs_when_due():
    tp = finished(example("02-trainingpipeline.yaml"), 1)
    tp["spec"]["schedule"] = "0 3 * * *"
    first = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, NOW)
    assert first.apply == [] and first.status["nextRun"] == "2026-11-24T03:00:00Z"
    tp["status"]["nextRun"] = first.status["nextRun"]
    due = pipelines.plan(parse(tp), observed(ready_dataset()), CFG, "2026-11-24T03:00:01Z")
    assert due.status["runs"][-1]["trigger"] == "schedule"
    assert due.status["nextRun"] == "2026-11-25T03:00:00Z"


# --- termination messages and the registry ---------------------------------------------------------

def test_termination_messages_are_read_per_index_newest_first():
    def pod(index, finished, message):
        return {"metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
                "status": {"containerStatuses": [{"state": {"terminated": {"finishedAt": finished,
                                                                           "message": message}}}]}}
    found = termination_summaries([pod(0, "2026-11-23T10:00:00Z", '{"result": "Failed"}'),
                                   pod(0, "2026-11-23T10:01:00Z", '{"result": "Succeeded"}'),
                                   pod(1, "2026-11-23T10:00:00Z", "Traceback: boom")])
    assert found[0]["result"] == "Succeeded"
    assert found[1]["reason"] == "UnreadableSummary" and "boom" in found[1]["message"]


def test_a_summary_cut_to_fit_the_termination_message_is_completed_from_the_logs():
    inputs = [{"name": f"feature_{i}", "type": "number"} for i in range(150)]
    whole = {"command": "select", "result": "Succeeded", "manifestUri": "s3://m",
             "modelVersion": {"artifact": {"uri": "s3://m/model.skops", "sha256": "c" * 64},
                              "signature": {"inputs": inputs, "output": {"type": "label"}}, "metrics": {"accuracy": 0.9}}}
    cut = {**whole, "modelVersion": {"artifact": whole["modelVersion"]["artifact"]}, "truncated": ["modelVersion.signature"]}
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"state": {"terminated": {
        "finishedAt": "2026-11-23T10:00:00Z", "message": json.dumps(cut)}}}]}}
    logs = {"p": "loading\n" + json.dumps(whole) + "\nWARNING: a line after the summary\n"}
    (found,) = termination_summaries([pod], lambda p: logs[p["metadata"]["name"]]).values()
    assert found == whole
    tp, obs = select_done(found)
    assert pipelines.plan(parse(tp), obs, CFG, NOW).register[0][1]["signature"]["inputs"] == inputs
    # Logs that lost the line (the pod is gone, or another run's) leave the cut summary, which fails the run.
    logs["p"] = json.dumps({**whole, "command": "trial"})
    assert termination_summaries([pod], lambda p: logs["p"])[0] == cut


def test_a_cut_shard_summary_is_completed_only_by_that_shards_line():
    whole = shard(1, 7, failed=(1, 3, 5, 7, 9))
    cut = {**whole, "failures": [], "truncated": ["failures"]}
    assert whole_summary(json.dumps(shard(0, 7, failed=(0, 2, 4, 6, 8))), cut) == cut
    assert whole_summary("training\n" + json.dumps(whole), cut) == whole


def test_promotion_archives_only_the_versions_runs_registered():
    def version(n, stage, by_run=True, model="iris"):
        labels = {"app.kubernetes.io/managed-by": "kiln-operator"} if by_run else {}
        return parse(registered(stage, version=n, model=model, labels=labels))

    mvs = [version(1, "Production"), version(2, "Production", by_run=False), version(3, "Staging"),
           version(4, "Production"), version(1, "Production", model="wine")]
    assert registry.to_archive(mvs, "iris", keep="iris-v4") == ["iris-v1"]


def registered(stage="Staging", verified=True, history=None, version=1, model="iris", labels=None) -> dict:
    mv = {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion",
          "metadata": {"name": f"{model}-v{version}", "namespace": "ml", "uid": f"mv-{version}", "generation": 2,
                       "labels": labels or {}},
          "spec": {"modelName": model, "version": version, "stage": stage, "framework": {"version": "1.6.1"},
                   "artifact": {"uri": "s3://kiln/m.skops", "sha256": "c" * 64},
                   "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}}},
          "status": {"stageHistory": history or []}}
    if verified:
        mv["status"]["verifiedSha256"] = "c" * 64
    return mv


def test_a_version_lists_the_services_that_serve_it():
    mv = registered("Production")
    isvcs = [{"metadata": {"name": "b"}, "status": {"canaryVersion": "iris-v1"}},
             {"metadata": {"name": "a"}, "status": {"modelVersion": "iris-v1"}},
             {"metadata": {"name": "c"}, "status": {"modelVersion": "iris-v2"}}]
    assert registry.served_by(parse(mv), isvcs) == ["a", "b"]
    result = registry.plan_model_version(parse(mv), JobView(None), CFG, NOW, registry.served_by(parse(mv), isvcs))
    assert result.status["servedBy"] == ["a", "b"]


def test_a_stage_change_is_recorded_in_the_history_with_an_event():
    mv = registered("Production", history=[{"stage": "Staging", "time": "2026-11-22T10:00:00Z"}])
    result = registry.plan_model_version(parse(mv), JobView(None), CFG, NOW)
    assert result.status["stageHistory"][-1] == {"stage": "Production", "from": "Staging", "time": NOW}
    assert ("Normal", "StageChanged", "iris-v1: Staging -> Production") in result.events
    mv["status"]["stageHistory"] = result.status["stageHistory"]
    assert registry.plan_model_version(parse(mv), JobView(None), CFG, NOW).events == []


def test_a_model_version_is_ready_only_after_a_job_checked_its_digest():
    mv = registered(verified=False)
    start = registry.plan_model_version(parse(mv), JobView(None), CFG, NOW)
    (verify,) = start.apply
    assert verify["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "kiln-train", "verify", "--uri", "s3://kiln/m.skops", "--sha256", "c" * 64]
    assert conditions(start)["Ready"][:2] == ("False", "Verifying")
    done = registry.plan_model_version(parse(mv), JobView(job("Complete", 1), {0: {"result": "Succeeded"}}), CFG, NOW)
    assert done.status["verifiedSha256"] == "c" * 64
    assert conditions(done)["Verified"][0] == conditions(done)["Ready"][0] == "True"


def test_the_onnx_file_is_verified_too_and_unsafe_formats_only_when_allowed():
    mv = registered(verified=False)
    mv["spec"]["artifact"].update(format="joblib", allowUnsafe=True,
                                  onnx={"uri": "s3://kiln/m.onnx", "sha256": "d" * 64})
    (verify,) = registry.plan_model_version(parse(mv), JobView(None), CFG, NOW).apply
    command = verify["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[2:] == ["--uri", "s3://kiln/m.skops", "--sha256", "c" * 64,
                           "--uri", "s3://kiln/m.onnx", "--sha256", "d" * 64, "--allow-unsafe"]


def test_a_digest_mismatch_marks_the_model_version_failed_with_the_reason():
    mv = registered(verified=False)
    summary = {"result": "Failed", "reason": "DigestMismatch", "message": "expected sha256 cccc, got 1234"}
    result = registry.plan_model_version(parse(mv), JobView(job("Failed"), {0: summary}), CFG, NOW)
    assert conditions(result)["Ready"] == ("False", "DigestMismatch", "expected sha256 cccc, got 1234")
    assert "verifiedSha256" not in result.status


@pytest.mark.parametrize("stages, expected", [
    (["Production", "Archived", "Production"], "iris-v3"), (["Staging", "None"], None)])
def test_the_production_version_is_the_newest_in_production(stages, expected):
    mvs = [parse(registered(s, version=i)) for i, s in enumerate(stages, start=1)]
    found = registry.production_version(mvs, "iris")
    assert (found and found.name) == expected
