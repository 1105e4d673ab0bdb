"""kiln-train trial/select end to end on file:// storage, checked against plain scikit-learn."""

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn import metrics as m
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kiln_runtime.store import sha256_hex
from kiln_runtime.train import artifacts

from .conftest import dataset_frame, pipeline, write_dataset


def _read(uri: str):
    return json.loads(Path(uri.removeprefix("file://")).read_text())


def _config(tmp_path, name, pipe, **extra):
    return {"dataset": write_dataset(tmp_path, name), "pipeline": pipe, "output": f"file://{tmp_path}/run", **extra}


def _direct_split(name, seed, fraction, stratify=True):
    frame, _ = dataset_frame(name)
    X, y = frame.drop(columns="target"), frame["target"].to_numpy()
    return train_test_split(X, y, test_size=fraction, random_state=seed, stratify=y if stratify else None)


def _direct_validation(name, seed, fraction, validation=0.2, stratify=True):
    """(X_fit, X_val, y_fit, y_val, X_test, y_test): the test split, then the validation split carved from
    the training part with the same seed, as documented in evaluate.py."""
    X_train, X_test, y_train, y_test = _direct_split(name, seed, fraction, stratify)
    X_fit, X_val, y_fit, y_val = train_test_split(X_train, y_train, test_size=validation, random_state=seed,
                                                  stratify=y_train if stratify else None)
    return X_fit, X_val, y_fit, y_val, X_test, y_test


def test_trial_metrics_match_scikit_learn_and_rerun_is_reproducible(tmp_path, run_cli):
    cfg = _config(tmp_path, "iris", pipeline("RandomForestClassifier", {"n_estimators": 30},
                                             space={"max_depth": [2, 3]}, trials=2, strategy="grid"),
                  keepTrialModels=True)
    out = run_cli("trial", cfg, index=1)
    assert out.code == 0 and out.summary["result"] == "Succeeded" and out.summary["params"] == {"max_depth": 3}
    # The trial fits on the training part minus its validation rows and is scored on those rows only.
    X_fit, X_val, y_fit, y_val, X_test, _ = _direct_validation("iris", 7, 0.25)
    direct = RandomForestClassifier(n_estimators=30, max_depth=3, random_state=7).fit(X_fit, y_fit)
    pred, proba = direct.predict(X_val), direct.predict_proba(X_val)
    want = {"accuracy": m.accuracy_score(y_val, pred),
            "f1": m.f1_score(y_val, pred, average="macro"),
            "precision": m.precision_score(y_val, pred, average="macro"),
            "recall": m.recall_score(y_val, pred, average="macro"),
            "log_loss": m.log_loss(y_val, proba, labels=direct.classes_),
            "roc_auc": m.roc_auc_score(y_val, proba, multi_class="ovr")}
    assert out.summary["metrics"] == pytest.approx(want, abs=1e-12)
    result = _read(out.summary["resultUri"])
    assert result["params"] == {"n_estimators": 30, "max_depth": 3, "random_state": 7}
    assert result["rows"] == {"train": 89, "validation": 23, "test": 38} and len(result["datasetVersion"]) == 64
    assert result["selection"] == {"on": "validation", "rows": 23}

    again = run_cli("trial", {**cfg, "output": f"file://{tmp_path}/again"}, index=1)
    assert again.summary["metrics"] == out.summary["metrics"]
    assert artifacts.loads(Path(f"{tmp_path}/again/trials/1/model.skops").read_bytes(), "skops").predict(X_test) \
        .tolist() == direct.predict(X_test).tolist()


def test_binary_classification_with_cross_validation_matches_scikit_learn(tmp_path, run_cli):
    cfg = _config(tmp_path, "breast_cancer", pipeline("LogisticRegression", {"max_iter": 500}, cv=3,
                                                      metric="roc_auc", seed=1, test_fraction=0.3))
    out = run_cli("trial", cfg, index=0)
    assert out.code == 0, out.summary
    X_train, X_test, y_train, y_test = _direct_split("breast_cancer", 1, 0.3)
    direct = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=1))
    cv = cross_val_score(direct, X_train, y_train, scoring="roc_auc",
                         cv=StratifiedKFold(3, shuffle=True, random_state=1))
    result = _read(out.summary["resultUri"])
    assert result["cv"]["scores"] == pytest.approx(cv.tolist(), abs=1e-12)
    assert out.summary["score"] == pytest.approx(cv.mean(), abs=1e-12)
    # The trial's metrics are fold means: it never scores the test rows.
    f1 = cross_val_score(direct, X_train, y_train, scoring="f1", cv=StratifiedKFold(3, shuffle=True, random_state=1))
    assert out.summary["metrics"]["f1"] == pytest.approx(f1.mean(), abs=1e-12)
    assert result["selection"] == {"on": "cv", "rows": len(y_train), "folds": 3}
    # select scores them once, on the winner trained on the whole training part.
    sel = run_cli("select", cfg).summary
    direct.fit(X_train, y_train)
    pred = direct.predict(X_test)
    assert sel["heldOut"]["f1"] == pytest.approx(m.f1_score(y_test, pred, pos_label=1), abs=1e-12)
    assert sel["heldOut"]["roc_auc"] == pytest.approx(
        m.roc_auc_score(y_test, direct.predict_proba(X_test)[:, 1]), abs=1e-12)
    assert sel["selection"]["on"] == "cv" and sel["selection"]["roc_auc"] == pytest.approx(cv.mean(), abs=1e-12)


