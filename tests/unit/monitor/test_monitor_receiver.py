"""The receiver: real frames are folded in, anything else is counted and dropped, nothing crashes it."""

import os
import socket
import struct
import threading
import time

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monitor_profiles import categorical_column, make_profile, numeric_column

from kiln_runtime.handoff import MAGIC, HandoffSender, encode_frame
from kiln_runtime.monitor import baseline
from kiln_runtime.monitor.receiver import ERROR, MALFORMED, MISMATCH, Receiver, bind
from kiln_runtime.monitor.window import Windows


def _receiver(model="m", version="1"):
    rng = np.random.default_rng(0)
    profile = make_profile({"x": numeric_column(rng.normal(size=500)), "y": numeric_column(rng.normal(size=500)),
                            "c": categorical_column(["a", "b"] * 10)},
                           predictions=numeric_column(rng.normal(size=500)))
    return Receiver(Windows(baseline.parse(profile, 10), 1000), model, version)


def _frame(rows=4, model="m", version="1"):
    return encode_frame(model, version, ["x", "y"], np.ones((rows, 2)), np.zeros(rows), {"c": ["a"] * rows})


def _header_frame(header, body=b""):
    head = orjson.dumps(header)
    return MAGIC + struct.pack("<I", len(head)) + head + body


GARBAGE = [
    b"",
    b"hello",
    b"KLN1",
    b"XXXX" + _frame()[4:],  # bad magic
    _frame()[:-3],  # truncated body
    _frame() + b"\0" * 8,  # extra body
    MAGIC + struct.pack("<I", 10**6) + b"{}",  # header length past the end
    MAGIC + struct.pack("<I", 5) + b"{oops",  # header not JSON
    _header_frame([1, 2, 3]),  # header not an object
    _header_frame({"model": "m", "version": "1", "rows": -1, "numeric": []}),
    _header_frame({"model": "m", "version": "1", "rows": 1, "numeric": 5}),
    _header_frame({"model": "m", "version": "1", "rows": 1, "numeric": [], "predictions": 7}),
    _header_frame({"model": "m", "version": "1", "rows": 2, "numeric": [], "predictions": ["a"]}),
    _header_frame({"model": "m", "version": "1", "rows": 1, "numeric": [], "categorical": {"c": "ab"},
                   "predictions": ["a"]}),
    _header_frame({"model": "m", "version": "1", "rows": 1, "numeric": [["x"]]}, b"\0" * 16),
]


@pytest.mark.parametrize("datagram", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_is_counted_and_dropped(datagram):
    r = _receiver()
    r.handle(datagram)
    r.handle(memoryview(datagram))  # what the loop hands over
    assert r.counters.frames_received == 0 and r.counters.rows_received == 0
    assert sum(r.counters.frames_dropped.values()) == 2
    assert set(r.counters.frames_dropped) <= {MALFORMED, ERROR}
    r.handle(_frame())  # and the next good frame still goes in
    assert r.counters.rows_received == 4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.binary(max_size=64).map(lambda b: MAGIC + b))
def test_random_bytes_never_raise(datagram):
    r = _receiver()
    r.handle(datagram)
    assert r.counters.rows_received == 0


def test_frames_for_another_model_or_version_are_dropped_with_their_rows():
    r = _receiver()
    r.handle(_frame(rows=3, version="2"))
    r.handle(_frame(rows=5, model="other"))
    assert r.counters.frames_dropped[MISMATCH] == 2 and r.counters.rows_dropped[MISMATCH] == 8
    assert r.windows.snapshot().rows_received == 0
    anything = _receiver(model=None, version=None)
    anything.handle(_frame(rows=3, version="2"))
    assert anything.counters.rows_received == 3


def test_text_predictions_into_a_numeric_window_become_missing_not_errors():
    r = _receiver()
    r.handle(encode_frame("m", "1", ["x"], np.ones((2, 1)), np.array(["cat", "dog"], dtype=object)))
    assert r.counters.rows_received == 2
    assert np.isnan(r.windows.snapshot().prediction).all()


def test_real_socket_with_the_real_sender(tmp_path):
    path = str(tmp_path / "run" / "handoff.sock")
    (tmp_path / "run").mkdir()
    open(path, "w").close()  # a stale file from a previous run is replaced
    sock = bind(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o666"
    r, stop = _receiver(), threading.Event()
    thread = threading.Thread(target=r.run, args=(sock, stop))
    thread.start()
    try:
        sender = HandoffSender(path, "m", "1", ["x", "y"], frame_rows=100)
        for _ in range(10):
            sender.add(np.random.default_rng(1).normal(size=(50, 2)), np.zeros(50), {"c": ["a", "b"] * 25})
        sender.close()
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        raw.sendto(b"garbage", path)
        raw.close()
        deadline = time.monotonic() + 120  # a condition, not a speed: generous for a busy machine
        while (r.counters.rows_received < 500 or not r.counters.frames_dropped) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sender.dropped_rows == 0
        assert r.counters.rows_received == 500 and r.counters.frames_dropped[MALFORMED] == 1
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
    assert not thread.is_alive()
