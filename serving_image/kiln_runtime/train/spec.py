"""The job configuration kiln-train receives: plain JSON, the Dataset and TrainingPipeline specs as the
apiserver stores them (camelCase), plus what the operator decided for this run.

The runtime never imports the operator's models (DESIGN.md §3): this module reads the few fields it
needs, applies the same defaults as the CRD schema (an operator that passes a spec the apiserver
defaulted and one that passes a sparse spec get the same behaviour) and rejects what it cannot use with
a message naming the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidSpec

COLUMN_TYPES = ("number", "integer", "category", "boolean")
STRATEGIES = ("grid", "random", "halving")
CONFIG_ENV = "KILN_TRAIN_CONFIG"
CONFIG_FILE_ENV = "KILN_TRAIN_CONFIG_FILE"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    nullable: bool = True


@dataclass(frozen=True)
class Window:
    """Which rows of a growing source a version keeps: the newest `rows`, or those within `days` of the
    newest value of `timestamp_column`."""

    rows: int | None = None
    days: float | None = None
    timestamp_column: str | None = None

    def wire(self) -> dict[str, Any]:
        """The canonical form: part of a windowed version's identity and of the snapshot manifest."""
        if self.rows is not None:
            return {"rows": self.rows}
        return {"days": self.days, "timestampColumn": self.timestamp_column}


@dataclass(frozen=True)
class DatasetSpec:
    uri: str
    format: str
    target: str | None
    columns: tuple[Column, ...]
    min_rows: int = 1
    max_null_fraction: float = 1.0
    window: Window | None = None

    @property
    def is_prefix(self) -> bool:
        """A URI ending in "/" names every csv and parquet file below it, not one object."""
        return self.uri.endswith("/")

    @property
    def features(self) -> tuple[Column, ...]:
        """Every schema column but the target, in schema order: the model's input signature."""
        return tuple(c for c in self.columns if c.name != self.target)

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class Gate:
    metric: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Halving:
    """Successive halving: every candidate on a small budget, the best 1/factor go on with factor times
    more, until the budget is spent. `resource` is "samples" (training rows) or an integer estimator
    parameter such as n_estimators; None budgets are left to scikit-learn ("exhaust": the last round
    uses nearly the whole budget)."""

    factor: int = 3
    resource: str = "samples"
    min_resources: int | None = None
    max_resources: int | None = None


@dataclass(frozen=True)
class PipelineSpec:
    estimator: str
    params: dict[str, Any]
    strategy: str = "random"
    space: dict[str, list[Any]] = field(default_factory=dict)
    trials: int = 1
    metric: str | None = None
    cv_folds: int = 0
    test_fraction: float = 0.2
    validation_fraction: float = 0.2
    seed: int = 42
    gates: tuple[Gate, ...] = ()
    beat_production_by: float | None = None
    artifact_format: str = "skops"
    allow_unsafe_artifacts: bool = False
    model_name: str | None = None
    parallelism: int = 1
    halving: Halving | None = None


@dataclass(frozen=True)
class Snapshot:
    """The validated, windowed table of one dataset version, as validate-dataset stored it."""

    uri: str
    sha256: str


@dataclass(frozen=True)
class Champion:
    """The model now serving, which a new model must beat on the same test rows."""

    name: str
    uri: str
    sha256: str
    format: str
    allow_unsafe: bool
    inputs: tuple[Column, ...]
    margin: float | None  # None: the pipeline's gates.beatProductionBy, else 0 (strictly better)


@dataclass(frozen=True)
class Config:
    dataset: DatasetSpec
    output: str
    pipeline: PipelineSpec | None = None
    dataset_version: str | None = None
    production: dict[str, Any] | None = None
    dataset_snapshot: Snapshot | None = None
    keep_versions: tuple[str, ...] | None = None
    champion: Champion | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    keep_trial_models: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(f"{where} must be an object, got {type(value).__name__}")
    return value


