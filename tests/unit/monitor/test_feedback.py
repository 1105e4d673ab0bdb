"""Feedback joins: every outcome and its status, batches, expiry, eviction, live quality against
scikit-learn's own metrics, and the labelled rows written as Parquet."""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
import pyarrow.dataset as ds
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error

from kiln_runtime.handoff import decode_frame, encode_frame
from kiln_runtime.monitor.feedback import FeedbackStore
from kiln_runtime.monitor.payload_log import ParquetLog
from kiln_runtime.monitor.quality import Quality, canonical, classification_metrics

TOKEN = "aaaa0001"
NOW = 1_780_000_000.0


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self):
        return self.now


def frame(ids, rows_each=1, preds=None, ts=NOW, categorical=None):
    n = len(ids) * rows_each
    preds = np.arange(n) % 2 if preds is None else preds
    return decode_frame(encode_frame("m", "1", ["a", "b"], np.arange(2 * n, dtype=float).reshape(n, 2), preds,
                                     categorical, [[i, rows_each, ts] for i in ids]))


def store(clock=None, **kw):
    quality = Quality(kw.pop("window", 1000), kw.pop("task", None))
    return FeedbackStore(quality, clock=clock or Clock(), wait_seconds=kw.pop("wait", 0.0), **kw)


def post(s, doc) -> tuple[int, dict]:
    return s.handle(orjson.dumps(doc))


def test_a_single_request_joins_once():
    s = store()
    s.add(frame([f"{TOKEN}-1", f"{TOKEN}-2"], rows_each=2))
    assert post(s, {"id": f"{TOKEN}-1", "labels": [0, 1]}) == (200, {"id": f"{TOKEN}-1", "result": "joined", "joined": 2})
    status, body = post(s, {"id": f"{TOKEN}-1", "labels": [0, 1]})
    assert status == 409 and body["result"] == "duplicate"
    assert s.quality.snapshot()["rows"] == 2 and s.quality.snapshot()["metrics"]["accuracy"] == 1.0
    assert dict(s.labels_total) == {"joined": 2, "duplicate": 2}


@pytest.mark.parametrize("doc, field, words", [
    ([1, 2], "body", "must be an object"),
    ({"labels": [1]}, "id", "'id' must be a non-empty string"),
    ({"id": 5, "labels": [1]}, "id", "'id'"),
    ({"id": f"{TOKEN}-1"}, "labels", "non-empty array"),
    ({"id": f"{TOKEN}-1", "labels": "1"}, "labels", "non-empty array"),
    ({"id": f"{TOKEN}-1", "labels": [1, 0, 1]}, "labels", "3 labels, but request aaaa0001-1 has 2 rows"),
    ({"id": f"{TOKEN}-1", "labels": [1, [0]]}, "labels[1]", "labels[1] must be a string, number or boolean"),
    ({"id": f"{TOKEN}-1", "labels": [1, None]}, "labels[1]", "labels[1]"),
    ({"feedback": []}, "feedback", "non-empty array"),
    ({"nothing": 1}, "id", "body needs"),
])
def test_malformed_bodies_are_400_naming_the_field(doc, field, words):
    s = store()
    s.add(frame([f"{TOKEN}-1"], rows_each=2))
    status, body = post(s, doc)
    assert status == 400 and body["field"] == field and words in body["error"], body
    assert s.labels_total["invalid"] >= 1


def test_not_json_is_400():
    status, body = store().handle(b"{nope")
    assert status == 400 and body["field"] == "body"


def test_regression_labels_must_be_numbers():
    s = store(task="regression")
    s.add(frame([f"{TOKEN}-1"], preds=np.array([1.5])))
    status, body = post(s, {"id": f"{TOKEN}-1", "labels": ["high"]})
    assert status == 400 and "regressor" in body["error"]
    assert post(s, {"id": f"{TOKEN}-1", "labels": [2]})[0] == 200


