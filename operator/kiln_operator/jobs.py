"""What a finished (or running) Job says: its state and its pods' termination messages."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
CONTAINER = "train"  # builders.training's container: the one whose image trains
_DIGEST = re.compile(r"(?:^|@)(sha256:[a-f0-9]{64})$")


@dataclass
class JobView:
    job: dict[str, Any] | None
    # Completion index (0 for non-indexed Jobs) -> the latest termination summary of that index.
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)
    # The Job's pods as the cache has them, every attempt: their status says which image ran.
    pods: list[dict[str, Any]] = field(default_factory=list)

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

    def pod(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.pods if p["metadata"].get("name") == name), None)

    def summary_pod(self, index: int = 0) -> dict[str, Any] | None:
        """The pod whose termination message is `summary(index)`."""
        found = _newest_messages(self.pods).get(index)
        return found[2] if found else None

    def index_pods(self, index: int) -> list[dict[str, Any]]:
        """Every attempt at completion `index`."""
        return [p for p in self.pods if _index(p) == index]

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


def _trial_of(summary: dict[str, Any], index: int) -> Any:
    """A one-trial summary's trial, else its completion index. (Not `.get("trial", index)`: that reads
    like a spec field's default restated, lineage.trial being one, and this is a termination message.)"""
    return summary["trial"] if "trial" in summary else index


def _one_trial(summary: dict[str, Any], index: int) -> bool:
    """A trial summary of a Job with one completion per trial (no `--shards`: a run started before)."""
    return (summary.get("command") == "trial" and "shards" not in summary and "shard" not in summary
            and summary.get("result") in ("Succeeded", "Failed") and _is_int(_trial_of(summary, index)))


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
            listed = [] if ok else [{**summary, "trial": _trial_of(summary, index)}]
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


def _index(pod: dict[str, Any]) -> int:
    return int((pod["metadata"].get("annotations") or {}).get(INDEX_ANNOTATION, 0))


def _newest_messages(pods: list[dict[str, Any]]) -> dict[int, tuple[str, dict[str, Any], dict[str, Any]]]:
    """Per completion index: (finishedAt, parsed message, pod) of the newest terminated container with a message."""
    found: dict[int, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for pod in pods:
        index = _index(pod)
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
    return found


def termination_summaries(pods: list[dict[str, Any]],
                          read_logs: Callable[[dict[str, Any]], str] | None = None) -> dict[int, dict[str, Any]]:
    """The newest terminated container's JSON message per completion index; a summary the kubelet's
    4 KiB limit made kiln-train cut is completed from the pod's logs through `read_logs`."""
    found = _newest_messages(pods)
    if read_logs:
        for index, (finished, summary, pod) in found.items():
            if summary.get("truncated"):
                found[index] = (finished, whole_summary(read_logs(pod), summary), pod)
    return {i: s for i, (_, s, _) in found.items()}


def image_digest(image_id: str | None) -> str | None:
    """`sha256:<hex>` out of a container status' imageID, whatever the runtime's spelling:
    `repo@sha256:…` (containerd, a pulled image), `docker-pullable://repo@sha256:…`, or a bare
    `sha256:…` (an image loaded into the node, known by its local ID only)."""
    match = _DIGEST.search(image_id or "")
    return match.group(1) if match else None


def ran_image(pod: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(image, digest) the pod's training container ran, from its status (the cache keeps no pod spec);
    the kubelet fills both in once the container has started. The image is as the runtime spells it
    (e.g. `docker.io/library/kiln-runtime:dev` for `kiln-runtime:dev`)."""
    status = next((c for c in ((pod or {}).get("status") or {}).get("containerStatuses") or []
                   if c.get("name") == CONTAINER), {})
    return status.get("image"), image_digest(status.get("imageID"))
