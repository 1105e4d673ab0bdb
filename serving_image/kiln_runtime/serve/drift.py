"""The request path's side of the drift hand-off: one call per model batch, a timer for the rest.

The batcher already holds every served row as one matrix and every prediction as one array, so the
hand-off costs two list appends per batch (`HandoffSender.add`); frames are built and sent when 256
rows have gathered or when the timer fires, never per request. The datagram send itself never
blocks (see kiln_runtime.handoff).

Each batch also hands over which request each row answered and when (one run per request, one
clock read per batch), so the monitor can log payloads and join feedback by request id.
"""

from __future__ import annotations

from time import time

import numpy as np

from kiln_runtime.handoff import HandoffSender

from .signature import BOOLEAN, CATEGORY, Signature

FLUSH_INTERVAL_S = 0.5


class DriftTap:
    def __init__(self, path: str, model: str, version: str, sig: Signature, frame_rows: int):
        numeric_idx = [i for i, f in enumerate(sig.features) if f.type not in (CATEGORY, BOOLEAN)]
        self._numeric_idx = numeric_idx
        self._all_numeric = len(numeric_idx) == sig.width
        self._categorical = [(sig.names[i], i) for i, f in enumerate(sig.features)
                             if f.type in (CATEGORY, BOOLEAN)]
        self.sender = HandoffSender(path, model, version, [sig.names[i] for i in numeric_idx],
                                    frame_rows=frame_rows)
        self._timer = None

    def record(self, x: np.ndarray, predictions: np.ndarray, items=None) -> None:
        """`items`: the batch's requests in row order (batching.Item: slot.rid and n)."""
        requests = None
        if items is not None:
            now = round(time(), 3)
            requests = [(None if it.slot.rid is None else it.slot.rid.decode(), it.n, now) for it in items]
        if self._all_numeric and x.dtype == np.float64:
            self.sender.add(x, predictions, None, requests)
            return
        # Mixed types: numbers (null -> NaN) in the matrix, categories and booleans by name.
        numeric = x[:, self._numeric_idx]
        if numeric.dtype == object:
            numeric = np.array([[np.nan if v is None else v for v in row] for row in numeric.tolist()],
                               dtype=np.float64).reshape(len(x), len(self._numeric_idx))
        categorical = {name: x[:, j].tolist() for name, j in self._categorical}
        self.sender.add(numeric, predictions, categorical, requests)

    def start(self, loop) -> None:
        def tick():
            self.sender.flush()
            self._timer = loop.call_later(FLUSH_INTERVAL_S, tick)

        self._timer = loop.call_later(FLUSH_INTERVAL_S, tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.sender.close()
