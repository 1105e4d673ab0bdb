"""Metrics: valid Prometheus text, classes counted, workers' rows summed."""

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from kiln_runtime.serve.metrics import V1, V2, Metrics, SharedRows


def samples(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def key(name, **labels):
    return name, tuple(sorted({"model": "m", "version": "2", **labels}.items()))


def test_render_is_valid_prometheus_text_with_every_family():
    m = Metrics("m", "2", "ab" * 32, "onnx", "onnx", ("0", "1"))
    m.request(V1, 200, 0.0004)
    m.request(V1, 400, 0.002)
    m.request(V2, 418, 0.01)  # an unlisted code is counted as "other"
    m.batch(3, 0.0002, np.array([0, 1, 1]))
    got = samples(m.render())
    assert got[key("kiln_requests_total", protocol="v1", code="200")] == 1
    assert got[key("kiln_requests_total", protocol="v2", code="other")] == 1
    assert got[key("kiln_request_duration_seconds_bucket", protocol="v1", le="0.0005")] == 1
    assert got[key("kiln_request_duration_seconds_count", protocol="v1")] == 2
    assert got[key("kiln_batch_size_sum")] == 3
    assert got[key("kiln_predictions_total", **{"class": "1"})] == 2
    assert got[key("kiln_model_info", digest="ab" * 32, runtime="onnx", format="onnx")] == 1
    assert got[key("kiln_handoff_rows_total", outcome="dropped")] == 0


def test_string_labels_and_regression_buckets():
    m = Metrics("m", "2", "x", "sklearn", "skops", ("cat", "dog"))
    m.batch(2, 0.001, np.array(["dog", "dog"], dtype=object))
    assert samples(m.render())[key("kiln_predictions_total", **{"class": "dog"})] == 2
    r = Metrics("m", "2", "x", "sklearn", "skops", None)
    r.batch(3, 0.001, np.array([-5.0, 0.05, 50.0]))
    got = samples(r.render())
    assert got[key("kiln_prediction_value_bucket", le="0.1")] == 2
    assert got[key("kiln_prediction_value_count")] == 3


def test_workers_rows_are_summed_on_scrape():
    shared = SharedRows(2, 4096)
    a = Metrics("m", "2", "x", "onnx", "onnx", ("0", "1"), shared=shared, slot=0)
    b = Metrics("m", "2", "x", "onnx", "onnx", ("0", "1"), shared=shared, slot=1)
    a.request(V1, 200, 0.001)
    b.request(V1, 200, 0.001)
    b.request(V1, 200, 0.001)
    b.publish()
    assert samples(a.render())[key("kiln_requests_total", protocol="v1", code="200")] == 3
