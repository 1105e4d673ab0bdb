"""The batcher: requests merged into one model call, a bad request isolated, big queues split."""

import asyncio
from time import perf_counter

import numpy as np
import orjson

from kiln_runtime.serve import codec_v1
from kiln_runtime.serve.batching import Batcher, Item
from kiln_runtime.serve.http import Slot
from kiln_runtime.serve.metrics import Metrics

from conftest import FakeConn, numeric_signature


class CountingModel:
    has_proba = True
    classes = ("0", "1")

    def __init__(self):
        self.calls = []

    def predict(self, x, proba):
        self.calls.append(len(x))
        labels = (x[:, 0] > 0).astype(np.int64)
        return labels, (np.stack([1 - labels, labels], axis=1).astype(np.float32) if proba else None)


def make(max_batch=64, max_wait=0.0):
    loop = asyncio.new_event_loop()
    model = CountingModel()
    sig = numeric_signature(3)
    metrics = Metrics("m", "1", "x", "onnx", "onnx", model.classes)
    return loop, model, Batcher(loop, model, sig, metrics, None, max_batch, max_wait)


def item(conn, value, n=1, proba=False):
    return Item(conn, Slot(True, 0, perf_counter()), [[value, 0.0, 0.0]] * n, None, n, codec_v1.encode, proba, "instances")


def test_requests_queued_in_one_pass_share_one_model_call():
    loop, model, batcher = make()
    conn = FakeConn()
    for v in (1.0, -1.0, 2.0):
        batcher.submit(item(conn, v))
    assert model.calls == []  # nothing runs before the loop's pass ends
    loop.run_until_complete(asyncio.sleep(0))
    assert model.calls == [3]
    assert [orjson.loads(a[2])["predictions"] for a in conn.answers] == [[1], [0], [1]]
    loop.close()


def test_a_bad_request_gets_its_400_and_the_others_their_answers():
    loop, model, batcher = make()
    conn = FakeConn()
    batcher.submit(item(conn, 1.0))
    bad = Item(conn, Slot(True, 0, perf_counter()), [[1.0, "x", 0.0]], None, 1, codec_v1.encode, False, "instances")
    batcher.submit(bad)
    batcher.submit(item(conn, -1.0, proba=True))
    loop.run_until_complete(asyncio.sleep(0))
    statuses = [(a[0] is bad.slot, a[1]) for a in conn.answers]
    assert sorted(statuses) == [(False, 200), (False, 200), (True, 400)]
    assert b"instances[0][1] (feature 'f1'): expected a number, got a string" in next(
        a[2] for a in conn.answers if a[1] == 400)
    assert orjson.loads(conn.answers[-1][2])["probabilities"] == [[1.0, 0.0]]
    loop.close()


def test_a_full_batch_runs_at_once_and_a_long_queue_is_split():
    loop, model, batcher = make(max_batch=4)
    conn = FakeConn()
    for _ in range(4):
        batcher.submit(item(conn, 1.0))
    assert model.calls == [4]  # reached max_batch_size: no waiting for the pass to end
    batcher.submit(item(conn, 1.0, n=3))
    batcher.submit(item(conn, 1.0, n=3))
    loop.run_until_complete(asyncio.sleep(0))
    assert model.calls == [4, 3, 3]
    loop.close()


def test_a_lone_client_never_waits_but_concurrent_ones_may_gather():
    # A deadline no pause of a busy machine reaches: the test is about who waits, not for how long.
    loop, model, batcher = make(max_wait=60.0)
    conn = FakeConn()
    batcher.submit(item(conn, 1.0))
    loop.run_until_complete(asyncio.sleep(0))
    assert model.calls == [1]  # previous batch was 1 row: no wait
    batcher.expect = 3  # as after a batch of three concurrent requests
    batcher.submit(item(conn, 1.0))
    loop.run_until_complete(asyncio.sleep(0))
    assert model.calls == [1]  # waiting for the other two
    batcher.submit(item(conn, 1.0))
    batcher.submit(item(conn, 1.0))
    assert model.calls == [1, 3]  # they came: run without waiting for the deadline
    loop.close()