def _num(value: Any, where: str, *, integer: bool = False) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpec(f"{where} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise InvalidSpec(f"{where} must be an integer, got {value!r}")
    return int(value) if integer else float(value)


def parse_dataset(raw: dict[str, Any]) -> DatasetSpec:
    source = _obj(raw.get("source"), "dataset.source")
    uri = source.get("uri")
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidSpec(f"dataset.source.uri must be a URI (s3://, file://, https://), got {uri!r}")
    fmt = source.get("format", "csv")
    if fmt not in ("csv", "parquet"):
        raise InvalidSpec(f"dataset.source.format must be csv or parquet, got {fmt!r}")
    if uri.endswith("/") and not uri.startswith(("s3://", "file://")):
        raise InvalidSpec(f"dataset.source.uri {uri}: a prefix (a URI ending in /) must be s3:// or file://; "
                          "https:// has no listing")
    columns = []
    raw_columns = _obj(raw.get("schema"), "dataset.schema").get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise InvalidSpec("dataset.schema.columns must list at least one column")
    seen = set()
    for i, col in enumerate(raw_columns):
        col = _obj(col, f"dataset.schema.columns[{i}]")
        name, kind = col.get("name"), col.get("type")
        if not isinstance(name, str) or not name:
            raise InvalidSpec(f"dataset.schema.columns[{i}].name must be a non-empty string")
        if name in seen:
            raise InvalidSpec(f"dataset.schema.columns: column {name!r} appears twice")
        seen.add(name)
        if kind not in COLUMN_TYPES:
            raise InvalidSpec(f"dataset.schema.columns[{i}] ({name}): type must be one of "
                              f"{', '.join(COLUMN_TYPES)}, got {kind!r}")
        allowed = col.get("allowed")
        if allowed is not None:
            if not isinstance(allowed, list):
                raise InvalidSpec(f"dataset.schema.columns[{i}] ({name}): allowed must be a list")
            allowed = tuple(str(v) for v in allowed)
        columns.append(Column(
            name=name, type=kind,
            min=_num(col.get("min"), f"column {name}: min"), max=_num(col.get("max"), f"column {name}: max"),
            allowed=allowed, nullable=bool(col.get("nullable", True)),
        ))
    target = raw.get("target")
    if target is not None and (not isinstance(target, str) or not target):
        raise InvalidSpec(f"dataset.target must be a column name, got {target!r}")
    checks = _obj(raw.get("checks"), "dataset.checks")
    min_rows = _num(checks.get("minRows", 1), "dataset.checks.minRows", integer=True)
    max_null = _num(checks.get("maxNullFraction", 1.0), "dataset.checks.maxNullFraction")
    if not 0 <= max_null <= 1:
        raise InvalidSpec(f"dataset.checks.maxNullFraction must be within [0, 1], got {max_null}")
    return DatasetSpec(uri=uri, format=fmt, target=target, columns=tuple(columns),
                       min_rows=max(1, min_rows), max_null_fraction=max_null,
                       window=parse_window(raw.get("window")))


def parse_window(raw: Any) -> Window | None:
    if raw is None:
        return None
    raw = _obj(raw, "dataset.window")
    if "rows" in raw and "days" in raw:
        raise InvalidSpec("dataset.window takes rows or days, not both")
    if "rows" in raw:
        rows = _num(raw["rows"], "dataset.window.rows", integer=True)
        if rows is None or rows < 1:
            raise InvalidSpec(f"dataset.window.rows must be at least 1, got {raw['rows']!r}")
        return Window(rows=rows)
    if "days" in raw:
        days = _num(raw["days"], "dataset.window.days")
        if days is None or days <= 0:
            raise InvalidSpec(f"dataset.window.days must be positive, got {raw['days']!r}")
        column = raw.get("timestampColumn")
        if not isinstance(column, str) or not column:
            raise InvalidSpec("dataset.window.timestampColumn must name the column the days are counted on")
        # An integral day count is kept as an int so {"days": 30} and {"days": 30.0} are one version.
        return Window(days=int(days) if float(days).is_integer() else days, timestamp_column=column)
    raise InvalidSpec("dataset.window must set rows (the newest N rows) or days with timestampColumn")


def parse_pipeline(raw: dict[str, Any]) -> PipelineSpec:
    est = _obj(raw.get("estimator"), "pipeline.estimator")
    name = est.get("class")
    if not isinstance(name, str) or not name:
        raise InvalidSpec("pipeline.estimator.class must name an estimator")
    params = _obj(est.get("params"), "pipeline.estimator.params")
    search = _obj(raw.get("search"), "pipeline.search")
    strategy = search.get("strategy", "random")
    if strategy not in STRATEGIES:
        raise InvalidSpec(f"pipeline.search.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    space = _obj(search.get("space"), "pipeline.search.space")
    for key, values in space.items():
        if not isinstance(values, list) or not values:
            raise InvalidSpec(f"pipeline.search.space.{key} must be a non-empty list of candidate values")
    trials = _num(search.get("trials", 1), "pipeline.search.trials", integer=True)
    cv = _num(search.get("cvFolds", 0), "pipeline.search.cvFolds", integer=True)
    if trials < 1:
        raise InvalidSpec(f"pipeline.search.trials must be at least 1, got {trials}")
    parallelism = _num(search.get("parallelism", 1), "pipeline.search.parallelism", integer=True)
    if parallelism < 1:
        raise InvalidSpec(f"pipeline.search.parallelism must be at least 1, got {parallelism}")
    if cv == 1 or cv < 0:
        raise InvalidSpec(f"pipeline.search.cvFolds must be 0 (no cross-validation) or at least 2, got {cv}")
    evaluation = _obj(raw.get("evaluation"), "pipeline.evaluation")
    test_fraction = _num(evaluation.get("testFraction", 0.2), "pipeline.evaluation.testFraction")
    if not 0 < test_fraction < 1:
        raise InvalidSpec(f"pipeline.evaluation.testFraction must be within (0, 1), got {test_fraction}")
    validation_fraction = _num(evaluation.get("validationFraction", 0.2), "pipeline.evaluation.validationFraction")
    if not 0 < validation_fraction < 1:
        raise InvalidSpec("pipeline.evaluation.validationFraction must be within (0, 1), got "
                          f"{validation_fraction}")
    seed = _num(evaluation.get("seed", 42), "pipeline.evaluation.seed", integer=True)
    gates_raw = _obj(raw.get("gates"), "pipeline.gates")
    gates = []
    for i, g in enumerate(gates_raw.get("metrics") or []):
        g = _obj(g, f"pipeline.gates.metrics[{i}]")
        if not isinstance(g.get("metric"), str):
            raise InvalidSpec(f"pipeline.gates.metrics[{i}].metric must name a metric")
        gate = Gate(g["metric"], _num(g.get("min"), f"gates.metrics[{i}].min"),
                    _num(g.get("max"), f"gates.metrics[{i}].max"))
        if gate.min is None and gate.max is None:
            raise InvalidSpec(f"pipeline.gates.metrics[{i}] ({gate.metric}) needs min or max")
        gates.append(gate)
    fmt = raw.get("artifactFormat", "skops")
    unsafe = bool(raw.get("allowUnsafeArtifacts", False))
    if fmt not in ("skops", "joblib"):
        raise InvalidSpec(f"pipeline.artifactFormat must be skops or joblib, got {fmt!r}")
    if fmt == "joblib" and not unsafe:
        raise InvalidSpec("pipeline.artifactFormat joblib executes code on load: set allowUnsafeArtifacts "
                          "to opt in")
    metric = search.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise InvalidSpec(f"pipeline.search.metric must be a metric name, got {metric!r}")
    return PipelineSpec(
        estimator=name, params=dict(params), strategy=strategy, space=dict(space), trials=trials,
        metric=metric, cv_folds=cv, test_fraction=test_fraction,
        validation_fraction=validation_fraction, seed=seed, gates=tuple(gates),
        beat_production_by=_num(gates_raw.get("beatProductionBy"), "pipeline.gates.beatProductionBy"),
        artifact_format=fmt, allow_unsafe_artifacts=unsafe,
        model_name=raw.get("modelName") if isinstance(raw.get("modelName"), str) else None,
        parallelism=parallelism, halving=parse_halving(search, space) if strategy == "halving" else None,
    )


def parse_halving(search: dict[str, Any], space: dict[str, Any]) -> Halving:
    raw = _obj(search.get("halving"), "pipeline.search.halving")
    factor = _num(raw.get("factor", 3), "pipeline.search.halving.factor", integer=True)
    if factor < 2:
        raise InvalidSpec(f"pipeline.search.halving.factor must be at least 2, got {factor}")
    resource = raw.get("resource", "samples")
    if not isinstance(resource, str) or not resource:
        raise InvalidSpec(f"pipeline.search.halving.resource must be samples or an estimator parameter, got {resource!r}")
    if resource in space:
        raise InvalidSpec(f"pipeline.search.halving.resource {resource} is also in search.space: halving sets it")
    low = _num(raw.get("minResources"), "pipeline.search.halving.minResources", integer=True)
    high = _num(raw.get("maxResources"), "pipeline.search.halving.maxResources", integer=True)
    if resource != "samples" and high is None:
        raise InvalidSpec(f"pipeline.search.halving.maxResources must be set: it is the largest {resource} "
                          "the last round trains with")
    for name, value in (("minResources", low), ("maxResources", high)):
        if value is not None and value < 1:
            raise InvalidSpec(f"pipeline.search.halving.{name} must be at least 1, got {value}")
    if low is not None and high is not None and low > high:
        raise InvalidSpec(f"pipeline.search.halving.minResources {low} exceeds maxResources {high}")
    return Halving(factor=factor, resource=resource, min_resources=low, max_resources=high)


def parse(raw: Any, *, needs_pipeline: bool) -> Config:
    raw = _obj(raw, "the configuration")
    output = raw.get("output")
    if not isinstance(output, str) or "://" not in output:
        raise InvalidSpec(f"output must be a store prefix (s3://bucket/prefix or file:///path), got {output!r}")
    if "dataset" not in raw:
        raise InvalidSpec("the configuration has no 'dataset' (the Dataset's spec)")
    dataset = parse_dataset(_obj(raw["dataset"], "dataset"))
    pipeline = None
    if needs_pipeline:
        if "pipeline" not in raw:
            raise InvalidSpec("the configuration has no 'pipeline' (the TrainingPipeline's spec)")
        pipeline = parse_pipeline(_obj(raw["pipeline"], "pipeline"))
        if dataset.target is None:
            raise InvalidSpec("dataset.target is not set: training needs a label column")
    version = raw.get("datasetVersion")
    if version is not None and not isinstance(version, str):
        raise InvalidSpec(f"datasetVersion must be a sha256 string, got {version!r}")
    production = raw.get("production")
    if production is not None:
        production = _obj(production, "production")
        if not isinstance(production.get("metrics", {}), dict):
            raise InvalidSpec("production.metrics must be an object of metric name to value")
    version = _digest(version) if version else None
    snapshot = _snapshot(raw.get("datasetSnapshot"))
    if snapshot is not None and version is None:
        raise InvalidSpec("datasetSnapshot needs datasetVersion: the version the snapshot holds")
    return Config(dataset=dataset, output=output.rstrip("/"), pipeline=pipeline, dataset_version=version,
                  production=production, dataset_snapshot=snapshot, keep_versions=_keep(raw.get("keepVersions")),
                  champion=_champion(raw.get("champion")), lineage=_obj(raw.get("lineage"), "lineage"),
                  keep_trial_models=bool(raw.get("keepTrialModels", False)), raw=raw)


def _digest(value: str) -> str:
    return value.strip().lower().removeprefix("sha256:")


def _snapshot(raw: Any) -> Snapshot | None:
    if raw is None:
        return None
    raw = _obj(raw, "datasetSnapshot")
    uri, digest = raw.get("uri"), raw.get("sha256")
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidSpec(f"datasetSnapshot.uri must be a store URI, got {uri!r}")
    if not isinstance(digest, str) or len(_digest(digest)) != 64:
        raise InvalidSpec(f"datasetSnapshot.sha256 must be a sha256 digest, got {digest!r}")
    return Snapshot(uri=uri, sha256=_digest(digest))


def _keep(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise InvalidSpec("keepVersions must be a list of dataset versions (sha256 strings)")
    return tuple(_digest(v) for v in raw)


def _champion(raw: Any) -> Champion | None:
    if raw is None:
        return None
    raw = _obj(raw, "champion")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidSpec("champion.name must name the ModelVersion now serving")
    artifact = _obj(raw.get("artifact"), "champion.artifact")
    uri, digest, fmt = artifact.get("uri"), artifact.get("sha256"), artifact.get("format", "skops")
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidSpec(f"champion.artifact.uri must be a store URI, got {uri!r}")
    if not isinstance(digest, str) or not digest:
        raise InvalidSpec("champion.artifact.sha256 must be the artifact's digest")
    if not isinstance(fmt, str):
        raise InvalidSpec(f"champion.artifact.format must be skops or joblib, got {fmt!r}")
    inputs = []
    raw_inputs = _obj(raw.get("signature"), "champion.signature").get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidSpec("champion.signature.inputs must list the champion's input columns")
    for i, col in enumerate(raw_inputs):
        col = _obj(col, f"champion.signature.inputs[{i}]")
        if not isinstance(col.get("name"), str) or col.get("type") not in COLUMN_TYPES:
            raise InvalidSpec(f"champion.signature.inputs[{i}] needs a name and a type "
                              f"({', '.join(COLUMN_TYPES)})")
        inputs.append(Column(name=col["name"], type=col["type"]))
    margin = _num(raw.get("margin"), "champion.margin")
    if margin is not None and margin < 0:
        raise InvalidSpec(f"champion.margin must be zero or positive, got {raw.get('margin')!r}")
    return Champion(name=name, uri=uri, sha256=_digest(digest), format=fmt,
                    allow_unsafe=bool(artifact.get("allowUnsafe", False)), inputs=tuple(inputs), margin=margin)


def load_raw(path: str | None, env: dict[str, str] | None = None) -> Any:
    """The configuration JSON from `--config PATH`, `$KILN_TRAIN_CONFIG_FILE` or `$KILN_TRAIN_CONFIG`."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidSpec(f"cannot read the configuration file {path}: {exc.strerror or exc}") from exc
        where = path
    elif env.get(CONFIG_ENV):
        text, where = env[CONFIG_ENV], f"${CONFIG_ENV}"
    else:
        raise InvalidSpec(f"no configuration: pass --config PATH, or set {CONFIG_FILE_ENV} or {CONFIG_ENV}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidSpec(f"the configuration in {where} is not JSON: {exc}") from exc
