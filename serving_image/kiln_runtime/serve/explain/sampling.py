"""`sampling`: permutation-sampling Shapley values for any model, additive by construction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .common import (
    as_2d, DECISION, Explanation, LOG_ODDS, MAX_BACKGROUND, output_columns, outputs_of, PREDICTION,
    PROBABILITY, SAMPLING, SAMPLING_BUDGET, SEED, Unsupported,
)

if TYPE_CHECKING:
    from . import Explainer


class SamplingMethod:
    name = SAMPLING

    def __init__(self, ex: Explainer):
        self.ex = ex
        model = ex.model
        classes, is_clf = outputs_of(ex.est)
        if is_clf and hasattr(model, "predict_proba"):
            self.fn, self.output = model.predict_proba, PROBABILITY
        elif is_clf and hasattr(model, "decision_function"):
            self.fn, self.output = model.decision_function, DECISION
        elif is_clf:
            raise Unsupported("the classifier has neither predict_proba nor decision_function")
        else:
            self.fn, self.output = model.predict, PREDICTION
        self.classes = classes
        self.background, _ = ex.background(MAX_BACKGROUND)
        self._columns = None

    def _f(self, rows: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(self.ex.to_input(rows)))
        if out.dtype.kind not in "fiub":
            raise Unsupported("the model's output is not numeric")
        return as_2d(out)

    def explain(self, x: np.ndarray) -> Explanation:
        ex = self.ex
        n, F = x.shape
        bg = self.background
        m = len(bg)
        per_bg = max(2, min(64, SAMPLING_BUDGET // (m * (F + 1))))
        per_bg += per_bg % 2  # antithetic pairs
        rng = np.random.default_rng(SEED)
        perms = []
        for _ in range(per_bg // 2):
            p = rng.permutation(F)
            perms += [p, p[::-1]]
        perms = np.array(perms)  # (q, F)
        q = len(perms)
        # rank[j] = where feature j comes in each permutation; step s takes the features ranked < s.
        ranks = np.argsort(perms, axis=1)  # (q, F)
        steps = np.arange(F + 1)
        take = ranks[:, None, :] < steps[None, :, None]  # (q, F + 1, F)
        take = np.broadcast_to(take[None], (m, q, F + 1, F)).reshape(-1, F)
        base_rows = np.repeat(bg, q * (F + 1), axis=0)
        values, attributions = [], []
        for i in range(n):
            hybrid = np.where(take, x[i][None, :], base_rows)
            if hybrid.dtype != x.dtype:
                hybrid = hybrid.astype(x.dtype)
            out = self._f(hybrid)  # (m * q * (F + 1), K)
            K = out.shape[1]
            out = out.reshape(m, q, F + 1, K)
            deltas = np.diff(out, axis=2)  # (m, q, F, K): step s adds the feature perms[., s]
            # Feature j's contribution along permutation p is the step where it came: ranks[p, j].
            by_feature = np.take_along_axis(deltas, ranks[None, :, :, None], axis=2)
            attributions.append(by_feature.mean(axis=(0, 1)))
            values.append(out[:, :, F].mean(axis=(0, 1)))
        values = np.array(values)
        base = out[:, :, 0].mean(axis=(0, 1))  # the background rows alone: the same for every row
        if self._columns is None:
            self._columns = output_columns(self.classes, values.shape[1])
        columns, complement = self._columns
        output = self.output
        if output == DECISION and complement is not None and type(ex.est).__name__ == "LogisticRegression":
            output = LOG_ODDS
        return Explanation(SAMPLING, output, ex.sig.names, columns, np.asarray(base), values,
                           np.array(attributions), complement)
