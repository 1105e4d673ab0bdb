"""`kiln-train trial --shards P`: one pod of the trials' Indexed Job trains its share of the run's trials
in one process.

Shard s of P trains trials s, s + P, s + 2P, ... (search.shard_trials): the data version is read and
split once, and each trial's result.json is written as soon as that trial finishes, so a pod that dies
loses only the trial it was training. A retried shard lists what is already stored and trains only the
rest: trials with a result, and trials whose error is permanent (a parameter scikit-learn rejects
fails the same way every time), are counted, not trained again.

How the shard ends (the Job's podFailurePolicy keys on the exit code, errors.py):
  some trial succeeded and none crashed      Succeeded (exit 0), the failed ones listed
  every trial failed with a permanent error  that error (exit 10: the index fails, no retry)
  a trial crashed (anything unexpected)      TrainerCrashed after the other trials ran (exit 12): the
                                             retry trains only the crashed and missing ones
Halving (strategy halving) is one search over every candidate, so shard 0 runs it (halving.py) and any
other shard has nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import search, trial
from . import storeio as kio
from .errors import EXIT_CRASH, InvalidSpec, TrainError, Unreachable
from .evaluate import better
from .spec import Config

# Reasons a retry cannot change: such a trial is not trained again by a retried shard.
PERMANENT = ("InvalidParameter", "InvalidSpec", "ValidationFailed", "InvalidData")
MAX_FAILURES = 5  # per summary: the termination message has 4 KiB


class ShardCrashed(TrainError):
    reason = "TrainerCrashed"
    exit_code = EXIT_CRASH


@dataclass
class Tally:
    """What a shard's trials came to; `summary()` is the part of the termination message the operator
    totals over shards."""

    assigned: int
    succeeded: int = 0
    reused: int = 0
    stopped: int = 0
    failures: list[dict] = field(default_factory=list)
    crashed: int = 0
    best: dict | None = None

    def success(self, result: dict, *, reused: bool = False) -> None:
        self.succeeded += 1
        self.reused += reused
        if self.best is None or better(result["score"], self.best["score"], result["metric"]):
            self.best = {"trial": result["trial"], "metric": result["metric"], "score": result["score"]}

    def failure(self, index: int, reason: str, message: str, *, crashed: bool = False) -> None:
        self.failures.append({"trial": index, "reason": reason, "message": message[:300]})
        self.crashed += crashed

    def counts(self) -> dict:
        return {"assigned": self.assigned, "succeeded": self.succeeded, "failed": len(self.failures),
                "stopped": self.stopped, "reused": self.reused}

    def summary(self) -> dict:
        out = {"trials": self.counts(), "failures": self.failures[:MAX_FAILURES]}
        if self.best:
            out["best"] = self.best
        return out

    def sentence(self, head: str) -> str:
        c = self.counts()
        text = f"{head}: {c['succeeded']} trial(s) succeeded"
        if c["reused"]:
            text += f" ({c['reused']} from an earlier attempt)"
        text += f", {c['failed']} failed"
        if c["stopped"]:
            text += f", {c['stopped']} stopped early"
        if self.best:
            text += f"; best {self.best['metric']} {self.best['score']:.6g} (trial {self.best['trial']})"
        return text


def run(cfg: Config, shard: int, shards: int) -> dict:
    if shards < 1 or not 0 <= shard < shards:
        raise InvalidSpec(f"shard {shard} of {shards}: the index must be within 0..shards-1")
    head = {"command": "trial", "shard": shard, "shards": shards}
    pipeline = cfg.pipeline
    if pipeline.strategy == "halving":
        if shard > 0:
            return {**head, "result": "Skipped", "message": "successive halving runs in shard 0"}
        from . import halving

        return {**head, **halving.run(cfg)}
    mine = search.shard_trials(pipeline, shard, shards)
    if not mine:
        return {**head, "result": "Skipped", "message": f"shard {shard} of {shards}: no trials left for it"}
    tally = Tally(assigned=len(mine))
    todo = _to_train(cfg, mine, tally)
    if todo:
        prep = trial.prepared_or_recorded(cfg, todo)
        for index in todo:
            try:
                tally.success(trial.complete(cfg, prep, index, search.trial_params(pipeline, index)))
            except Unreachable:
                raise
            except TrainError as exc:
                tally.failure(index, exc.reason, str(exc), crashed=exc.exit_code == EXIT_CRASH)
            except Exception as exc:  # noqa: BLE001 - one trial's crash must not cost the others
                tally.failure(index, "TrainerCrashed", f"{type(exc).__name__}: {exc}", crashed=True)
    message = tally.sentence(f"shard {shard} of {shards}")
    if tally.crashed:
        raise ShardCrashed(f"{message}; a retry trains the {tally.crashed} crashed trial(s) again",
                           details={**head, **tally.summary()})
    if not tally.succeeded:
        first = tally.failures[0]
        raise TrainError(f"{message}; trial {first['trial']}: {first['message']}", reason=first["reason"],
                         details={**head, **tally.summary()})
    return {**head, "result": "Succeeded", **tally.summary(), "message": message}


def _to_train(cfg: Config, mine: range, tally: Tally) -> list[int]:
    """The shard's trials a previous attempt did not finish; finished ones are counted in `tally`."""
    # Keys ("<i>/result.json", "<i>/error.json", ...) already stored: one listing, not a request per trial.
    done = kio.keys_below(f"{cfg.output}/trials/")
    todo = []
    for index in mine:
        if f"{index}/result.json" in done:
            tally.success(kio.read_json(f"{trial.trial_prefix(cfg.output, index)}/result.json"), reused=True)
        elif f"{index}/error.json" in done:
            error = kio.read_json(f"{trial.trial_prefix(cfg.output, index)}/error.json")
            if error.get("reason") in PERMANENT:
                tally.failure(index, error["reason"], error.get("message") or "")
            else:
                todo.append(index)
        else:
            todo.append(index)
    return todo
