"""The drift decision: window snapshots against the baseline, once per interval, into a report.

Per column:
- numeric: PSI on the baseline's quantile bins, two-sample KS against the baseline sample;
- categorical: PSI on the categories (plus an "other" bucket for unseen values), chi-square
  goodness of fit and the Jensen–Shannon distance;
- both: missing rate, out-of-range rate (outside the baseline's [min, max]; for categories, the
  share of values the baseline never saw).

A column drifts when it has at least `min_rows` non-missing values and PSI >= psi_threshold or the
test's p-value (KS or chi-square) < alpha / m, where m is the number of columns tested in this
evaluation. The division (Bonferroni) is there because a model with 20 features tested at 0.05
each would raise a false alarm on most in-distribution windows; with it, `alpha` is the chance of
any false alarm per evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import stats
from .baseline import Baseline, CategoricalBaseline, NumericBaseline
from .window import MISSING, Snapshot


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2
    # 0.001 over all columns together: in-distribution traffic raises a false alarm about once per
    # thousand independent windows (a window is independent of the last after W new rows).
    # 0 turns the p-value tests off and leaves PSI alone to decide.
    alpha: float = 0.001
    min_rows: int = 1000
    top: int = 5  # how many of the worst features the report lists


def _round(x: float | None) -> float | None:
    # Reports are read by people and by the operator; 6 significant digits is plenty and keeps
    # tiny p-values (1e-300) intact, which fixed decimals would flatten to 0.
    return None if x is None else float(f"{x:.6g}")


def _numeric(base: NumericBaseline, values: np.ndarray, min_rows: int) -> dict:
    present = values[~np.isnan(values)]
    result = {
        "type": base.type,
        "rows": int(values.size),
        # Rates of an empty window are unknown, not zero: None keeps them off the gauges.
        "missingRate": float(1 - present.size / values.size) if values.size else None,
        "baselineMissingRate": base.null_fraction,
        "outOfRangeRate": stats.out_of_range_rate(present, base.min, base.max) if present.size else None,
        "psi": None, "ksStatistic": None, "ksPValue": None,
    }
    if present.size < min_rows:
        return result
    if base.bin_fractions.size:
        result["psi"] = stats.psi(base.bin_fractions, stats.bin_counts(present, base.interior_edges))
    if base.sample_sorted.size:
        d = stats.ks_statistic(np.sort(present), base.sample_sorted)
        result["ksStatistic"] = d
        result["ksPValue"] = stats.ks_pvalue(d, present.size, base.sample_sorted.size)
    return result


def _categorical(base: CategoricalBaseline, codes: np.ndarray, min_rows: int) -> dict:
    present = codes[codes != MISSING]
    counts = np.bincount(present, minlength=base.other + 1)
    result = {
        "type": base.type,
        "rows": int(codes.size),
        "missingRate": float(1 - present.size / codes.size) if codes.size else None,
        "baselineMissingRate": base.null_fraction,
        "outOfRangeRate": float(counts[base.other] / present.size) if present.size else None,
        "psi": None, "chi2Statistic": None, "chi2PValue": None, "jsDistance": None,
    }
    if present.size < min_rows or not base.categories:
        return result
    result["psi"] = stats.psi(base.fractions, counts)
    result["chi2Statistic"], result["chi2PValue"] = stats.chi_square(base.fractions, counts)
    result["jsDistance"] = stats.jensen_shannon(base.fractions, counts)
    return result


def column_stats(base: NumericBaseline | CategoricalBaseline, values: np.ndarray, min_rows: int) -> dict:
    if isinstance(base, NumericBaseline):
        return _numeric(base, values, min_rows)
    return _categorical(base, values, min_rows)


def _pvalue(result: dict) -> float | None:
    return result.get("ksPValue") if "ksPValue" in result else result.get("chi2PValue")


def _decide(result: dict, th: Thresholds, tests: int) -> None:
    psi, p = result["psi"], _pvalue(result)
    evaluated = psi is not None or p is not None
    reasons = []
    if psi is not None and psi >= th.psi:
        reasons.append(f"psi {psi:.3f} >= {th.psi}")
    if p is not None and p < th.alpha / max(tests, 1):
        reasons.append(f"p-value {p:.3g} < {th.alpha}/{tests}")
    result["evaluated"] = evaluated
    result["drift"] = bool(reasons)
    result["reasons"] = reasons


def _severity(item: tuple[str, dict]) -> tuple:
    r = item[1]
    p = _pvalue(r)
    return (r["drift"], r["psi"] if r["psi"] is not None else -1.0, -(p if p is not None else 1.0))


def evaluate(baseline: Baseline, snap: Snapshot, th: Thresholds, model: str, version: str,
             capacity: int) -> dict:
    """The drift report served on /drift and exported as gauges."""
    started = time.monotonic()
    features = {name: column_stats(baseline.features[name], values, th.min_rows)
                for name, values in snap.features.items()}
    prediction = None
    if baseline.prediction is not None and snap.prediction is not None:
        prediction = column_stats(baseline.prediction, snap.prediction, th.min_rows)
        prediction["name"] = baseline.prediction.name

    columns = list(features.values()) + ([prediction] if prediction else [])
    tests = sum(1 for r in columns if r["psi"] is not None or _pvalue(r) is not None)
    for r in columns:
        _decide(r, th, tests)

    for r in columns:  # rounded after deciding, so the decision sees full precision
        for key, value in r.items():
            if isinstance(value, float):
                r[key] = _round(value)

    ranked = sorted(((n, r) for n, r in features.items() if r["evaluated"]), key=_severity, reverse=True)
    worst = [{"feature": n, "drift": r["drift"], "psi": r["psi"], "pValue": _pvalue(r)}
             for n, r in ranked[: th.top]]
    now = time.time()
    psis = [r["psi"] for r in features.values() if r["psi"] is not None]
    window_rows = max([r["rows"] for r in columns], default=0)
    return {
        "model": model,
        "version": version,
        "evaluatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "evaluatedAtUnix": round(now, 3),
        "driftDetected": any(r["drift"] for r in columns),
        "score": max(psis, default=None),
        "worstFeatures": worst,
        "driftedFeatures": [n for n, r in ranked if r["drift"]],
        "windowRows": window_rows,
        "windowCapacity": capacity,
        "rowsReceived": snap.rows_received,
        "thresholds": {"psi": th.psi, "alpha": th.alpha, "minRows": th.min_rows, "tests": tests},
        "features": features,
        "prediction": prediction,
        "notMonitored": {**{n: "beyond KILN_MONITOR_MAX_FEATURES" for n in baseline.dropped_features},
                         **baseline.unusable},
        "evaluationSeconds": _round(time.monotonic() - started),
    }
