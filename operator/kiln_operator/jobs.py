"""What a finished (or running) Job says: its state and its pods' termination messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass
class JobView:
    job: dict[str, Any] | None
    # Completion index (0 for non-indexed Jobs) -> the latest termination summary of that index.
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def state(self) -> str | None:
        """"Complete", "Failed", or None while it runs (or does not exist)."""
        for cond in (self.job or {}).get("status", {}).get("conditions") or []:
            if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
                return cond["type"]
        return None

    @property
    def succeeded(self) -> int:
        """Completions that succeeded: pods, so for the trials' Job shards, not trials (trial_totals)."""
        return int((self.job or {}).get("status", {}).get("succeeded") or 0)

    def summary(self, index: int = 0) -> dict[str, Any] | None:
        return self.summaries.get(index)

    def failure_message(self) -> str:
        """The Job's own reason when no pod left a summary (e.g. a pod that could not start)."""
        for cond in (self.job or {}).get("status", {}).get("conditions") or []:
            if cond.get("type") == "Failed" and cond.get("status") == "True":
                return f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
        return "the Job failed"


@dataclass
class TrialTotals:
    """What the trials' shards report, added up (the trials' Job's own counts are of pods, not trials)."""

    assigned: int = 0
    succeeded: int = 0
    failed: int = 0
    stopped: int = 0  # candidates successive halving stopped early: neither succeeded nor failed
    failures: list[dict[str, Any]] = field(default_factory=list)  # {trial, reason, message}, by trial
    rounds: list[dict[str, Any]] = field(default_factory=list)  # successive halving's rounds
    search_record: str | None = None  # the store URI of the halving record


TRIAL_COUNTS = ("assigned", "succeeded", "failed", "stopped")
ROUND_KEYS = ("round", "resources", "candidates", "kept")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> int:
    return value if _is_int(value) and value > 0 else 0


def _failure(reported: dict[str, Any]) -> dict[str, Any]:
    """`{trial, reason?, message?}` as the run's status keeps it (messages cut to 500 characters)."""
    out: dict[str, Any] = {"trial": reported["trial"]}
    for key, limit in (("reason", 100), ("message", 500)):
        if reported.get(key) is not None:
            out[key] = str(reported[key])[:limit]
    return out


def _one_trial(summary: dict[str, Any], index: int) -> bool:
    """A trial summary of a Job with one completion per trial (no `--shards`: a run started before)."""
    return (summary.get("command") == "trial" and "shards" not in summary and "shard" not in summary
            and summary.get("result") in ("Succeeded", "Failed") and _is_int(summary.get("trial", index)))


def trial_totals(summaries: dict[int, dict[str, Any]], max_failures: int = 10) -> TrialTotals:
    """Adds up the shards' summaries (`trials {assigned, succeeded, failed, stopped}`, `failures`, and
    halving's `rounds` and `searchRecordUri`); `failures` by trial, at most `max_failures`. A trial
    summary without shards (a Job of one completion per trial) counts as that one trial."""
    totals = TrialTotals()
    failures: dict[int, dict[str, Any]] = {}
    for index, summary in sorted(summaries.items()):
        counts = summary.get("trials")
        if isinstance(counts, dict):
            for key in TRIAL_COUNTS:
                setattr(totals, key, getattr(totals, key) + _count(counts.get(key)))
            listed = summary["failures"] if isinstance(summary.get("failures"), list) else []
        elif _one_trial(summary, index):
            ok = summary["result"] == "Succeeded"
            totals.assigned += 1
            totals.succeeded += ok
            totals.failed += not ok
            listed = [] if ok else [{**summary, "trial": summary.get("trial", index)}]
        else:
            listed = []  # Skipped, or not kiln-train's counts (an UnreadableSummary, a shard that died early)
        for failure in listed:
            if isinstance(failure, dict) and _is_int(failure.get("trial")):
                failures.setdefault(failure["trial"], _failure(failure))
        if isinstance(summary.get("rounds"), list) and not totals.rounds:
            totals.rounds = [{k: r[k] for k in ROUND_KEYS} for r in summary["rounds"]
                             if isinstance(r, dict) and all(_is_int(r.get(k)) for k in ROUND_KEYS)]
        if isinstance(summary.get("searchRecordUri"), str):
            totals.search_record = totals.search_record or summary["searchRecordUri"]
    totals.failures = [failures[t] for t in sorted(failures)][:max_failures]
    return totals


def whole_summary(logs: str, cut: dict[str, Any]) -> dict[str, Any]:
    """The untruncated summary kiln-train printed as its last log line, or `cut` when the logs lack it."""
    for line in reversed(logs.strip().splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict) and not found.get("truncated") and all(
                found.get(k) == cut.get(k) for k in ("command", "result", "trial", "shard")):
            return found
    return cut


def termination_summaries(pods: list[dict[str, Any]],
                          read_logs: Callable[[dict[str, Any]], str] | None = None) -> dict[int, dict[str, Any]]:
    """The newest terminated container's JSON message per completion index; a summary the kubelet's
    4 KiB limit made kiln-train cut is completed from the pod's logs through `read_logs`."""
    found: dict[int, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for pod in pods:
        index = int(pod["metadata"].get("annotations", {}).get(INDEX_ANNOTATION, 0))
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if not terminated or not terminated.get("message"):
                continue
            try:
                summary = json.loads(terminated["message"])
            except ValueError:
                summary = {"result": "Failed", "reason": "UnreadableSummary",
                           "message": terminated["message"][-500:]}
            finished = terminated.get("finishedAt") or ""
            if index not in found or finished > found[index][0]:
                found[index] = (finished, summary, pod)
    if read_logs:
        for index, (finished, summary, pod) in found.items():
            if summary.get("truncated"):
                found[index] = (finished, whole_summary(read_logs(pod), summary), pod)
    return {i: s for i, (_, s, _) in found.items()}