def test_regression_metrics_match_scikit_learn(tmp_path, run_cli):
    cfg = _config(tmp_path, "diabetes", pipeline("Ridge", {"alpha": 0.5}, metric="rmse", seed=3))
    out = run_cli("trial", cfg, index=0)
    X_fit, X_val, y_fit, y_val, _, _ = _direct_validation("diabetes", 3, 0.25, stratify=False)
    pred = make_pipeline(StandardScaler(), Ridge(alpha=0.5, random_state=3)).fit(X_fit, y_fit).predict(X_val)
    assert out.summary["metrics"] == pytest.approx({"rmse": math.sqrt(m.mean_squared_error(y_val, pred)),
                                                    "mae": m.mean_absolute_error(y_val, pred),
                                                    "r2": m.r2_score(y_val, pred)}, abs=1e-9)


def test_a_regressors_onnx_parity_is_recorded_in_the_model_version(tmp_path, run_cli):
    cfg = _config(tmp_path, "diabetes", pipeline("Ridge", {"alpha": 0.5}, metric="rmse", seed=3))
    assert run_cli("trial", cfg, index=0).code == 0
    out = run_cli("select", cfg)
    onnx = out.summary["modelVersion"]["artifact"]["onnx"]
    assert onnx["parityVerified"] and "maxProbabilityError" not in onnx
    assert 0 <= onnx["maxAbsoluteError"] < 1e-2  # float32 against float64 on targets of 25 to 346


