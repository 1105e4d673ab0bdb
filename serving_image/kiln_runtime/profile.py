"""Per-column statistics of a table: the drift baseline the monitoring sidecar compares traffic to.

Shape (kiln-monitor reads exactly this; keep them in step):
    {"rows": n,
     "columns": {name: column, ...},          # in schema order
     "predictions": column}                   # added at training time, from the held-out set
    column (every type):  {"type": "number"|"integer"|"category"|"boolean", "count": n, "nullFraction": f}
    numeric (number, integer), over the non-missing values:
        "min", "max", "mean", "std" (population, ddof=0),
        "binEdges": the deciles (0%, 10%, ..., 100%) deduplicated, numpy.histogram layout,
        "binFractions": fraction of values per bin (len(binEdges) - 1 of them; a constant column has
                        one edge and one fraction 1.0),
        "sample": up to 1000 values drawn without replacement with a seeded generator (for KS tests)
    categorical (category, boolean): "categories": {value: fraction of the non-missing values}
        booleans are spelled "true"/"false", integral numbers without a decimal point.
`count` counts every row, missing or not; a column with no value at all has null statistics and
empty bins. Everything is plain JSON (no NaN).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Mapping

import numpy as np

NUMERIC = ("number", "integer")
CATEGORICAL = ("category", "boolean")
SAMPLE_SIZE = 1000
DECILES = np.linspace(0.0, 1.0, 11)


def category_key(value, kind: str = "category") -> str | None:
    """The spelling of a category value in `categories`; None for missing."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        text = str(int(value)) if float(value).is_integer() else repr(float(value))
    else:
        text = str(value)
    if kind == "boolean":
        # Booleans typed as 0/1 (the training table's encoding) read as the words the monitor expects.
        return {"1": "true", "0": "false"}.get(text, text.lower())
    return text


def _numeric(values: Iterable, kind: str, seed: int, sample_size: int) -> dict:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        floats = values.astype(np.float64)
    else:
        floats = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    count = int(floats.size)
    present = floats[np.isfinite(floats)]
    out: dict = {"type": kind, "count": count,
                 "nullFraction": float((count - present.size) / count) if count else 0.0}
    if present.size == 0:
        out.update(min=None, max=None, mean=None, std=None, binEdges=[], binFractions=[], sample=[])
        return out
    edges = np.unique(np.quantile(present, DECILES))
    if edges.size == 1:
        fractions = np.array([1.0])
    else:
        counts, _ = np.histogram(present, bins=edges)
        fractions = counts / counts.sum()
    rng = np.random.default_rng(seed)
    sample = rng.choice(present, size=min(sample_size, present.size), replace=False)
    out.update(min=float(present.min()), max=float(present.max()), mean=float(present.mean()),
               std=float(present.std()), binEdges=[float(e) for e in edges],
               binFractions=[float(f) for f in fractions], sample=[float(v) for v in sample])
    return out


def _categorical(values: Iterable, kind: str) -> dict:
    keys = [category_key(v, kind) for v in values]
    count = len(keys)
    counts = Counter(k for k in keys if k is not None)
    present = sum(counts.values())
    return {"type": kind, "count": count,
            "nullFraction": float((count - present) / count) if count else 0.0,
            # Sorted by key: two profiles of the same data are byte-identical.
            "categories": {k: counts[k] / present for k in sorted(counts)}}


def profile_column(values: Iterable, type: str, *, seed: int = 0, sample_size: int = SAMPLE_SIZE) -> dict:
    """Statistics of one column; `values` may hold None or NaN for missing."""
    if type in NUMERIC:
        return _numeric(values, type, seed, sample_size)
    if type in CATEGORICAL:
        return _categorical(values, type)
    raise ValueError(f"unknown column type {type!r}: expected one of {', '.join(NUMERIC + CATEGORICAL)}")


def _column_types(schema) -> dict[str, str]:
    """Column name -> type, from a schema given as the Dataset spec's JSON, a list of columns, or a map."""
    if isinstance(schema, Mapping) and "columns" in schema:
        schema = schema["columns"]
    if isinstance(schema, Mapping):
        return {str(k): str(v) for k, v in schema.items()}
    out = {}
    for col in schema:
        name = col["name"] if isinstance(col, Mapping) else col.name
        kind = col["type"] if isinstance(col, Mapping) else col.type
        out[name] = kind
    return out


def profile_frame(df, schema, *, seed: int = 0, sample_size: int = SAMPLE_SIZE) -> dict:
    """Profile of every schema column present in `df` (a pandas DataFrame), in schema order.

    Each column's sample uses its own generator seeded from `seed` and its position, so adding a
    column to the schema does not change the other columns' samples.
    """
    columns = {}
    for i, (name, kind) in enumerate(_column_types(schema).items()):
        if name in df.columns:
            columns[name] = profile_column(df[name].to_numpy(), kind, seed=seed + i, sample_size=sample_size)
    return {"rows": int(len(df)), "columns": columns}
