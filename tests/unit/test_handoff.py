"""The server→monitor hand-off: frames round-trip, bad datagrams are refused, a missing monitor costs nothing."""

import os
import socket
import tempfile

import numpy as np
import pytest

from kiln_runtime.handoff import FrameError, HandoffSender, decode_frame, encode_frame


def test_numeric_frame_round_trips():
    matrix = np.arange(12, dtype=float).reshape(4, 3)
    matrix[1, 2] = np.nan
    frame = decode_frame(encode_frame("iris", "3", ["a", "b", "c"], matrix, np.array([0, 1, 1, 2])))
    assert (frame.model, frame.version, frame.numeric, frame.rows) == ("iris", "3", ["a", "b", "c"], 4)
    np.testing.assert_array_equal(frame.matrix, matrix)
    np.testing.assert_array_equal(frame.predictions, [0.0, 1.0, 1.0, 2.0])


def test_text_predictions_and_categorical_features_round_trip():
    frame = decode_frame(encode_frame("m", "1", ["x"], np.ones((2, 1)), np.array(["cat", "dog"]),
                                      {"colour": ["red", None]}))
    assert list(frame.predictions) == ["cat", "dog"]
    assert frame.categorical == {"colour": ["red", None]}


@pytest.mark.parametrize("garbage", [b"", b"KLN1", b"nope" * 10, b"KLN1\xff\xff\x00\x00{}",
                                     encode_frame("m", "1", ["x"], np.ones((2, 1)), np.ones(2))[:-3]])
def test_malformed_datagrams_raise_frame_error(garbage):
    with pytest.raises(FrameError):
        decode_frame(garbage)


def test_sender_batches_rows_into_frames_the_receiver_decodes():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "h.sock")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        sender = HandoffSender(path, "m", "1", ["a", "b"], frame_rows=4)
        for i in range(10):
            sender.add(np.full((1, 2), float(i)), np.array([i]))
        sender.flush()
        frames = [decode_frame(receiver.recv(1 << 20)) for _ in range(3)]
        assert [f.rows for f in frames] == [4, 4, 2]
        assert np.concatenate([f.predictions for f in frames]).tolist() == list(range(10))
        assert (sender.sent_rows, sender.dropped_rows) == (10, 0)
        receiver.close()


def test_sender_without_a_monitor_drops_and_counts():
    sender = HandoffSender("/nonexistent/kiln.sock", "m", "1", ["a"], frame_rows=2)
    sender.add(np.ones((3, 1)), np.ones(3))
    sender.flush()
    assert (sender.sent_rows, sender.dropped_rows) == (0, 3)
