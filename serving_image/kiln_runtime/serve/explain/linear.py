"""`linear-exact`: exact Shapley values of a linear model over its preprocessed columns."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .common import (
    as_2d, DECISION, Explanation, grouping, LINEAR, LOG_ODDS, NotApplicable, output_columns, outputs_of,
    PREDICTION, SEED, Unmappable,
)

if TYPE_CHECKING:
    from . import Explainer


class LinearMethod:
    name = LINEAR

    @classmethod
    def make(cls, ex: Explainer):
        est = ex.est
        module = type(est).__module__
        if not (module.startswith("sklearn.linear_model") or type(est).__name__ in ("LinearSVC", "LinearSVR")):
            raise NotApplicable(f"{type(est).__name__} is not a linear model")
        coef, intercept = getattr(est, "coef_", None), getattr(est, "intercept_", None)
        if coef is None or intercept is None or hasattr(coef, "toarray"):
            raise NotApplicable("no dense coef_ and intercept_")
        return cls(ex)

    def __init__(self, ex: Explainer):
        self.ex = ex
        est = ex.est
        classes, is_clf = outputs_of(est)
        self.coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))  # (K, columns)
        self.intercept = np.broadcast_to(np.asarray(est.intercept_, dtype=np.float64).reshape(-1),
                                          (self.coef.shape[0],)).copy()
        if is_clf and not hasattr(est, "decision_function"):
            raise NotApplicable("a linear classifier without decision_function")
        self.output_fn = est.decision_function if is_clf else est.predict
        k = self.coef.shape[0]
        self.columns, self.complement = output_columns(classes, k)
        if is_clf:
            self.output = LOG_ODDS if (k == 1 and type(est).__name__ == "LogisticRegression") else DECISION
        else:
            if k != 1:
                raise NotApplicable("a regressor with several outputs")
            self.output = PREDICTION
        # The background's mean in the model's input space: each column averaged over the levels
        # (or the single reference value) of the feature it comes from.
        background, counts = ex.background(10_000)
        zb = ex.transform(background)
        if zb.shape[1] != len(ex.sources) or zb.shape[1] != self.coef.shape[1]:
            raise Unmappable(f"{zb.shape[1]} preprocessed columns, {len(ex.sources)} mapped, "
                              f"{self.coef.shape[1]} coefficients")
        self.mean = np.array([zb[: counts[src], c].mean() for c, src in enumerate(ex.sources)])
        self.group = grouping(ex.sources, ex.sig.width)  # (columns, features)
        self.base = self.coef @ self.mean + self.intercept
        # The model's own output must be this linear function: a link (Poisson, Gamma) is not.
        probe = np.vstack([zb[:4], zb[:4] + np.random.default_rng(SEED).normal(size=zb[:4].shape)])
        want = as_2d(self.output_fn(ex.est_input(probe)))
        got = probe @ self.coef.T + self.intercept
        if want.shape != got.shape or not np.allclose(want, got, rtol=1e-7, atol=1e-7):
            raise NotApplicable("the model's output is not coef_ . z + intercept_")

    def explain(self, x: np.ndarray) -> Explanation:
        ex = self.ex
        z = ex.transform(x)
        values = as_2d(self.output_fn(ex.est_input(z)))
        contrib = (z - self.mean)[:, :, None] * self.coef.T[None, :, :]  # (n, columns, K)
        attributions = np.einsum("ncK,cf->nfK", contrib, self.group)
        return Explanation(LINEAR, self.output, ex.sig.names, self.columns, self.base.copy(), values,
                           attributions, self.complement)
