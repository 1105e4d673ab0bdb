"""The drift decision on windows built from known distributions."""

import numpy as np
import pytest
from monitor_profiles import categorical_column, make_profile, numeric_column

from kiln_runtime.handoff import decode_frame, encode_frame
from kiln_runtime.monitor import baseline
from kiln_runtime.monitor.evaluate import Thresholds, evaluate
from kiln_runtime.monitor.window import Windows

FEATURES = [f"f{i}" for i in range(10)]
COLORS = ["red", "green", "blue", "black"]
COLOR_P = [0.4, 0.3, 0.2, 0.1]


def _profile(rng):
    train = rng.normal(size=(20_000, len(FEATURES)))
    cols = {name: numeric_column(train[:, i], seed=i) for i, name in enumerate(FEATURES)}
    cols["color"] = categorical_column(rng.choice(COLORS, size=20_000, p=COLOR_P).tolist())
    preds = numeric_column(train[:, 0] + train[:, 1])
    return make_profile(cols, predictions=preds)


def _run(rng, shift=None, color_p=COLOR_P, rows=5000, th=None, capacity=5000):
    th = th or Thresholds(min_rows=1000)
    base = baseline.parse(_profile(rng), max_features=100)
    windows = Windows(base, capacity)
    for _ in range(rows // 250):
        matrix = rng.normal(size=(250, len(FEATURES)))
        if shift:
            matrix[:, FEATURES.index(shift)] += 1.0  # one standard deviation
        colors = rng.choice(COLORS, size=250, p=color_p).tolist()
        frame = encode_frame("m", "1", FEATURES, matrix, matrix[:, 0] + matrix[:, 1], {"color": colors})
        windows.ingest(decode_frame(frame))
    return evaluate(base, windows.snapshot(), th, "m", "1", capacity)


def test_in_distribution_traffic_has_no_drift():
    rng = np.random.default_rng(7)
    for _ in range(5):  # several windows: a false alarm in any of them fails the test
        report = _run(rng)
        assert not report["driftDetected"], report["worstFeatures"]
        assert report["score"] < 0.05 and report["driftedFeatures"] == []
        assert report["thresholds"]["tests"] == len(FEATURES) + 2  # features, color, predictions


def test_one_std_shift_names_that_feature_first():
    report = _run(np.random.default_rng(8), shift="f3")
    assert report["driftDetected"]
    assert report["worstFeatures"][0]["feature"] == "f3"
    assert report["driftedFeatures"] == ["f3"]
    f3 = report["features"]["f3"]
    assert f3["psi"] > 0.5 and f3["ksPValue"] < 1e-10 and f3["drift"]
    assert f3["outOfRangeRate"] > 0  # shifted values pass the baseline's max
    assert report["features"]["f4"]["drift"] is False


def test_categorical_shift_is_detected_by_psi_chi_square_and_js():
    report = _run(np.random.default_rng(9), color_p=[0.1, 0.2, 0.3, 0.4])
    color = report["features"]["color"]
    assert color["drift"] and color["psi"] > 0.2 and color["chi2PValue"] < 1e-10 and color["jsDistance"] > 0.1
    assert report["driftedFeatures"] == ["color"]


def test_prediction_drift_follows_its_inputs():
    report = _run(np.random.default_rng(10), shift="f0")
    assert report["prediction"]["drift"] and report["prediction"]["psi"] > 0.2


def test_nothing_is_decided_below_the_minimum_fill():
    report = _run(np.random.default_rng(11), shift="f3", rows=500, th=Thresholds(min_rows=1000))
    assert not report["driftDetected"] and report["worstFeatures"] == []
    f3 = report["features"]["f3"]
    assert f3["rows"] == 500 and f3["psi"] is None and f3["evaluated"] is False
    assert f3["outOfRangeRate"] is not None  # rates are reported from the first row


def test_missing_and_unseen_values_are_rates_not_errors():
    rng = np.random.default_rng(12)
    base = baseline.parse(_profile(rng), max_features=100)
    windows = Windows(base, 1000)
    matrix = rng.normal(size=(100, len(FEATURES)))
    matrix[:25, 2] = np.nan
    windows.ingest(decode_frame(encode_frame("m", "1", FEATURES, matrix, np.zeros(100),
                                             {"color": ["violet"] * 10 + ["red"] * 90})))
    report = evaluate(base, windows.snapshot(), Thresholds(min_rows=50), "m", "1", 1000)
    assert report["features"]["f2"]["missingRate"] == pytest.approx(0.25)
    assert report["features"]["color"]["outOfRangeRate"] == pytest.approx(0.1)


def test_empty_windows_make_a_valid_report():
    rng = np.random.default_rng(13)
    base = baseline.parse(_profile(rng), max_features=100)
    report = evaluate(base, Windows(base, 100).snapshot(), Thresholds(), "m", "1", 100)
    assert report["driftDetected"] is False and report["windowRows"] == 0 and report["score"] is None