def test_select_writes_the_verified_artifact_set(tmp_path, run_cli):
    cfg = _config(tmp_path, "iris", pipeline("RandomForestClassifier", {"n_estimators": 20},
                                             space={"max_depth": [1, 4]}, trials=2, strategy="grid",
                                             gates={"metrics": [{"metric": "accuracy", "min": 0.8}]}),
                  lineage={"pipeline": "p", "run": "r1", "image": "kiln-runtime:dev", "other": "dropped"})
    for i in range(2):
        assert run_cli("trial", cfg, index=i).code == 0
    out = run_cli("select", cfg)
    s = out.summary
    assert out.code == 0 and s["result"] == "Succeeded" and s["bestTrial"] == 1, s  # depth 4 beats depth 1
    assert len(out.raw) <= 4096
    mv = s["modelVersion"]
    manifest = _read(s["manifestUri"])
    assert manifest["modelVersion"] == mv
    for name, entry in manifest["files"].items():
        assert sha256_hex(Path(entry["uri"].removeprefix("file://")).read_bytes()) == entry["sha256"], name
    assert mv["artifact"]["format"] == "skops" and mv["artifact"]["uri"].endswith("/model/model.skops")
    assert mv["artifact"]["onnx"]["parityVerified"] and mv["artifact"]["onnx"]["maxProbabilityError"] <= 1e-4
    assert mv["signature"]["output"] == {"type": "label", "classes": ["setosa", "versicolor", "virginica"],
                                         "name": "target"}
    assert [i["name"] for i in mv["signature"]["inputs"]][:2] == ["sepal_length_cm", "sepal_width_cm"]
    # The operator's part, then what the run did: enough to fit the model again (`kiln-train reproduce`).
    assert mv["lineage"] == {"pipeline": "p", "run": "r1", "image": "kiln-runtime:dev",
                             "datasetVersion": manifest["modelVersion"]["lineage"]["datasetVersion"],
                             "trial": 1, "estimator": "RandomForestClassifier", "seed": 7, "testFraction": 0.25,
                             "validationFraction": 0.2, "cvFolds": 0}
    assert s["trainedBy"] == manifest["trainedBy"] == {"step": "select", "pod": None}  # no Downward API here
    assert mv["params"]["max_depth"] == 4 and mv["framework"]["name"] == "scikit-learn"
    baseline = _read(mv["baselineUri"])
    assert list(baseline["columns"]) == [i["name"] for i in mv["signature"]["inputs"]]
    assert baseline["predictions"]["type"] == "category" and baseline["predictions"]["count"] == 38
    sig = _read(manifest["files"]["signature.json"]["uri"])
    assert sig["onnx"]["outputs"] == {"label": "label", "probabilities": "probabilities"}
    # Registered metrics are the winner's on the test split, which no trial saw; the trial's are on validation.
    X_fit, X_val, y_fit, y_val, X_test, y_test = _direct_validation("iris", 7, 0.25)
    direct = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=7).fit(X_fit, y_fit)
    assert mv["metrics"]["accuracy"] == m.accuracy_score(y_test, direct.predict(X_test)) == s["heldOut"]["accuracy"]
    trial_result = _read(f"file://{tmp_path}/run/trials/1/result.json")
    assert trial_result["metrics"]["accuracy"] == m.accuracy_score(y_val, direct.predict(X_val))
    assert s["selection"] == {"on": "validation", "rows": 23, **trial_result["metrics"]}
    assert s["measuredOn"] == {"datasetVersion": mv["lineage"]["datasetVersion"], "split": "test", "rows": 38,
                               "testFraction": 0.25, "seed": 7}
    assert not (tmp_path / "run/trials/1/model.skops").exists()  # trial models are not kept by default

    # The recorded parity holds when checked independently on the same held-out rows.
    metrics_doc = _read(manifest["files"]["metrics.json"]["uri"])
    assert (metrics_doc["selection"], metrics_doc["heldOut"], metrics_doc["measuredOn"]) == \
        (s["selection"], mv["metrics"], s["measuredOn"])
    assert metrics_doc["onnx"]["parity"] == manifest["onnx"]["parity"]
    assert metrics_doc["onnx"]["parity"]["rows"] == 38 and metrics_doc["onnx"]["parity"]["labelsMismatched"] == 0
    model = artifacts.loads(Path(mv["artifact"]["uri"].removeprefix("file://")).read_bytes(), "skops")
    session = ort.InferenceSession(Path(mv["artifact"]["onnx"]["uri"].removeprefix("file://")).read_bytes())
    _, X_test, _, _ = _direct_split("iris", 7, 0.25)
    feeds = {i["name"]: X_test[[i["column"]]].to_numpy(np.float32) for i in sig["onnx"]["inputs"]}
    labels, probabilities = session.run(["label", "probabilities"], feeds)
    assert labels.tolist() == model.predict(X_test).tolist()
    error = np.abs(probabilities - model.predict_proba(X_test)).max()
    assert error <= 1e-4 and error == pytest.approx(mv["artifact"]["onnx"]["maxProbabilityError"], abs=1e-9)


def test_a_failed_gate_writes_no_model_and_says_by_how_much(tmp_path, run_cli):
    cfg = _config(tmp_path, "wine", pipeline("DecisionTreeClassifier", {"max_depth": 1},
                                             gates={"metrics": [{"metric": "accuracy", "min": 0.99}],
                                                    "beatProductionBy": 0.05}),
                  production={"version": 2, "metrics": {"accuracy": 0.97}})
    assert run_cli("trial", cfg, index=0).code == 0
    out = run_cli("select", cfg)
    s = out.summary
    assert out.code == 0 and s["result"] == "GateFailed" and s["reason"] == "GateFailed"
    assert [g["gate"] for g in s["gates"]] == ["min", "beatProduction"]
    acc = s["metrics"]["accuracy"]
    assert f"accuracy {acc:.6g} is below the minimum 0.99 by {0.99 - acc:.6g}" in s["message"]
    assert "Production version 2" in s["message"]
    assert not (tmp_path / "run/model").exists()


def test_onnx_is_skipped_with_its_reason_when_parity_fails(tmp_path, run_cli):
    # HistGradientBoosting on diabetes' tiny-valued features: float32 thresholds flip some rows.
    cfg = _config(tmp_path, "diabetes", pipeline("HistGradientBoostingRegressor", {"max_iter": 30}))
    assert run_cli("trial", cfg, index=0).code == 0
    out = run_cli("select", cfg)
    assert out.code == 0 and out.summary["onnx"]["exported"] is False
    assert out.summary["onnx"]["reason"].startswith("parity check failed on the held-out split: predictions differ")
    assert "onnx" not in out.summary["modelVersion"]["artifact"]
    assert not (tmp_path / "run/model/model.onnx").exists() and (tmp_path / "run/model/manifest.json").exists()


