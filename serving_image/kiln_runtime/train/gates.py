"""Quality gates: pure checks of the best trial's held-out metrics; each failure says by how much."""

from __future__ import annotations

from .evaluate import LOWER_IS_BETTER
from .spec import Gate


def _fmt(x: float) -> str:
    return f"{x:.6g}"


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
                           "shortBy": short, "message": f"{gate.metric} {_fmt(value)} is below the minimum "
                           f"{_fmt(gate.min)} by {_fmt(short)}"})
        if gate.max is not None and value > gate.max:
            short = value - gate.max
            failed.append({"gate": "max", "metric": gate.metric, "value": value, "threshold": gate.max,
                           "shortBy": short, "message": f"{gate.metric} {_fmt(value)} is above the maximum "
                           f"{_fmt(gate.max)} by {_fmt(short)}"})
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
            threshold = prod_value - beat_production_by if lower else prod_value + beat_production_by
            short = value - threshold if lower else threshold - value
            if short > 0:
                failed.append({"gate": "beatProduction", "metric": metric, "value": value,
                               "threshold": threshold, "production": prod_value, "shortBy": short,
                               "message": f"{metric} {_fmt(value)} does not beat Production version {version} "
                               f"({_fmt(prod_value)}) by the margin {_fmt(beat_production_by)}: needs "
                               f"{'at most' if lower else 'at least'} {_fmt(threshold)}, short by {_fmt(short)}"})
    return failed
