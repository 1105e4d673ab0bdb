"""Sliding windows: bounded memory, exactly the last W values, frames folded in by column."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from monitor_profiles import categorical_column, make_profile, numeric_column

from kiln_runtime.handoff import decode_frame, encode_frame
from kiln_runtime.monitor import baseline
from kiln_runtime.monitor.window import MISSING, Ring, Windows


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 50), pushes=st.lists(st.integers(0, 120), max_size=20))
def test_ring_keeps_exactly_the_last_capacity_values(capacity, pushes):
    ring, everything, start = Ring(capacity, np.float64), [], 0
    for n in pushes:
        chunk = np.arange(start, start + n, dtype=np.float64)
        start += n
        ring.push(chunk)
        everything.extend(chunk.tolist())
    assert sorted(ring.snapshot().tolist()) == everything[-capacity:] if everything else ring.size == 0
    assert ring.buf.shape == (capacity,)


def test_ring_memory_does_not_grow_with_traffic():
    ring = Ring(1000, np.float64)
    buf = ring.buf
    for _ in range(2000):
        ring.push(np.ones(257))
    assert ring.buf is buf and ring.size == 1000 and buf.nbytes == 8000


def _windows(capacity=100):
    rng = np.random.default_rng(0)
    profile = make_profile(
        {
            "x": numeric_column(rng.normal(size=1000)),
            "n": numeric_column(rng.integers(0, 9, 1000), kind="integer"),
            "color": categorical_column(["red", "green", "blue"] * 100),
            "flag": categorical_column([True, False] * 100, kind="boolean"),
            "target": numeric_column(rng.normal(size=1000)),  # never sent: the label column
        },
        predictions=categorical_column(["yes", "no"] * 50),
    )
    return Windows(baseline.parse(profile, max_features=100), capacity)


def _ingest(windows, rows, numeric, matrix, preds, categorical):
    windows.ingest(decode_frame(encode_frame("m", "1", numeric, matrix, preds, categorical)))


def test_frames_feed_each_column_by_name_whatever_the_column_order():
    w = _windows()
    _ingest(w, 3, ["n", "unknown", "x"], np.array([[1, 7, 0.5], [2, 7, np.nan], [3, 7, 1.5]]),
            ["yes", "no", "maybe"], {"color": ["red", None, "violet"], "flag": [True, "False", False]})
    snap = w.snapshot()
    assert snap.rows_received == 3
    np.testing.assert_array_equal(snap.features["x"], [0.5, np.nan, 1.5])
    assert snap.features["n"].tolist() == [1, 2, 3]
    cats = w.features["color"].base.categories
    assert snap.features["color"].tolist() == [cats.index("red"), MISSING, len(cats)]  # violet: other
    flags = w.features["flag"].base.categories
    assert snap.features["flag"].tolist() == [flags.index("true"), flags.index("false"), flags.index("false")]
    preds = w.prediction.base.categories
    assert snap.prediction.tolist() == [preds.index("yes"), preds.index("no"), len(preds)]
    assert snap.features["target"].size == 0  # a column never sent has no rows, not missing rows


def test_categorical_feature_sent_as_numbers_and_numeric_feature_sent_as_text():
    w = _windows()
    _ingest(w, 4, ["flag"], np.array([[1.0], [0.0], [np.nan], [1.0]]), np.zeros(4),
            {"x": ["1.5", None, "abc", 2]})
    snap = w.snapshot()
    flags = w.features["flag"].base.categories  # booleans as 1/0 are still true/false
    assert snap.features["flag"].tolist() == [flags.index("true"), flags.index("false"), MISSING,
                                              flags.index("true")]
    np.testing.assert_array_equal(snap.features["x"], [1.5, np.nan, np.nan, 2.0])


def test_window_keeps_only_the_last_rows():
    w = _windows(capacity=10)
    for i in range(5):
        _ingest(w, 4, ["x"], np.full((4, 1), float(i)), np.zeros(4), {})
    assert sorted(w.snapshot().features["x"].tolist()) == [2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0]
    assert w.snapshot().rows_received == 20
