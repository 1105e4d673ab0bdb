"""Quality gates: pure checks of the best trial's held-out metrics; each failure says by how much."""

from __future__ import annotations

from .evaluate import LOWER_IS_BETTER
from .spec import Gate


def fmt(x: float) -> str:
    return f"{x:.6g}"


def threshold_to_beat(reference: float, margin: float, metric: str) -> float:
    """The value a new model must reach to beat `reference` by `margin` (lower is better for losses)."""
    return reference - margin if metric in LOWER_IS_BETTER else reference + margin


def short_of(value: float, threshold: float, metric: str) -> float:
    """How far `value` is from `threshold`, positive when it falls short."""
    return value - threshold if metric in LOWER_IS_BETTER else threshold - value


def check(metrics: dict[str, float], gates: tuple[Gate, ...], *, metric: str,
          beat_production_by: float | None, production: dict | None) -> list[dict]:
    """The failed gates, each {gate, metric, value, threshold, shortBy, message}; [] when all pass.

    beatProductionBy compares the pipeline's selection metric: the new value must be at least the
    Production value plus the margin (higher-is-better metrics) or at most it minus the margin
    (log_loss, rmse, mae). With no Production version there is nothing to beat and the gate passes;
    a Production version without that metric fails it (it cannot be shown to be beaten).
    """
    failed = []
    for gate in gates:
        value = metrics.get(gate.metric)
        if value is None:
            failed.append({"gate": "metric", "metric": gate.metric, "value": None,
                           "message": f"gate on {gate.metric}: the metric was not computed for this model"})
            continue
        if gate.min is not None and value < gate.min:
            short = gate.min - value
            failed.append({"gate": "min", "metric": gate.metric, "value": value, "threshold": gate.min,
                           "shortBy": short, "message": f"{gate.metric} {fmt(value)} is below the minimum "
                           f"{fmt(gate.min)} by {fmt(short)}"})
        if gate.max is not None and value > gate.max:
            short = value - gate.max
            failed.append({"gate": "max", "metric": gate.metric, "value": value, "threshold": gate.max,
                           "shortBy": short, "message": f"{gate.metric} {fmt(value)} is above the maximum "
                           f"{fmt(gate.max)} by {fmt(short)}"})
    if beat_production_by is not None and production:
        # The operator names the version by its object name; a bare number reads as "version 3".
        version = production.get("version") or production.get("name") or "?"
        prod_value = (production.get("metrics") or {}).get(metric)
        value = metrics.get(metric)
        if prod_value is None or value is None:
            failed.append({"gate": "beatProduction", "metric": metric, "value": value,
                           "message": f"cannot compare {metric} with Production version {version}: "
                           f"{'it has' if prod_value is None else 'this model has'} no {metric} metric"})
        else:
            lower = metric in LOWER_IS_BETTER
            threshold = threshold_to_beat(prod_value, beat_production_by, metric)
            short = short_of(value, threshold, metric)
            if short > 0:
                failed.append({"gate": "beatProduction", "metric": metric, "value": value,
                               "threshold": threshold, "production": prod_value, "shortBy": short,
                               "message": f"{metric} {fmt(value)} does not beat Production version {version} "
                               f"({fmt(prod_value)}) by the margin {fmt(beat_production_by)}: needs "
                               f"{'at most' if lower else 'at least'} {fmt(threshold)}, short by {fmt(short)}"})
    return failed
