"""Schema checks and typing: raw table in, typed table and the failed checks (each naming its column) out.

The typed table is what training and profiling see:
  number, integer, boolean -> float64 (NaN = missing; booleans as 0.0/1.0)
  category                 -> object holding str, None = missing
Rows are numbered from 1, counting data rows only (a csv header is not a row), and within their file
when the source is a prefix of several.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .spec import Column, DatasetSpec

_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}
MAX_FAILURES = 50  # a bad file can fail every column; the first fifty say enough


@dataclass(frozen=True)
class Failure:
    column: str | None
    check: str  # present, target, type, min, max, allowed, nullable, nullFraction, minRows
    message: str

    def wire(self) -> dict:
        out = {"check": self.check, "message": self.message}
        if self.column is not None:
            out["column"] = self.column
        return out


def category_text(value) -> str | None:
    """One spelling per category value, whatever the file format stored (parquet keeps ints, csv text)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def row_label(i: int) -> str:
    return f"row {i + 1}"


def _example(raw: pd.Series, bad: np.ndarray, where=row_label) -> str:
    i = int(np.flatnonzero(bad)[0])
    return f"{raw.iloc[i]!r} at {where(i)}"


def _blank_to_none(raw: pd.Series) -> pd.Series:
    # "" and "  " in a csv cell mean "no value", as an empty field does.
    blank = raw.map(lambda v: isinstance(v, str) and not v.strip())
    return raw.where(~blank.astype(bool), None)


def _numeric(col: Column, raw: pd.Series, failures: list[Failure], where=row_label) -> pd.Series:
    raw = _blank_to_none(raw)
    values = np.array(pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
    not_number = raw.notna().to_numpy() & np.isnan(values)
    not_number |= np.isinf(values)
    if not_number.any():
        failures.append(Failure(col.name, "type", f"column {col.name}: {int(not_number.sum())} value(s) are not "
                                f"numbers, first {_example(raw, not_number, where)}"))
        values[not_number] = np.nan
    if col.type == "integer":
        fractional = ~np.isnan(values) & (values != np.round(values))
        if fractional.any():
            failures.append(Failure(col.name, "type", f"column {col.name}: {int(fractional.sum())} value(s) are "
                                    f"not integers, first {_example(raw, fractional, where)}"))
    present = ~np.isnan(values)
    if col.min is not None:
        low = present & (values < col.min)
        if low.any():
            failures.append(Failure(col.name, "min", f"column {col.name}: {int(low.sum())} value(s) below the "
                                    f"minimum {col.min:g}, smallest {np.nanmin(values[low]):g} "
                                    f"(first {_example(raw, low, where)})"))
    if col.max is not None:
        high = present & (values > col.max)
        if high.any():
            failures.append(Failure(col.name, "max", f"column {col.name}: {int(high.sum())} value(s) above the "
                                    f"maximum {col.max:g}, largest {np.nanmax(values[high]):g} "
                                    f"(first {_example(raw, high, where)})"))
    return pd.Series(values, index=raw.index, name=col.name)


def _boolean(col: Column, raw: pd.Series, failures: list[Failure], where=row_label) -> pd.Series:
    def convert(v):
        if v is None:
            return np.nan
        if isinstance(v, (bool, np.bool_)):
            return float(v)
        text = str(v).strip().lower()
        if text in _TRUE:
            return 1.0
        if text in _FALSE:
            return 0.0
        return None

    converted = [convert(v) for v in raw.tolist()]
    bad = np.array([c is None for c in converted], dtype=bool)
    if bad.any():
        failures.append(Failure(col.name, "type", f"column {col.name}: {int(bad.sum())} value(s) are not "
                                f"booleans (true/false, yes/no, 1/0), first {_example(raw, bad, where)}"))
    return pd.Series([np.nan if c is None else c for c in converted], index=raw.index, name=col.name,
                     dtype=np.float64)


def _category(col: Column, raw: pd.Series, failures: list[Failure], where=row_label) -> pd.Series:
    values = [category_text(v) for v in raw.tolist()]
    values = [None if v is not None and not v.strip() else v for v in values]
    if col.allowed is not None:
        allowed = set(col.allowed)
        bad = np.array([v is not None and v not in allowed for v in values], dtype=bool)
        if bad.any():
            unknown = sorted({values[i] for i in np.flatnonzero(bad)})
            failures.append(Failure(col.name, "allowed", f"column {col.name}: {int(bad.sum())} value(s) not in "
                                    f"the allowed set: {', '.join(map(repr, unknown[:5]))}"
                                    f"{' …' if len(unknown) > 5 else ''} (first {_example(raw, bad, where)})"))
    return pd.Series(values, index=raw.index, name=col.name, dtype=object)


_TYPERS = {"number": _numeric, "integer": _numeric, "boolean": _boolean, "category": _category}


def is_missing(series: pd.Series) -> np.ndarray:
    return series.isna().to_numpy()


def validate(raw: pd.DataFrame, spec: DatasetSpec, where=row_label) -> tuple[pd.DataFrame, list[Failure]]:
    """Types every schema column and runs every check; the typed table holds the schema's columns only.
    `where(i)` names row i (position) in messages: "row 8", or "labelled/x.parquet row 7" for a row of
    one file of a prefix."""
    failures: list[Failure] = []
    rows = len(raw)
    if spec.target is not None and spec.target not in raw.columns:
        failures.append(Failure(spec.target, "target", f"target column {spec.target} is missing from the data "
                                f"(columns found: {', '.join(map(str, list(raw.columns)[:20]))})"))
    if rows < spec.min_rows:
        failures.append(Failure(None, "minRows", f"the data has {rows} row(s); at least {spec.min_rows} required"))
    typed = {}
    for col in spec.columns:
        if col.name not in raw.columns:
            if col.name != spec.target:  # a missing target is reported once, above
                failures.append(Failure(col.name, "present", f"column {col.name} is missing from the data"))
            continue
        series = _TYPERS[col.type](col, raw[col.name], failures, where)
        missing = is_missing(series)
        nulls = int(missing.sum())
        if nulls:
            fraction = nulls / rows
            if col.name == spec.target:
                failures.append(Failure(col.name, "target", f"target column {col.name}: {nulls} row(s) have no "
                                        f"label, first at {where(int(np.flatnonzero(missing)[0]))}"))
            elif not col.nullable:
                failures.append(Failure(col.name, "nullable", f"column {col.name}: {nulls} missing value(s) but "
                                        f"the column is not nullable, first at "
                                        f"{where(int(np.flatnonzero(missing)[0]))}"))
            if fraction > spec.max_null_fraction:
                failures.append(Failure(col.name, "nullFraction", f"column {col.name}: {fraction:.3f} of values "
                                        f"are missing, more than maxNullFraction {spec.max_null_fraction:g}"))
        typed[col.name] = series
    return pd.DataFrame(typed, index=raw.index), failures[:MAX_FAILURES]


def summarize(failures: list[Failure]) -> str:
    """One line for a condition message: the first failure, and how many more there are."""
    if not failures:
        return "all checks passed"
    more = len(failures) - 1
    return failures[0].message + (f" (and {more} more failed check{'s' if more > 1 else ''})" if more else "")
