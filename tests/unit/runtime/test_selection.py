"""Selection never sees the test split, and a challenger must beat the champion on it. Expectations are
computed independently with plain scikit-learn on the documented splits."""

from __future__ import annotations

import json

import joblib
import pytest
import skops.io as sio
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from kiln_runtime.store import sha256_hex
from kiln_runtime.train import artifacts, estimators, spec

from .conftest import dataset_frame, pipeline, write_dataset

DEPTHS = [1, 2, 3, 4]


def _splits(name, seed, test=0.25, validation=0.2):
    frame, _ = dataset_frame(name)
    X, y = frame.drop(columns="target"), frame["target"].to_numpy()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test, random_state=seed, stratify=y)
    X_fit, X_val, y_fit, y_val = train_test_split(X_train, y_train, test_size=validation, random_state=seed,
                                                  stratify=y_train)
    return X_fit, X_val, X_test, y_fit, y_val, y_test


def test_the_winner_is_picked_on_validation_even_where_the_test_split_would_pick_another(tmp_path, run_cli):
    seed = 7
    X_fit, X_val, X_test, y_fit, y_val, y_test = _splits("wine", seed)
    val, test = [], []
    for depth in DEPTHS:
        model = DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(X_fit, y_fit)
        val.append(accuracy_score(y_val, model.predict(X_val)))
        test.append(accuracy_score(y_test, model.predict(X_test)))
    by_val = min(i for i, v in enumerate(val) if v == max(val))  # ties go to the lowest index
    by_test = min(i for i, v in enumerate(test) if v == max(test))
    assert by_val != by_test and test[by_test] > test[by_val]  # the case is what it claims to be

    cfg = {"dataset": write_dataset(tmp_path, "wine"), "output": f"file://{tmp_path}/run",
           "pipeline": pipeline("DecisionTreeClassifier", space={"max_depth": DEPTHS}, trials=4, strategy="grid",
                                seed=seed)}
    for i in range(len(DEPTHS)):
        out = run_cli("trial", cfg, index=i)
        assert out.summary["score"] == val[i] and "heldOut" not in out.summary
    s = run_cli("select", cfg).summary
    assert s["result"] == "Succeeded" and s["bestTrial"] == by_val
    assert s["selection"]["on"] == "validation" and s["selection"]["accuracy"] == val[by_val]
    assert s["selection"]["rows"] == len(y_val)
    assert s["heldOut"]["accuracy"] == test[by_val] == s["modelVersion"]["metrics"]["accuracy"]
    assert s["measuredOn"] == {"datasetVersion": s["modelVersion"]["lineage"]["datasetVersion"], "split": "test",
                               "rows": len(y_test), "testFraction": 0.25, "seed": seed}


def _champion(tmp_path, model, name="wine-v1", fmt="skops", **extra) -> dict:
    data = sio.dumps(model) if fmt == "skops" else _joblib(model)
    path = tmp_path / f"{name}.{fmt}"
    path.write_bytes(data)
    frame, _ = dataset_frame("wine")
    inputs = [{"name": c, "type": "number"} for c in frame.columns if c != "target"]
    return {"name": name, "artifact": {"uri": f"file://{path}", "sha256": sha256_hex(data), "format": fmt},
            "signature": {"inputs": inputs, "output": {"type": "label"}}, **extra}


def _joblib(model) -> bytes:
    import io

    buf = io.BytesIO()
    joblib.dump(model, buf)
    return buf.getvalue()


def _fitted(kind, X, y, **params):
    """A model as Kiln would have registered it: the same preprocessing pipeline, trained on X."""
    _, ds = dataset_frame("wine")
    features = spec.parse_dataset({**ds, "source": {"uri": "file:///x.csv"}}).features
    return estimators.make_pipeline(kind, params, features).fit(X, y)


@pytest.fixture
def challenger(tmp_path, run_cli):
    """A run of one shallow tree on wine; trials done, select to come with a champion."""
    cfg = {"dataset": write_dataset(tmp_path, "wine"), "output": f"file://{tmp_path}/run",
           "pipeline": pipeline("DecisionTreeClassifier", {"max_depth": 2}, seed=7)}
    assert run_cli("trial", cfg, index=0).code == 0
    X_fit, X_val, X_test, y_fit, y_val, y_test = _splits("wine", 7)
    ours = DecisionTreeClassifier(max_depth=2, random_state=7).fit(X_fit, y_fit)
    return cfg, accuracy_score(y_test, ours.predict(X_test)), (X_fit, X_test, y_fit, y_test)


def test_a_champion_that_is_beaten(tmp_path, run_cli, challenger):
    cfg, ours, (X_fit, X_test, y_fit, y_test) = challenger
    weak = _fitted("DecisionTreeClassifier", X_fit, y_fit, max_depth=1, random_state=0)
    theirs = accuracy_score(y_test, weak.predict(X_test))
    assert ours > theirs
    s = run_cli("select", {**cfg, "champion": _champion(tmp_path, weak, margin=0.0)}).summary
    assert s["result"] == "Succeeded", s
    assert s["champion"]["name"] == "wine-v1" and s["champion"]["metric"] == "accuracy"
    assert s["champion"]["value"] == theirs and s["champion"]["metrics"]["accuracy"] == theirs
    assert s["challenger"] == {"metric": "accuracy", "value": ours}
    assert f"beating wine-v1 ({theirs:.6g})" in s["message"]
    doc = json.loads((tmp_path / "run/model/metrics.json").read_text())
    assert doc["champion"] == s["champion"] and doc["challenger"] == s["challenger"]


