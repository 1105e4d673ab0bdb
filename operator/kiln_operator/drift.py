"""Drift closing the loop: the sidecars' verdicts become a condition, an Event and, when asked, a new run.

The sidecar (kiln-monitor) does the statistics; the operator only combines what the serving pods
report (or what Prometheus scraped from them), names the worst features, and asks the referenced
TrainingPipeline for a run through its `kiln.dev/run-requested` annotation — at most once per
cooldown, so a drifting service never starts a storm of runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .api import InferenceServiceSpec
from .api.inference import Drift, Quality
from .validation import Parsed

# How often the reports are read: windows fill over minutes. The operator wakes each serving service
# up this often for it (reconcilers.watch_drift).
READ_EVERY_SECONDS = 15
WORST = 3


@dataclass
class Verdict:
    """One view of the serving version's drift, from one or more sidecars."""

    detected: bool
    features: dict[str, dict[str, Any]]  # name -> {"psi": float|None, "drift": bool}
    window_rows: int = 0


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)
    conditions: list[tuple[str, str, str, str]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    request_run: str | None = None  # the annotation value to set on the pipeline


def seconds_between(earlier: str, later: str) -> float:
    parse = lambda v: datetime.fromisoformat(v.replace("Z", "+00:00"))  # noqa: E731
    return (parse(later) - parse(earlier)).total_seconds()


def from_reports(reports: list[dict[str, Any]]) -> Verdict | None:
    """Combines the /drift reports of several pods: a feature drifted if it drifted in any window."""
    usable = [r for r in reports if isinstance(r.get("features"), dict)]
    if not usable:
        return None
    features: dict[str, dict[str, Any]] = {}
    for report in usable:
        for name, stats in report["features"].items():
            if not stats.get("evaluated"):
                continue
            seen = features.setdefault(name, {"psi": None, "drift": False})
            if stats.get("psi") is not None:
                seen["psi"] = max(seen["psi"] or 0.0, float(stats["psi"]))
            seen["drift"] = seen["drift"] or bool(stats.get("drift"))
    if not features:  # every window is still below its minimum rows: no verdict either way
        return None
    return Verdict(detected=any(bool(r.get("driftDetected")) for r in usable), features=features,
                   window_rows=sum(int(r.get("windowRows") or 0) for r in usable))


def from_prometheus(psi: dict[str, float], drifted: dict[str, float]) -> Verdict | None:
    """The same verdict from the sidecars' gauges (kiln_feature_drift_psi, kiln_feature_drift_detected)."""
    if not psi and not drifted:
        return None
    names = set(psi) | set(drifted)
    features = {n: {"psi": psi.get(n), "drift": drifted.get(n, 0.0) >= 1.0} for n in names}
    return Verdict(detected=any(f["drift"] for f in features.values()), features=features)


def unchanged_since(previous: dict[str, Any], new: dict[str, Any], now: str) -> dict[str, Any]:
    """`new` with `observedAt` kept from `previous` when nothing else moved: a verdict read again and
    found the same writes nothing (observedAt is when this verdict was first read)."""
    strip = lambda d: {k: v for k, v in d.items() if k != "observedAt"}  # noqa: E731
    if previous.get("observedAt") and strip(previous) == strip(new):
        return dict(previous)
    return {**new, "observedAt": now}


def plan(isvc: Parsed[InferenceServiceSpec], verdict: Verdict | None, now: str) -> Outcome:
    out = Outcome()
    spec = isvc.spec.monitoring.drift
    previous = isvc.status.get("drift") or {}
    if verdict is None:
        out.status["drift"] = unchanged_since(previous, previous, now)
        out.conditions.append(("DriftDetected", "Unknown", "NoReport",
                               "no monitoring sidecar has a drift verdict yet (fewer requests than its window needs, or starting)"))
        return out
    ranked = sorted(verdict.features.items(), key=lambda kv: (kv[1]["drift"], kv[1]["psi"] or 0.0), reverse=True)
    worst = [{"name": n, "psi": round(f["psi"], 4)} for n, f in ranked[:WORST] if f["psi"] is not None]
    scores = [f["psi"] for f in verdict.features.values() if f["psi"] is not None]
    drift_status = unchanged_since(previous, {**previous, "worstFeatures": worst,
                                     "score": round(max(scores), 4) if scores else None}, now)
    out.status["drift"] = drift_status
    if not verdict.detected:
        out.conditions.append(("DriftDetected", "False", "InDistribution",
                               f"no feature drifted ({verdict.window_rows} rows in the windows)"))
        return out
    drifted = [n for n, f in ranked if f["drift"]] or ["the predictions"]
    named = ", ".join(f"{w['name']} (psi {w['psi']})" for w in worst if w["name"] in drifted) or ", ".join(drifted)
    message = f"drift in {named}"
    out.conditions.append(("DriftDetected", "True", "FeatureDrift", message))
    out.events.append(("Warning", "DriftDetected", message))
    ask_for_run(out, spec, previous, drift_status, "drift", message, now)
    return out


def ask_for_run(out: Outcome, spec: Drift | Quality, previous: dict[str, Any], recorded: dict[str, Any],
                trigger: str, message: str, now: str) -> None:
    """With `action: retrain`, asks spec.pipelineRef for a run at most once per `cooldownSeconds` (since
    previous.lastRetrainRequest), and records when in `recorded`: a lasting problem is no storm of runs."""
    if spec.action != "retrain" or not spec.pipeline_ref:
        return
    last = previous.get("lastRetrainRequest")
    if last and seconds_between(last, now) < spec.cooldown_seconds:
        return
    out.request_run = f"{trigger}-{now}"
    recorded["lastRetrainRequest"] = now
    out.events.append(("Normal", "RetrainRequested", f"asked TrainingPipeline {spec.pipeline_ref.name!r} "
                                                     f"for a run: {message}"))
