"""Prometheus exposition of the latest drift report and the receiver's counters.

A custom collector renders the metrics from the report at scrape time instead of keeping Gauge
objects in sync: a feature that stops being evaluated simply disappears, nothing goes stale, and
the label sets are exactly the baseline's features (capped by KILN_MONITOR_MAX_FEATURES), so
cardinality is bounded by construction. Names are documented in docs/pod-contract.md.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .feedback import RESULTS
from .receiver import Counters

# (metric name, report key, help) for per-feature gauges; a feature gets a sample only for the
# statistics that apply to its type and were computed in the last evaluation.
FEATURE_GAUGES = (
    ("kiln_feature_drift_psi", "psi", "Population Stability Index of the feature's window against the baseline."),
    ("kiln_feature_drift_ks_statistic", "ksStatistic", "Two-sample Kolmogorov-Smirnov statistic (numeric features)."),
    ("kiln_feature_drift_ks_pvalue", "ksPValue", "Kolmogorov-Smirnov p-value (numeric features)."),
    ("kiln_feature_drift_chi2_pvalue", "chi2PValue", "Chi-square goodness-of-fit p-value (categorical features)."),
    ("kiln_feature_drift_js_distance", "jsDistance", "Jensen-Shannon distance, base 2 (categorical features)."),
    ("kiln_feature_missing_rate", "missingRate", "Share of the window's values that are missing."),
    ("kiln_feature_out_of_range_rate", "outOfRangeRate",
     "Share of the window's values outside the baseline's min/max, or unseen categories."),
)
PREDICTION_GAUGES = (
    ("kiln_prediction_drift_psi", "psi", "Population Stability Index of the predictions against the baseline."),
    ("kiln_prediction_drift_ks_pvalue", "ksPValue", "Kolmogorov-Smirnov p-value of numeric predictions."),
    ("kiln_prediction_drift_chi2_pvalue", "chi2PValue", "Chi-square p-value of categorical predictions."),
    ("kiln_prediction_missing_rate", "missingRate", "Share of missing predictions in the window."),
)


class DriftCollector:
    """Collects from callables so it always reads the sidecar's current state."""

    def __init__(self, labels: tuple[str, str], report: Callable[[], dict | None],
                 counters: Callable[[], Counters | None], capacity: int):
        self.model, self.version = labels
        self.report, self.counters, self.capacity = report, counters, capacity

    def describe(self) -> list:
        return []  # the families depend on the report; skip registration-time collection

    def collect(self) -> Iterator[Metric]:
        base = [self.model, self.version]
        names = ["model", "version"]
        report = self.report()
        counters = self.counters()

        up = GaugeMetricFamily("kiln_drift_baseline_loaded", "1 once the baseline is loaded and rows are received.",
                               labels=names)
        up.add_metric(base, 1.0 if counters is not None else 0.0)
        yield up
        cap = GaugeMetricFamily("kiln_drift_window_capacity_rows", "Rows the sliding window holds when full.",
                                labels=names)
        cap.add_metric(base, self.capacity)
        yield cap

        if counters is not None:
            yield from self._counters(names, base, counters)
        if report is None:
            return

        for name, key, doc in FEATURE_GAUGES:
            g = GaugeMetricFamily(name, doc, labels=[*names, "feature"])
            for feature, r in report["features"].items():
                if r.get(key) is not None:
                    g.add_metric([*base, feature], r[key])
            yield g
        detected = GaugeMetricFamily("kiln_feature_drift_detected",
                                     "1 when the feature drifted in the last evaluation.", labels=[*names, "feature"])
        for feature, r in report["features"].items():
            if r["evaluated"]:
                detected.add_metric([*base, feature], 1.0 if r["drift"] else 0.0)
        yield detected

        pred = report.get("prediction")
        for name, key, doc in PREDICTION_GAUGES:
            g = GaugeMetricFamily(name, doc, labels=names)
            if pred and pred.get(key) is not None:
                g.add_metric(base, pred[key])
            yield g

        scalars = (
            ("kiln_drift_detected", "1 when any feature or the predictions drifted in the last evaluation.",
             1.0 if report["driftDetected"] else 0.0),
            ("kiln_drift_window_rows", "Rows currently in the sliding window.", report["windowRows"]),
            ("kiln_drift_score", "The largest feature PSI in the last evaluation.", report["score"]),
            ("kiln_drift_last_evaluation_timestamp_seconds", "Unix time of the last drift evaluation.",
             report["evaluatedAtUnix"]),
            ("kiln_drift_evaluation_duration_seconds", "Time the last drift evaluation took.",
             report["evaluationSeconds"]),
        )
        for name, doc, value in scalars:
            g = GaugeMetricFamily(name, doc, labels=names)
            if value is not None:
                g.add_metric(base, value)
            yield g

    @staticmethod
    def _counters(names: list[str], base: list[str], c: Counters) -> Iterator[Metric]:
        for name, doc, value in (
            ("kiln_drift_rows_received", "Rows received from the model server and added to the window.",
             c.rows_received),
            ("kiln_drift_frames_received", "Hand-off frames received and added to the window.", c.frames_received),
        ):
            m = CounterMetricFamily(name, doc, labels=names)
            m.add_metric(base, value)
            yield m
        for name, doc, table in (
            ("kiln_drift_frames_dropped", "Datagrams dropped, by reason (malformed, model_mismatch, error).",
             c.frames_dropped),
            ("kiln_drift_rows_dropped", "Rows in well-formed frames that were dropped, by reason.", c.rows_dropped),
        ):
            m = CounterMetricFamily(name, doc, labels=[*names, "reason"])
            for reason, value in sorted(dict(table).items()):
                m.add_metric([*base, reason], value)
            yield m


