"""TrainingPipeline: how a Dataset becomes ModelVersions, once or continuously."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import defaulted, DNS_LABEL, ApiModel, LocalObjectReference, PodSettings, Resources, StatusBase, cel, \
    validations

# The estimators Kiln trains: import paths are resolved by the runtime, never taken from the user.
CLASSIFIERS = (
    "LogisticRegression", "RandomForestClassifier", "ExtraTreesClassifier", "GradientBoostingClassifier",
    "HistGradientBoostingClassifier", "DecisionTreeClassifier", "KNeighborsClassifier", "SVC",
)
REGRESSORS = (
    "LinearRegression", "Ridge", "Lasso", "ElasticNet", "RandomForestRegressor", "ExtraTreesRegressor",
    "GradientBoostingRegressor", "HistGradientBoostingRegressor", "DecisionTreeRegressor",
    "KNeighborsRegressor", "SVR",
)
CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
# Metrics where smaller is better; the runtime and the gates agree on this list.
LOWER_IS_BETTER = ("log_loss", "rmse", "mae")

Metric = Literal["accuracy", "f1", "precision", "recall", "roc_auc", "log_loss", "rmse", "mae", "r2"]


def _in(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


class Estimator(ApiModel):
    """The scikit-learn estimator and its fixed parameters."""

    class_: Literal[CLASSIFIERS + REGRESSORS] = Field(alias="class")  # type: ignore[valid-type]
    """Estimator class, from Kiln's allow-list of scikit-learn classifiers and regressors."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Parameters passed to the estimator, e.g. `{max_depth: 8}`; the search space overrides them."""


class Halving(ApiModel):
    """Successive halving (strategy halving): every candidate trains on a small budget, the best go on
    with a larger one, round after round (scikit-learn's HalvingGridSearchCV)."""

    factor: int = Field(default=3, ge=2, le=10)
    """Each round keeps the best 1/factor of the candidates and multiplies their budget by factor."""
    resource: str = Field(default="samples", max_length=63, pattern=r"^[a-z_][a-z0-9_]*$")
    """What the budget counts: `samples` (training rows), or an integer estimator parameter such as
    `n_estimators`."""
    min_resources: int | None = Field(default=None, ge=1)
    """The first round's budget; unset: chosen so that the last round uses (nearly) the whole budget."""
    max_resources: int | None = Field(default=None, ge=1)
    """The last round's budget; required when `resource` is a parameter; unset for samples: every
    training row."""


class Search(ApiModel):
    """Hyper-parameter search: one trial per parameter combination."""

    strategy: Literal["grid", "random", "halving"] = "random"
    """grid tries every combination (up to `trials`); random samples `trials` combinations; halving
    evaluates `trials` candidates (the grid, or `trials` random draws of it when trials is smaller) on a
    small budget and keeps the best 1/factor each round (scikit-learn's successive halving, tuned by
    `halving`); it runs in one pod, `parallelism` being its worker processes."""
    space: dict[str, list[Any]] = Field(default_factory=dict)
    """Candidate values per estimator parameter, e.g. `{n_estimators: [50, 100], max_depth: [4, 8]}`."""
    trials: int = Field(default=1, ge=1, le=500)
    """How many trials (with halving: candidates) a run trains; never more than the space has
    combinations."""
    parallelism: int = Field(default=1, ge=1, le=64)
    """How many pods train at once: each trains every P-th trial in one process (the data read once), so
    P pods serve any number of trials. With halving: the worker processes of its one pod."""
    metric: Metric | None = None
    """Metric that picks the best trial; accuracy for classifiers and rmse for regressors when unset."""
    cv_folds: int = Field(default=0, ge=0, le=20)
    """Cross-validation folds inside the training split; 0 scores trials on a validation split of it.
    Either way the test split is never used to pick a trial: it scores the winner once."""
    halving: Halving | None = None
    """Successive halving's rounds, with strategy halving; unset: factor 3 on training rows."""


class Evaluation(ApiModel):
    """How models are scored."""

    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of rows held out for testing."""
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of the training split that scores trials when cvFolds is 0."""
    seed: int = Field(default=42, ge=0)
    """Random seed of the split and the search: same data, seed and params give the same metrics."""


