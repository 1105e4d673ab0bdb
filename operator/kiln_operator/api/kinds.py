"""The four kinds: names, printer columns and the models of their spec and status."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .dataset import DatasetSpec, DatasetStatus
from .inference import InferenceServiceSpec, InferenceServiceStatus
from .model_version import ModelVersionSpec, ModelVersionStatus
from .training import TrainingPipelineSpec, TrainingPipelineStatus

GROUP = "kiln.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "kiln"


def _ready_column() -> dict:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


def _reason_column() -> dict:
    return {"name": "Reason", "type": "string", "priority": 1,
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'}


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[dict, ...]
    description: str

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


KINDS: tuple[Kind, ...] = (
    Kind("Dataset", "datasets", ("kds",), DatasetSpec, DatasetStatus, (
        {"name": "Version", "type": "string", "jsonPath": ".status.version"},
        {"name": "Rows", "type": "integer", "jsonPath": ".status.rows"},
        _ready_column(), _reason_column(), _AGE),
        "A versioned, validated reference to tabular data."),
    Kind("TrainingPipeline", "trainingpipelines", ("ktp",), TrainingPipelineSpec, TrainingPipelineStatus, (
        {"name": "Model", "type": "string", "jsonPath": ".spec.modelName"},
        {"name": "Estimator", "type": "string", "jsonPath": ".spec.estimator.class"},
        {"name": "Last Run", "type": "string", "jsonPath": ".status.lastRun"},
        _ready_column(), _reason_column(), _AGE),
        "How a Dataset becomes ModelVersions, once or continuously."),
    Kind("ModelVersion", "modelversions", ("kmv",), ModelVersionSpec, ModelVersionStatus, (
        {"name": "Model", "type": "string", "jsonPath": ".spec.modelName"},
        {"name": "Version", "type": "integer", "jsonPath": ".spec.version"},
        {"name": "Stage", "type": "string", "jsonPath": ".spec.stage"},
        {"name": "Verified", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Verified")].status'},
        _ready_column(), _AGE),
        "A registry entry: a trained model, its metrics and lineage. Immutable except its stage."),
    Kind("InferenceService", "inferenceservices", ("kisvc",), InferenceServiceSpec, InferenceServiceStatus, (
        {"name": "Model", "type": "string", "jsonPath": ".status.modelVersion"},
        {"name": "Canary", "type": "string", "jsonPath": ".status.canaryVersion"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        _ready_column(), _reason_column(), _AGE),
        "Serving a model: Deployments, Service, autoscaling, canary, rollback and drift monitoring."),
)


def kind_by_name(kind: str) -> Kind:
    for k in KINDS:
        if k.kind == kind:
            return k
    raise KeyError(kind)