def test_categories_and_missing_values_train_and_export(tmp_path, run_cli):
    frame, spec = dataset_frame("breast_cancer")
    frame["size"] = np.where(frame["mean_radius"] > 14, "large", "small").astype(object)
    frame.loc[frame.index[::9], "size"] = None
    frame.loc[frame.index[::4], "mean_texture"] = np.nan
    frame["smooth"] = np.where(frame["mean_smoothness"] > 0.1, "yes", "no")
    spec["schema"]["columns"] += [{"name": "size", "type": "category"}, {"name": "smooth", "type": "boolean"}]
    cfg = {"dataset": write_dataset(tmp_path, "breast_cancer", frame, spec), "output": f"file://{tmp_path}/run",
           "keepTrialModels": True,  # the selection step loads the stored trial model instead of refitting
           "pipeline": pipeline("GradientBoostingClassifier", {"n_estimators": 20}, metric="f1",
                                artifactFormat="joblib", allowUnsafeArtifacts=True)}
    assert run_cli("trial", cfg, index=0).code == 0
    trial_model = (tmp_path / "run/trials/0/model.joblib").read_bytes()
    out = run_cli("select", cfg)
    mv = out.summary["modelVersion"]
    assert out.code == 0 and mv["artifact"]["format"] == "joblib" and mv["artifact"]["allowUnsafe"] is True
    assert mv["artifact"]["sha256"] == sha256_hex(trial_model)  # the stored trial model, byte for byte
    assert mv["artifact"]["onnx"]["parityVerified"], out.summary
    sig = _read(mv["artifact"]["uri"].rsplit("/", 1)[0] + "/signature.json")
    assert {"name": "size", "type": "category"} in sig["inputs"]
    assert {"column": "size", "elemType": "string", "name": "size"} in sig["onnx"]["inputs"]
    assert mv["signature"]["output"]["classes"] == ["0", "1"]


def _failure(out, reason, code=10):
    assert out.code == code and out.summary["result"] == "Failed" and out.summary["reason"] == reason, out.summary
    assert "\n" not in out.summary["message"]
    return out.summary


def test_bad_inputs_fail_permanently_with_a_named_cause(tmp_path, run_cli):
    good = pipeline("RandomForestClassifier", {"n_estimators": 5})
    frame, spec = dataset_frame("iris")

    no_target = _config(tmp_path, "iris", good)
    no_target["dataset"] = write_dataset(tmp_path, "iris", frame.drop(columns="target"), spec)
    s = _failure(run_cli("trial", no_target, index=0), "ValidationFailed")
    assert s["failures"][0] == {"column": "target", "check": "target",
                                "message": s["message"].split(" (and")[0]} and "target column target is missing" in s["message"]

    bad = frame.astype({"petal_width_cm": object})
    bad.loc[7, "petal_width_cm"] = "n/a?"
    s = _failure(run_cli("validate-dataset", {"dataset": write_dataset(tmp_path, "iris", bad, spec),
                                              "output": f"file://{tmp_path}/p"}), "ValidationFailed")
    assert s["message"] == "column petal_width_cm: 1 value(s) are not numbers, first 'n/a?' at row 8"
    assert not (tmp_path / "p").exists()

    few = json.loads(json.dumps(spec))
    few["checks"]["minRows"] = 1000
    s = _failure(run_cli("trial", {**no_target, "dataset": write_dataset(tmp_path, "iris", frame, few)}, index=0),
                 "ValidationFailed")
    assert s["failures"] == [{"check": "minRows", "message": "the data has 150 row(s); at least 1000 required"}]

    s = _failure(run_cli("trial", _config(tmp_path, "iris", pipeline("RandomForestClassifier",
                                                                     {"n_estimators": -3})), index=0),
                 "InvalidParameter")
    assert "n_estimators" in s["message"] and "-3" in s["message"]
    err = _read(f"file://{tmp_path}/run/trials/0/error.json")
    assert err["reason"] == "InvalidParameter"
    s = _failure(run_cli("trial", _config(tmp_path, "iris", pipeline("SVC", {"gama": 1})), index=0),
                 "InvalidParameter")
    assert s["message"] == "SVC has no parameter 'gama' (did you mean gamma?)"
    s = _failure(run_cli("trial", _config(tmp_path, "iris", pipeline("LogisticRegression", {"penalty": "l1"},
                                                                     )), index=0), "InvalidParameter")
    assert "penalty" in s["message"]

    missing = _config(tmp_path, "iris", good)
    missing["dataset"]["source"]["uri"] = f"file://{tmp_path}/nowhere.csv"
    s = _failure(run_cli("trial", missing, index=0), "SourceNotFound")
    assert "nowhere.csv" in s["message"]

    s = _failure(run_cli("trial", _config(tmp_path, "iris", pipeline("XGBClassifier")), index=0), "InvalidSpec")
    assert "not on Kiln's allow-list" in s["message"]

    s = _failure(run_cli("select", _config(tmp_path, "iris", good, output=f"file://{tmp_path}/empty")),
                 "NoSuccessfulTrials")
    assert "trial 0: NoResult" in s["message"]