class MetricGate(ApiModel):
    """A threshold a model's metric must meet."""

    model_config = {"json_schema_extra": validations(cel("has(self.min) || has(self.max)", "a gate needs min or max"))}

    metric: Metric
    """The metric the gate checks."""
    min: float | None = None
    """Smallest acceptable value."""
    max: float | None = None
    """Largest acceptable value."""


class Gates(ApiModel):
    """Quality gates: a run that fails one creates no ModelVersion."""

    metrics: list[MetricGate] = Field(default_factory=list, max_length=20)
    """Thresholds on metrics of the held-out test split."""
    beat_production_by: float | None = Field(default=None, ge=0)
    """Margin by which a new model must beat the model now serving (the Production version, else the
    version the model's InferenceServices serve), both scored on the same newest test split; unset: 0,
    the new model must be strictly better."""


class Triggers(ApiModel):
    """What starts a run besides `schedule`."""

    on_dataset_change: bool = False
    """Run when the referenced Dataset gets a new version."""
    on_drift: bool = True
    """Allow InferenceServices with `monitoring.drift.action: retrain` to request runs."""
    on_quality: bool = True
    """Allow InferenceServices whose live quality falls below `monitoring.quality` to request runs."""


class TrainingPipelineSpec(ApiModel):
    """Desired state of a TrainingPipeline."""

    model_config = {
        "json_schema_extra": validations(
            cel(f"!has(self.search.metric) || (self.estimator.class in {_in(CLASSIFIERS)} ? "
                f"self.search.metric in {_in(CLASSIFICATION_METRICS)} : "
                f"self.search.metric in {_in(REGRESSION_METRICS)})",
                "search.metric must suit the estimator: classification metrics for classifiers, "
                "rmse, mae or r2 for regressors", ".search.metric"),
            cel("self.artifactFormat != 'joblib' || self.allowUnsafeArtifacts",
                "artifactFormat joblib executes code on load: set allowUnsafeArtifacts to opt in",
                ".artifactFormat"),
            cel("self.search.parallelism <= self.search.trials",
                "search.parallelism must not exceed search.trials", ".search.parallelism"),
            cel("!has(self.search.halving) || self.search.strategy == 'halving'",
                "search.halving applies to search.strategy halving only", ".search.halving"),
            cel("!has(self.search.halving) || !has(self.search.halving.resource) || "
                "self.search.halving.resource == 'samples' || has(self.search.halving.maxResources)",
                "search.halving.maxResources is required when search.halving.resource is an estimator "
                "parameter", ".search.halving.maxResources"),
            cel("!has(self.search.halving) || !has(self.search.halving.minResources) || "
                "!has(self.search.halving.maxResources) || "
                "self.search.halving.minResources <= self.search.halving.maxResources",
                "search.halving.minResources must not exceed search.halving.maxResources",
                ".search.halving.minResources"),
            cel("!has(self.serviceAccountName) || !has(self.pod) || !has(self.pod.serviceAccountName) || "
                "self.pod.serviceAccountName == self.serviceAccountName",
                "serviceAccountName and pod.serviceAccountName differ: set pod.serviceAccountName only "
                "(serviceAccountName is its older spelling)", ".serviceAccountName"),
        )
    }

    dataset_ref: LocalObjectReference
    """The Dataset to train on."""
    dataset_version: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Pin runs to one kept version of the Dataset (status.versions); unset: the newest."""
    model_name: str = Field(pattern=DNS_LABEL, max_length=40)
    """Registry name of the model; ModelVersions are named `<modelName>-v<version>`."""
    estimator: Estimator
    """The scikit-learn estimator."""
    search: Search = defaulted(Search)
    """Hyper-parameter search."""
    evaluation: Evaluation = defaulted(Evaluation)
    """Held-out split and seed."""
    gates: Gates = defaulted(Gates)
    """Quality gates."""
    schedule: str | None = Field(default=None, pattern=r"^(@(hourly|daily|weekly|monthly|yearly)|(\S+\s+){4}\S+)$")
    """Cron schedule of runs, e.g. `0 3 * * *` (UTC)."""
    triggers: Triggers = defaulted(Triggers)
    """Runs on dataset change and on drift."""
    promote_to: Literal["Staging", "Production"] | None = None
    """Stage given to a new version that passes the gates."""
    concurrency_policy: Literal["Forbid", "Replace"] = "Forbid"
    """A run requested while one is active is skipped (Forbid) or replaces it (Replace)."""
    run_history_limit: int = Field(default=5, ge=1, le=100)
    """How many finished runs (and their Jobs) to keep."""
    artifact_format: Literal["skops", "joblib"] = "skops"
    """Format of the model file; skops loads without executing code."""
    allow_unsafe_artifacts: bool = False
    """Opt in to joblib artifacts, which execute code when loaded."""
    backoff_limit: int = Field(default=1, ge=0, le=10)
    """Retries of each trial pod (backoffLimitPerIndex; a retry skips the trials already done): one bad
    trial does not sink the run."""
    resources: Resources | None = None
    """Resources of each trial pod's container."""
    service_account_name: str | None = None
    """ServiceAccount of the training pods: the older spelling of `pod.serviceAccountName`, still honoured
    when that is unset."""
    pod: PodSettings | None = None
    """ServiceAccount, node selector, tolerations, labels and annotations of the trial and selection
    Jobs' pods."""


