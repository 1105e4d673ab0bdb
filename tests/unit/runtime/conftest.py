"""Fixtures for kiln-train: scikit-learn's shipped datasets as csv files, configs, and a runner that
calls the real entry point in-process with its termination message redirected to a temp file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets

from kiln_runtime.train import cli

LOADERS = {"iris": datasets.load_iris, "wine": datasets.load_wine,
           "breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}


def _clean(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def dataset_frame(name: str) -> tuple[pd.DataFrame, dict]:
    """The dataset as a DataFrame with a `target` column, and its Dataset spec (minus the source)."""
    bunch = LOADERS[name](as_frame=True)
    frame = bunch.data.copy()
    frame.columns = [_clean(c) for c in frame.columns]
    columns = [{"name": c, "type": "number"} for c in frame.columns]
    if name == "iris":
        frame["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
        columns.append({"name": "target", "type": "category", "allowed": list(bunch.target_names)})
    elif name == "diabetes":
        frame["target"] = bunch.target.to_numpy()
        columns.append({"name": "target", "type": "number"})
    else:
        frame["target"] = bunch.target.to_numpy()
        columns.append({"name": "target", "type": "integer"})
    return frame, {"target": "target", "schema": {"columns": columns}, "checks": {"minRows": 10}}


def write_dataset(tmp: Path, name: str, frame: pd.DataFrame | None = None, spec: dict | None = None) -> dict:
    base_frame, base_spec = dataset_frame(name)
    frame = base_frame if frame is None else frame
    spec = json.loads(json.dumps(base_spec if spec is None else spec))
    path = tmp / f"{name}.csv"
    frame.to_csv(path, index=False)
    spec["source"] = {"uri": f"file://{path}", "format": "csv"}
    return spec


@dataclass
class Outcome:
    code: int
    summary: dict
    raw: bytes


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    """Runs `kiln-train <command>` in-process with a config file; returns exit code and summary."""
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KILN_TERMINATION_LOG", str(log))
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)

    def run(command: str, config: dict, *extra: str, index: int | None = None) -> Outcome:
        cfg_path = tmp_path / f"config-{command}.json"
        cfg_path.write_text(json.dumps(config))
        if index is None:
            monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
        else:
            monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        code = cli.main([command, "--config", str(cfg_path), *extra])
        raw = log.read_bytes()
        return Outcome(code, json.loads(raw), raw)

    return run


def pipeline(estimator: str, params: dict | None = None, *, space: dict | None = None, trials: int = 1,
             strategy: str = "random", metric: str | None = None, seed: int = 7, test_fraction: float = 0.25,
             cv: int = 0, gates: dict | None = None, **extra) -> dict:
    spec = {"modelName": "m", "estimator": {"class": estimator, "params": params or {}},
            "search": {"strategy": strategy, "trials": trials, "space": space or {}, "cvFolds": cv},
            "evaluation": {"testFraction": test_fraction, "seed": seed}, "gates": gates or {}}
    if metric:
        spec["search"]["metric"] = metric
    spec.update(extra)
    return spec
