"""Configuration from the environment, and the Prometheus exposition of a report."""

import numpy as np
import pytest
from monitor_profiles import categorical_column, make_profile, numeric_column
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kiln_runtime.handoff import DEFAULT_SOCKET, decode_frame, encode_frame
from kiln_runtime.monitor import baseline, config
from kiln_runtime.monitor.evaluate import Thresholds, evaluate
from kiln_runtime.monitor.metrics import DriftCollector
from kiln_runtime.monitor.receiver import Counters
from kiln_runtime.monitor.window import Windows


def test_defaults():
    cfg = config.from_env({"KILN_BASELINE_URI": "s3://b/profile.json"})
    assert cfg.socket_path == DEFAULT_SOCKET and cfg.window_rows == 10000 and cfg.port == 9180
    assert cfg.thresholds == Thresholds(psi=0.2, alpha=0.001, min_rows=1000, top=5)
    assert cfg.interval_seconds == 15.0 and cfg.max_features == 100 and cfg.model == "unknown"


def test_everything_set():
    cfg = config.from_env({
        "KILN_BASELINE_URI": "file:///b.json", "KILN_HANDOFF_SOCKET": "/tmp/x.sock", "KILN_MODEL_NAME": "iris",
        "KILN_MODEL_VERSION": "3", "KILN_MONITOR_WINDOW_ROWS": "500", "KILN_MONITOR_MIN_ROWS": "200",
        "KILN_MONITOR_INTERVAL_SECONDS": "0.5", "KILN_MONITOR_PSI_THRESHOLD": "0.1", "KILN_MONITOR_ALPHA": "0",
        "KILN_MONITOR_PORT": "0", "KILN_MONITOR_HOST": "127.0.0.1", "KILN_MONITOR_MAX_FEATURES": "20",
        "KILN_MONITOR_TOP_FEATURES": "3"})
    assert (cfg.model, cfg.version, cfg.window_rows, cfg.interval_seconds, cfg.port) == ("iris", "3", 500, 0.5, 0)
    assert cfg.thresholds == Thresholds(psi=0.1, alpha=0.0, min_rows=200, top=3)
    assert config.from_env({"KILN_BASELINE_URI": "x", "KILN_MONITOR_WINDOW_ROWS": "500"}).thresholds.min_rows == 100


@pytest.mark.parametrize("env,match", [
    ({}, "KILN_BASELINE_URI is required"),
    ({"KILN_MONITOR_WINDOW_ROWS": "lots"}, "KILN_MONITOR_WINDOW_ROWS='lots': not a valid int"),
    ({"KILN_MONITOR_WINDOW_ROWS": "100", "KILN_MONITOR_MIN_ROWS": "200"}, "KILN_MONITOR_MIN_ROWS"),
    ({"KILN_MONITOR_ALPHA": "2"}, "between 0.0 and 1.0"),
    ({"KILN_MONITOR_PORT": "70000"}, "KILN_MONITOR_PORT"),
])
def test_bad_values_name_the_variable(env, match):
    env = {"KILN_BASELINE_URI": "file:///b.json", **env} if "KILN_BASELINE_URI is" not in match else env
    with pytest.raises(config.ConfigError, match=match):
        config.from_env(env)


def _scrape(collector) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_render_the_report_with_bounded_labels():
    rng = np.random.default_rng(0)
    profile = make_profile({"x": numeric_column(rng.normal(size=5000)), "c": categorical_column(["a", "b"] * 50),
                            "never_sent": numeric_column(rng.normal(size=100))},
                           predictions=numeric_column(rng.normal(size=5000)))
    base = baseline.parse(profile, 10)
    windows = Windows(base, 2000)
    m = rng.normal(1.0, size=(2000, 1))
    windows.ingest(decode_frame(encode_frame("iris", "3", ["x"], m, m[:, 0], {"c": ["a", "b"] * 1000})))
    report = evaluate(base, windows.snapshot(), Thresholds(min_rows=100), "iris", "3", 2000)
    counters = Counters()
    counters.rows_received, counters.frames_received = 2000, 1
    counters.frames_dropped["malformed"] = 4
    s = _scrape(DriftCollector(("iris", "3"), lambda: report, lambda: counters, 2000))

    mv = (("model", "iris"), ("version", "3"))
    x = tuple(sorted(mv + (("feature", "x"),)))
    c = tuple(sorted(mv + (("feature", "c"),)))
    assert s[("kiln_feature_drift_psi", x)] > 0.2
    assert s[("kiln_feature_drift_ks_pvalue", x)] < 1e-6
    assert s[("kiln_feature_drift_detected", x)] == 1.0 and s[("kiln_feature_drift_detected", c)] == 0.0
    assert ("kiln_feature_drift_chi2_pvalue", c) in s and ("kiln_feature_drift_ks_pvalue", c) not in s
    assert s[("kiln_feature_missing_rate", x)] == 0.0 and ("kiln_feature_out_of_range_rate", x) in s
    assert s[("kiln_prediction_drift_psi", mv)] > 0.2
    assert s[("kiln_drift_detected", mv)] == 1.0 and s[("kiln_drift_window_rows", mv)] == 2000
    assert s[("kiln_drift_rows_received_total", mv)] == 2000
    assert s[("kiln_drift_frames_dropped_total", tuple(sorted(mv + (("reason", "malformed"),))))] == 4
    features = {dict(k[1]).get("feature") for k in s if k[0].startswith("kiln_feature_")}
    assert features == {"x", "c"}  # a feature with no rows exports nothing


def test_metrics_before_the_baseline_is_loaded():
    s = _scrape(DriftCollector(("iris", "3"), lambda: None, lambda: None, 100))
    assert s[("kiln_drift_baseline_loaded", (("model", "iris"), ("version", "3")))] == 0.0
    assert not any(name.startswith("kiln_feature_") for name, _ in s)
