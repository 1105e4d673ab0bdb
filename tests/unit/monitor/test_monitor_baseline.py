"""Reading the baseline profile: both bin layouts, degenerate columns, booleans, the feature cap."""

import numpy as np
import orjson
import pytest
from monitor_profiles import categorical_column, make_profile, numeric_column

from kiln_runtime.monitor import baseline
from kiln_runtime.monitor.baseline import BaselineError, CategoricalBaseline, NumericBaseline, category_key


def test_histogram_layout_edges_include_min_and_max():
    col = baseline.parse_column("x", {"type": "number", "min": 0, "max": 10, "binEdges": [0, 2, 5, 10],
                                      "binFractions": [2, 3, 5], "sample": [1, None, 3, 2]})
    assert isinstance(col, NumericBaseline)
    assert col.interior_edges.tolist() == [2, 5]
    assert col.bin_fractions.tolist() == pytest.approx([0.2, 0.3, 0.5])  # normalised
    assert col.sample_sorted.tolist() == [1, 2, 3]  # nulls dropped, sorted once


def test_interior_cut_points_layout():
    col = baseline.parse_column("x", {"type": "integer", "binEdges": [2, 5], "binFractions": [0.2, 0.3, 0.5]})
    assert col.interior_edges.tolist() == [2, 5] and col.bin_fractions.sum() == pytest.approx(1)


def test_constant_column_gets_one_bin_with_room_on_both_sides():
    col = baseline.parse_column("c", {"type": "number", "min": 3, "max": 3, "binEdges": [3, 3],
                                      "binFractions": [1.0]})
    assert col.bin_fractions.tolist() == [0.0, 1.0, 0.0]
    assert np.searchsorted(col.interior_edges, [2.9, 3.0, 3.1], side="right").tolist() == [0, 1, 2]


def test_missing_bins_fall_back_to_sample_deciles():
    col = baseline.parse_column("x", {"type": "number", "sample": list(range(100))})
    assert col.interior_edges.size == 9 and col.bin_fractions.sum() == pytest.approx(1)


def test_categories_are_renormalised_without_nulls_and_get_an_other_bucket():
    col = baseline.parse_column("c", {"type": "category", "nullFraction": 0.2,
                                      "categories": {"a": 0.6, "b": 0.2, "null": 0.0}})
    assert isinstance(col, CategoricalBaseline)
    assert col.categories == ("a", "b", "null")
    assert col.fractions.tolist() == pytest.approx([0.75, 0.25, 0.0, 0.0]) and col.other == 3


def test_boolean_spellings_meet():
    col = baseline.parse_column("f", {"type": "boolean", "categories": {"True": 0.7, "False": 0.3}})
    assert col.categories == ("true", "false")
    for served in (True, np.bool_(True), "true", "True", 1, 1.0):
        assert category_key(served, "boolean") == "true"
    assert category_key(1.0) == "1" and category_key(2.5) == "2.5" and category_key(float("nan")) is None


@pytest.mark.parametrize("col,match", [
    ({"type": "text"}, "unknown type"),
    ({"type": "category", "categories": ["a"]}, "categories"),
    ({"type": "number", "binEdges": [0, 1, 2], "binFractions": [-1, 2]}, "non-negative"),
    ("nope", "expected an object"),
])
def test_unusable_columns_are_named(col, match):
    with pytest.raises(BaselineError, match=match):
        baseline.parse_column("bad", col)


def test_an_unusable_column_costs_only_that_column():
    rng = np.random.default_rng(0)
    profile = make_profile({"x": numeric_column(rng.normal(size=50)), "bad": {"type": "text", "count": 1},
                            "odd": {"type": "number", "count": 1, "min": "low", "binEdges": [0, 1],
                                    "binFractions": [1]}},
                           predictions={"type": "number", "binEdges": [0, 1], "binFractions": [-1.0]})
    parsed = baseline.parse(profile, 10)
    assert list(parsed.features) == ["x"] and parsed.prediction is None
    assert set(parsed.unusable) == {"bad", "odd", "prediction"}


