"""Baseline profiles built by hand in the documented shape (profile.py's output), from known data."""

from __future__ import annotations

import numpy as np


def numeric_column(values: np.ndarray, kind: str = "number", sample: int = 1000, seed: int = 0) -> dict:
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    edges = np.unique(np.quantile(present, np.linspace(0, 1, 11)))  # deciles with min and max, dedup
    counts, _ = np.histogram(present, bins=edges)
    rng = np.random.default_rng(seed)
    return {
        "type": kind,
        "count": int(values.size),
        "nullFraction": float(1 - present.size / values.size),
        "min": float(present.min()), "max": float(present.max()),
        "mean": float(present.mean()), "std": float(present.std()),
        "binEdges": edges.tolist(),
        "binFractions": (counts / counts.sum()).tolist(),
        "sample": rng.choice(present, size=min(sample, present.size), replace=False).tolist(),
    }


def categorical_column(values: list, kind: str = "category") -> dict:
    present = [v for v in values if v is not None]
    cats: dict[str, float] = {}
    for v in present:
        cats[str(v)] = cats.get(str(v), 0) + 1
    return {
        "type": kind,
        "count": len(values),
        "nullFraction": 1 - len(present) / len(values),
        "categories": {k: c / len(present) for k, c in cats.items()},
    }


def make_profile(columns: dict[str, dict], predictions: dict | None = None) -> dict:
    rows = max(c["count"] for c in columns.values())
    return {"rows": rows, "columns": columns, "predictions": predictions}

