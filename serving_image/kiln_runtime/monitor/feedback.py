"""Feedback: labels for answered requests, joined by request id to the rows the monitor received.

Every received frame with request ids is kept (a reference to its detached copy, one dict entry per
request) for KILN_FEEDBACK_TTL_SECONDS, up to KILN_FEEDBACK_MAX_ROWS rows, oldest frame forgotten
first, so memory is bounded whatever the traffic. Ids forgotten are remembered in a compact bounded
record, so their feedback is answered "expired" rather than "unknown".

Body: {"id": "<request id>", "labels": [one per row of the request]}, or a batch
{"feedback": [{"id": ..., "labels": [...]}, ...]}. Outcomes, per item:
    joined       200  the labels are joined, counted in live quality and written when enabled
    invalid      400  a malformed item; `field` names the field (wrong label count names both counts)
    unknown      404  "unknown request id": never received here (or not yet: see WAIT_SECONDS)
    duplicate    409  the request is already labelled
    expired      410  older than the TTL, or forgotten to stay within KILN_FEEDBACK_MAX_ROWS
    misdirected  421  the id was issued by another kiln-serve process (another replica's token)
A batch answers 200 with per-item `results` and `counts` when at least one item joined; when none
did, it answers the status of its first item's outcome, with the same body. Every label is counted
once under its outcome (an item whose `labels` is not a list counts as one invalid label).

The join is per item a dict lookup and a few list appends, all items of a call under one lock;
features are gathered per frame with one numpy fancy-index, so batched feedback joins well over
50,000 labels/s on one core (benchmarks/feedback.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from itertools import accumulate, islice

import numpy as np
import orjson

from kiln_runtime.handoff import Frame, issuer_token

from .payload_log import RESERVED, ColumnsBlock, ParquetLog, feature_column, text
from .quality import CLASSIFICATION, Quality, canonical

JOINED, INVALID, UNKNOWN, DUPLICATE, EXPIRED, MISDIRECTED = (
    "joined", "invalid", "unknown", "duplicate", "expired", "misdirected")
RESULTS = (JOINED, INVALID, UNKNOWN, DUPLICATE, EXPIRED, MISDIRECTED)
STATUS = {JOINED: 200, INVALID: 400, UNKNOWN: 404, DUPLICATE: 409, EXPIRED: 410, MISDIRECTED: 421}
# Feedback can overtake its rows: kiln-serve flushes its hand-off before relaying, but the receiver
# thread may not have read the datagram yet, and with several workers another worker's buffer is
# flushed only by its 0.5 s timer. Unknown ids are looked up again as frames arrive, this long.
WAIT_SECONDS = 0.75
_EVICTED_MAX = 100_000
_TOKENS_MAX = 256
_CLASS_TYPES = frozenset((str, int, float, bool))
_NUMBER_TYPES = frozenset((int, float))


class _Block:
    """A received frame kept for joins: its request runs, where each starts, its latest answer time."""

    __slots__ = ("frame", "runs", "starts", "ids", "newest", "seq")

    def __init__(self, frame: Frame, received: float, seq: int):
        runs = frame.requests
        self.frame, self.runs, self.seq = frame, runs, seq
        self.starts = list(accumulate([r[1] for r in runs], initial=0))
        self.ids = [r[0] for r in runs]
        # Runs are in answer order, so the last one holds the newest time.
        self.newest = runs[-1][2] if runs and runs[-1][2] is not None else received


# An index entry is one int, block sequence << 20 | run within the block, for a request held in one
# frame (nearly all of them), or a list of those for a request the sender split over frames; the
# labelled ones are in a set beside it. Ints, not tuples: a dict of str -> int is invisible to the
# garbage collector, which would otherwise rescan hundreds of thousands of tuples as rows arrive.
_RUN_BITS = 20
_RUN_MASK = (1 << _RUN_BITS) - 1


class _Group:
    """The joined rows of one block in one call, gathered before one fancy-index per block."""

    __slots__ = ("block", "idx", "labels", "ids", "rows", "ts")

    def __init__(self, block: _Block):
        self.block = block
        self.idx: list[int] = []
        self.labels: list = []
        self.ids: list = []
        self.rows: list[int] = []
        self.ts: list[float] = []


class BadBody(ValueError):
    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class FeedbackStore:
    def __init__(self, quality: Quality, ttl_seconds: float = 3600.0, max_rows: int = 200_000,
                 labelled: ParquetLog | None = None, label_column: str = "label",
                 clock=time.time, wait_seconds: float = WAIT_SECONDS):
        self.quality, self.ttl, self.max_rows = quality, ttl_seconds, max_rows
        self.labelled, self.label_column = labelled, label_column
        self.clock, self.wait_seconds = clock, wait_seconds
        self.labels_total: Counter[str] = Counter()
        self.rows_held = 0
        self._blocks: deque[_Block] = deque()
        self._by_seq: dict[int, _Block] = {}
        self._seq = 0
        self._index: dict = {}  # request id -> block seq << 20 | run, or a list of those
        self._labelled: set[str] = set()
        self._evicted: dict[str, None] = {}  # insertion-ordered: trimmed to the newest in bulk
        self._evicted_max = min(max(max_rows, 1000), _EVICTED_MAX)
        self._tokens: dict[str, None] = {}  # kiln-serve processes whose rows reach this monitor
        self._cond = threading.Condition()

    # --- the receiver thread ------------------------------------------------------------------
    def add(self, frame: Frame) -> None:
        """Remembers a detached frame's rows by request id. Called for every received frame."""
        self.quality.observe_predictions(frame.predictions)
        if not frame.requests or self.max_rows <= 0:
            return
        now = self.clock()
        with self._cond:
            self._seq += 1
            block = _Block(frame, now, self._seq)
            ids = block.ids
            base = block.seq << _RUN_BITS
            index = self._index
            if None not in ids and index.keys().isdisjoint(ids) and len(set(ids)) == len(ids):
                # Every request new and whole in this frame (the common case): one C-level update.
                index.update(zip(ids, range(base, base + len(ids))))
            else:
                for k, rid in enumerate(ids):
                    if rid is None:
                        continue
                    prev = index.get(rid)
                    if prev is None or block.runs[k][3] == 0:
                        if prev is not None:  # a client reused an id: the newer request wins
                            self._labelled.discard(rid)
                        index[rid] = base | k
                    elif type(prev) is list:
                        prev.append(base | k)
                    else:
                        index[rid] = [prev, base | k]  # the rest of a request split over frames
            for rid in ids:  # one issuer per frame in practice: stop at the first token
                token = issuer_token(rid) if rid is not None else None
                if token is not None:
                    if token not in self._tokens:
                        if len(self._tokens) >= _TOKENS_MAX:
                            del self._tokens[next(iter(self._tokens))]
                        self._tokens[token] = None
                    break
            self._blocks.append(block)
            self._by_seq[block.seq] = block
            self.rows_held += frame.rows
            self._evict(now)
            self._cond.notify_all()

    def _evict(self, now: float) -> None:
        horizon = now - self.ttl
        blocks, index, labelled, evicted = self._blocks, self._index, self._labelled, self._evicted
        while blocks and (self.rows_held > self.max_rows or blocks[0].newest < horizon):
            block = blocks.popleft()
            del self._by_seq[block.seq]
            self.rows_held -= block.frame.rows
            seq = block.seq
            for rid in block.ids:
                entry = index.get(rid)
                if entry is None:
                    continue
                if (entry >> _RUN_BITS == seq) if type(entry) is int else any(e >> _RUN_BITS == seq for e in entry):
                    del index[rid]
                    labelled.discard(rid)
                    evicted[rid] = None
            if len(evicted) > 2 * self._evicted_max:
                # Keep the newest half: amortised O(1) per id, no per-insert bookkeeping.
                keep = list(islice(reversed(evicted), self._evicted_max))
                self._evicted = evicted = dict.fromkeys(reversed(keep))

    # --- the HTTP threads ---------------------------------------------------------------------
    def handle(self, body: bytes) -> tuple[int, dict]:
        """POST /feedback: (status, answer). Never raises for any body."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._invalid_body(f"body is not valid JSON: {exc}", "body")
        if type(doc) is not dict:
            return self._invalid_body('body must be an object: {"id", "labels"} or {"feedback": [...]}', "body")
        if "feedback" in doc:
            items = doc["feedback"]
            if type(items) is not list or not items:
                return self._invalid_body("'feedback' must be a non-empty array of {\"id\", \"labels\"}",
                                          "feedback")
            results = self.join(items)
            return self._batch_answer(results)
        if "id" not in doc and "labels" not in doc:
            return self._invalid_body('body needs "id" and "labels", or "feedback": [...]', "id")
        (result,) = self.join([doc])
        answer = {k: v for k, v in result.items() if k not in ("status", "rows")}
        answer["joined"] = result.get("rows", 0)
        return result["status"], answer

    def _invalid_body(self, message: str, field: str) -> tuple[int, dict]:
        with self._cond:
            self.labels_total[INVALID] += 1
        return 400, {"error": message, "field": field, "result": INVALID}

    @staticmethod
    def _batch_answer(results: list[dict]) -> tuple[int, dict]:
        counts = Counter(r["result"] for r in results)
        joined_rows = sum(r.get("rows", 0) for r in results if r["result"] == JOINED)
        status = 200 if counts[JOINED] else results[0]["status"]
        return status, {"joined": joined_rows, "items": len(results),
                        "counts": {k: counts[k] for k in RESULTS if counts[k]}, "results": results}

    def join(self, items: list) -> list[dict]:
        """One result per item: {"id", "result", "status", and "rows" or "error"/"field"}."""
        results: list = [None] * len(items)
        groups: dict[int, _Group] = {}
        pending: list[tuple[int, str, list]] = []
        with self._cond:
            now = self.clock()
            self._evict(now)
            task = self.quality.current_task()
            for k, item in enumerate(items):
                results[k] = self._one(item, task, now, groups, pending, k)
            deadline = time.monotonic() + self.wait_seconds
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                still = []
                for k, rid, labels in pending:
                    entry = self._index.get(rid)
                    if entry is None:
                        still.append((k, rid, labels))
                    else:
                        results[k] = self._check(entry, rid, labels, task, self.clock(), groups)
                pending = still
            for k, rid, labels in pending:
                results[k] = self._unknown(rid, len(labels))
            self._finish(groups, task)
        return results

    def _outcome(self, result: str, rid, labels: int, error: str, **extra) -> dict:
        self.labels_total[result] += labels
        return {"id": rid, "result": result, "status": STATUS[result], "error": error, **extra}

    def _one(self, item, task: str, now: float, groups: dict, pending: list, k: int) -> dict | None:
        if type(item) is not dict:
            return self._outcome(INVALID, None, 1, "a feedback item must be an object {\"id\", \"labels\"}",
                                 field="feedback")
        rid, labels = item.get("id"), item.get("labels")
        if type(rid) is not str or not rid:
            return self._outcome(INVALID, None, len(labels) if type(labels) is list else 1,
                                 "'id' must be a non-empty string (the answer's X-Request-Id)", field="id")
        if type(labels) is not list or not labels:
            return self._outcome(INVALID, rid, 1, "'labels' must be a non-empty array, one label per row "
                                 "of the request", field="labels")
        entry = self._index.get(rid)
        if entry is None:
            if rid in self._evicted:
                return self._outcome(EXPIRED, rid, len(labels), "expired: the request's rows are older than "
                                     "KILN_FEEDBACK_TTL_SECONDS or were forgotten to stay within "
                                     "KILN_FEEDBACK_MAX_ROWS")
            # Not decided yet, misdirected included: a worker's first frame may still be on its way.
            pending.append((k, rid, labels))
            return None
        return self._check(entry, rid, labels, task, now, groups)

    def _unknown(self, rid: str, labels: int) -> dict:
        token = issuer_token(rid)
        if token is not None and self._tokens and token not in self._tokens:
            return self._outcome(MISDIRECTED, rid, labels,
                                 f"misdirected: request id {rid} was answered by another replica (server "
                                 f"token {token}); send its feedback to the replica that answered it")
        return self._outcome(UNKNOWN, rid, labels, "unknown request id")

    def _segments(self, entry) -> list[tuple]:
        """(block, start row in the frame, rows, first row of the request, answer time) per segment
        still held (a split request whose first frame was forgotten keeps only its later rows)."""
        out = []
        for e in ([entry] if type(entry) is int else entry):
            block = self._by_seq.get(e >> _RUN_BITS)
            if block is not None:
                k = e & _RUN_MASK
                _rid, n, ts, first = block.runs[k]
                out.append((block, block.starts[k], n, first, block.newest if ts is None else ts))
        return out

    def _check(self, entry, rid: str, labels: list, task: str, now: float, groups: dict) -> dict:
        n = len(labels)
        segs = self._segments(entry)
        if not segs:
            return self._outcome(EXPIRED, rid, n, "expired: the request's rows were forgotten")
        if segs[0][4] < now - self.ttl:
            return self._outcome(EXPIRED, rid, n, "expired: the request was answered more than "
                                 f"{self.ttl:g} s ago (KILN_FEEDBACK_TTL_SECONDS)")
        if rid in self._labelled:
            return self._outcome(DUPLICATE, rid, n, "this request is already labelled")
        rows_held = segs[0][2] if len(segs) == 1 else sum(seg[2] for seg in segs)
        if n != rows_held:
            return self._outcome(INVALID, rid, n, f"'labels' has {n} labels, but request {rid} has "
                                 f"{rows_held} rows", field="labels")
        allowed = _CLASS_TYPES if task == CLASSIFICATION else _NUMBER_TYPES
        kinds = set(map(type, labels))
        if not kinds <= allowed or (float in kinds and not all(map(math.isfinite, (v for v in labels if type(v) is float)))):
            bad = next(i for i, v in enumerate(labels)
                       if type(v) not in allowed or (type(v) is float and not math.isfinite(v)))
            want = "a string, number or boolean" if task == CLASSIFICATION else "a number (the model is a regressor)"
            return self._outcome(INVALID, rid, n, f"labels[{bad}] must be {want}", field=f"labels[{bad}]")
        self._labelled.add(rid)
        off = 0
        for block, start, rows, first, ts in segs:
            group = groups.get(id(block))
            if group is None:
                groups[id(block)] = group = _Group(block)
            if rows == 1:
                group.idx.append(start)
                group.labels.append(labels[off])
                group.ids.append(rid)
                group.rows.append(first)
                group.ts.append(ts)
            else:
                group.idx.extend(range(start, start + rows))
                group.labels.extend(labels[off: off + rows])
                group.ids.extend([rid] * rows)
                group.rows.extend(range(first, first + rows))
                group.ts.extend([ts] * rows)
            off += rows
        self.labels_total[JOINED] += n
        return {"id": rid, "result": JOINED, "status": 200, "rows": n}

    def _finish(self, groups: dict, task: str) -> None:
        """Feeds the joined rows to live quality and the labelled log, one numpy gather per block."""
        for group in groups.values():
            frame = group.block.frame
            idx = np.array(group.idx, dtype=np.intp)
            preds = frame.predictions[idx]
            self.quality.extend(group.labels, preds.tolist())
            if self.labelled is None:
                continue
            cols: dict = {"request_id": group.ids, "row": np.array(group.rows, dtype=np.int32),
                          "timestamp": np.array(group.ts, dtype=np.float64)}
            matrix = frame.matrix
            reserved = RESERVED | {self.label_column}
            for j, name in enumerate(frame.numeric):
                cols[feature_column(name, reserved)] = matrix[idx, j]
            for name, values in frame.categorical.items():
                cols[feature_column(name, reserved)] = [text(values[i]) for i in group.idx]
            cols["prediction"] = [text(v) for v in preds.tolist()] if preds.dtype == object else preds
            if task == CLASSIFICATION:
                cols[self.label_column] = [canonical(v) for v in group.labels]
            else:
                cols[self.label_column] = np.array([float(v) for v in group.labels], dtype=np.float64)
            self.labelled.add(ColumnsBlock(cols, len(group.idx)))

    def stats(self) -> dict:
        return {"rowsHeld": self.rows_held, "requestsHeld": len(self._index),
                "labels": {k: self.labels_total[k] for k in RESULTS if self.labels_total[k]}}
