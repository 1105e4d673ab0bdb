"""Which input feature each preprocessed column comes from, and what the fitted preprocessing stored
about each feature (the background of `linear-exact` and `sampling`)."""

from __future__ import annotations


import numpy as np

from .common import Unmappable, is_levels, is_nan



_ELEMENTWISE = {"StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler", "PowerTransformer",
                "QuantileTransformer", "Binarizer", "OrdinalEncoder"}


def column_sources(t, n: int) -> list[int]:
    """For each output column of fitted transformer t (given n input columns), its input column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if t is None or (isinstance(t, str) and t == "passthrough"):
        return list(range(n))
    if isinstance(t, str) and t == "drop":
        return []
    if isinstance(t, Pipeline):
        src = list(range(n))
        for _, step in t.steps:
            src = [src[i] for i in column_sources(step, len(src))]
        return src
    if isinstance(t, ColumnTransformer):
        width = max((s.stop for s in t.output_indices_.values()), default=0)
        out: list = [None] * width
        for name, trans, columns in t.transformers_:
            if isinstance(trans, str) and trans == "drop":
                continue
            idx = resolve_columns(t, columns, n)
            part = t.output_indices_.get(name)
            if part is None or part.stop == part.start:
                continue
            src = column_sources(trans, len(idx))
            if len(src) != part.stop - part.start:
                raise Unmappable(f"{name}: {len(src)} columns expected, {part.stop - part.start} produced")
            out[part] = [idx[i] for i in src]
        if any(o is None for o in out):
            raise Unmappable("the ColumnTransformer's output is not covered")
        return out
    name = type(t).__name__
    if name == "SimpleImputer":
        keep = list(range(n))
        stats = getattr(t, "statistics_", None)
        if not getattr(t, "keep_empty_features", False) and t.strategy != "constant" and stats is not None:
            keep = [i for i in range(n) if not is_nan(stats[i])]
        indicator = getattr(t, "indicator_", None) if getattr(t, "add_indicator", False) else None
        return keep + ([int(i) for i in indicator.features_] if indicator is not None else [])
    if name == "MissingIndicator":
        return [int(i) for i in t.features_]
    if name == "OneHotEncoder":
        outs = getattr(t, "_n_features_outs", None)
        if outs is None:
            drop = getattr(t, "drop_idx_", None)
            outs = [len(c) - (1 if drop is not None and drop[j] is not None else 0)
                    for j, c in enumerate(t.categories_)]
        return [j for j, k in enumerate(outs) for _ in range(int(k))]
    if name == "KBinsDiscretizer":
        if t.encode == "ordinal":
            return list(range(n))
        return [j for j, k in enumerate(t.n_bins_) for _ in range(int(k))]
    if name == "FunctionTransformer" and t.func is None:
        return list(range(n))
    if name in _ELEMENTWISE:
        return list(range(n))
    raise Unmappable(f"{name} may mix columns")


def resolve_columns(ct, columns, n: int) -> list[int]:
    names = getattr(ct, "feature_names_in_", None)
    names = [str(c) for c in names] if names is not None else None

    def index(c):
        if isinstance(c, (int, np.integer)):
            return int(c) % n
        if names is None or str(c) not in names:
            raise Unmappable(f"column {c!r} is not an input feature")
        return names.index(str(c))

    if callable(columns):
        raise Unmappable("columns chosen by a callable")
    if isinstance(columns, (str, int, np.integer)):
        return [index(columns)]
    if isinstance(columns, slice):
        if isinstance(columns.start, str) or isinstance(columns.stop, str):
            start = index(columns.start) if columns.start is not None else 0
            stop = index(columns.stop) + 1 if columns.stop is not None else n
            return list(range(start, stop))
        return list(range(n))[columns]
    arr = np.asarray(columns)
    if arr.dtype == bool:
        return [int(i) for i in np.flatnonzero(arr)]
    return [index(c) for c in arr.tolist()]


def stored_references(pre, n: int) -> list:
    refs: list = [None] * n
    walk_refs(pre, list(range(n)), refs)
    return refs


def walk_refs(t, cols: list, refs: list) -> None:
    """What t stored about each input column: cols[k] is the input feature of t's k-th column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if t is None or isinstance(t, str):
        return
    if isinstance(t, Pipeline):
        for _, step in t.steps:
            walk_refs(step, cols, refs)
            # Past a step that changes values, statistics are no longer in the feature's units.
            if not (step is None or step == "passthrough" or (type(step).__name__ == "SimpleImputer"
                                                               and not step.add_indicator)):
                return
            try:
                cols = [cols[i] for i in column_sources(step, len(cols))]
            except Unmappable:
                return
        return
    if isinstance(t, ColumnTransformer):
        for _name, trans, columns in t.transformers_:
            try:
                idx = resolve_columns(t, columns, len(cols))
            except Unmappable:
                continue
            if idx:  # a transformer given no columns is never fitted
                walk_refs(trans, [cols[i] for i in idx], refs)
        return
    name = type(t).__name__
    values = None
    if name == "SimpleImputer" and t.strategy != "constant":
        values = list(t.statistics_)
    elif name == "StandardScaler" and t.with_mean and getattr(t, "mean_", None) is not None:
        values = list(t.mean_)
    elif name == "RobustScaler" and t.with_centering and getattr(t, "center_", None) is not None:
        values = list(t.center_)
    elif name in ("OneHotEncoder", "OrdinalEncoder"):
        values = [("levels", [v for v in c.tolist() if not is_nan(v) and v is not None])
                  for c in t.categories_]
    if values is None:
        return
    for k, j in enumerate(cols):
        if k < len(values) and not is_nan(values[k]):
            if is_levels(values[k]) and not values[k][1]:
                continue
            refs[j] = values[k]
