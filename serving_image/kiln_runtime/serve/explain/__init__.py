"""Feature attributions (Shapley values) for one prediction: what each input feature added to it.

Pure: no HTTP, no threads. `build(model, sig, to_input)` looks at the scikit-learn model once (the
object SklearnRuntime holds: an estimator, or a Pipeline whose last step is one) and returns an
`Explainer`; `Explainer.explain(x)` takes rows as the decoders validate them (the signature's matrix:
float64, or object for mixed types) and runs them through `to_input` (the runtime's `_input`, which
builds the DataFrame kiln-train fitted on) itself.

Every answer is additive: for each row, `base + sum(attributions) == value`, where `value` is the
model's own output for the row (computed by the model, not by this module) and the sum is over the
signature's input features. Columns that preprocessing derives from one input feature (the one-hot
columns of a category, an imputer's indicator) are explained in the model's input space and their
attributions summed back to that feature.

Methods (the answer names which):

- `linear-exact`: a linear model (`coef_`, `intercept_`: LinearRegression, Ridge, Lasso,
  ElasticNet, LogisticRegression, SGD..., LinearSVC) after any column-wise preprocessing. The
  preprocessed columns z are the model's input space; with independent features the exact Shapley
  value of column j is `coef_j * (z_j - mean_j)` and the base is `coef . mean + intercept`.
- `tree-path`: tree ensembles (DecisionTree, RandomForest, ExtraTrees, GradientBoosting,
  HistGradientBoosting without native categorical splits). Exact Shapley values of the
  path-dependent game of Lundberg et al. (TreeSHAP): a feature outside the coalition is integrated
  out by following both children of its splits, weighted by the training samples each child
  received (the node cover: `tree_.weighted_n_node_samples`, or `count` for histogram boosting).
  No background data is needed: the covers are the training distribution the trees remember. The
  computation is the polynomial one: a leaf's value function factorises over the distinct features
  on its path, each contributing `z + o*t` (z = the cover fraction of its splits on the path, o =
  whether the row satisfies all of them), and the Shapley weights are read off that polynomial with
  the feature's own factor divided out: Lundberg et al.'s EXTEND (multiply a factor in) and UNWIND
  (divide one out), done for every leaf of every tree at once as vector operations. Ensembles with
  more than MAX_LEAVES leaves in all are sampled instead (the tables grow with the leaves).
- `sampling`: anything else (SVC, k-neighbours, a pipeline whose preprocessing mixes columns, a
  tree model whose internals do not check out). Permutation sampling of interventional Shapley
  values against a small background (below), in the signature's feature space, with a fixed seed
  (the same rows always get the same answer) and antithetic permutation pairs. Along each
  permutation the row's values replace the background's one feature at a time, so the marginal
  contributions of one permutation telescope to `f(x) - f(background row)`; every background row
  gets the same number of permutations, so the attributions add up exactly to `value - base` with
  `base` the mean output over the background. The attributions themselves are estimates.

Output explained (the answer's `output`):
- regressors: the prediction (`prediction`);
- linear classifiers: the decision function. For LogisticRegression (binary) that is the log-odds
  of the target class (`log-odds`); a multiclass linear model explains its per-class scores
  (`decision-function`; softmax of them is predict_proba);
- gradient boosting classifiers (GradientBoosting*, HistGradientBoosting*): the raw decision
  function, i.e. the sum of the trees: `log-odds` for two classes, `decision-function` per class
  beyond (trees fit in that space, where they are additive; probabilities are not);
- other tree classifiers (decision tree, random forest, extra trees) and the `sampling` method: the
  probability of the target class (`probability`); a classifier without predict_proba under
  `sampling` explains its decision function.
A classifier's answer explains one class per row, the `target`: by default the class the model
predicts for that row, or the class the request names.

Background (what "absent" means for `linear-exact` and `sampling`). kiln-serve has no training data;
it uses what the fitted preprocessing stored about it, per input feature:
- a StandardScaler's `mean_` (a scaled column's training mean, i.e. z = 0), else a RobustScaler's
  `center_`, else a SimpleImputer's statistic (the median, mean or most frequent value it imputes);
- for a one-hot (or ordinal) encoded category: every level the encoder learnt, equally weighted (the
  encoder stores no frequencies), so the base is the average over levels;
- nothing stored (a bare estimator without preprocessing): 0 for numbers and booleans, the missing
  marker for categories.
`linear-exact` uses the mean of the background in z space (exact for scaled columns, the uniform
level mix for one-hot columns); `sampling` uses background rows (at most `MAX_BACKGROUND`, category
levels spread over them). `tree-path` needs none (the covers).

Checks: an exact method is used only if, on probe rows, the model's own output is its coefficients'
linear function (no link such as Poisson's) or its trees' sum plus a constant (boosting's initial
score, learnt there); and every answer is checked for additivity against the model's output, a
miss (which would be a bug) being logged and the request explained by sampling instead.
"""