def test_unknown_misdirected_and_expired_ids():
    clock = Clock()
    s = store(clock, ttl_seconds=60)
    s.add(frame([f"{TOKEN}-1", f"{TOKEN}-2"]))
    status, body = post(s, {"id": f"{TOKEN}-99", "labels": [1]})
    assert (status, body["error"]) == (404, "unknown request id")
    assert post(s, {"id": "client-id", "labels": [1]})[0] == 404
    status, body = post(s, {"id": "bbbb0002-1", "labels": [1]})
    assert status == 421 and "another replica" in body["error"] and "bbbb0002" in body["error"]
    clock.now += 61  # past the TTL, not yet evicted: compared by the answer time
    status, body = post(s, {"id": f"{TOKEN}-1", "labels": [1]})
    assert status == 410 and body["result"] == "expired"
    s.add(frame([f"{TOKEN}-3"], ts=clock.now))  # evicts the old frame; its ids are remembered
    assert post(s, {"id": f"{TOKEN}-2", "labels": [1]})[0] == 410
    assert s.rows_held == 1
    assert dict(s.labels_total) == {"unknown": 2, "misdirected": 1, "expired": 2}


def test_rows_beyond_the_bound_are_forgotten_oldest_first():
    s = store(max_rows=4)
    for i in range(4):
        s.add(frame([f"{TOKEN}-{i}a", f"{TOKEN}-{i}b"]))
    assert s.rows_held == 4
    assert post(s, {"id": f"{TOKEN}-0a", "labels": [1]})[0] == 410
    assert post(s, {"id": f"{TOKEN}-1b", "labels": [1]})[0] == 410
    assert post(s, {"id": f"{TOKEN}-3a", "labels": [0]})[0] == 200


def test_a_batch_answers_per_item_and_counts():
    s = store()
    s.add(frame([f"{TOKEN}-1", f"{TOKEN}-2", f"{TOKEN}-3"]))
    status, body = post(s, {"feedback": [{"id": f"{TOKEN}-1", "labels": [0]}, {"id": f"{TOKEN}-9", "labels": [1]},
                                         {"id": f"{TOKEN}-2", "labels": [1, 1]}, "junk",
                                         {"id": f"{TOKEN}-3", "labels": [0]}]})
    assert status == 200 and body["joined"] == 2 and body["items"] == 5
    assert body["counts"] == {"joined": 2, "invalid": 2, "unknown": 1}
    assert [r["result"] for r in body["results"]] == ["joined", "unknown", "invalid", "invalid", "joined"]
    assert [r["status"] for r in body["results"]] == [200, 404, 400, 400, 200]
    # Nothing joined: the first item's status, same body.
    status, body = post(s, {"feedback": [{"id": f"{TOKEN}-1", "labels": [0]}, {"id": f"{TOKEN}-8", "labels": [1]}]})
    assert status == 409 and body["joined"] == 0 and body["counts"] == {"duplicate": 1, "unknown": 1}


def test_feedback_that_overtakes_its_rows_waits_for_them():
    s = store(wait=120.0)  # far beyond any scheduling delay: only the frame can end the wait early
    threading.Timer(0.1, lambda: s.add(frame([f"{TOKEN}-7"]))).start()
    t0 = time.monotonic()
    assert post(s, {"id": f"{TOKEN}-7", "labels": [0]})[0] == 200
    assert time.monotonic() - t0 < 60  # woken by the frame, not by the deadline


def test_a_request_split_over_two_frames_joins_whole():
    s = store()
    s.add(decode_frame(encode_frame("m", "1", ["a"], np.zeros((2, 1)), np.array([0, 1]), None,
                                    [[f"{TOKEN}-1", 2, NOW]])))
    s.add(decode_frame(encode_frame("m", "1", ["a"], np.zeros((1, 1)), np.array([1]), None,
                                    [[f"{TOKEN}-1", 1, NOW, 2]])))
    status, body = post(s, {"id": f"{TOKEN}-1", "labels": [0, 1, 0]})
    assert status == 200 and body["joined"] == 3
    assert s.quality.snapshot()["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_canonical_classes():
    assert canonical(1) == canonical(1.0) == canonical("1") == canonical("1.0") == "1"
    assert canonical(True) == canonical("true") == "true"
    assert canonical("cat") == "cat" and canonical(2.5) == "2.5"


@pytest.mark.parametrize("classes", [2, 3])
def test_classification_quality_matches_sklearn(classes):
    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 500)
    p = np.where(rng.random(500) < 0.7, y, rng.integers(0, classes, 500))
    s = store(window=400)
    ids = [f"{TOKEN}-{i:x}" for i in range(500)]
    s.add(frame(ids, preds=p.astype(np.float64)))
    # Labels in the forms clients send: numbers, floats and strings name the same class.
    labels = [int(v) if i % 3 == 0 else (float(v) if i % 3 == 1 else str(v)) for i, v in enumerate(y)]
    status, body = post(s, {"feedback": [{"id": rid, "labels": [lab]} for rid, lab in zip(ids, labels)]})
    assert status == 200 and body["joined"] == 500
    snap = s.quality.snapshot()
    y_w, p_w = y[-400:], p[-400:]
    assert snap["rows"] == 400 and snap["task"] == "classification"
    assert snap["metrics"]["accuracy"] == pytest.approx(accuracy_score(y_w, p_w))
    average = "binary" if classes == 2 else "macro"
    assert snap["f1Average"] == average
    assert snap["metrics"]["f1"] == pytest.approx(f1_score(y_w, p_w, average=average))


