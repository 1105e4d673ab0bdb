"""Trials sharded per process (`kiln-train trial --shards P`) and successive halving, on file:// storage."""

import json
from pathlib import Path

import pytest

from kiln_runtime.train import trial as trial_module

from .conftest import pipeline, write_dataset

FOREST_SPACE = {"n_estimators": [5, 10], "max_depth": [2, 4, 8]}


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _config(tmp_path, pipe, out="run"):
    return {"dataset": write_dataset(tmp_path, "breast_cancer"), "pipeline": pipe, "output": f"file://{tmp_path}/{out}"}


def _comparable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "trainSeconds"}


def test_two_shards_train_what_one_process_per_trial_trains_and_select_agrees(tmp_path, run_cli):
    pipe = pipeline("RandomForestClassifier", space=FOREST_SPACE, trials=6, strategy="grid")
    sharded, single = _config(tmp_path, pipe, "sharded"), _config(tmp_path, pipe, "single")
    summaries = [run_cli("trial", sharded, "--shards", "2", index=s).summary for s in (0, 1)]
    for i in range(6):
        assert run_cli("trial", single, index=i).code == 0
    assert [s["trials"]["assigned"] for s in summaries] == [3, 3]
    assert [s["shard"] for s in summaries] == [0, 1] and all(s["result"] == "Succeeded" for s in summaries)
    for i in range(6):  # shard 0 took 0, 2, 4 and shard 1 took 1, 3, 5; each trial is the same either way
        assert _comparable(_read(tmp_path / f"sharded/trials/{i}/result.json")) == \
            _comparable(_read(tmp_path / f"single/trials/{i}/result.json"))
    a, b = run_cli("select", sharded).summary, run_cli("select", single).summary
    assert a["bestTrial"] == b["bestTrial"] and a["heldOut"] == b["heldOut"]
    assert a["trials"] == {"planned": 6, "succeeded": 6, "failed": 0, "stopped": 0}


def test_a_retried_shard_trains_only_the_trials_it_lost(tmp_path, run_cli):
    cfg = _config(tmp_path, pipeline("RandomForestClassifier", space=FOREST_SPACE, trials=6, strategy="grid"))
    assert run_cli("trial", cfg, "--shards", "1", index=0).code == 0
    trials = tmp_path / "run/trials"
    (trials / "4/result.json").unlink()  # the pod died while training trial 4
    kept = {i: (trials / f"{i}/result.json").stat().st_mtime_ns for i in (0, 1, 2, 3, 5)}
    again = run_cli("trial", cfg, "--shards", "1", index=0).summary
    assert again["trials"] == {"assigned": 6, "succeeded": 6, "failed": 0, "stopped": 0, "reused": 5}
    assert {i: (trials / f"{i}/result.json").stat().st_mtime_ns for i in kept} == kept
    assert (trials / "4/result.json").exists()
    assert run_cli("select", cfg).summary["trials"] == {"planned": 6, "succeeded": 6, "failed": 0, "stopped": 0}


def test_a_rejected_parameter_fails_its_trial_only_and_is_not_retried(tmp_path, run_cli):
    cfg = _config(tmp_path, pipeline("RandomForestClassifier", space={"max_depth": [2, -1, 4]}, trials=3,
                                     strategy="grid"))
    out = run_cli("trial", cfg, "--shards", "1", index=0)
    assert out.code == 0 and out.summary["trials"]["succeeded"] == 2 and out.summary["trials"]["failed"] == 1
    [failure] = out.summary["failures"]
    assert failure["trial"] == 1 and failure["reason"] == "InvalidParameter" and "max_depth" in failure["message"]
    again = run_cli("trial", cfg, "--shards", "1", index=0).summary  # nothing left to train
    assert again["trials"]["reused"] == 2 and again["failures"] == out.summary["failures"]
    every = _config(tmp_path, pipeline("RandomForestClassifier", space={"max_depth": [-1, -2]}, trials=2,
                                       strategy="grid"), "bad")
    out = run_cli("trial", every, "--shards", "2", index=1)
    assert out.code == 10 and out.summary["reason"] == "InvalidParameter"
    assert out.summary["shard"] == 1 and out.summary["trials"]["failed"] == 1 and "trial" not in out.summary


