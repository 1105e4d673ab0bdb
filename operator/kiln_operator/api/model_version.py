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
    """Where the model came from, and enough to train it again: `kiln-train reproduce` refits it from
    these fields, `params` and `signature` (docs/training.md, Reproducing a version)."""

    pipeline: str | None = None
    """TrainingPipeline name."""
    run: str | None = None
    """Run id."""
    dataset: str | None = None
    """Dataset name."""
    dataset_version: str | None = None
    """Dataset version (content sha256)."""
    dataset_snapshot_uri: str | None = None
    """The validated table of that version the run read (`status.versions[].snapshotUri` of the Dataset)."""
    dataset_snapshot_sha256: str | None = Field(default=None, pattern=SHA256)
    """sha256 of that table's bytes: a reproduction refuses any other content."""
    image: str | None = None
    """Runtime image the model was trained with, as the pod named it (a reference, e.g. a tag)."""
    image_digest: str | None = Field(default=None, pattern=r"^sha256:[a-f0-9]{64}$")
    """The image the node actually ran, from the training pod's `status.containerStatuses[].imageID`: the
    registry's manifest digest of a pulled image (an image loaded into the node without a registry has
    its local image ID here instead). The pod is the selection step's when it refitted the winner, else
    the trial pod whose stored model it registered."""
    pipeline_generation: int | None = Field(default=None, ge=1)
    """The TrainingPipeline's `metadata.generation` when the run started: the spec the run was made from."""
    trial: int | None = Field(default=None, ge=0)
    """Index of the winning trial."""
    estimator: str | None = None
    """The estimator class trained (its parameters are `spec.params`)."""
    seed: int | None = None
    """The run's seed the trial trained with: it draws the test and validation splits and the
    cross-validation folds, and is the estimator's `random_state` unless `spec.params` sets another."""
    test_fraction: float | None = None
    """Share of the rows held out as the test split `spec.metrics` were measured on."""
    validation_fraction: float | None = None
    """Share of the training part the trial held out for validation (absent with cross-validation: the
    model was then fitted on the whole training part)."""
    cv_folds: int | None = None
    """Cross-validation folds of the search (0: a validation split)."""


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
    """One stage transition, for the audit trail (docs/governance.md)."""

    stage: Stage
    """The new stage."""
    from_: Stage | None = Field(default=None, alias="from")
    """The stage it left: the previous entry's stage; absent on the first entry (the stage it was registered in)."""
    time: str
    """When the operator observed it (RFC 3339)."""
    by: str | None = None
    """Who changed it: the requesting user as the promotion policy stamped it (annotation
    kiln.dev/stage-changed-by), else the field manager that last wrote spec.stage (not a user name)."""
    reason: str | None = None
    """Why: the annotation kiln.dev/stage-reason given with the change, or the operator's own reason."""


class ModelVersionStatus(StatusBase):
    """Observed state of a ModelVersion."""

    stage_history: list[StageChange] = Field(default_factory=list)
    """Stage transitions, oldest first: who, when, from which stage and why. Kept in status, so it outlives
    Events."""
    served_by: list[str] = Field(default_factory=list)
    """InferenceServices serving this version."""
    verified_sha256: str | None = None
    """The artifact digest a verification Job of the runtime image last confirmed (the Verified condition)."""