def test_text_classes_and_binary_positive_class():
    y = ["cat", "dog", "dog", "cat", "dog"]
    p = ["cat", "cat", "dog", "cat", "dog"]
    m = classification_metrics(y, p)
    assert m["f1"] == pytest.approx(f1_score(y, p, pos_label="dog")) and m["positiveClass"] == "dog"
    assert classification_metrics(["a", "b", "c"], ["a", "c", "x"])["f1"] == pytest.approx(
        f1_score(["a", "b", "c"], ["a", "c", "x"], average="macro"))


def test_regression_quality_matches_sklearn():
    rng = np.random.default_rng(5)
    y = rng.normal(size=300)
    p = y + rng.normal(scale=0.3, size=300)
    s = store()
    ids = [f"{TOKEN}-{i:x}" for i in range(300)]
    s.add(frame(ids, preds=p))
    assert post(s, {"feedback": [{"id": rid, "labels": [float(v)]} for rid, v in zip(ids, y)]})[0] == 200
    snap = s.quality.snapshot()
    assert snap["task"] == "regression" and snap["rows"] == 300
    assert snap["metrics"]["mae"] == pytest.approx(mean_absolute_error(y, p))
    assert snap["metrics"]["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)))


def test_quality_is_empty_before_any_label():
    assert store().quality.snapshot() == {"task": "classification", "rows": 0, "window": 1000, "metrics": {}}


def test_joined_rows_are_written_with_the_label_column(tmp_path):
    plog = ParquetLog((tmp_path / "labelled").as_uri(), "m", "1", "feedcafe", flush_rows=10_000,
                      flush_seconds=3600, buffer_rows=10_000)
    s = store(labelled=plog, label_column="churned")
    s.add(frame([f"{TOKEN}-1", f"{TOKEN}-2"], rows_each=2, categorical={"colour": ["red", "blue", None, "red"]}))
    assert post(s, {"feedback": [{"id": f"{TOKEN}-2", "labels": [1, "0"]}, {"id": f"{TOKEN}-1", "labels": [1, 1]}]})[0] == 200
    plog.flush_now()
    table = ds.dataset(tmp_path / "labelled", format="parquet", partitioning="hive").to_table().to_pydict()
    order = sorted(range(4), key=lambda i: (table["request_id"][i], table["row"][i]))
    pick = lambda col: [table[col][i] for i in order]  # noqa: E731
    assert pick("request_id") == [f"{TOKEN}-1"] * 2 + [f"{TOKEN}-2"] * 2
    assert pick("row") == [0, 1, 0, 1] and pick("churned") == ["1", "1", "1", "0"]
    assert pick("a") == [0.0, 2.0, 4.0, 6.0] and pick("colour") == ["red", "blue", None, "red"]
    assert pick("prediction") == [0.0, 1.0, 0.0, 1.0] and set(table["model"]) == {"m"}


def test_labels_join_fast_enough():
    """A smoke check of the per-label cost, not a timing assertion (benchmarks/feedback.py measures)."""
    s = store(max_rows=100_000)
    ids = [f"{TOKEN}-{i:x}" for i in range(20_000)]
    for k in range(0, 20_000, 256):
        s.add(frame(ids[k:k + 256]))
    status, body = post(s, {"feedback": [{"id": rid, "labels": [1]} for rid in ids]})
    assert status == 200 and body["joined"] == 20_000
