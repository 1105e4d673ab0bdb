"""Everything a trial and the selection step derive identically from the config and the data: the typed
table, features, labels, task, metric, the test split and the validation split. Both call this, so the
selection step re-scores the winner on exactly the rows its trial was scored on, and scores the test
rows, which no trial saw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import dataset, estimators, evaluate, snapshot, validate
from .errors import InvalidSpec, ValidationFailed
from .spec import Column, Config


@dataclass
class Prepared:
    version: str
    typed: pd.DataFrame
    features: tuple[Column, ...]
    target: Column
    task: str
    metric: str
    X: pd.DataFrame
    y: np.ndarray
    split: evaluate.Split  # train / test: the test rows judge the selected model only
    validation: evaluate.Split | None  # with cvFolds 0: the train part split again into fit / validation


def validated(cfg: Config, *, from_snapshot: bool = True) -> tuple[dataset.RawDataset, pd.DataFrame]:
    """The typed table: from the run's snapshot when it names one (and `from_snapshot`), else from the
    source, windowed."""
    if from_snapshot and cfg.dataset_snapshot is not None:
        raw = snapshot.load(cfg.dataset_snapshot, cfg.dataset_version)
    else:
        raw = dataset.load(cfg.dataset, cfg.dataset_version)
    typed, failures = validate.validate(raw.frame, cfg.dataset, raw.where)
    failures = (raw.failures + failures)[:validate.MAX_FAILURES]
    if failures:
        raise ValidationFailed(validate.summarize(failures),
                               details={"failures": [f.wire() for f in failures], "version": raw.version,
                                        "rows": len(raw.frame)})
    return raw, typed


def prepare(cfg: Config) -> Prepared:
    pipeline = cfg.pipeline
    kind = estimators.kind_of(pipeline.estimator)  # before reading data: a bad spec fails fast
    metric = pipeline.metric or evaluate.default_metric(kind.task)
    evaluate.check_metric(metric, kind.task)
    target = cfg.dataset.column(cfg.dataset.target)
    if target is None:
        raise InvalidSpec(f"dataset.target {cfg.dataset.target} is not a column of dataset.schema.columns")
    raw, typed = validated(cfg)
    features = cfg.dataset.features
    X = estimators.model_frame(typed, features)
    y = estimators.target_vector(typed, target, kind.task)
    if kind.task == "classification" and np.unique(y).size < 2:
        raise InvalidSpec(f"target {target.name} has a single class ({y[0]!r}): a classifier needs two or more")
    split = evaluate.split(X, y, kind.task, pipeline.test_fraction, pipeline.seed)
    inner = None
    if pipeline.cv_folds < 2:
        inner = evaluate.validation_split(split, kind.task, pipeline.validation_fraction, pipeline.seed)
    return Prepared(raw.version, typed, features, target, kind.task, metric, X, y, split, inner)
