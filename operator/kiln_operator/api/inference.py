"""InferenceService: serving a model, with autoscaling, canary, rollback and drift monitoring."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import defaulted, DNS_LABEL, ApiModel, LabelValue, LocalObjectReference, PodSettings, Resources, StatusBase, cel, \
    validations

ServedStage = Literal["Staging", "Production"]
# DNS-1123 subdomain: a listener's sectionName; a hostname may also start with one `*.` wildcard label.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"^{_LABEL}(\.{_LABEL})*$"
Hostname = Annotated[str, Field(pattern=rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$", min_length=1, max_length=253)]

_ONE_SOURCE = cel("has(self.versionRef) != has(self.stage)",
                  "set exactly one of versionRef and stage", ".versionRef")


class ModelSelector(ApiModel):
    """Which ModelVersion to serve: a fixed one, or whichever holds a stage."""

    model_config = {"json_schema_extra": validations(
        _ONE_SOURCE,
        cel("!has(self.stage) || has(self.modelName)", "stage needs modelName", ".modelName"),
    )}

    version_ref: LocalObjectReference | None = None
    """A fixed ModelVersion."""
    model_name: str | None = Field(default=None, pattern=DNS_LABEL)
    """Model whose version in `stage` is served; promotions roll out with no change here."""
    stage: ServedStage | None = None
    """Stage to follow: Staging or Production."""


# A memory size as Kubernetes writes one: bytes, or a binary (Ki, Mi, Gi) or decimal (k, M, G) suffix.
MEMORY = r"^[0-9]+(Ki|Mi|Gi|k|M|G)?$"


class ModelSet(ApiModel):
    """Many models served by one Deployment, each under its own route, loaded on first request and
    evicted least-recently-used under a memory budget (docs/multi-model.md)."""

    model_config = {"json_schema_extra": validations(
        cel("has(self.stage) != has(self.versionRefs)", "set exactly one of stage and versionRefs", ".stage"),
        cel("has(self.stage) || (!has(self.modelNames) && !has(self.matchLabels))",
            "modelNames and matchLabels select by stage: they need stage", ".modelNames"),
    )}

    stage: ServedStage | None = None
    """Serve each selected model's version in this stage; a promotion changes only that model."""
    model_names: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] | None = Field(
        default=None, min_length=1, max_length=1000)
    """The models to serve (with `stage`); every model with a version in the stage when unset."""
    match_labels: dict[str, LabelValue] | None = Field(default=None, max_length=16)
    """Only ModelVersions carrying all of these labels (with `stage`)."""
    version_refs: list[LocalObjectReference] | None = Field(default=None, min_length=1, max_length=1000)
    """Or a fixed list of ModelVersions, at most one per model."""
    memory_budget: str = Field(default="512Mi", pattern=MEMORY)
    """Most memory the loaded models and the server may hold (its resident set); least-recently-used
    models are unloaded to stay under it. Keep it below the container's memory limit."""


class Canary(ApiModel):
    """A second version receiving a share of the traffic."""

    model_config = {"json_schema_extra": validations(_ONE_SOURCE)}

    version_ref: LocalObjectReference | None = None
    """The canary ModelVersion."""
    stage: ServedStage | None = None
    """Or the version holding this stage of the same model."""
    traffic_percent: int = Field(default=10, ge=0, le=100)
    """Share of requests the canary receives, 0 to 100."""


class ParentRef(ApiModel):
    """A Gateway (or a listener of one) the HTTPRoute attaches to."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the Gateway."""
    namespace: str | None = Field(default=None, pattern=DNS_LABEL, max_length=63)
    """Namespace of the Gateway; the InferenceService's own when unset."""
    section_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Name of one listener of the Gateway; all of its listeners when unset."""


class Gateway(ApiModel):
    """Traffic through a Gateway API HTTPRoute: the canary's share is set by backend weights."""

    parent_refs: list[ParentRef] = Field(min_length=1, max_length=32)
    """Gateways the route attaches to."""
    hostnames: list[Hostname] | None = Field(default=None, max_length=16)
    """Host names the route answers for; every host the Gateway accepts when unset."""


