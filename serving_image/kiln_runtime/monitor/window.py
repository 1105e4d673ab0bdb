"""Sliding windows: the last W served values of each feature and of the predictions.

Memory is fixed at start (one preallocated ring of W slots per monitored column), whatever the
traffic. A frame is folded in whole: each column is encoded with a vectorised numpy step and
copied into its ring with at most two slice assignments, so the per-row cost is a memcpy.

Numeric columns are stored as float64 with NaN for missing; categorical ones as int32 codes into
the baseline's categories (-1 missing, len(categories) for a value the baseline never saw).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from kiln_runtime.handoff import Frame

from .baseline import Baseline, CategoricalBaseline, NumericBaseline, category_key

MISSING = -1
_MAX_PLANS = 64  # distinct column layouts remembered; a flood of odd frames cannot grow memory


class Ring:
    """A fixed-size buffer keeping the last `capacity` values pushed; order is not kept because
    every statistic on it is a distribution."""

    def __init__(self, capacity: int, dtype):
        self.buf = np.empty(capacity, dtype=dtype)
        self.capacity = capacity
        self.pos = 0
        self.size = 0

    def push(self, values: np.ndarray) -> None:
        n, cap = values.shape[0], self.capacity
        if n >= cap:
            self.buf[:] = values[n - cap:]
            self.pos, self.size = 0, cap
            return
        end = self.pos + n
        if end <= cap:
            self.buf[self.pos:end] = values
        else:
            first = cap - self.pos
            self.buf[self.pos:] = values[:first]
            self.buf[: n - first] = values[first:]
        self.pos = end % cap
        self.size = min(self.size + n, cap)

    def snapshot(self) -> np.ndarray:
        return self.buf[: self.size].copy()


def _float_or_nan(value) -> float:
    if value is None:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan  # a value that is no number cannot sit in a numeric window: missing


class ColumnWindow:
    """One monitored column: its baseline and its ring, plus the encoders from frame columns."""

    def __init__(self, base: NumericBaseline | CategoricalBaseline, capacity: int):
        self.base = base
        self.numeric = isinstance(base, NumericBaseline)
        self.ring = Ring(capacity, np.float64 if self.numeric else np.int32)

    # Encoding happens outside the window lock; only `ring.push` runs under it.
    def encode_floats(self, values: np.ndarray) -> np.ndarray:
        """A float64 column of the frame (numeric body or numeric predictions)."""
        if self.numeric:
            return values
        # A categorical feature sent as numbers (booleans as 0/1, integer class labels): encode the
        # distinct values once and spread the codes back.
        uniques, inverse = np.unique(values, return_inverse=True)
        codes = np.array([self._code(u) for u in uniques.tolist()], dtype=np.int32)
        return codes[inverse.reshape(-1)]

    def encode_list(self, values: list) -> np.ndarray:
        """A list column of the frame (categorical values in the header, or text predictions)."""
        if self.numeric:
            return np.fromiter((_float_or_nan(v) for v in values), dtype=np.float64, count=len(values))
        get, code = self.base.lookup.get, self._code

        def one(value) -> int:
            # Strings already in the baseline's spelling take the dict fast path.
            hit = get(value) if value.__class__ is str else None
            return code(value) if hit is None else hit

        return np.fromiter(map(one, values), dtype=np.int32, count=len(values))

    def _code(self, value) -> int:
        key = category_key(value, self.base.type)
        if key is None:
            return MISSING
        return self.base.lookup.get(key, self.base.other)


@dataclass
class Snapshot:
    """Copies of every window at one instant, for the evaluator to work on without the lock."""

    features: dict[str, np.ndarray]
    prediction: np.ndarray | None
    rows_received: int


class Windows:
    """All the windows of one monitor, fed frame by frame by the receiver thread."""

    def __init__(self, baseline: Baseline, capacity: int):
        self.capacity = capacity
        self.features = {name: ColumnWindow(base, capacity) for name, base in baseline.features.items()}
        self.prediction = ColumnWindow(baseline.prediction, capacity) if baseline.prediction else None
        self.rows_received = 0
        self._lock = threading.Lock()
        self._plans: dict[tuple, list[tuple[int, ColumnWindow]]] = {}

    def _numeric_plan(self, names: list[str]) -> list[tuple[int, ColumnWindow]]:
        """Which body column feeds which window, computed once per distinct column layout."""
        key = tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            plan = [(i, self.features[n]) for i, n in enumerate(names)
                    if isinstance(n, str) and n in self.features]
            # Only plausible layouts are remembered, so odd frames cannot pin large keys in memory.
            if len(key) <= 2 * len(self.features) + 16:
                if len(self._plans) >= _MAX_PLANS:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def ingest(self, frame: Frame) -> None:
        matrix = frame.matrix
        encoded: list[tuple[ColumnWindow, np.ndarray]] = []
        for col, window in self._numeric_plan(frame.numeric):
            encoded.append((window, window.encode_floats(matrix[:, col])))
        for name, values in frame.categorical.items():
            window = self.features.get(name)
            if window is not None:
                encoded.append((window, window.encode_list(values)))
        if self.prediction is not None and frame.rows:
            preds = frame.predictions
            if preds.dtype == object:
                encoded.append((self.prediction, self.prediction.encode_list(preds.tolist())))
            else:
                encoded.append((self.prediction, self.prediction.encode_floats(preds)))
        with self._lock:
            for window, values in encoded:
                window.ring.push(values)
            self.rows_received += frame.rows

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                {name: w.ring.snapshot() for name, w in self.features.items()},
                self.prediction.ring.snapshot() if self.prediction else None,
                self.rows_received,
            )
