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
        return int((self.job or {}).get("status", {}).get("succeeded") or 0)

    @property
    def failed_indexes(self) -> list[int]:
        raw = (self.job or {}).get("status", {}).get("failedIndexes") or ""
        out: list[int] = []
        for part in filter(None, raw.split(",")):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
        return out

    def summary(self, index: int = 0) -> dict[str, Any] | None:
        return self.summaries.get(index)

    def failure_message(self) -> str:
        """The Job's own reason when no pod left a summary (e.g. a pod that could not start)."""
        for cond in (self.job or {}).get("status", {}).get("conditions") or []:
            if cond.get("type") == "Failed" and cond.get("status") == "True":
                return f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
        return "the Job failed"


def whole_summary(logs: str, cut: dict[str, Any]) -> dict[str, Any]:
    """The untruncated summary kiln-train printed as its last log line, or `cut` when the logs lack it."""
    for line in reversed(logs.strip().splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict) and not found.get("truncated") and all(
                found.get(k) == cut.get(k) for k in ("command", "result", "trial")):
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
