"""`kiln-train select`: pick the best trial, apply the quality gates, write the final artifact set.

The winner is picked by the trials' validation (or cross-validation) scores; the test split is scored
once, here, on the winner only, and that is what the gates and the champion comparison judge.

Final artifacts, under <output>/model/ (nothing is written there when a gate fails):
  model.skops | model.joblib   the winning trial's model: refitted from its recorded parameters and seed
                               (or, with keepTrialModels, its stored file, digest re-checked); either
                               way it must score exactly what the trial recorded on the same rows
  model.onnx                   only when the export passed the parity check (onnx_export.py)
  signature.json  metrics.json  baseline.json
  manifest.json                written last: sha256 of every file and the ModelVersion spec fragment.
A model directory without manifest.json is incomplete and must be ignored.
"""

from __future__ import annotations

import math

import numpy as np

from kiln_runtime.profile import profile_column, profile_frame
from kiln_runtime.store import sha256_hex

from . import artifacts, champion, gates, onnx_export, search, signature, trial
from . import storeio as kio
from .errors import DatasetChanged, DigestMismatch, NoSuccessfulTrials, NotReproducible
from .evaluate import better, score
from .prepare import prepare
from .spec import Config

# What the operator passes in the configuration's `lineage`; the rest of the lineage is what this run
# did, recorded here (lineage()), except the image digest, which only the pod's status knows.
LINEAGE_KEYS = ("pipeline", "run", "dataset", "datasetVersion", "image", "pipelineGeneration")


def collect(cfg: Config) -> tuple[list[dict], list[dict], int]:
    """(succeeded results, failures, how many halving stopped early) over the planned trials, in index
    order; one listing of the run's trials/ finds what each left."""
    results, failures, stopped = [], [], 0
    found = kio.keys_below(f"{cfg.output}/trials/")
    for i in range(search.planned_trials(cfg.pipeline)):
        prefix = trial.trial_prefix(cfg.output, i)
        if f"{i}/result.json" in found:
            results.append(kio.read_json(f"{prefix}/result.json"))
        elif f"{i}/stopped.json" in found:
            stopped += 1
        elif f"{i}/error.json" in found:
            err = kio.read_json(f"{prefix}/error.json")
            failures.append({"trial": i, "reason": err.get("reason"), "message": err.get("message")})
        else:
            failures.append({"trial": i, "reason": "NoResult", "message": f"trial {i} left no result"})
    return results, failures, stopped


def best_of(results: list[dict]) -> dict:
    """Highest (or lowest, for loss metrics) score; ties go to the lowest trial index."""
    best = results[0]
    for r in results[1:]:
        if better(r["score"], best["score"], r["metric"]):
            best = r
    return best


def _read_model(best: dict) -> bytes:
    data = kio.read(best["model"]["uri"])
    if sha256_hex(data) != best["model"]["sha256"]:
        raise DigestMismatch(f"{best['model']['uri']}: digest mismatch with trial {best['trial']}'s result")
    return data


def _refit(cfg: Config, prep, best: dict):
    """The winning trial's model, trained again from its recorded parameters, split and seed."""
    _, model = trial.train(cfg, prep, best["trial"], best["searchParams"])
    return model


def _reproduced(best: dict, prep, model) -> None:
    # The model about to be registered must be the one the trial scored: equal metrics on the same
    # rows (to rounding, in case the pods' BLAS thread counts differ) prove it. With cross-validation
    # the trial recorded its final model's metrics on its training rows for this.
    reproduce = best.get("reproduce") or {"on": "validation"}
    if reproduce["on"] == "train":
        want = reproduce["metrics"]
        got = score(model, prep.split.X_train, prep.split.y_train, prep.task)
    else:
        want = best["metrics"]
        got = score(model, prep.validation.X_test, prep.validation.y_test, prep.task)
    _same_metrics(best, want, got)


def _same_metrics(best: dict, want: dict, got_metrics: dict) -> None:
    for name, value in want.items():
        got = got_metrics.get(name)
        if got is None or not math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12):
            raise NotReproducible(f"the winning trial {best['trial']} does not reproduce: {name} was {value!r} "
                                  f"in the trial and is {got!r} now; is the estimator deterministic for a seed?")


