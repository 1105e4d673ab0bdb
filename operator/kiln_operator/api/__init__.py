"""The Kiln API (kiln.dev/v1alpha1): pydantic models, the single source of truth of the CRD schemas."""

from .dataset import DatasetSpec, DatasetStatus
from .inference import InferenceServiceSpec, InferenceServiceStatus
from .kinds import GROUP, KINDS, VERSION, Kind, kind_by_name
from .model_version import ModelVersionSpec, ModelVersionStatus
from .training import TrainingPipelineSpec, TrainingPipelineStatus

__all__ = [
    "GROUP", "VERSION", "KINDS", "Kind", "kind_by_name",
    "DatasetSpec", "DatasetStatus", "TrainingPipelineSpec", "TrainingPipelineStatus",
    "ModelVersionSpec", "ModelVersionStatus", "InferenceServiceSpec", "InferenceServiceStatus",
]
