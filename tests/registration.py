"""What the operator registers once a run's selection pod finished: the ModelVersion, its lineage read
from that pod as the cache keeps it (no spec; the image digest from its container status). Shared by the
tests that run the selection for real (tests/unit/runtime, tests/e2e/test_reproduce.py)."""

from __future__ import annotations

import json

from kiln_operator import pipelines
from kiln_operator.api.model_version import ModelVersionSpec
from kiln_operator.builders import training
from kiln_operator.jobs import JobView
from kiln_operator.validation import parse


def registered(pipeline: dict, summary: dict, pod_name: str, dataset_version: str, generation: int,
               image: str, digest: str, number: int = 1) -> dict:
    """The ModelVersion run r1 of `pipeline` registers from its selection's `summary`, with the spec as
    the apiserver serves it back (validated against the API: no field it lacks)."""
    pod = {"metadata": {"name": pod_name, "annotations": {}},
           "status": {"containerStatuses": [{"name": "train", "image": f"docker.io/library/{image}",
                                             "imageID": f"docker.io/library/{image.split(':')[0]}@{digest}",
                                             "state": {"terminated": {"message": json.dumps(summary)}}}]}}
    tp = parse({**pipeline, "status": {"lastRun": "r1", "lastRunGeneration": generation}})
    lineage = pipelines.registered_lineage(tp, {"id": "r1", "datasetVersion": dataset_version},
                                           summary["modelVersion"]["lineage"], summary["trainedBy"],
                                           JobView({}, {0: summary}, [pod]), JobView({}))
    mv = training.model_version(tp, "r1", number, {**summary["modelVersion"], "lineage": lineage})
    mv["spec"] = ModelVersionSpec.model_validate(mv["spec"]).wire()
    return mv