def run(cfg: Config) -> dict:
    pipeline = cfg.pipeline
    results, failures, stopped = collect(cfg)
    counts = {"planned": search.planned_trials(pipeline), "succeeded": len(results), "failed": len(failures),
              "stopped": stopped}
    base = {"command": "select", "trials": counts}
    if not results:
        first = failures[0] if failures else {"message": "no trials"}
        raise NoSuccessfulTrials(f"none of the {counts['planned']} trial(s) succeeded; trial "
                                 f"{first.get('trial')}: {first.get('reason')}: {first.get('message')}",
                                 details={"trials": counts, "failures": failures[:10]})
    best = best_of(results)
    metric = best["metric"]
    base.update(bestTrial=best["trial"], metric=metric, score=best["score"])

    # The winner's data must be the data the trials trained on.
    if cfg.dataset_version is None:
        cfg = _with_version(cfg, best["datasetVersion"])
    elif cfg.dataset_version != best["datasetVersion"]:
        raise DatasetChanged(f"trial {best['trial']} trained on dataset version {best['datasetVersion'][:12]}…, "
                             f"the run is for {cfg.dataset_version[:12]}…")
    prep = prepare(cfg)
    fmt = pipeline.artifact_format
    if best.get("model"):
        model_bytes = _read_model(best)
        model = artifacts.loads(model_bytes, best["model"]["format"])
        if best["model"]["format"] != fmt:
            model_bytes = artifacts.dumps(model, fmt)
    else:
        model = _refit(cfg, prep, best)
        model_bytes = artifacts.dumps(model, fmt)
    _reproduced(best, prep, model)
    X_test, y_test = prep.split.X_test, prep.split.y_test
    heldout = score(model, X_test, y_test, prep.task)  # the one look at the test rows
    selection = {**(best.get("selection") or {"on": "validation"}), **best["metrics"]}
    measured_on = {"datasetVersion": prep.version, "split": "test", "rows": int(len(y_test)),
                   "testFraction": pipeline.test_fraction, "seed": pipeline.seed}
    base.update(selection=selection, heldOut=heldout, measuredOn=measured_on)

    # A champion (the model now serving, scored here) replaces the stored-metrics comparison.
    champ = cfg.champion
    failed = gates.check(heldout, pipeline.gates, metric=metric,
                         beat_production_by=None if champ else pipeline.beat_production_by,
                         production=None if champ else cfg.production)
    reason = "GateFailed"
    if champ is not None:
        margin = champ.margin if champ.margin is not None else (pipeline.beat_production_by or 0.0)
        verdict = champion.judge(champ, prep, metric, heldout.get(metric), margin)
        base.update(champion=verdict.champion, challenger={"metric": metric, "value": heldout.get(metric)})
        if verdict.failed:
            failed.append(verdict.failed)
            reason = verdict.reason
    if failed:
        return {**base, "result": "GateFailed", "reason": reason, "gates": failed, "metrics": heldout,
                "params": best["searchParams"],
                "message": "quality gate failed: " + "; ".join(g["message"] for g in failed)}
    predictions = model.predict(X_test)

    onnx = onnx_export.export(model, prep.features, X_test, prep.task)
    sig = signature.build(prep.features, prep.target, model, prep.task, onnx.io if onnx.exported else None)
    baseline = profile_frame(prep.typed, [{"name": c.name, "type": c.type} for c in prep.features],
                             seed=pipeline.seed)
    baseline["predictions"] = profile_column(
        np.asarray(predictions), "category" if prep.task == "classification" else "number", seed=pipeline.seed)

    out = f"{cfg.output}/model"
    files = {}
    model_name = artifacts.FILENAMES[fmt]
    files[model_name] = {"uri": f"{out}/{model_name}", "sha256": kio.write(f"{out}/{model_name}", model_bytes)}
    onnx_record = {"exported": onnx.exported, "parity": onnx.parity}
    if onnx.exported:
        uri = f"{out}/model.onnx"
        files["model.onnx"] = {"uri": uri, "sha256": kio.write(uri, onnx.data)}
        onnx_record.update(uri=uri, sha256=files["model.onnx"]["sha256"])
    else:
        onnx_record["reason"] = onnx.reason
    metrics_doc = {"metric": metric, "score": best["score"], "selection": selection, "heldOut": heldout,
                   "measuredOn": measured_on, "cv": best.get("cv"), "bestTrial": best["trial"], "trials": counts,
                   "allTrials": [{"trial": r["trial"], "score": r["score"], "searchParams": r["searchParams"]}
                                 for r in results],
                   "failedTrials": failures, "onnx": onnx_record}
    for key in ("champion", "challenger"):
        if key in base:
            metrics_doc[key] = base[key]
    for name, doc in (("signature.json", sig), ("metrics.json", metrics_doc), ("baseline.json", baseline)):
        files[name] = {"uri": f"{out}/{name}", "sha256": kio.write_json(f"{out}/{name}", doc)}

    artifact = {"uri": files[model_name]["uri"], "sha256": files[model_name]["sha256"], "format": fmt,
                "allowUnsafe": fmt == "joblib"}
    if onnx.exported:
        artifact["onnx"] = {"uri": onnx_record["uri"], "sha256": onnx_record["sha256"], "parityVerified": True}
        for key in ("maxProbabilityError", "maxAbsoluteError"):  # classifiers have one, regressors the other
            if key in onnx.parity:
                artifact["onnx"][key] = onnx.parity[key]
    model_version = {
        "artifact": artifact,
        "framework": {"name": "scikit-learn", "version": best["sklearnVersion"]},
        "signature": signature.for_model_version(sig),
        "metrics": heldout,
        "params": best["params"],
        "lineage": lineage(cfg, prep, best),
        "baselineUri": files["baseline.json"]["uri"],
    }
    trained_by = trained_in(best)
    manifest_uri = f"{out}/manifest.json"
    kio.write_json(manifest_uri, {"modelVersion": model_version, "files": files, "onnx": onnx_record,
                                  "bestTrial": best["trial"], "metric": metric, "score": best["score"],
                                  "trials": counts, "trainedBy": trained_by})
    return {**base, "result": "Succeeded", "manifestUri": manifest_uri, "modelVersion": model_version,
            "trainedBy": trained_by,
            "onnx": {k: v for k, v in onnx_record.items() if k in ("exported", "reason")},
            "message": f"trial {best['trial']} selected: {metric} {best['score']:.6g} on {selection['on']}, "
                       f"{_test_value(heldout, metric)} on the test split ({len(y_test)} rows)"
                       f"{_beaten(base)} ({counts['succeeded']}/{counts['planned']} trials succeeded)"}


