"""The baseline profile (written at training time, read from the artifact store) as typed objects.

The profile is JSON:
    {"rows": n,
     "columns": {name: column},
     "predictions": column, or {name: column} with one entry}
    column = {"type": "number"|"integer"|"category"|"boolean", "nullFraction": f, "count": n,
              numeric:     "min", "max", "mean", "std", "binEdges": [...], "binFractions": [...],
                           "sample": [<= 1000 values]
              categorical: "categories": {value: fraction}}

Everything the statistics need is precomputed here once, at start: sorted sample, interior bin
edges, category lookup tables; the evaluator then only counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import orjson

from kiln_runtime import store
# One spelling of category values for the profile's keys and the served values: profile.py's, so
# the two sides cannot drift apart (booleans as "true"/"false", 1.0 as "1", NaN and None missing).
from kiln_runtime.profile import category_key

log = logging.getLogger(__name__)

NUMERIC_TYPES = ("number", "integer")
CATEGORICAL_TYPES = ("category", "boolean")
PREDICTION = "prediction"  # the name predictions go by when the profile gives none


class BaselineError(ValueError):
    """The profile is missing or cannot be used; the message says which column and why."""


@dataclass(frozen=True)
class NumericBaseline:
    name: str
    type: str
    null_fraction: float
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    interior_edges: np.ndarray  # bins are (-inf, e0), [e0, e1), ..., [e_last, +inf)
    bin_fractions: np.ndarray  # one per bin, sums to 1; empty when the profile has no bins
    sample_sorted: np.ndarray  # for KS; empty when the profile has no sample

    kind = "numeric"


@dataclass(frozen=True)
class CategoricalBaseline:
    name: str
    type: str
    null_fraction: float
    categories: tuple[str, ...]
    fractions: np.ndarray  # one per category plus a last 0 for "other" (values never seen)
    lookup: dict[str, int] = field(repr=False, default_factory=dict)

    kind = "categorical"

    @property
    def other(self) -> int:
        return len(self.categories)


def _floats(values) -> np.ndarray:
    arr = np.array([v for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _opt_float(value) -> float | None:
    return None if value is None else float(value)


def _bins(name: str, col: dict, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interior edges and per-bin fractions, whichever of the two common layouts the profile uses."""
    edges = np.unique(_floats(col.get("binEdges") or []))  # sorted, deduplicated
    fractions = np.array(col.get("binFractions") or [], dtype=np.float64)
    if edges.size == 1:
        # A constant column: one bin holding everything, with room for values on either side.
        return np.array([edges[0], np.nextafter(edges[0], np.inf)]), np.array([0.0, 1.0, 0.0])
    if edges.size >= 2 and fractions.size == edges.size - 1:
        interior = edges[1:-1]  # numpy.histogram layout: edges include the min and the max
    elif fractions.size == edges.size + 1 and edges.size:
        interior = edges  # interior cut points only
    elif sample.size:
        # No usable bins (older profile): deciles of the sample stand in for them.
        interior = np.unique(np.quantile(sample, np.linspace(0.1, 0.9, 9)))
        counts = np.bincount(np.searchsorted(interior, sample, side="right"), minlength=interior.size + 1)
        return interior, counts / counts.sum()
    else:
        log.warning("baseline column %s has no usable bins: PSI will not be computed", name)
        return np.empty(0), np.empty(0)
    total = fractions.sum()
    if total <= 0 or np.any(fractions < 0):
        raise BaselineError(f"column {name}: binFractions must be non-negative and not all zero")
    return interior, fractions / total


def parse_column(name: str, col: dict) -> NumericBaseline | CategoricalBaseline:
    if not isinstance(col, dict):
        raise BaselineError(f"column {name}: expected an object, got {type(col).__name__}")
    kind = col.get("type")
    null_fraction = float(col.get("nullFraction") or 0.0)
    if kind in NUMERIC_TYPES:
        sample = np.sort(_floats(col.get("sample") or []))
        interior, fractions = _bins(name, col, sample)
        return NumericBaseline(name, kind, null_fraction, _opt_float(col.get("min")),
                               _opt_float(col.get("max")), _opt_float(col.get("mean")),
                               _opt_float(col.get("std")), interior, fractions, sample)
    if kind in CATEGORICAL_TYPES:
        raw = col.get("categories")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise BaselineError(f"column {name}: 'categories' must be an object of value: fraction")
        merged: dict[str, float] = {}
        for value, fraction in raw.items():
            key = category_key(value, kind)
            if key is not None:
                merged[key] = merged.get(key, 0.0) + float(fraction)
        total = sum(merged.values())
        if any(f < 0 for f in merged.values()):
            raise BaselineError(f"column {name}: category fractions must be non-negative")
        categories = tuple(merged)
        # Fractions are renormalised over non-missing values, like the window's counts. A column
        # that was all missing at training time has no categories: only its rates are reported.
        fractions = np.array([merged[c] / total for c in categories] + [0.0]) if total > 0 else np.zeros(1)
        lookup = {c: i for i, c in enumerate(categories)}
        return CategoricalBaseline(name, kind, null_fraction, categories, fractions, lookup)
    raise BaselineError(f"column {name}: unknown type {kind!r}")


@dataclass(frozen=True)
class Baseline:
    rows: int
    features: dict[str, NumericBaseline | CategoricalBaseline]
    prediction: NumericBaseline | CategoricalBaseline | None
    dropped_features: tuple[str, ...] = ()  # beyond the cap: not monitored
    unusable: dict[str, str] = field(default_factory=dict)  # column -> why it is not monitored


def parse(profile: dict, max_features: int) -> Baseline:
    if not isinstance(profile, dict) or not isinstance(profile.get("columns"), dict):
        raise BaselineError("the profile has no 'columns' object")
    names = list(profile["columns"])
    # The cap bounds the label cardinality of every per-feature metric; the profile's order (the
    # signature's) decides which features stay.
    kept, dropped = names[:max_features], tuple(names[max_features:])
    if dropped:
        log.warning("monitoring the first %d of %d features; not monitored: %s",
                    max_features, len(names), ", ".join(dropped))
    features, unusable = {}, {}
    for name in kept:
        # One unusable column costs that column, not the whole sidecar.
        try:
            features[name] = parse_column(name, profile["columns"][name])
        except (ValueError, TypeError) as exc:  # BaselineError, or a field of the wrong JSON type
            log.warning("not monitoring %s: %s", name, exc)
            unusable[name] = str(exc)
    prediction = None
    preds = profile.get("predictions")
    if isinstance(preds, dict) and preds:
        if "type" not in preds:
            # A map of named outputs; the hand-off carries one prediction per row, so the first.
            pname, preds = next(iter(preds.items()))
        else:
            pname = PREDICTION
        try:
            prediction = parse_column(str(pname), preds)
        except (ValueError, TypeError) as exc:
            log.warning("not monitoring the predictions: %s", exc)
            unusable[str(pname)] = str(exc)
    return Baseline(int(profile.get("rows") or 0), features, prediction, dropped, unusable)


def load(uri: str, max_features: int) -> Baseline:
    """Reads and parses the profile at `uri` (file:// or s3://, through the artifact store)."""
    try:
        profile = orjson.loads(store.read_bytes(uri))
    except orjson.JSONDecodeError as exc:
        raise BaselineError(f"{uri}: not JSON: {exc}") from exc
    return parse(profile, max_features)
