import json

import numpy as np
import pandas as pd
import pytest

from kiln_runtime.monitor.baseline import parse
from kiln_runtime.profile import category_key, profile_column, profile_frame


def test_numeric_column_statistics_and_decile_bins():
    rng = np.random.default_rng(1)
    values = rng.normal(10, 2, 5000)
    values[::50] = np.nan  # 100 missing
    col = profile_column(values, "number", seed=3)
    present = values[~np.isnan(values)]
    assert col["type"] == "number" and col["count"] == 5000
    assert col["nullFraction"] == pytest.approx(100 / 5000)
    assert col["min"] == present.min() and col["max"] == present.max()
    assert col["mean"] == pytest.approx(present.mean()) and col["std"] == pytest.approx(present.std())
    assert col["binEdges"] == pytest.approx(np.quantile(present, np.linspace(0, 1, 11)).tolist())
    assert len(col["binFractions"]) == 10 and sum(col["binFractions"]) == pytest.approx(1.0)
    assert all(f == pytest.approx(0.1, abs=0.002) for f in col["binFractions"])
    assert len(col["sample"]) == 1000 and set(col["sample"]) <= set(present.tolist())
    assert profile_column(values, "number", seed=3)["sample"] == col["sample"]  # seeded
    assert profile_column(values, "number", seed=4)["sample"] != col["sample"]


def test_bins_are_deduplicated_and_constant_columns_have_one_bin():
    col = profile_column([1, 1, 1, 1, 1, 1, 2, 3], "integer")
    assert col["binEdges"] == sorted(set(col["binEdges"]))
    assert len(col["binFractions"]) == len(col["binEdges"]) - 1
    const = profile_column([5.0] * 20, "number")
    assert const["binEdges"] == [5.0] and const["binFractions"] == [1.0] and const["std"] == 0.0
    empty = profile_column([None, np.nan], "number")
    assert empty["nullFraction"] == 1.0 and empty["min"] is None and empty["binEdges"] == []


def test_categorical_and_boolean_columns():
    col = profile_column(["a", "b", "a", None, "a"], "category")
    assert col == {"type": "category", "count": 5, "nullFraction": 0.2, "categories": {"a": 0.75, "b": 0.25}}
    flags = profile_column([1.0, 0.0, 1.0, np.nan], "boolean")
    assert flags["categories"] == {"false": pytest.approx(1 / 3), "true": pytest.approx(2 / 3)}
    assert category_key(True) == "true" and category_key(2.0) == "2" and category_key(np.int64(1)) == "1"
    with pytest.raises(ValueError, match="unknown column type"):
        profile_column([1], "text")


def test_profile_frame_shape_is_plain_json_and_the_monitor_parses_it():
    df = pd.DataFrame({"x": np.linspace(0, 1, 200), "c": ["u", "v"] * 100, "b": [1.0, 0.0] * 100,
                       "extra": range(200)})
    schema = {"columns": [{"name": "x", "type": "number"}, {"name": "c", "type": "category"},
                          {"name": "b", "type": "boolean"}]}
    profile = profile_frame(df, schema)
    assert profile["rows"] == 200 and list(profile["columns"]) == ["x", "c", "b"]  # schema order, schema only
    json.dumps(profile, allow_nan=False)
    profile["predictions"] = profile_column(["u", "v", "u"], "category")
    baseline = parse(profile, max_features=10)  # the sidecar's own parser reads what training writes
    assert set(baseline.features) == {"x", "c", "b"} and baseline.prediction is not None