RunPhase = Literal["Pending", "Running", "Selecting", "Registering", "Succeeded", "Failed", "GateFailed",
                   "Cancelled"]


class Score(ApiModel):
    """A model's score in a comparison."""

    name: str | None = None
    """The ModelVersion, for the model already serving."""
    metric: str
    """The pipeline's selection metric."""
    value: float | None = None
    """Its value on the test split of the run's dataset version."""


class TrialFailure(ApiModel):
    """A trial that failed after its retries."""

    trial: int
    """The trial's index."""
    reason: str | None = None
    """Why, e.g. `InvalidParameter`."""
    message: str | None = None
    """What the trainer said."""


class HalvingRound(ApiModel):
    """One round of successive halving."""

    round: int
    """The round, from 0."""
    resources: int
    """Each candidate's budget in this round (rows, or the resource parameter's value)."""
    candidates: int
    """Candidates trained in this round."""
    kept: int
    """Candidates that went on to the next round; after the last, the finalists, each then trained as a
    trial on the whole budget."""


class Run(ApiModel):
    """One run of a pipeline."""

    id: str
    """Run id, e.g. `r3`."""
    phase: RunPhase
    """Where the run is."""
    trigger: str | None = None
    """What started it: create, specChange, schedule, datasetChange, drift, quality, requested."""
    job: str | None = None
    """The trials' Job."""
    dataset_version: str | None = None
    """The dataset version trained on."""
    trials_planned: int | None = None
    """Trials (with halving: candidates) the run trains: `search.trials`, at most the space's combinations."""
    trials_succeeded: int = 0
    """Trials that finished."""
    trials_failed: int = 0
    """Trials that failed after their retries."""
    trials_stopped: int = 0
    """Candidates successive halving stopped early (neither succeeded nor failed)."""
    failed_trials: list[TrialFailure] = Field(default_factory=list, max_length=10)
    """Failed trials and why (the first 10 seen); each new one also raises a `TrialFailed` Event."""
    rounds: list[HalvingRound] = Field(default_factory=list, max_length=20)
    """Successive halving's rounds: budget, candidates and how many went on."""
    search_record: str | None = None
    """Store URI of the halving record: every candidate's score in every round and the round it stopped in."""
    best_metrics: dict[str, float] | None = None
    """Metrics of the best trial on the held-out test split of `datasetVersion`."""
    challenger: Score | None = None
    """The run's model, scored on the test split of `datasetVersion`."""
    champion: Score | None = None
    """The model serving when the run started, scored on the same rows."""
    model_version: str | None = None
    """The ModelVersion the run produced."""
    message: str | None = None
    """Why the run failed or which gate stopped it, with the numbers."""
    started_at: str | None = None
    """When the run started (RFC 3339)."""
    finished_at: str | None = None
    """When the run finished (RFC 3339)."""


class TrainingPipelineStatus(StatusBase):
    """Observed state of a TrainingPipeline."""

    runs: list[Run] = Field(default_factory=list)
    """Recent runs, newest last."""
    last_run: str | None = None
    """Id of the latest run."""
    next_run: str | None = None
    """When the schedule starts the next run (RFC 3339)."""
    last_dataset_version: str | None = None
    """The dataset version the latest run trained on."""
    last_run_generation: int | None = None
    """The metadata.generation the latest run was started for: a spec change starts a new run."""
    last_run_request: str | None = None
    """The last value of the `kiln.dev/run-requested` annotation that was acted on."""