from __future__ import annotations

import numpy as np

from ..signature import Signature
from .columns import column_sources, stored_references
from .common import (
    LINEAR, SAMPLING, TOLERANCE, TREE, Explanation, NotApplicable, UnknownTarget, Unmappable, Unsupported,
    as_feature_value, is_levels, log, split_pipeline,
)
from .linear import LinearMethod
from .sampling import SamplingMethod
from .trees import TreeMethod

__all__ = ["LINEAR", "SAMPLING", "TREE", "Explainer", "Explanation", "SamplingMethod", "UnknownTarget",
           "Unsupported", "build"]


def build(model, sig: Signature, to_input) -> Explainer:
    """The best exact method this model allows, else `sampling`. Raises Unsupported."""
    pre, est = split_pipeline(model)
    n_in = sig.width
    sources, refs = list(range(n_in)), [None] * n_in
    if pre is not None:
        try:
            sources = column_sources(pre, n_in)
        except Unmappable as exc:
            sources = None
            log.info("explanations: preprocessing not mapped to input features (%s); using sampling", exc)
        try:
            refs = stored_references(pre, n_in)
        except Exception as exc:  # a statistic missing where expected: no reference, not no answer
            log.warning("explanations: no reference values from the preprocessing (%s: %s)",
                        type(exc).__name__, exc)
    base = Explainer(model, pre, est, sig, to_input, sources, refs)
    if sources is not None:
        for kind in (TreeMethod, LinearMethod):
            try:
                method = kind.make(base)
            except (NotApplicable, Unmappable) as exc:
                log.info("explanations: %s not used: %s", kind.name, exc)
                continue
            except Exception as exc:  # internals that do not look as expected: fall back, loudly
                log.warning("explanations: %s failed to build (%s: %s); using sampling", kind.name,
                            type(exc).__name__, exc)
                continue
            if method is not None:
                base.method = method
                break
    if base.method is None:
        base.method = SamplingMethod(base)
    return base


class Explainer:
    def __init__(self, model, pre, est, sig, to_input, sources, refs):
        self.model, self.pre, self.est, self.sig, self.to_input = model, pre, est, sig, to_input
        self.sources = sources  # input feature of each preprocessed column, or None (not column-wise)
        self.refs = refs  # per input feature: None, a value, or ("levels", [...])
        self.method = None
        self._fallback = None
        self._warned = False

    @property
    def name(self) -> str:
        return self.method.name

    def explain(self, x: np.ndarray) -> Explanation:
        out = self.method.explain(x)
        if self.method.name != SAMPLING:
            residual = np.abs(out.base + out.attributions.sum(axis=1) - out.values)
            if not (residual <= TOLERANCE * np.maximum(1.0, np.abs(out.values))).all():
                if not self._warned:
                    log.warning("explanations: %s answer off by %.3g from the model's output; "
                                "explaining by sampling instead", self.method.name, float(np.nanmax(residual)))
                    self._warned = True
                if self._fallback is None:
                    self._fallback = SamplingMethod(self)
                out = self._fallback.explain(x)
        return out

    # shared helpers

    def transform(self, x: np.ndarray) -> np.ndarray:
        data = self.to_input(x)
        if self.pre is None:
            return np.asarray(data, dtype=np.float64)
        z = self.pre.transform(data)
        if hasattr(z, "toarray"):
            z = z.toarray()
        return np.asarray(z, dtype=np.float64)

    def est_input(self, z: np.ndarray):
        """z as the final estimator was fitted: a DataFrame when it knows column names."""
        names = getattr(self.est, "feature_names_in_", None)
        if names is None:
            return z
        import pandas as pd

        return pd.DataFrame(z, columns=list(names))

    def background(self, rows_cap: int) -> tuple[np.ndarray, list[int]]:
        """Background rows in signature space, and each input feature's level count (1 when it has a
        single reference value): feature j cycles through its levels, so rows[:levels[j]] hold each
        of them once."""
        sig, refs = self.sig, self.refs
        counts = [len(r[1]) if is_levels(r) else 1 for r in refs]
        m = max(1, min(rows_cap, max(counts)))
        out = np.empty((m, sig.width), dtype=np.float64 if sig.numeric else object)
        for j, (feat, ref) in enumerate(zip(sig.features, refs)):
            if is_levels(ref):
                levels = list(ref[1])
                if len(levels) > m:  # spread a subset over the rows
                    levels = [levels[round(i * (len(levels) - 1) / max(1, m - 1))] for i in range(m)]
                values = [levels[r % len(levels)] for r in range(m)]
            else:
                values = [ref] * m
            out[:, j] = [as_feature_value(feat.type, v, sig) for v in values]
        return out, [min(c, m) for c in counts]
