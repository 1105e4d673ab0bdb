"""The server→monitor hand-off: frames round-trip, bad datagrams are refused, a missing monitor costs nothing."""

import os
import socket
import tempfile

import numpy as np
import pytest

from kiln_runtime.handoff import FrameError, HandoffSender, decode_frame, encode_frame


@pytest.fixture
def handoff_socket():
    """The monitor's end of the hand-off: a bound datagram socket, and its path for the sender."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "h.sock")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        yield path, receiver
        receiver.close()


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


def test_sender_batches_rows_into_frames_the_receiver_decodes(handoff_socket):
    path, receiver = handoff_socket
    sender = HandoffSender(path, "m", "1", ["a", "b"], frame_rows=4)
    for i in range(10):
        sender.add(np.full((1, 2), float(i)), np.array([i]))
    sender.flush()
    frames = [decode_frame(receiver.recv(1 << 20)) for _ in range(3)]
    assert [f.rows for f in frames] == [4, 4, 2]
    assert np.concatenate([f.predictions for f in frames]).tolist() == list(range(10))
    assert (sender.sent_rows, sender.dropped_rows) == (10, 0)


def test_sender_without_a_monitor_drops_and_counts():
    sender = HandoffSender("/nonexistent/kiln.sock", "m", "1", ["a"], frame_rows=2)
    sender.add(np.ones((3, 1)), np.ones(3))
    sender.flush()
    assert (sender.sent_rows, sender.dropped_rows) == (0, 3)


# --- request ids and answer times ---------------------------------------------------------------

def test_request_runs_round_trip_as_per_row_ids_times_and_row_indexes():
    runs = [["a", 2, 1700000000.5], ["b", 1, 1700000001.0], [None, 1, None]]
    frame = decode_frame(encode_frame("m", "1", ["x"], np.zeros((4, 1)), np.zeros(4), requests=runs))
    assert frame.request_ids == ["a", "a", "b", None]
    assert frame.row_in_request.tolist() == [0, 1, 0, 0]
    np.testing.assert_array_equal(frame.timestamps, [1700000000.5, 1700000000.5, 1700000001.0, np.nan])


def test_frames_without_requests_still_decode_with_no_ids():
    frame = decode_frame(encode_frame("m", "1", ["x"], np.zeros((2, 1)), np.zeros(2)))
    assert frame.requests is None and frame.request_ids is None and frame.timestamps is None
    assert frame.row_in_request is None


@pytest.mark.parametrize("runs", [[["a", 1, 1.0]], [["a", 3, 1.0]], [[5, 2, 1.0]], [["a", 0, 1.0], ["b", 2, 1.0]],
                                  [["a", 2, "noon"]], [["a", 2]], "a", [["a", 2, 1.0, -1]]])
def test_bad_request_runs_are_frame_errors(runs):
    with pytest.raises(FrameError):
        decode_frame(encode_frame("m", "1", ["x"], np.zeros((2, 1)), np.zeros(2), requests=runs))


def test_a_request_split_over_frames_keeps_its_row_indexes(handoff_socket):
    path, receiver = handoff_socket
    sender = HandoffSender(path, "m", "1", ["a"], frame_rows=4)
    sender.add(np.zeros((3, 1)), np.zeros(3), requests=[("r1", 3, 10.0)])
    sender.add(np.zeros((6, 1)), np.zeros(6), requests=[("r2", 6, 11.0)])  # 1 + 4 + 1 rows
    sender.add(np.zeros((1, 1)), np.zeros(1))  # an add without ids keeps the run layout
    sender.flush()
    frames = [decode_frame(receiver.recv(1 << 20)) for _ in range(4)]  # 4 + 4 + 1 rows, then 1
    ids = sum((f.request_ids for f in frames[:3]), [])
    rows = np.concatenate([f.row_in_request for f in frames[:3]]).tolist()
    assert ids == ["r1"] * 3 + ["r2"] * 6
    assert rows == [0, 1, 2, 0, 1, 2, 3, 4, 5]
    assert frames[1].requests == [("r2", 4, 11.0, 1)]
    assert frames[3].requests is None  # rows sent without ids: a frame like an older sender's


def test_frames_the_monitor_cannot_take_yet_are_kept_and_sent_later(handoff_socket):
    path, receiver = handoff_socket
    sender = HandoffSender(path, "m", "1", ["a"], frame_rows=1, backlog_frames=1000)
    for i in range(300):  # far more than the kernel queues (net.unix.max_dgram_qlen)
        sender.add(np.full((1, 1), float(i)), np.array([i]))
    assert sender.dropped_rows == 0 and sender.backlog_rows > 0
    receiver.settimeout(2)
    got = []
    while len(got) < 300:
        got.append(int(decode_frame(receiver.recv(1 << 20)).predictions[0]))
        sender.flush()  # the timer's tick: offers the backlog again
    assert got == list(range(300))  # in order, none lost
    assert (sender.sent_rows, sender.dropped_rows, sender.backlog_rows) == (300, 0, 0)


def test_the_backlog_is_bounded_and_what_it_sheds_is_counted(handoff_socket):
    path, receiver = handoff_socket
    sender = HandoffSender(path, "m", "1", ["a"], frame_rows=1, backlog_frames=5)
    for i in range(100):
        sender.add(np.full((1, 1), float(i)), np.array([i]))
    assert sender.backlog_rows == 5
    assert sender.sent_rows + sender.dropped_rows + sender.backlog_rows == 100
    sender.close(timeout=0.05)  # nobody reads: what is left is counted, not waited for long
    assert sender.sent_rows + sender.dropped_rows == 100
