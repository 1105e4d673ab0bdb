"""ModelVersion: a registry entry. Immutable except its stage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .base import DNS_LABEL, ApiModel, StatusBase, cel, validations

SHA256 = r"^[a-f0-9]{64}$"
Stage = Literal["None", "Staging", "Production", "Archived"]


def immutable(name: str) -> dict[str, Any]:
    return validations(cel("self == oldSelf", f"{name} is immutable: register a new ModelVersion instead"))


class OnnxExport(ApiModel):
    """The model compiled to ONNX, served with onnxruntime when its parity was verified."""

    uri: str
    """Location of the ONNX file."""
    sha256: str = Field(pattern=SHA256)
    """sha256 of the ONNX file."""
    parity_verified: bool = False
    """Whether the ONNX model matched the scikit-learn model on the held-out set."""
    max_probability_error: float | None = None
    """Largest absolute difference of predicted probabilities on the held-out set."""
    max_absolute_error: float | None = None
    """Regressors: largest absolute difference of predictions on the held-out set."""


class Artifact(ApiModel):
    """The stored model."""

    model_config = {"json_schema_extra": validations(
        cel("self.format != 'joblib' || self.allowUnsafe",
            "format joblib executes code on load: set allowUnsafe to opt in", ".format"))}

    uri: str = Field(pattern=r"^(s3|file)://.+")
    """Location of the model file."""
    sha256: str = Field(pattern=SHA256)
    """sha256 digest of the model file; the server refuses any other content."""
    format: Literal["skops", "joblib"] = "skops"
    """skops (safe to load) or joblib (executes code on load)."""
    allow_unsafe: bool = False
    """Opt in to loading a joblib file."""
    onnx: OnnxExport | None = None
    """ONNX export, when the estimator supports it."""


class Framework(ApiModel):
    """The library the model was trained with."""

    name: Literal["scikit-learn"] = "scikit-learn"
    """Library name."""
    version: str
    """Library version, e.g. 1.5.2."""


class SignatureInput(ApiModel):
    """One input feature."""

    name: str
    """Feature name."""
    type: Literal["number", "integer", "category", "boolean"]
    """Feature type."""


class SignatureOutput(ApiModel):
    """What the model predicts."""

    type: Literal["label", "value"]
    """label for classifiers, value for regressors."""
    name: str | None = None
    """The column the model was trained to predict (the Dataset's target)."""
    classes: list[str] | None = None
    """Class labels of a classifier, in the order of its probabilities."""


class Signature(ApiModel):
    """The model's inputs and output: the server validates requests against it."""

    inputs: list[SignatureInput] = Field(min_length=1)
    """Input features, in order."""
    output: SignatureOutput
    """The prediction."""


class Lineage(ApiModel):
    """Where the model came from."""

    pipeline: str | None = None
    """TrainingPipeline name."""
    run: str | None = None
    """Run id."""
    dataset: str | None = None
    """Dataset name."""
    dataset_version: str | None = None
    """Dataset version (content sha256)."""
    image: str | None = None
    """Runtime image the model was trained with."""


class ModelVersionSpec(ApiModel):
    """Desired state of a ModelVersion."""

    model_name: str = Field(pattern=DNS_LABEL, max_length=40, json_schema_extra=immutable("modelName"))
    """Registry name of the model."""
    version: int = Field(ge=1, json_schema_extra=immutable("version"))
    """Version number, increasing per model."""
    artifact: Artifact = Field(json_schema_extra=immutable("artifact"))
    """The stored model."""
    framework: Framework = Field(json_schema_extra=immutable("framework"))
    """The training library."""
    signature: Signature = Field(json_schema_extra=immutable("signature"))
    """Inputs and output."""
    metrics: dict[str, float] = Field(default_factory=dict, json_schema_extra=immutable("metrics"))
    """Metrics on the held-out test split."""
    params: dict[str, Any] = Field(default_factory=dict, json_schema_extra=immutable("params"))
    """Estimator parameters of the trained model."""
    lineage: Lineage = Field(default_factory=Lineage, json_schema_extra=immutable("lineage"))
    """Pipeline, run, dataset and image that produced the model."""
    baseline_uri: str | None = Field(default=None, json_schema_extra=immutable("baselineUri"))
    """Profile of the training data and predictions: the drift baseline."""
    stage: Stage = "None"
    """Lifecycle stage: None, Staging, Production or Archived. The only field that may change."""


class StageChange(ApiModel):
    """One stage transition, for the audit trail."""

    stage: Stage
    """The new stage."""
    time: str
    """When the operator observed it (RFC 3339)."""
    by: str | None = None
    """Who or what changed it, when known."""


class ModelVersionStatus(StatusBase):
    """Observed state of a ModelVersion."""

    stage_history: list[StageChange] = Field(default_factory=list)
    """Stage transitions, oldest first."""
    served_by: list[str] = Field(default_factory=list)
    """InferenceServices serving this version."""
    verified_sha256: str | None = None
    """The artifact digest a verification Job of the runtime image last confirmed (the Verified condition)."""