class Autoscaling(ApiModel):
    """Replica bounds and targets of the HorizontalPodAutoscaler."""

    model_config = {"json_schema_extra": validations(
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas", ".minReplicas"))}

    min_replicas: int = Field(default=1, ge=1, le=100)
    """Fewest replicas."""
    max_replicas: int = Field(default=3, ge=1, le=100)
    """Most replicas."""
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)
    """Average CPU utilisation (percent of requests) the autoscaler aims at."""
    target_requests_per_second: int | None = Field(default=None, ge=1)
    """Requests per second per replica (needs a custom metrics adapter)."""


class Batching(ApiModel):
    """Adaptive micro-batching in the model server."""

    max_batch_size: int = Field(default=32, ge=1, le=1024)
    """Most rows merged into one model call."""
    max_latency_ms: int = Field(default=2, ge=0, le=1000)
    """Longest a request waits for others to join its batch; a lone request never waits."""


class Drift(ApiModel):
    """Drift detection on the served inputs and predictions."""

    model_config = {"json_schema_extra": validations(
        cel("self.action != 'retrain' || has(self.pipelineRef)", "action retrain needs pipelineRef",
            ".pipelineRef"))}

    enabled: bool = True
    """Run the monitoring sidecar."""
    window_rows: int = Field(default=2000, ge=100, le=1_000_000)
    """Rows in the sliding window compared with the baseline."""
    psi_threshold: float = Field(default=0.2, gt=0)
    """Population Stability Index at which a feature counts as drifted."""
    action: Literal["alert", "retrain"] = "alert"
    """alert sets DriftDetected and emits an Event; retrain also requests a pipeline run."""
    pipeline_ref: LocalObjectReference | None = None
    """TrainingPipeline to run on drift."""
    cooldown_seconds: int = Field(default=3600, ge=60)
    """Least time between two retraining requests."""


QualityMetric = Literal["accuracy", "f1", "mae", "rmse"]


class Quality(ApiModel):
    """A floor (or ceiling, for errors) on the live quality measured from fed-back labels."""

    model_config = {"json_schema_extra": validations(
        cel("has(self.min) != has(self.max)", "set exactly one of min and max", ".min"),
        cel("self.action != 'retrain' || has(self.pipelineRef)", "action retrain needs pipelineRef",
            ".pipelineRef"),
    )}

    metric: QualityMetric
    """accuracy or f1 (classifiers), mae or rmse (regressors), over the sliding window of labelled rows."""
    min: float | None = None
    """Lowest acceptable value (accuracy, f1)."""
    max: float | None = None
    """Highest acceptable value (mae, rmse)."""
    min_rows: int = Field(default=100, ge=1)
    """Labelled rows needed before the floor is judged."""
    action: Literal["alert", "retrain"] = "alert"
    """alert sets QualityDegraded and emits an Event; retrain also requests a pipeline run."""
    pipeline_ref: LocalObjectReference | None = None
    """TrainingPipeline to run when quality falls below the floor."""
    cooldown_seconds: int = Field(default=3600, ge=60)
    """Least time between two retraining requests."""


class Monitoring(ApiModel):
    """Monitoring of the served traffic."""

    drift: Drift = defaulted(Drift)
    """Drift detection."""
    quality: Quality | None = None
    """A quality floor judged on fed-back labels (needs `feedback`)."""


class PayloadLogging(ApiModel):
    """Every served row and its prediction, written as Parquet to the artifact store."""

    uri: str = Field(pattern=r"^(s3|file)://.+", max_length=2048)
    """Prefix of the logs: `<uri>/model=<m>/version=<v>/date=<yyyy-mm-dd>/part-*.parquet`."""
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    """Share of requests logged (all rows of a request or none)."""
    flush_seconds: int = Field(default=60, ge=1, le=3600)
    """Longest a logged row waits in memory before it is written."""


class Feedback(ApiModel):
    """Ground truth sent back after the fact: `POST /v2/models/<name>/feedback` with the request id."""

    ttl_seconds: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    """How long an answer can be labelled."""
    window_rows: int = Field(default=1000, ge=10, le=1_000_000)
    """Labelled rows in the live-quality window."""
    labelled_uri: str | None = Field(default=None, pattern=r"^(s3|file)://.+", max_length=2048)
    """Where labelled rows are written as Parquet (features, label, prediction): point a Dataset here."""


class Rollout(ApiModel):
    """Safety of new versions."""

    progress_deadline_seconds: int = Field(default=300, ge=10)
    """A new version not ready within this time is rolled back."""
    auto_rollback: bool = True
    """Roll back a version that misses its deadline or exceeds maxErrorRate."""
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    """Largest share of 5xx answers a new version may give."""


class InferenceServiceSpec(ApiModel):
    """Desired state of an InferenceService."""

    model_config = {"json_schema_extra": validations(
        cel("!has(self.monitoring.quality) || has(self.feedback)", "monitoring.quality needs feedback: "
            "quality is measured on fed-back labels", ".monitoring.quality"),
        cel("has(self.model) != has(self.models)", "set exactly one of model and models", ".model"),
        *(cel(f"!has(self.models) || !has(self.{name})", f"{name} is not supported with models: {why}", f".{name}")
          for name, why in (("canary", "each model rolls out on its own, with no canary"),
                            ("feedback", "feedback is joined per model by the monitoring sidecar, which a "
                                         "model set does not run"),
                            ("logging", "payload logging runs in the monitoring sidecar, which a model set "
                                        "does not run"))),
        cel("!has(self.models) || self.monitoring.drift.action == 'alert'", "monitoring.drift.action retrain "
            "is not supported with models: a model set runs no drift sidecar", ".monitoring.drift.action"),
    )}

    model: ModelSelector | None = None
    """The version to serve (or `models`)."""
    models: ModelSet | None = None
    """Or many models from one Deployment (docs/multi-model.md)."""
    canary: Canary | None = None
    """An optional canary version."""
    gateway: Gateway | None = None
    """Serve through Gateways: an HTTPRoute weighs primary and canary (replica ratio if no Gateway API)."""
    autoscaling: Autoscaling = defaulted(Autoscaling)
    """Replicas and autoscaling."""
    batching: Batching = defaulted(Batching)
    """Micro-batching."""
    monitoring: Monitoring = defaulted(Monitoring)
    """Drift and quality monitoring."""
    logging: PayloadLogging | None = None
    """Log what is served: requests' rows and predictions."""
    feedback: Feedback | None = None
    """Accept labels for served answers and measure live quality."""
    rollout: Rollout = defaulted(Rollout)
    """Rollout safety."""
    resources: Resources | None = None
    """Resources of the model server container."""
    pod: PodSettings | None = None
    """ServiceAccount, node selector, tolerations, labels and annotations of the serving pods (every
    role); a change rolls the pods like a new version does."""
    return_probabilities: bool = False
    """Include class probabilities in answers by default."""
    allow_unverified: bool = False
    """Roll out versions whose artifact digest the registry has not verified (yet). Off: a new version
    waits for its Verified condition, and one that failed verification is never served."""


class TrafficShare(ApiModel):
    """Share of traffic a version receives."""

    version: str
    """ModelVersion name."""
    percent: int
    """Percent of requests."""


class FeatureDrift(ApiModel):
    """Drift of one feature."""

    name: str
    """Feature name."""
    psi: float
    """Population Stability Index."""


class DriftStatus(ApiModel):
    """Latest drift observation."""

    score: float | None = None
    """Largest PSI over the features."""
    worst_features: list[FeatureDrift] = Field(default_factory=list)
    """Features with the largest drift."""
    observed_at: str | None = None
    """When this verdict was first read (RFC 3339); reading it again and finding the same changes nothing."""
    last_retrain_request: str | None = None
    """When a retraining run was last requested (RFC 3339)."""


class QualityStatus(ApiModel):
    """Live quality of the serving version, from fed-back labels."""

    version: str | None = None
    """The ModelVersion measured."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """accuracy and f1, or mae and rmse, over the window."""
    rows: int = 0
    """Labelled rows the metrics are measured on."""
    observed_at: str | None = None
    """When these numbers were first read (RFC 3339)."""
    last_retrain_request: str | None = None
    """When a retraining run was last requested for low quality (RFC 3339)."""


class ServedModel(ApiModel):
    """One model of a model set and the version the server is given."""

    model: str
    """Model name: the route `/v2/models/<model>`."""
    version: str
    """ModelVersion name."""


class InferenceServiceStatus(StatusBase):
    """Observed state of an InferenceService."""

    url: str | None = None
    """In-cluster URL of the service."""
    model_version: str | None = None
    """The primary ModelVersion."""
    canary_version: str | None = None
    """The canary ModelVersion."""
    traffic: list[TrafficShare] = Field(default_factory=list)
    """Traffic split between the versions."""
    replicas: int | None = None
    """Replicas of all versions."""
    ready_replicas: int | None = None
    """Ready replicas of all versions."""
    models: list[ServedModel] | None = None
    """With `spec.models`: every model in the servers' table and its version."""
    rolled_back_version: str | None = None
    """A version that was rolled back, and stays out until the spec changes."""
    drift: DriftStatus | None = None
    """Latest drift observation."""
    quality: QualityStatus | None = None
    """Latest live-quality observation."""