def test_a_champion_that_is_not_beaten_names_both_scores_and_the_data(tmp_path, run_cli, challenger):
    cfg, ours, (X_fit, X_test, y_fit, y_test) = challenger
    strong = _fitted("RandomForestClassifier", X_fit, y_fit, n_estimators=50, random_state=0)
    theirs = accuracy_score(y_test, strong.predict(X_test))
    assert theirs > ours
    s = run_cli("select", {**cfg, "champion": _champion(tmp_path, strong, name="loans-v1", margin=0.01)}).summary
    assert s["result"] == "GateFailed" and s["reason"] == "ChampionNotBeaten", s
    version = s["measuredOn"]["datasetVersion"]
    assert (f"accuracy {ours:.6g} does not beat loans-v1 ({theirs:.6g}) by 0.01 on the test split of dataset "
            f"version {version[:12]}… ({len(y_test)} rows)") in s["message"]
    assert s["champion"]["value"] == theirs and s["challenger"]["value"] == ours
    assert not (tmp_path / "run/model").exists()


def test_an_equal_champion_is_not_beaten_with_no_margin(tmp_path, run_cli, challenger):
    cfg, ours, (X_fit, X_test, y_fit, y_test) = challenger
    same = _fitted("DecisionTreeClassifier", X_fit, y_fit, max_depth=2, random_state=7)  # the challenger itself
    s = run_cli("select", {**cfg, "champion": _champion(tmp_path, same)}).summary
    assert s["reason"] == "ChampionNotBeaten" and s["champion"]["value"] == s["challenger"]["value"] == ours
    assert f"does not beat wine-v1 ({ours:.6g}) on the test split" in s["message"]


def test_an_unavailable_champion_fails_the_gate_with_its_cause(tmp_path, run_cli, challenger):
    cfg, _, (X_fit, _, y_fit, _) = challenger
    weak = _fitted("DecisionTreeClassifier", X_fit, y_fit, max_depth=1, random_state=0)

    altered = _champion(tmp_path, weak)
    altered["artifact"]["sha256"] = "0" * 64
    s = run_cli("select", {**cfg, "champion": altered}).summary
    assert s["result"] == "GateFailed" and s["reason"] == "ChampionUnavailable"
    assert "cannot compare with the champion wine-v1" in s["message"] and "does not match its digest" in s["message"]
    assert s["champion"]["name"] == "wine-v1" and s["champion"]["value"] is None

    garbage = tmp_path / "broken.skops"
    garbage.write_bytes(b"not a zip")
    broken = {**_champion(tmp_path, weak), "artifact": {"uri": f"file://{garbage}", "format": "skops",
                                                        "sha256": sha256_hex(b"not a zip")}}
    s = run_cli("select", {**cfg, "champion": broken}).summary
    assert s["reason"] == "ChampionUnavailable" and "cannot be loaded safely (InvalidArtifact)" in s["message"]

    unsafe = _champion(tmp_path, weak, fmt="joblib")
    s = run_cli("select", {**cfg, "champion": unsafe}).summary
    assert s["reason"] == "ChampionUnavailable" and "allowUnsafe" in s["message"]
    unsafe["artifact"]["allowUnsafe"] = True
    assert run_cli("select", {**cfg, "champion": unsafe}).summary["result"] == "Succeeded"

    wider = _champion(tmp_path, weak)
    wider["signature"]["inputs"].append({"name": "vintage", "type": "category"})
    s = run_cli("select", {**cfg, "champion": wider}).summary
    assert s["reason"] == "ChampionUnavailable" and "needs feature vintage" in s["message"]

    gone = _champion(tmp_path, weak)
    gone["artifact"]["uri"] = f"file://{tmp_path}/nowhere.skops"
    s = run_cli("select", {**cfg, "champion": gone}).summary
    assert s["reason"] == "ChampionUnavailable" and "nowhere.skops" in s["message"]


def test_lower_is_better_metrics_compare_the_other_way(tmp_path, run_cli):
    frame, _ = dataset_frame("diabetes")
    X, y = frame.drop(columns="target"), frame["target"].to_numpy()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=3)
    X_fit, _, y_fit, _ = train_test_split(X_train, y_train, test_size=0.2, random_state=3)
    cfg = {"dataset": write_dataset(tmp_path, "diabetes"), "output": f"file://{tmp_path}/run",
           "pipeline": pipeline("Ridge", {"alpha": 0.5}, metric="rmse", seed=3)}
    assert run_cli("trial", cfg, index=0).code == 0
    _, ds = dataset_frame("diabetes")
    features = spec.parse_dataset({**ds, "source": {"uri": "file:///x.csv"}}).features
    inputs = [{"name": c.name, "type": c.type} for c in features]
    mean_only = estimators.make_pipeline("Ridge", {"alpha": 1e9}, features).fit(X_fit, y_fit)  # ~ predicts the mean
    data = sio.dumps(mean_only)
    (tmp_path / "c.skops").write_bytes(data)
    champ = {"name": "sugar-v1", "artifact": {"uri": f"file://{tmp_path}/c.skops", "sha256": sha256_hex(data)},
             "signature": {"inputs": inputs, "output": {"type": "value"}}}
    s = run_cli("select", {**cfg, "champion": champ}).summary
    assert s["result"] == "Succeeded" and s["challenger"]["value"] < s["champion"]["value"], s
    gap = s["champion"]["value"] - s["challenger"]["value"]
    s = run_cli("select", {**cfg, "champion": {**champ, "margin": gap + 1}}).summary
    assert s["reason"] == "ChampionNotBeaten" and f"by {gap + 1:.6g}" in s["message"]
    assert artifacts.loads(data, "skops").predict(X_test).std() < 1  # the champion really is the flat one
