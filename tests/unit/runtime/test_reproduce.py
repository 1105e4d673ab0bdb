"""`kiln-train reproduce`: a ModelVersion's lineage, params and signature are enough to fit it again
(file:// storage; tests/e2e/test_reproduce.py does the same through S3 with the operator's Jobs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kiln_runtime.train import cli

from .conftest import Outcome, pipeline, write_dataset


def _registered(tmp_path, run_cli, name: str, pipe: dict) -> dict:
    """Validates `name`, runs every trial and the selection on its snapshot; the ModelVersion spec fragment."""
    dataset = write_dataset(tmp_path, name)
    v = run_cli("validate-dataset", {"dataset": dataset, "output": f"file://{tmp_path}/ds"}).summary
    run = {"dataset": dataset, "pipeline": pipe, "output": f"file://{tmp_path}/run", "datasetVersion": v["version"],
           "datasetSnapshot": {"uri": v["snapshotUri"], "sha256": v["snapshotSha256"]}}
    for i in range(pipe["search"]["trials"]):
        assert run_cli("trial", run, index=i).code == 0
    sel = run_cli("select", run)
    assert sel.code == 0, sel.summary
    return sel.summary["modelVersion"]


def _reproduce(tmp_path, run_cli, spec: dict | None = None) -> Outcome:
    """`kiln-train reproduce` on the ModelVersion whose spec is `spec` (None: mv.json as it is); run_cli's
    termination log."""
    path = tmp_path / "mv.json"
    if spec is not None:
        path.write_text(json.dumps({"kind": "ModelVersion", "metadata": {"name": "m-v4"}, "spec": spec}))
    code = cli.main(["reproduce", "--model-version", str(path)])
    raw = Path(os.environ["KILN_TERMINATION_LOG"]).read_bytes()
    return Outcome(code, json.loads(raw), raw)


def test_a_cross_validated_model_on_integer_labels_is_fitted_again_to_the_same_metrics(tmp_path, run_cli):
    spec = _registered(tmp_path, run_cli, "breast_cancer",
                       pipeline("DecisionTreeClassifier", space={"max_depth": [2, 3]}, trials=2, strategy="grid", cv=3))
    assert spec["lineage"]["cvFolds"] == 3 and "validationFraction" not in spec["lineage"]
    out = _reproduce(tmp_path, run_cli, spec)
    assert out.code == 0 and out.summary["exact"] and out.summary["metrics"] == spec["metrics"], out.summary
    assert out.summary["message"].startswith("m-v4 reproduced exactly")


def test_what_is_missing_or_wrong_is_named(tmp_path, run_cli):
    spec = _registered(tmp_path, run_cli, "diabetes", pipeline("Ridge", {"alpha": 0.5}, metric="rmse"))
    lineage = {k: v for k, v in spec["lineage"].items() if k not in ("seed", "datasetSnapshotUri")}
    out = _reproduce(tmp_path, run_cli, {**spec, "lineage": lineage})
    assert out.code == 10 and out.summary["reason"] == "InvalidSpec"
    assert "datasetSnapshotUri, seed" in out.summary["message"]
    out = _reproduce(tmp_path, run_cli, {**spec, "lineage": {**spec["lineage"], "estimator": "LogisticRegression"}})
    assert out.code == 10 and out.summary["reason"] == "InvalidSpec" and "a classification estimator" in out.summary["message"]
    out = _reproduce(tmp_path, run_cli, {**spec, "metrics": {**spec["metrics"], "rmse": spec["metrics"]["rmse"] + 1e-6}})
    assert out.code == 10 and out.summary["reason"] == "NotReproducible"
    assert [d["metric"] for d in out.summary["differences"]] == ["rmse"]
    (tmp_path / "mv.json").write_text("kind: ModelVersion\n")
    out = _reproduce(tmp_path, run_cli)
    assert out.code == 10 and "not JSON" in out.summary["message"]