def lineage(cfg: Config, prep, best: dict) -> dict:
    """The ModelVersion's lineage: the operator's part (who asked) and this run's (what was trained
    on what, with which seed and split), enough for `kiln-train reproduce` to fit the model again."""
    pipeline = cfg.pipeline
    out = {k: v for k, v in cfg.lineage.items() if k in LINEAGE_KEYS and v is not None}
    out.update(datasetVersion=prep.version, trial=best["trial"], estimator=best["estimator"],
               seed=best.get("seed", pipeline.seed), testFraction=pipeline.test_fraction,
               cvFolds=pipeline.cv_folds)
    if pipeline.cv_folds < 2:
        out["validationFraction"] = pipeline.validation_fraction
    if cfg.dataset_snapshot is not None:
        out.update(datasetSnapshotUri=cfg.dataset_snapshot.uri, datasetSnapshotSha256=cfg.dataset_snapshot.sha256)
    return out


def trained_in(best: dict) -> dict:
    """Which pod fitted the registered model, for the operator to read its image digest: this one when
    the winner was refitted here, else the trial's (its stored model is registered as it was)."""
    if best.get("model"):
        return {"step": "trials", "trial": best["trial"], "pod": best.get("pod")}
    return {"step": "select", "pod": trial.pod_name()}


def _test_value(heldout: dict, metric: str) -> str:
    value = heldout.get(metric)
    return "n/a" if value is None else f"{value:.6g}"


def _beaten(base: dict) -> str:
    champ = base.get("champion")
    return f", beating {champ['name']} ({champ['value']:.6g})" if champ else ""


def _with_version(cfg: Config, version: str) -> Config:
    from dataclasses import replace

    return replace(cfg, dataset_version=version)
