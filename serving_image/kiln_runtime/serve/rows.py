"""Turning decoded JSON rows into the matrix a model takes, validated against the signature.

The fast path is two C-level passes over all the rows of a batch at once (the set of value types, then
numpy's conversion), so its cost per request is a fraction of a microsecond; it must be strict
without looking at values one by one in Python. It is: the type set rejects strings, booleans, nulls
and nested arrays (numpy alone would turn "1.5" into 1.5 and true into 1.0), and numpy's conversion
rejects ragged rows. Only when a check fails does `diagnose` walk the rows in Python to name the
first bad value, so a client error costs more than a good request, never the other way round.
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter

import numpy as np

from .errors import BadRequest
from .signature import Signature, check_value, jtype

_NONE = type(None)


def numeric_matrix(rows: list, sig: Signature, where: str) -> np.ndarray:
    """Rows of JSON numbers -> float64 (rows x features), null -> NaN where the signature allows it.
    Raises BadRequest naming the problem."""
    try:
        kinds = set(map(type, chain.from_iterable(rows)))
        if not kinds <= sig.json_number_types:
            diagnose(rows, sig, where)
        x = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        diagnose(rows, sig, where)
    if x.ndim != 2 or x.shape[1] != sig.width:
        diagnose(rows, sig, where)
    if _NONE in kinds and len(sig.strict_columns) and np.isnan(x[:, sig.strict_columns]).any():
        diagnose(rows, sig, where)
    if sig.integer_columns:
        cols = x[:, sig.integer_columns]
        if not np.array_equal(cols, np.floor(cols), equal_nan=True):
            diagnose(rows, sig, where)
    return x


def object_matrix(rows: list, sig: Signature, where: str) -> np.ndarray:
    """Rows with categories, booleans or nulls -> an object matrix of checked values (the slow path)."""
    if type(rows) is not list or not rows:
        raise BadRequest(f"{where} must be a non-empty array of rows")
    width, feats = sig.width, sig.features
    out = np.empty((len(rows), width), dtype=object)
    for i, row in enumerate(rows):
        _check_row_shape(row, i, sig, where)
        out[i, :] = [check_value(feats[j], v, f"{where}[{i}][{j}]") for j, v in enumerate(row)]
    return out


def rows_from_objects(objects: list, sig: Signature, where: str) -> list:
    """Instances written as {feature: value} objects -> rows in signature order."""
    getter = itemgetter(*sig.names)
    single = sig.width == 1  # itemgetter of one name returns the value, not a 1-tuple
    width = sig.width
    rows = []
    append = rows.append
    for i, obj in enumerate(objects):
        if type(obj) is not dict:
            raise BadRequest(f"{where}[{i}] is {jtype(obj)}, but {where}[0] is an object: "
                             "write every instance the same way")
        if len(obj) != width:
            _missing_or_unknown(obj, sig, f"{where}[{i}]")
        try:
            row = getter(obj)
        except KeyError:
            _missing_or_unknown(obj, sig, f"{where}[{i}]")
        append((row,) if single else row)
    return rows


def _missing_or_unknown(obj: dict, sig: Signature, where: str):
    missing = [n for n in sig.names if n not in obj]
    unknown = [k for k in obj if k not in sig.index]
    parts = []
    if missing:
        parts.append("missing feature" + ("s " if len(missing) > 1 else " ") + ", ".join(map(repr, missing[:5]))
                     + (" ..." if len(missing) > 5 else ""))
    if unknown:
        parts.append("unknown feature" + ("s " if len(unknown) > 1 else " ") + ", ".join(map(repr, unknown[:5]))
                     + (" ..." if len(unknown) > 5 else ""))
    raise BadRequest(f"{where}: " + "; ".join(parts) + f" (the model takes {sig.describe()})")


def _check_row_shape(row, i: int, sig: Signature, where: str):
    if type(row) is not list and type(row) is not tuple:
        raise BadRequest(f"{where}[{i}] must be an array of {sig.width} feature values, got {jtype(row)}")
    if len(row) != sig.width:
        raise BadRequest(f"{where}[{i}] has {len(row)} values; the model takes {sig.width} features: "
                         f"{sig.describe()}")


def diagnose(rows, sig: Signature, where: str):
    """Walks the rows in Python and raises BadRequest for the first problem found."""
    if type(rows) is not list or not rows:
        raise BadRequest(f"{where} must be a non-empty array of rows")
    feats = sig.features
    for i, row in enumerate(rows):
        _check_row_shape(row, i, sig, where)
        for j, value in enumerate(row):
            checked = check_value(feats[j], value, f"{where}[{i}][{j}]")
            if type(checked) is int and not -(2 ** 63) <= checked < 2 ** 63:
                raise BadRequest(f"{where}[{i}][{j}] (feature {feats[j].name!r}): {checked} is out of range")
    # Every value passed one by one, so the batch failed as a whole (it cannot, for valid rows).
    raise BadRequest(f"{where}: rows do not form a {len(rows)} x {sig.width} matrix")


def columns_matrix(columns: dict[str, np.ndarray], n: int, sig: Signature) -> np.ndarray:
    """One validated array per feature (V2 tensors by name) -> the matrix for this signature."""
    if sig.numeric:
        out = np.empty((n, sig.width), dtype=np.float64)
        for j, name in enumerate(sig.names):
            out[:, j] = columns[name]
        return out
    out = np.empty((n, sig.width), dtype=object)
    for j, name in enumerate(sig.names):
        col = columns[name]
        out[:, j] = col.tolist() if col.dtype != object else col
    return out