def test_contract_with_profile_py():
    """What kiln_runtime.profile writes, this reads: every column kind, constant and all-missing."""
    import pandas as pd

    from kiln_runtime.monitor.evaluate import Thresholds, evaluate
    from kiln_runtime.monitor.window import Windows
    from kiln_runtime.profile import profile_column, profile_frame

    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({
        "x": rng.normal(size=n), "k": rng.integers(0, 4, n), "const": np.full(n, 7.0),
        "empty": np.full(n, np.nan), "color": rng.choice(["red", "blue"], n), "flag": rng.integers(0, 2, n),
        "nothing": [None] * n,
    })
    schema = {"x": "number", "k": "integer", "const": "number", "empty": "number", "color": "category",
              "flag": "boolean", "nothing": "category"}
    profile = profile_frame(df, schema)
    profile["predictions"] = profile_column(rng.choice(["yes", "no"], n), "category")
    parsed = baseline.parse(orjson.loads(orjson.dumps(profile)), 100)  # through JSON, as stored
    assert list(parsed.features) == list(schema) and not parsed.unusable
    assert parsed.features["flag"].categories == ("false", "true")
    assert parsed.features["const"].bin_fractions.tolist() == [0.0, 1.0, 0.0]

    windows = Windows(parsed, 5000)
    from kiln_runtime.handoff import decode_frame, encode_frame
    numeric = ["x", "k", "const", "empty", "flag"]
    frame = encode_frame("m", "1", numeric, df[numeric].to_numpy(dtype=float), np.zeros(n),
                         {"color": df["color"].tolist(), "nothing": df["nothing"].tolist()})
    windows.ingest(decode_frame(frame))
    report = evaluate(parsed, windows.snapshot(), Thresholds(min_rows=100), "m", "1", 5000)
    f = report["features"]
    assert not any(f[c]["drift"] for c in ("x", "k", "const", "color", "flag")), report["worstFeatures"]
    assert f["x"]["psi"] < 0.01 and f["flag"]["chi2PValue"] > 0.01 and f["const"]["psi"] == 0.0
    assert f["empty"]["missingRate"] == 1.0 and f["empty"]["psi"] is None
    assert f["nothing"]["missingRate"] == 1.0 and f["nothing"]["evaluated"] is False
    assert report["prediction"]["outOfRangeRate"] == 1.0  # zeros were never a "yes" or a "no"


def test_feature_cap_bounds_the_monitored_columns():
    rng = np.random.default_rng(0)
    profile = make_profile({f"f{i}": numeric_column(rng.normal(size=50)) for i in range(7)})
    parsed = baseline.parse(profile, max_features=5)
    assert list(parsed.features) == ["f0", "f1", "f2", "f3", "f4"]
    assert parsed.dropped_features == ("f5", "f6")


def test_prediction_profile_as_one_column_or_a_named_map():
    x = {"x": numeric_column(np.arange(20.0))}
    one = baseline.parse(make_profile(x, predictions=numeric_column(np.arange(20.0))), 10)
    assert one.prediction.name == "prediction"
    named = baseline.parse(make_profile(x, predictions={"label": categorical_column(["a", "b"])}), 10)
    assert named.prediction.name == "label" and named.prediction.kind == "categorical"
    assert baseline.parse(make_profile(x), 10).prediction is None


def test_load_through_the_artifact_store(tmp_path):
    path = tmp_path / "profile.json"
    path.write_bytes(orjson.dumps(make_profile({"x": numeric_column(np.arange(30.0))})))
    assert list(baseline.load(f"file://{path}", 10).features) == ["x"]
    path.write_text("{not json")
    with pytest.raises(BaselineError, match="not JSON"):
        baseline.load(f"file://{path}", 10)