class LoopCollector:
    """The data loop's series: payload log, feedback outcomes, live quality (docs/metrics.md)."""

    def __init__(self, labels: tuple[str, str], payload=None, labelled=None, feedback=None, quality=None):
        self.model, self.version = labels
        self.payload, self.labelled, self.feedback, self.quality = payload, labelled, feedback, quality

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        names, base = ["model", "version"], [self.model, self.version]
        for prefix, log, what in (("kiln_payload", self.payload, "served rows"),
                                  ("kiln_labelled", self.labelled, "labelled rows")):
            if log is None:
                continue
            m = CounterMetricFamily(f"{prefix}_rows_written", f"{what.capitalize()} written to the store as Parquet.",
                                    labels=names)
            m.add_metric(base, log.rows_written)
            yield m
            m = CounterMetricFamily(f"{prefix}_files_written", f"Parquet files of {what} written.", labels=names)
            m.add_metric(base, log.files_written)
            yield m
            m = CounterMetricFamily(f"{prefix}_rows_dropped",
                                    f"{what.capitalize()} not written, by reason (buffer_full, store_error, "
                                    "error, stopped).", labels=[*names, "reason"])
            for reason, value in sorted(dict(log.rows_dropped).items()):
                m.add_metric([*base, reason], value)
            yield m
        if self.feedback is not None:
            m = CounterMetricFamily("kiln_feedback_labels", "Labels received as feedback, by outcome "
                                    "(joined, unknown, expired, duplicate, invalid, misdirected).",
                                    labels=[*names, "result"])
            totals = dict(self.feedback.labels_total)
            for result in RESULTS:
                m.add_metric([*base, result], totals.get(result, 0))
            yield m
        if self.quality is not None:
            snap = self.quality.snapshot()
            g = GaugeMetricFamily("kiln_live_quality", "Model quality over the last labelled rows "
                                  "(accuracy and f1, or mae and rmse).", labels=[*names, "metric"])
            for metric, value in sorted(snap["metrics"].items()):
                g.add_metric([*base, metric], value)
            yield g
            g = GaugeMetricFamily("kiln_live_quality_rows", "Labelled rows the live quality is computed over.",
                                  labels=names)
            g.add_metric(base, snap["rows"])
            yield g
