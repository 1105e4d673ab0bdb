import itertools
import json

import pytest

from kiln_runtime.train import gates, search, spec, termination
from kiln_runtime.train.errors import InvalidSpec


def _pipe(**search_spec) -> spec.PipelineSpec:
    return spec.parse_pipeline({"estimator": {"class": "RandomForestClassifier"}, "search": search_spec,
                                "evaluation": {"seed": search_spec.pop("seed", 42)} if "seed" in search_spec else {}})


SPACE = {"n_estimators": [10, 20, 30], "max_depth": [2, 4]}


def test_grid_enumerates_every_combination_in_sorted_key_order():
    p = _pipe(strategy="grid", trials=10, space=SPACE)
    got = [search.trial_params(p, i) for i in range(search.planned_trials(p))]
    want = [{"max_depth": d, "n_estimators": n} for d, n in itertools.product([2, 4], [10, 20, 30])]
    assert got == want and search.planned_trials(p) == 6
    assert search.trial_params(p, 6) is None  # past the plan: skipped


def test_random_draws_distinct_combinations_deterministically():
    p = _pipe(strategy="random", trials=4, space=SPACE, seed=3)
    got = [search.trial_params(p, i) for i in range(4)]
    assert len({json.dumps(g, sort_keys=True) for g in got}) == 4
    assert got == [search.trial_params(p, i) for i in range(4)]
    reordered = _pipe(strategy="random", trials=4, space=dict(reversed(list(SPACE.items()))), seed=3)
    assert got == [search.trial_params(reordered, i) for i in range(4)]  # the apiserver's key order is moot
    other = _pipe(strategy="random", trials=4, space=SPACE, seed=4)
    assert got != [search.trial_params(other, i) for i in range(4)]


def test_an_empty_space_is_one_trial_and_a_huge_space_still_draws():
    assert search.planned_trials(_pipe(trials=5)) == 1 and search.trial_params(_pipe(trials=5), 0) == {}
    huge = {f"p{i}": list(range(10)) for i in range(25)}  # 10^25 combinations
    p = _pipe(strategy="random", trials=3, space=huge)
    assert search.trial_params(p, 2) == search.trial_params(p, 2) and len(search.trial_params(p, 2)) == 25


def test_threshold_gates_say_by_how_much():
    failed = gates.check({"accuracy": 0.9, "log_loss": 0.5},
                         (spec.Gate("accuracy", min=0.95), spec.Gate("log_loss", max=0.3), spec.Gate("roc_auc", min=0.5)),
                         metric="accuracy", beat_production_by=None, production=None)
    assert [g["metric"] for g in failed] == ["accuracy", "log_loss", "roc_auc"]
    assert failed[0]["shortBy"] == pytest.approx(0.05)
    assert failed[0]["message"] == "accuracy 0.9 is below the minimum 0.95 by 0.05"
    assert "above the maximum 0.3 by 0.2" in failed[1]["message"] and "not computed" in failed[2]["message"]


def test_beat_production_respects_the_metric_direction():
    prod = {"version": 3, "metrics": {"accuracy": 0.9, "rmse": 10.0}}
    assert gates.check({"accuracy": 0.93}, (), metric="accuracy", beat_production_by=0.02, production=prod) == []
    [g] = gates.check({"accuracy": 0.91}, (), metric="accuracy", beat_production_by=0.02, production=prod)
    assert g["gate"] == "beatProduction" and g["shortBy"] == pytest.approx(0.01) and "version 3" in g["message"]
    assert gates.check({"rmse": 9.0}, (), metric="rmse", beat_production_by=0.5, production=prod) == []
    [g] = gates.check({"rmse": 9.8}, (), metric="rmse", beat_production_by=0.5, production=prod)
    assert "at most 9.5" in g["message"]
    assert gates.check({"accuracy": 0.1}, (), metric="accuracy", beat_production_by=0.1, production=None) == []
    # The operator passes the ModelVersion's name rather than its number.
    [g] = gates.check({"accuracy": 0.91}, (), metric="accuracy", beat_production_by=0.02,
                      production={"name": "iris-v3", "metrics": {"accuracy": 0.9}})
    assert "Production version iris-v3 (0.9)" in g["message"]


@pytest.mark.parametrize("raw,match", [
    ({"estimator": {}}, "estimator.class"),
    ({"estimator": {"class": "SVC"}, "search": {"strategy": "bayes"}}, "one of grid, random, halving"),
    ({"estimator": {"class": "SVC"}, "search": {"space": {"C": 1}}}, "space.C must be a non-empty list"),
    ({"estimator": {"class": "SVC"}, "search": {"cvFolds": 1}}, "cvFolds"),
    ({"estimator": {"class": "SVC"}, "evaluation": {"testFraction": 1.5}}, "testFraction"),
    ({"estimator": {"class": "SVC"}, "artifactFormat": "joblib"}, "allowUnsafeArtifacts"),
    ({"estimator": {"class": "SVC"}, "gates": {"metrics": [{"metric": "f1"}]}}, "needs min or max"),
])
def test_pipeline_spec_errors_name_the_field(raw, match):
    with pytest.raises(InvalidSpec, match=match):
        spec.parse_pipeline(raw)


def test_config_sources(tmp_path):
    with pytest.raises(InvalidSpec, match="no configuration"):
        spec.load_raw(None, env={})
    assert spec.load_raw(None, env={"KILN_TRAIN_CONFIG": '{"a": 1}'}) == {"a": 1}
    with pytest.raises(InvalidSpec, match="not JSON"):
        spec.load_raw(None, env={"KILN_TRAIN_CONFIG": "{"})
    with pytest.raises(InvalidSpec, match="output must be a store prefix"):
        spec.parse({"dataset": {}}, needs_pipeline=False)


def test_a_cut_summary_is_printed_whole_as_the_last_log_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(termination.PATH_ENV, str(tmp_path / "term"))
    wide = {"v": 1, "command": "select", "result": "Succeeded", "manifestUri": "s3://b/m.json",
            "modelVersion": {"artifact": {"uri": "u"}, "signature": {"inputs": [{"name": f"f{i:03d}" + "x" * 40}
                                                                             for i in range(150)]}}}
    termination.write(wide)
    kept = json.loads((tmp_path / "term").read_bytes())
    assert len((tmp_path / "term").read_bytes()) <= 4096 and "modelVersion.signature" in kept["truncated"]
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == wide


def test_termination_message_fits_the_kubelet_limit():
    small = {"v": 1, "result": "Succeeded", "message": "ok"}
    assert json.loads(termination.fit(small)) == small
    failures = [{"column": f"c{i}", "check": "type", "message": "x" * 100} for i in range(100)]
    big = {"v": 1, "command": "validate-dataset", "result": "Failed", "reason": "ValidationFailed",
           "message": "m", "failures": failures}
    out = json.loads(termination.fit(big))
    assert len(termination.fit(big)) <= 4096 and out["failures"][0]["column"] == "c0" and out["failuresTruncated"] > 0
    wide = {"v": 1, "result": "Succeeded", "manifestUri": "s3://b/m.json", "message": "ok",
            "modelVersion": {"artifact": {"uri": "u"}, "signature": {"inputs": [{"name": "f" * 40} for _ in range(200)]}}}
    out = json.loads(termination.fit(wide))
    assert "modelVersion.signature" in out["truncated"] and out["modelVersion"]["artifact"] == {"uri": "u"}
    huge = {"v": 1, "result": "Failed", "reason": "X", "message": "y" * 10000}
    assert len(termination.fit(huge)) <= 4096 and json.loads(termination.fit(huge))["reason"] == "X"
