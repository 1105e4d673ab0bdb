"""Adaptive micro-batching: requests that arrive together are answered by one model call.

The event loop reads every connection that has data in one pass before it runs anything scheduled
with `call_soon`. So a request is queued, and the batch runs at the end of that pass: under
concurrency it holds every request that arrived meanwhile; at low load it holds the lone request,
which waited for nothing. A batch that reaches `max_batch_size` rows runs at once.

`max_latency_s` adds one bounded wait, only where it pays: when the previous batch was larger than
what is queued now (concurrent clients whose requests are still on their way), the batch waits for
that many rows or for the oldest request to have waited `max_latency_s`, whichever comes first. A
lone client never waits: its previous batch was one row. The model runs on the event loop thread:
one worker process is one core, and a thread hand-off would cost more than a small model call.
"""

from __future__ import annotations

import logging
from itertools import chain
from time import perf_counter

import numpy as np

from .errors import BadRequest, ClientError
from .rows import numeric_matrix

log = logging.getLogger("kiln.serve")


class Item:
    """One request waiting for its rows to be predicted."""

    __slots__ = ("conn", "slot", "rows", "x", "n", "encode", "proba", "where", "ctx")

    def __init__(self, conn, slot, rows, x, n, encode, proba, where, ctx=None):
        self.conn, self.slot, self.rows, self.x, self.n = conn, slot, rows, x, n
        self.encode, self.proba, self.where, self.ctx = encode, proba, where, ctx


class Batcher:
    def __init__(self, loop, runtime, sig, metrics, drift, max_batch_size: int, max_latency_s: float):
        self.loop, self.runtime, self.sig = loop, runtime, sig
        self.metrics, self.drift = metrics, drift
        self.max_rows = max_batch_size
        self.max_wait = max_latency_s
        self.queue: list[Item] = []
        self.rows = 0
        self.expect = 1  # rows of the previous batch: the concurrency seen lately
        self.draining = False
        self._handle = None
        self._predict = runtime.predict

    def submit(self, item: Item) -> None:
        self.queue.append(item)
        self.rows += item.n
        if self.rows >= self.max_rows:
            self._cancel()
            self.flush()
        elif self._handle is None:
            self._handle = self.loop.call_soon(self._end_of_pass)
        elif self.rows >= self.expect and self._waiting:
            self._cancel()
            self.flush()

    _waiting = False

    def _cancel(self):
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._waiting = False

    def _end_of_pass(self):
        self._handle = None
        if not self.queue:
            return
        if self.max_wait > 0 and self.rows < self.expect and not self.draining:
            remaining = self.queue[0].slot.t0 + self.max_wait - perf_counter()
            if remaining > 0:
                self._waiting = True
                self._handle = self.loop.call_later(remaining, self._deadline)
                return
        self.flush()

    def _deadline(self):
        self._handle = None
        self._waiting = False
        self.flush()

    def flush(self) -> None:
        """Runs everything queued, in batches of at most max_batch_size rows."""
        queue, self.queue, self.rows = self.queue, [], 0
        self._waiting = False
        start, total = 0, len(queue)
        while start < total:
            end, rows = start, 0
            while end < total and (rows == 0 or rows + queue[end].n <= self.max_rows):
                rows += queue[end].n
                end += 1
            batch = queue[start:end]
            start = end
            try:
                self._run(batch, rows)
            except Exception:  # a server fault: answer 500 to each request still waiting, keep serving
                log.exception("batch of %d requests failed", len(batch))
                for item in batch:
                    item.conn.fail(item.slot, 500, "internal error while predicting")
        if total:
            self.expect = max(1, min(self.max_rows, sum(i.n for i in queue)))

    # --- one batch ----------------------------------------------------------------------------

    def _assemble(self, batch: list[Item], rows: int):
        """The batch's input matrix, and the items it covers (bad ones answered 400 and dropped)."""
        sig = self.sig
        if sig.numeric and all(it.x is None for it in batch):
            merged = batch[0].rows if len(batch) == 1 else list(chain.from_iterable(it.rows for it in batch))
            try:
                x = numeric_matrix(merged, sig, "rows")
                if len(x) == rows:
                    return x, batch
            except ClientError:
                pass  # one of them is bad: find which, below
        parts, good = [], []
        for it in batch:
            try:
                x = it.x if it.x is not None else numeric_matrix(it.rows, sig, it.where)
                if len(x) != it.n:
                    raise BadRequest(f"{it.where}: expected {it.n} rows, got {len(x)}")
            except ClientError as exc:
                it.conn.fail(it.slot, exc.status, str(exc))
                continue
            parts.append(x)
            good.append(it)
        if not good:
            return None, good
        if len(parts) == 1:
            return parts[0], good
        if any(p.dtype == object for p in parts):
            parts = [p.astype(object) for p in parts]
        return np.concatenate(parts), good

    def _run(self, batch: list[Item], rows: int) -> None:
        x, batch = self._assemble(batch, rows)
        if x is None:
            return
        want_proba = False
        for it in batch:
            if it.proba:
                want_proba = True
                break
        t0 = perf_counter()
        try:
            labels, probs = self._predict(x, want_proba)
        except Exception as exc:
            if len(batch) == 1:
                self._model_failure(batch[0], exc)
                return
            # Isolate: one request's values may be what the model refuses (an unseen category).
            offset = 0
            for it in batch:
                self._run_one(it, x[offset: offset + it.n])
                offset += it.n
            return
        self._answer(batch, x, labels, probs, perf_counter() - t0)

    def _answer(self, batch, x, labels, probs, seconds) -> None:
        self.metrics.batch(len(x), seconds, labels)
        if self.drift is not None:
            self.drift.record(x, labels, batch)
        offset = 0
        for it in batch:
            end = offset + it.n
            body, headers = it.encode(it, labels[offset:end],
                                      probs[offset:end] if (it.proba and probs is not None) else None)
            it.conn.respond(it.slot, 200, body, headers)
            offset = end

    def _run_one(self, it: Item, x) -> None:
        t0 = perf_counter()
        try:
            labels, probs = self._predict(x, it.proba)
        except Exception as exc:
            self._model_failure(it, exc)
            return
        self._answer([it], x, labels, probs, perf_counter() - t0)

    @staticmethod
    def _model_failure(it: Item, exc: Exception) -> None:
        module = type(exc).__module__ or ""
        if isinstance(exc, (ValueError, TypeError, KeyError)) or (
                "onnxruntime" in module and type(exc).__name__ in ("InvalidArgument", "Fail")):
            # scikit-learn raises these for values it cannot take (an unseen category under
            # handle_unknown="error"): the client's input, so a 400 that quotes the model.
            it.conn.fail(it.slot, 400, f"the model rejected the input: {exc}")
            return
        log.error("model call failed: %s: %s", type(exc).__name__, exc)
        it.conn.fail(it.slot, 500, f"the model failed: {type(exc).__name__}")
