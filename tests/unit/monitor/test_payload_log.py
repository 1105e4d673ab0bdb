"""The payload log: Hive layout, columns and types, sampling by request, the bounded buffer, retries,
and the final flush."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kiln_runtime.handoff import decode_frame, encode_frame
from kiln_runtime.monitor.payload_log import (BUFFER_FULL, STORE_ERROR, FrameBlock, ParquetLog, sampled)

NOON = datetime(2026, 3, 4, 12, 30, 5, tzinfo=timezone.utc).timestamp()


def frame(ids: list[str], rows_each: int = 1, ts: float = NOON, seed: int = 0):
    n = len(ids) * rows_each
    rng = np.random.default_rng(seed)
    return decode_frame(encode_frame(
        "iris", "3", ["a", "b"], rng.normal(size=(n, 2)), np.arange(n) % 2,
        {"colour": (["red", None, True] * n)[:n]}, [[i, rows_each, ts] for i in ids]))


def make_log(tmp_path, **kw) -> ParquetLog:
    args = dict(flush_rows=1000, flush_seconds=3600, buffer_rows=10_000, clock=lambda: NOON)
    args.update(kw)
    return ParquetLog((tmp_path / "payload").as_uri(), "iris", "3", "cafe0001", **args)


def test_layout_columns_and_types(tmp_path):
    log = make_log(tmp_path)
    f = frame(["r1", "r2"], rows_each=2)
    log.add(FrameBlock(f, None, NOON))
    # A row answered just before midnight goes to its own day.
    late = frame(["r3"], ts=datetime(2026, 3, 3, 23, 59, 59, 500000, tzinfo=timezone.utc).timestamp())
    log.add(FrameBlock(late, None, NOON))
    log.flush_now()
    files = sorted(p.relative_to(tmp_path / "payload").as_posix() for p in (tmp_path / "payload").rglob("*.parquet"))
    assert files == ["model=iris/version=3/date=2026-03-03/part-123005-cafe0001-000001.parquet",
                     "model=iris/version=3/date=2026-03-04/part-123005-cafe0001-000002.parquet"]
    table = pq.read_table(tmp_path / "payload" / files[1])
    assert [str(t) for t in table.schema.types] == ["string", "int32", "timestamp[ms, tz=UTC]", "double", "double",
                                                    "string", "double"]
    assert table.column_names == ["request_id", "row", "timestamp", "a", "b", "colour", "prediction"]
    got = table.to_pydict()
    assert got["request_id"] == ["r1", "r1", "r2", "r2"] and got["row"] == [0, 1, 0, 1]
    assert got["colour"] == ["red", None, "true", "red"]
    np.testing.assert_allclose(got["a"], f.matrix[:, 0])
    assert got["prediction"] == [0.0, 1.0, 0.0, 1.0]
    assert got["timestamp"][0].timestamp() == NOON
    # The prefix reads as one table, partition columns included.
    whole = ds.dataset(tmp_path / "payload", format="parquet", partitioning="hive").to_table()
    assert whole.num_rows == 5 and set(whole.column("model").to_pylist()) == {"iris"}
    assert (log.rows_written, log.files_written, sum(log.rows_dropped.values())) == (5, 2, 0)


def test_sampling_is_per_request_and_deterministic():
    ids = [f"req-{i}" for i in range(2000)]
    f, shuffled = frame(ids, rows_each=2), frame(list(reversed(ids)), rows_each=2)
    keep, again = sampled(f, 0.25), sampled(shuffled, 0.25)
    per_request = keep.reshape(-1, 2)
    assert (per_request[:, 0] == per_request[:, 1]).all()  # all rows of a request in or out
    assert 0.2 < keep.mean() < 0.3
    kept = {rid for rid, k in zip(f.request_ids, keep) if k}
    assert kept == {rid for rid, k in zip(shuffled.request_ids, again) if k}  # by id, not by position
    assert sampled(f, 1.0) is None and not sampled(f, 0.0).any()


def test_sampled_rows_are_the_only_ones_written(tmp_path):
    log = make_log(tmp_path)
    f = frame([f"q{i}" for i in range(100)])
    keep = sampled(f, 0.5)
    log.add(FrameBlock(f, keep, NOON))
    log.flush_now()
    table = ds.dataset(tmp_path / "payload", format="parquet").to_table()
    assert sorted(table.column("request_id").to_pylist()) == sorted(np.array(f.request_ids)[keep].tolist())


def test_a_full_buffer_drops_and_counts(tmp_path):
    log = make_log(tmp_path, buffer_rows=5)
    assert log.add(FrameBlock(frame(["a", "b", "c"]), None, NOON))
    assert not log.add(FrameBlock(frame(["d", "e", "f"]), None, NOON))
    assert log.rows_dropped == {BUFFER_FULL: 3}
    log.flush_now()
    assert log.rows_written == 3


def test_failed_writes_are_retried_then_counted(tmp_path):
    calls = []

    def flaky(uri, data):
        calls.append(uri)
        if len(calls) < 3:
            raise OSError("store down")

    log = make_log(tmp_path, write=flaky, retry_delays=(0, 0, 0))
    log.add(FrameBlock(frame(["a"]), None, NOON))
    log.flush_now()
    assert len(calls) == 3 and log.rows_written == 1 and not log.rows_dropped

    def down(uri, data):
        raise OSError("store down")

    log = make_log(tmp_path, write=down, retry_delays=(0, 0))
    log.add(FrameBlock(frame(["a", "b"]), None, NOON))
    log.flush_now()
    assert log.rows_dropped == {STORE_ERROR: 2} and log.rows_written == 0


def test_stop_writes_everything_buffered_and_later_rows_are_counted(tmp_path):
    log = make_log(tmp_path).start()
    for i in range(20):
        log.add(FrameBlock(frame([f"s{i}-{k}" for k in range(10)], seed=i), None, NOON))
    log.stop()
    table = ds.dataset(tmp_path / "payload", format="parquet").to_table()
    assert table.num_rows == 200 == log.rows_written
    assert not log.add(FrameBlock(frame(["late"]), None, NOON))
    assert log.rows_dropped == {"stopped": 1}


def test_the_writer_flushes_by_rows_without_blocking_the_caller(tmp_path):
    gate = threading.Event()
    written = []

    def slow(uri, data):
        gate.wait(120)  # released by the test; the bound only ends a failed test
        written.append(uri)

    log = make_log(tmp_path, write=slow, flush_rows=5).start()
    log.add(FrameBlock(frame([f"a{i}" for i in range(5)]), None, NOON))  # reaches flush_rows
    deadline = time.monotonic() + 120  # the writer takes the rows, then waits on the store
    while log.buffered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.buffered == 0 and not written
    assert log.add(FrameBlock(frame(["b"]), None, NOON))  # returns at once while the store is slow
    gate.set()
    log.stop()
    assert log.rows_written == 6 and len(written) == 2


def test_features_named_like_the_layouts_columns_are_renamed(tmp_path):
    log = make_log(tmp_path)
    f = decode_frame(encode_frame("iris", "3", ["timestamp", "date"], np.ones((1, 2)), np.zeros(1), None,
                                  [["r1", 1, NOON]]))
    log.add(FrameBlock(f, None, NOON))
    log.flush_now()
    table = ds.dataset(tmp_path / "payload", format="parquet", partitioning="hive").to_table()
    assert {"timestamp", "timestamp_feature", "date", "date_feature"} <= set(table.column_names)
    assert table.column("timestamp_feature").to_pylist() == [1.0]