def test_a_crashed_trial_lets_the_others_finish_and_only_it_is_retried(tmp_path, run_cli, monkeypatch):
    # A crash (a bug, not a bad parameter) is simulated: no real estimator crashes on one trial of a
    # search and not the others.
    cfg = _config(tmp_path, pipeline("DecisionTreeClassifier", space={"max_depth": [1, 2, 3]}, trials=3,
                                     strategy="grid"))
    real = trial_module.train

    def flaky(cfg_, prep, index, params):
        if index == 1:
            raise RuntimeError("simulated crash")
        return real(cfg_, prep, index, params)

    monkeypatch.setattr(trial_module, "train", flaky)
    out = run_cli("trial", cfg, "--shards", "1", index=0)
    assert out.code == 12 and out.summary["reason"] == "TrainerCrashed"
    assert out.summary["trials"]["succeeded"] == 2 and out.summary["failures"][0]["trial"] == 1
    monkeypatch.setattr(trial_module, "train", real)
    again = run_cli("trial", cfg, "--shards", "1", index=0)
    assert again.code == 0 and again.summary["trials"]["reused"] == 2 and again.summary["trials"]["succeeded"] == 3


def test_shard_indexes_outside_the_plan(tmp_path, run_cli):
    cfg = _config(tmp_path, pipeline("DecisionTreeClassifier", space={"max_depth": [1, 2]}, trials=2))
    assert run_cli("trial", cfg, "--shards", "3", index=2).summary["result"] == "Skipped"
    out = run_cli("trial", cfg, "--shards", "2", index=2)
    assert out.code == 10 and out.summary["reason"] == "InvalidSpec" and "shard 2 of 2" in out.summary["message"]


def _halving(space, trials, **halving):
    pipe = pipeline("RandomForestClassifier", space=space, trials=trials, strategy="halving")
    pipe["search"]["halving"] = halving
    return pipe


def test_halving_stops_candidates_by_rounds_and_selection_sees_only_the_finalists(tmp_path, run_cli):
    space = {"max_depth": [1, 2, 4], "min_samples_leaf": [1, 4, 16], "criterion": ["gini", "entropy"]}
    cfg = _config(tmp_path, _halving(space, 18, factor=3, resource="n_estimators", maxResources=45))
    out = run_cli("trial", cfg, "--shards", "1", index=0)
    s = out.summary
    assert out.code == 0 and s["result"] == "Succeeded", s
    assert [(r["candidates"], r["resources"]) for r in s["rounds"]] == [(18, 5), (6, 15), (2, 45)]
    assert s["trials"]["stopped"] == 16 and s["trials"]["succeeded"] == 2
    record = _read(Path(s["searchRecordUri"].removeprefix("file://")))
    finalists = [c["trial"] for c in record["candidates"] if c["stoppedIn"] is None]
    assert len(finalists) == 2
    for c in record["candidates"]:
        if c["stoppedIn"] is None:  # a finalist trains as an ordinary trial with the whole budget
            result = _read(tmp_path / f"run/trials/{c['trial']}/result.json")
            assert result["params"]["n_estimators"] == 45 and result["selection"]["on"] == "validation"
            continue
        stopped = _read(tmp_path / f"run/trials/{c['trial']}/stopped.json")
        assert stopped["round"] == c["stoppedIn"] and stopped["score"] <= stopped["cutoff"]
        assert "stopped after round" in stopped["message"]
    sel = run_cli("select", cfg).summary
    assert sel["trials"] == {"planned": 18, "succeeded": 2, "failed": 0, "stopped": 16}
    assert sel["bestTrial"] in finalists and sel["modelVersion"]["params"]["n_estimators"] == 45
    # A retried pod reuses the record and the finalists' results, and rewrites none of the records.
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*.json")}
    again = run_cli("trial", cfg, "--shards", "1", index=0).summary
    assert again["trials"]["reused"] == 2 and again["rounds"] == s["rounds"]
    assert {p: p.stat().st_mtime_ns for p in written} == written


@pytest.mark.parametrize("halving,field", [
    ({"resource": "max_depth", "maxResources": 8}, "is also in search.space"),
    ({"resource": "n_estimators"}, "maxResources must be set"),
    ({"factor": 1}, "factor must be at least 2"),
    ({"minResources": 50, "maxResources": 10}, "minResources 50 exceeds maxResources 10"),
])
def test_bad_halving_settings_are_refused_naming_the_field(tmp_path, run_cli, halving, field):
    cfg = _config(tmp_path, _halving({"max_depth": [1, 2]}, 2, **halving))
    out = run_cli("trial", cfg, "--shards", "1", index=0)
    assert out.code == 10 and out.summary["reason"] == "InvalidSpec" and field in out.summary["message"]
    assert "pipeline.search.halving" in out.summary["message"]


def test_a_halving_resource_the_estimator_lacks_is_named(tmp_path, run_cli):
    cfg = _config(tmp_path, _halving({"max_depth": [1, 2]}, 2, resource="n_trees", maxResources=10))
    out = run_cli("trial", cfg, "--shards", "1", index=0)
    assert out.code == 10 and out.summary["reason"] == "InvalidParameter" and "n_trees" in out.summary["message"]