def test_empty_and_incomplete_datasets_name_the_problem(tmp_path, run_cli):
    good = pipeline("RandomForestClassifier", {"n_estimators": 5})
    frame, spec = dataset_frame("iris")
    header_only = _config(tmp_path, "iris", good)
    header_only["dataset"] = write_dataset(tmp_path, "iris", frame.iloc[:0], spec)
    s = _failure(run_cli("validate-dataset", header_only), "ValidationFailed")
    assert s["failures"] == [{"check": "minRows", "message": "the data has 0 row(s); at least 10 required"}]

    (tmp_path / "zero.csv").write_bytes(b"")
    zero = {**header_only, "dataset": {**header_only["dataset"], "source": {"uri": f"file://{tmp_path}/zero.csv"}}}
    s = _failure(run_cli("trial", zero, index=0), "InvalidData")
    assert s["message"] == f"file://{tmp_path}/zero.csv: the file is empty (0 bytes)" and s["trial"] == 0

    no_feature = _config(tmp_path, "iris", good)
    no_feature["dataset"] = write_dataset(tmp_path, "iris", frame.drop(columns="petal_width_cm"), spec)
    s = _failure(run_cli("trial", no_feature, index=0), "ValidationFailed")
    assert {"column": "petal_width_cm", "check": "present",
            "message": "column petal_width_cm is missing from the data"} in s["failures"]


def test_a_trainer_crash_reports_the_last_lines_of_the_error(tmp_path, run_cli):
    frame, spec = dataset_frame("iris")
    frame.loc[::2, "sepal_length_cm"] = 1e308  # finite, valid, and overflows the scaler's variance
    frame.loc[1::2, "sepal_length_cm"] = -1e308
    cfg = {"dataset": write_dataset(tmp_path, "iris", frame, spec), "output": f"file://{tmp_path}/run",
           "pipeline": pipeline("LogisticRegression")}
    s = _failure(run_cli("trial", cfg, index=0), "TrainerCrashed", code=12)
    assert s["message"].startswith("ValueError: Input X contains NaN")
    assert "_assert_all_finite" in s["traceback"] and "Input X contains NaN" in s["traceback"]
    assert not (tmp_path / "run/trials/0/result.json").exists()
    assert _read(f"file://{tmp_path}/run/trials/0/error.json")["reason"] == "TrainerCrashed"


def test_indexes_past_the_plan_are_skipped_and_a_missing_index_is_an_error(tmp_path, run_cli):
    cfg = _config(tmp_path, "iris", pipeline("DecisionTreeClassifier", space={"max_depth": [1, 2]}, trials=5))
    out = run_cli("trial", cfg, index=2)
    assert out.code == 0 and out.summary["result"] == "Skipped"
    s = _failure(run_cli("trial", cfg), "InvalidSpec")
    assert "JOB_COMPLETION_INDEX" in s["message"]
    s = _failure(run_cli("trial", cfg, "--index", "two"), "InvalidSpec")  # argparse would exit 2, silently
    assert s["message"] == "kiln-train trial: argument --index: invalid int value: 'two'"


def test_select_refuses_a_winner_whose_refit_does_not_reproduce_its_metrics(tmp_path, run_cli):
    cfg = _config(tmp_path, "wine", pipeline("ExtraTreesClassifier", {"n_estimators": 10}))
    assert run_cli("trial", cfg, index=0).code == 0
    result_path = tmp_path / "run/trials/0/result.json"
    result = json.loads(result_path.read_text())
    result["metrics"]["accuracy"] -= 0.01  # as if the trial had run on another library build
    result_path.write_text(json.dumps(result))
    s = _failure(run_cli("select", cfg), "NotReproducible")
    assert "winning trial 0 does not reproduce: accuracy" in s["message"]
    assert not (tmp_path / "run/model").exists()


def test_help_is_an_answer_and_an_unknown_command_a_bad_spec(capsys):
    from kiln_runtime.train import cli as train_cli

    assert train_cli.main(["--help"]) == 0
    assert "validate-dataset" in capsys.readouterr().out
    assert train_cli.main(["retrain-everything"]) == 10
