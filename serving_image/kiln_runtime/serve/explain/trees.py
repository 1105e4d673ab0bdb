"""`tree-path`: exact path-dependent Shapley values of tree ensembles (TreeSHAP), vectorised over
every leaf of every tree."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .common import (
    as_2d, DECISION, Explanation, LOG_ODDS, MAX_BACKGROUND, MAX_LEAVES, NotApplicable, output_columns,
    outputs_of, PREDICTION, PROBABILITY, SEED, TREE, Unmappable,
)

if TYPE_CHECKING:
    from . import Explainer

CHUNK_ELEMENTS = 1 << 17  # rows explained together by tree-path: rows x leaves x slots at most this (cache-sized)


class _Tree:
    """One tree as flat arrays; `value` is (nodes, K), already weighted (1/trees, learning rate) and
    placed in its output column."""

    def __init__(self, left, right, feature, threshold, missing_left, cover, value):
        self.left, self.right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
        self.feature = np.asarray(feature, dtype=np.int64)
        self.threshold = np.asarray(threshold, dtype=np.float64)
        self.missing_left = np.asarray(missing_left, dtype=bool)
        self.cover = np.asarray(cover, dtype=np.float64)
        self.value = np.asarray(value, dtype=np.float64)


def _sklearn_tree(tree, weight: float, k: int, n_out: int, proba: bool) -> _Tree:
    t = tree.tree_
    if t.n_outputs != 1:
        raise NotApplicable("a tree with several outputs")
    raw = np.asarray(t.value, dtype=np.float64)[:, 0, :]
    if proba:
        total = raw.sum(axis=1, keepdims=True)
        raw = np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)
        value = raw * weight
    else:
        value = np.zeros((t.node_count, n_out))
        value[:, k] = raw[:, 0] * weight
    missing = getattr(t, "missing_go_to_left", None)
    missing = np.asarray(missing, dtype=bool) if missing is not None else np.zeros(t.node_count, dtype=bool)
    return _Tree(t.children_left, t.children_right, t.feature, t.threshold, missing,
                 t.weighted_n_node_samples, value)


def _hist_tree(predictor, k: int, n_out: int) -> _Tree:
    nodes = predictor.nodes
    if nodes["is_categorical"].any():
        raise NotApplicable("histogram boosting with native categorical splits")
    leaf = nodes["is_leaf"].astype(bool)
    left = np.where(leaf, -1, nodes["left"].astype(np.int64))
    right = np.where(leaf, -1, nodes["right"].astype(np.int64))
    value = np.zeros((len(nodes), n_out))
    value[:, k] = nodes["value"]
    return _Tree(left, right, np.where(leaf, 0, nodes["feature_idx"]), nodes["num_threshold"],
                 nodes["missing_go_to_left"].astype(bool), nodes["count"], value)


def _trees_of(est):
    """(trees, outputs K, output name, inputs compared as float32, raw-output function) or raises
    NotApplicable."""
    from sklearn import ensemble, tree

    classes, is_clf = outputs_of(est)
    plain = (tree.DecisionTreeClassifier, tree.DecisionTreeRegressor, tree.ExtraTreeClassifier,
             tree.ExtraTreeRegressor)
    forests = (ensemble.RandomForestClassifier, ensemble.RandomForestRegressor,
               ensemble.ExtraTreesClassifier, ensemble.ExtraTreesRegressor)
    boosted = (ensemble.GradientBoostingClassifier, ensemble.GradientBoostingRegressor)
    hist = (ensemble.HistGradientBoostingClassifier, ensemble.HistGradientBoostingRegressor)
    if isinstance(est, plain + forests):
        members = [est] if isinstance(est, plain) else list(est.estimators_)
        if is_clf:
            if isinstance(est.n_classes_, (list, np.ndarray)):
                raise NotApplicable("a multi-output classifier")
            n_out = int(est.n_classes_)
            trees = [_sklearn_tree(m, 1.0 / len(members), 0, n_out, True) for m in members]
            return trees, n_out, PROBABILITY, True, est.predict_proba
        trees = [_sklearn_tree(m, 1.0 / len(members), 0, 1, False) for m in members]
        return trees, 1, PREDICTION, True, est.predict
    if isinstance(est, boosted):
        stages = np.asarray(est.estimators_)
        n_out = stages.shape[1]
        lr = float(est.learning_rate)
        trees = [_sklearn_tree(stages[i, k], lr, k, n_out, False)
                 for i in range(stages.shape[0]) for k in range(n_out)]
        if is_clf:
            return trees, n_out, (LOG_ODDS if n_out == 1 else DECISION), True, est.decision_function
        return trees, n_out, PREDICTION, True, est.predict
    if isinstance(est, hist):
        predictors = getattr(est, "_predictors", None)
        if predictors is None or getattr(est, "_preprocessor", None) is not None:
            raise NotApplicable("histogram boosting with its own categorical preprocessing")
        n_out = len(predictors[0]) if predictors else 1
        trees = [_hist_tree(p, k, n_out) for stage in predictors for k, p in enumerate(stage)]
        if is_clf:
            return trees, n_out, (LOG_ODDS if n_out == 1 else DECISION), False, est.decision_function
        return trees, n_out, PREDICTION, False, est.predict
    raise NotApplicable(f"{type(est).__name__} is not a supported tree model")


class TreeMethod:
    name = TREE

    @classmethod
    def make(cls, ex: Explainer):
        return cls(ex, *_trees_of(ex.est))

    def __init__(self, ex: Explainer, trees, n_out, output, float32, output_fn):
        self.ex, self.output, self.float32, self.output_fn = ex, output, float32, output_fn
        classes, _ = outputs_of(ex.est)
        self.columns, self.complement = output_columns(classes, n_out)
        n_in = ex.sig.width
        sources = np.asarray(list(ex.sources) + [n_in], dtype=np.int64)  # last: padding's "feature"
        n_cols = len(ex.sources)
        n_leaves = sum(int((t.left < 0).sum()) for t in trees)
        if n_leaves > MAX_LEAVES:
            raise NotApplicable(f"{n_leaves} leaves (tree-path takes at most {MAX_LEAVES})")
        # Every leaf of every tree: its path's nodes (global ids), the direction taken at each, and
        # per distinct feature on the path (a "slot"): the cover fraction z and the input feature.
        node_feat, node_thr, node_missing = [], [], []
        leaves = []  # (value, [(node, went_left, slot)], [(z, column)])
        offset = 0
        for t in trees:
            if len(t.feature) and int(t.feature[t.left >= 0].max(initial=-1)) >= n_cols:
                raise Unmappable("a tree splits on a column the preprocessing does not produce")
            node_feat.append(np.where(t.left >= 0, t.feature, 0))
            node_thr.append(t.threshold)
            node_missing.append(t.missing_left)
            stack = [(0, [], {}, [])]
            while stack:
                node, path, slot_of, slots = stack.pop()
                if t.left[node] < 0:
                    leaves.append((t.value[node], path, slots))
                    continue
                f = int(t.feature[node])
                parent = t.cover[node]
                for child, went_left in ((t.left[node], True), (t.right[node], False)):
                    frac = t.cover[child] / parent if parent > 0 else 0.5
                    s_of, s = dict(slot_of), [list(v) for v in slots]
                    if f in s_of:
                        s[s_of[f]][0] *= frac
                    else:
                        s_of[f] = len(s)
                        s.append([frac, f])
                    stack.append((int(child), path + [(offset + node, went_left, s_of[f])], s_of, s))
            offset += len(t.left)
        self.node_internal = np.concatenate([t.left >= 0 for t in trees]) if trees else np.zeros(0, bool)
        self.node_feat = np.concatenate(node_feat)
        self.node_thr = np.concatenate(node_thr)
        self.node_missing = np.concatenate(node_missing)
        n_leaves = len(leaves)
        depth = max((len(p) for _, p, _ in leaves), default=0)
        width = max((len(s) for _, _, s in leaves), default=0)
        self.D, self.P = width, depth
        self.leaf_value = np.array([v for v, _, _ in leaves]).reshape(n_leaves, n_out)
        self.path_node = np.zeros((n_leaves, max(depth, 1)), dtype=np.int64)
        self.path_left = np.zeros((n_leaves, max(depth, 1)), dtype=bool)
        self.path_slot = np.full((n_leaves, max(depth, 1)), width, dtype=np.int64)  # padding: scratch slot
        self.slot_z = np.ones((n_leaves, width))
        slot_col = np.full((n_leaves, width), n_cols, dtype=np.int64)
        for i, (_, path, slots) in enumerate(leaves):
            for p, (node, went_left, slot) in enumerate(path):
                self.path_node[i, p], self.path_left[i, p], self.path_slot[i, p] = node, went_left, slot
            for s, (frac, col) in enumerate(slots):
                self.slot_z[i, s], slot_col[i, s] = frac, col
        # Slot-major copies for _run; padding slots point at feature n_in (dropped), path padding at
        # the scratch slot D.
        self.slot_featureT = np.ascontiguousarray(sources[slot_col].T).reshape(-1)
        self.zT = np.ascontiguousarray(self.slot_z.T)
        self.path_nodeT = np.ascontiguousarray(self.path_node.T)
        self.path_leftT = np.ascontiguousarray(self.path_left.T)
        self.fail_index = np.ascontiguousarray((self.path_slot * n_leaves + np.arange(n_leaves)[:, None]).T)
        self.leaf_valueT = np.ascontiguousarray(self.leaf_value.T)
        self.weights = np.array([1.0 / (width * math.comb(width - 1, k)) for k in range(width)])
        self.tree_base = np.prod(self.slot_z, axis=1) @ self.leaf_value  # (K,)
        # The model's own output is the trees' sum plus a constant (the boosting's initial score,
        # 0 for forests); check it on probe rows, and learn the constant.
        probe = self._probe_rows(ex)
        want = as_2d(self.output_fn(ex.est_input(probe)))
        got = self._run(probe)[1]
        if want.shape != got.shape:
            raise NotApplicable(f"the model answers {want.shape[1]} outputs, the trees {got.shape[1]}")
        offset_ = want - got
        self.init = offset_.mean(axis=0)
        if not np.allclose(offset_, self.init, rtol=0, atol=1e-7 * max(1.0, float(np.abs(want).max()))):
            raise NotApplicable("the model's output is not the sum of its trees plus a constant")
        self.base = self.tree_base + self.init

    def _probe_rows(self, ex: Explainer) -> np.ndarray:
        rng = np.random.default_rng(SEED)
        background, _ = ex.background(MAX_BACKGROUND)
        try:
            rows = [ex.transform(background)]
        except Exception:
            rows = []
        n_cols = len(ex.sources)
        inner = self.node_internal & np.isfinite(self.node_thr)
        samples = np.zeros((32, n_cols))
        for c in range(n_cols):
            thr = self.node_thr[inner & (self.node_feat == c)]
            if len(thr):
                picked = rng.choice(thr, 32)
                jitter = rng.normal(scale=0.01, size=32) * (1 + np.abs(picked))
                jitter[:8] = 0.0  # some exactly on a threshold: the comparison's precision matters there
                samples[:, c] = picked + jitter
        rows.append(samples)
        return np.vstack(rows)

    def _run(self, z: np.ndarray):
        """-> (attributions over input features (n, F, K), the trees' output (n, K)).

        Arrays are slot-major, (D, rows x leaves), so each step below is one pass over long vectors."""
        n = len(z)
        n_in, K, D, P = self.ex.sig.width, self.leaf_value.shape[1], self.D, self.P
        L = len(self.leaf_value)
        phi = np.zeros((n, n_in, K))
        trees_out = np.zeros((n, K))
        if L == 0:
            return phi, trees_out
        if D == 0:  # stumps only: every row reaches every (single) leaf
            trees_out[:] = self.leaf_value.sum(axis=0)
            return phi, trees_out
        xv = z.astype(np.float32).astype(np.float64) if self.float32 else z
        step = max(1, CHUNK_ELEMENTS // (L * (max(D, P) + 1)))
        w = self.weights
        for start in range(0, n, step):
            rows = xv[start: start + step]
            R = len(rows)
            N = R * L
            fv = rows[:, self.node_feat]
            goes_left = fv <= self.node_thr
            missing = np.isnan(fv)
            if missing.any():
                goes_left = np.where(missing, self.node_missing, goes_left)
            # o: the row satisfies every split of the leaf's path on this slot's feature.
            wrong = goes_left[:, self.path_nodeT] != self.path_leftT  # (R, P, L)
            offsets = (np.arange(R) * ((D + 1) * L))[:, None, None]
            fails = np.bincount((self.fail_index[None] + offsets)[wrong], minlength=R * (D + 1) * L)
            one = fails.reshape(R, D + 1, L)[:, :D] == 0  # (R, D, L)
            o = one.transpose(1, 0, 2).reshape(D, N).astype(np.float64)
            zt = self.zT if R == 1 else np.tile(self.zT, (1, R))
            # EXTEND: the coefficients of prod_d (z_d + o_d t), one degree more per slot.
            poly = np.zeros((D + 1, N))
            poly[0] = 1.0
            tmp = np.empty(N)
            for d in range(D):
                zd, od = zt[d], o[d]
                np.multiply(poly[d], od, out=poly[d + 1])
                for k in range(d, 0, -1):
                    poly[k] *= zd
                    np.multiply(poly[k - 1], od, out=tmp)
                    poly[k] += tmp
                poly[0] *= zd
            # UNWIND every slot at once. o_i = 1: divide the factor (t + z_i) out, top coefficient
            # down, summing the Shapley weights of the quotient's coefficients.
            q = np.repeat(poly[D][None], D, axis=0)
            s1 = q * w[D - 1]
            for k in range(D - 1, 0, -1):
                q *= -zt
                q += poly[k]
                s1 += q * w[k - 1]
            # o_i = 0: the factor is the constant z_i, and (o_i - z_i) / z_i = -1.
            s0 = w @ poly[:D]
            g = np.where(o > 0, (1.0 - zt) * s1, -s0)  # (D, N): per leaf value unit
            # Times each leaf's value, summed per input feature (one-hot columns into their category).
            for r in range(R):
                gr = g[:, r * L: (r + 1) * L]
                for k in range(K):
                    phi[start + r, :, k] = np.bincount(self.slot_featureT, weights=(gr * self.leaf_valueT[k]).ravel(),
                                                       minlength=n_in + 1)[:n_in]
            trees_out[start: start + R] = poly[D].reshape(R, L) @ self.leaf_value
        return phi, trees_out

    def explain(self, x: np.ndarray) -> Explanation:
        ex = self.ex
        z = ex.transform(x)
        values = as_2d(self.output_fn(ex.est_input(z)))
        phi, _ = self._run(z)
        return Explanation(TREE, self.output, ex.sig.names, self.columns, self.base.copy(), values, phi,
                           self.complement)
