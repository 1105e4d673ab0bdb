"""`kiln-train reproduce --model-version MV.json`: fit a registered model again from its lineage alone and
check that it scores exactly the metrics the ModelVersion records.

What it reads is the ModelVersion (`kubectl get modelversion NAME -o json`, or its spec) and the dataset
snapshot its lineage names; not the TrainingPipeline, which may have changed or gone since, nor the
Dataset's source. The lineage gives the snapshot (URI and digest), the estimator, the seed and the split
(test fraction, validation fraction or cross-validation folds), `params` every estimator parameter, and
`signature` the features (name, type, order) and the target. The target's type is the snapshot's own:
text for a category, numbers otherwise (integer and boolean targets are stored as numbers, and a
classifier reads any numeric target as integer labels either way).

The refit goes through the code a trial runs (prepare, trial.train), then scores the test split, as the
selection step did. Nothing is written to the store. Result Succeeded when every recorded metric is
found again (`exact` says whether to the last bit; a difference within the selection step's tolerance,
e.g. another BLAS thread count, is not exact but passes); else NotReproducible (exit 10), listing them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import estimators, snapshot, spec, trial
from .errors import InvalidSpec, NotReproducible
from .evaluate import score
from .prepare import prepare

NEEDED = ("datasetVersion", "datasetSnapshotUri", "datasetSnapshotSha256", "estimator", "seed", "testFraction")


def load(path: str) -> tuple[str | None, dict]:
    """(name, spec) of the ModelVersion in the JSON file at `path` (the object or its bare spec)."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidSpec(f"--model-version {path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InvalidSpec(f"--model-version {path}: not JSON ({exc}); use kubectl get modelversion NAME -o json")\
            from None
    if not isinstance(raw, dict):
        raise InvalidSpec(f"--model-version {path}: expected a ModelVersion object")
    mv = raw.get("spec") if isinstance(raw.get("spec"), dict) else raw
    return (raw.get("metadata") or {}).get("name"), mv


def config(mv: dict) -> spec.Config:
    """The run configuration that trains exactly the registered model, from the ModelVersion alone."""
    lineage = mv.get("lineage") or {}
    missing = [k for k in NEEDED if lineage.get(k) is None]
    if missing:
        raise InvalidSpec(f"the ModelVersion's lineage lacks {', '.join(missing)}: it was registered before "
                          "Kiln recorded what a reproduction needs, or its run read no dataset snapshot")
    signature = mv.get("signature") or {}
    output = signature.get("output") or {}
    target = output.get("name")
    if not target or not signature.get("inputs"):
        raise InvalidSpec("the ModelVersion's signature names no target (signature.output.name) or no inputs")
    task = estimators.kind_of(lineage["estimator"]).task
    recorded_task = "classification" if output.get("type") == "label" else "regression"
    if task != recorded_task:
        raise InvalidSpec(f"{lineage['estimator']} is a {task} estimator, but the signature's output is a "
                          f"{recorded_task} one")
    snap = spec.Snapshot(uri=lineage["datasetSnapshotUri"],
                         sha256=str(lineage["datasetSnapshotSha256"]).lower().removeprefix("sha256:"))
    # Read once here for the target's type, and again by prepare(): a table is small next to a fit.
    raw = snapshot.load(snap, lineage["datasetVersion"])  # the digest is checked here, before anything else
    if target not in raw.frame.columns:
        raise InvalidSpec(f"the snapshot {snap.uri} has no column {target}, the model's target")
    values = [v for v in raw.frame[target].tolist() if v is not None]
    target_type = "category" if values and isinstance(values[0], str) else "number"
    columns = [{"name": i["name"], "type": i["type"]} for i in signature["inputs"]]
    columns.append({"name": target, "type": target_type})
    evaluation = {"testFraction": lineage["testFraction"], "seed": lineage["seed"]}
    if lineage.get("validationFraction") is not None:
        evaluation["validationFraction"] = lineage["validationFraction"]
    return spec.parse({
        # The source is never read: the snapshot stands for it (prepare reads datasetSnapshot).
        "dataset": {"source": {"uri": snap.uri, "format": "parquet"}, "target": target, "schema": {"columns": columns}},
        "pipeline": {"estimator": {"class": lineage["estimator"], "params": mv.get("params") or {}},
                     "search": {"strategy": "grid", "trials": 1, "cvFolds": lineage.get("cvFolds") or 0},
                     "evaluation": evaluation},
        "output": "file:///nowhere",  # written to by nothing here
        "datasetVersion": lineage["datasetVersion"],
        "datasetSnapshot": {"uri": snap.uri, "sha256": snap.sha256},
    }, needs_pipeline=True)


def run(path: str) -> dict:
    name, mv = load(path)
    cfg = config(mv)
    lineage = mv["lineage"]
    prep = prepare(cfg)
    # The same fit a trial makes (with cvFolds 0 on the rows left after the validation split, else on the
    # whole training part): trial.train with the recorded parameters and no search on top of them.
    _, model = trial.train(cfg, prep, int(lineage.get("trial") or 0), {})
    metrics = score(model, prep.split.X_test, prep.split.y_test, prep.task)
    recorded = {k: float(v) for k, v in (mv.get("metrics") or {}).items()}
    label = name or f"{mv.get('modelName')} v{mv.get('version')}"
    differences = [{"metric": k, "recorded": v, "reproduced": metrics.get(k)}
                   for k, v in sorted(recorded.items()) if metrics.get(k) != v]
    head = {"modelVersion": label, "metrics": metrics, "recorded": recorded, "exact": not differences,
            "differences": differences[:10], "datasetVersion": prep.version, "rows": {"test": int(len(prep.split.y_test))},
            "framework": {"recorded": (mv.get("framework") or {}).get("version"), "now": trial._sklearn_version()},
            "imageDigest": lineage.get("imageDigest")}
    if not recorded:
        raise NotReproducible(f"{label} records no metrics to compare with", details=head)
    # The selection step's tolerance for its own refit (pods' BLAS thread counts may differ).
    off = [d for d in differences if d["reproduced"] is None
           or not math.isclose(d["reproduced"], d["recorded"], rel_tol=1e-9, abs_tol=1e-12)]
    if off:
        versions = head["framework"]
        hint = "" if versions["recorded"] == versions["now"] else (
            f"; it was trained with scikit-learn {versions['recorded']} and refitted with {versions['now']}: "
            f"run this in the image {lineage.get('image')}@{lineage.get('imageDigest')}")
        first = off[0]
        raise NotReproducible(f"{label} does not reproduce: {first['metric']} is {first['recorded']!r} in the "
                              f"ModelVersion and {first['reproduced']!r} refitted ({len(off)} metric(s) differ)"
                              f"{hint}", details=head)
    how = "exactly" if not differences else "within the selection step's tolerance, not to the last bit"
    return {**head, "result": "Succeeded",
            "message": f"{label} reproduced {how}: {len(recorded)} metric(s) on the {head['rows']['test']} test "
                       f"rows of dataset version {prep.version[:12]}"}
