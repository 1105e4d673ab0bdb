"""Explanations: additive attributions checked against Shapley values computed by definition (every
coalition, an independent value function), and the :explain / /explain routes beside :predict."""

from __future__ import annotations

import asyncio
import threading
from itertools import combinations
from math import factorial
from time import perf_counter
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from kiln_runtime.serve import explain, signature
from kiln_runtime.serve.app import App
from kiln_runtime.serve.http import Connection
from kiln_runtime.serve.metrics import Metrics
from kiln_runtime.serve.request_ids import RequestIds
from kiln_runtime.serve.runtime_sklearn import SklearnRuntime

from conftest import Transport, http_request, parse_answers

TOL = 1e-6


def numeric_sig(width: int, output: str = "value", classes=None):
    doc = {"inputs": [{"name": f"f{i}", "type": "number"} for i in range(width)], "output": {"type": output}}
    if classes is not None:
        doc["output"]["classes"] = classes
    return signature.parse(doc)


def data(rows=400, width=4, seed=0, classes=0):
    """Rows and a target: a value, or class labels 0..classes-1 (with interactions, so trees split on
    several features along one path)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width))
    score = x[:, 0] * 1.5 - x[:, 1] + 0.8 * x[:, 2] * x[:, 3] + 0.3 * rng.normal(size=rows)
    if not classes:
        return x, score
    cuts = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    return x, np.searchsorted(cuts, score)


def explainer_for(model, sig):
    runtime = SklearnRuntime(model, sig)
    return explain.build(model, sig, runtime._input)


def assert_additive(result):
    total = result.base[None, :] + result.attributions.sum(axis=1)
    np.testing.assert_allclose(total, result.values, rtol=0, atol=TOL)


# --- Shapley values by definition ------------------------------------------------------------------

def shapley_by_definition(value, n: int):
    """phi_i = sum over S without i of |S|!(n-|S|-1)!/n! (v(S u {i}) - v(S)); -> (phi (n, K), v(empty), v(all))."""
    cache = {}

    def v(s):
        if s not in cache:
            cache[s] = np.atleast_1d(np.asarray(value(s), dtype=np.float64))
        return cache[s]

    phi = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = 0.0
        for k in range(n):
            weight = factorial(k) * factorial(n - k - 1) / factorial(n)
            for s in combinations(others, k):
                s = frozenset(s)
                total = total + weight * (v(s | {i}) - v(s))
        phi.append(total)
    return np.array(phi), v(frozenset()), v(frozenset(range(n)))


def path_expectation(tree, z, present, proba: bool):
    """The path-dependent conditional expectation E[f(z) | z_S]: at a split on a feature in S follow
    the row (compared in float32, as scikit-learn does); else average both children by their share of
    the training samples."""
    t = tree.tree_
    cover = t.weighted_n_node_samples

    def walk(node):
        left, right = t.children_left[node], t.children_right[node]
        if left == -1:
            v = t.value[node, 0].astype(np.float64)
            return v / v.sum() if proba else v
        f = t.feature[node]
        if f in present:
            value = np.float32(z[f])
            go_left = bool(t.missing_go_to_left[node]) if np.isnan(value) else value <= t.threshold[node]
            return walk(left if go_left else right)
        return (cover[left] * walk(left) + cover[right] * walk(right)) / cover[node]

    return walk(0)


def grouped(phi_columns: np.ndarray, groups: list[int], n_features: int) -> np.ndarray:
    out = np.zeros((n_features,) + phi_columns.shape[1:])
    for c, g in enumerate(groups):
        out[g] += phi_columns[c]
    return out


# --- linear-exact ---------------------------------------------------------------------------------

def test_linear_regression_is_exact_against_the_interventional_shapley_values():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = data(width=5)
    model = make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(x, y)
    ex = explainer_for(model, numeric_sig(5))
    assert ex.name == "linear-exact"
    rows = x[:5] * 2 + 0.3
    result = ex.explain(rows)
    assert result.output == "prediction" and result.columns == [None]
    np.testing.assert_allclose(result.values[:, 0], model.predict(rows), rtol=0, atol=1e-12)
    assert_additive(result)
    scaler, ridge = model[0], model[-1]
    mean = np.zeros(5)  # the scaler's training mean, in the model's input space
    for r, row in enumerate(rows):
        z = scaler.transform(row[None])[0]

        def v(s):
            return ridge.predict(np.where(np.isin(np.arange(5), list(s)), z, mean)[None])

        phi, empty, _ = shapley_by_definition(v, 5)
        np.testing.assert_allclose(result.attributions[r, :, 0], phi[:, 0], atol=1e-9)
        np.testing.assert_allclose(result.base, empty, atol=1e-9)


def test_logistic_regression_explains_the_log_odds_of_the_predicted_class():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = data(width=4, classes=2)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    ex = explainer_for(model, numeric_sig(4, "label", ["0", "1"]))
    rows = x[:6]
    result = ex.explain(rows)
    assert (ex.name, result.output, result.columns, result.complement) == ("linear-exact", "log-odds", [1], 0)
    decision = model.decision_function(rows)
    np.testing.assert_allclose(result.values[:, 0], decision, atol=1e-12)
    assert_additive(result)
    lr, z_rows = model[-1], model[0].transform(rows)
    for r, z in enumerate(z_rows):
        phi, _, _ = shapley_by_definition(
            lambda s: lr.decision_function(np.where(np.isin(np.arange(4), list(s)), z, 0.0)[None]), 4)
        np.testing.assert_allclose(result.attributions[r, :, 0], phi[:, 0], atol=1e-9)
    # One class per row: the predicted one by default (its log-odds), or the one asked for.
    targets, base, values, attributions = result.select()
    assert targets == model.predict(rows).tolist()
    sign = np.where(decision > 0, 1.0, -1.0)
    np.testing.assert_allclose(values, sign * decision, atol=1e-12)
    np.testing.assert_allclose(base + attributions.sum(axis=1), values, atol=TOL)
    targets, _, values, _ = result.select("0")
    assert targets == [0] * 6 and np.allclose(values, -decision)
    with pytest.raises(explain.UnknownTarget, match="not one of the model's classes"):
        result.select("7")


def test_a_multiclass_linear_model_explains_each_class_score():
    from sklearn.linear_model import LogisticRegression

    x, y = data(width=4, classes=3)
    model = LogisticRegression().fit(x, y)
    result = explainer_for(model, numeric_sig(4, "label", ["0", "1", "2"])).explain(x[:5])
    assert (result.method, result.output, result.columns) == ("linear-exact", "decision-function", [0, 1, 2])
    np.testing.assert_allclose(result.values, model.decision_function(x[:5]), atol=1e-12)
    assert_additive(result)


# --- tree-path ------------------------------------------------------------------------------------

def check_trees(result, rows, value_of, n: int):
    """Each row's attributions and base against Shapley values of the path-dependent game."""
    for r, z in enumerate(rows):
        phi, empty, full = shapley_by_definition(lambda s: value_of(z, s), n)
        np.testing.assert_allclose(result.attributions[r], phi, atol=1e-9)
        # The model's output is the game's value on all features plus a constant (boosting's initial
        # score, 0 for forests), and so is the base on none.
        np.testing.assert_allclose(result.base - empty, result.values[r] - full, atol=1e-9)


def test_decision_tree_probabilities_match_the_path_dependent_shapley_values():
    from sklearn.tree import DecisionTreeClassifier

    x, y = data(width=5, classes=3)
    model = DecisionTreeClassifier(max_depth=6, random_state=0).fit(x, y)
    ex = explainer_for(model, numeric_sig(5, "label", ["0", "1", "2"]))
    rows = x[:4]
    result = ex.explain(rows)
    assert (ex.name, result.output, result.columns) == ("tree-path", "probability", [0, 1, 2])
    np.testing.assert_allclose(result.values, model.predict_proba(rows), atol=1e-12)
    assert_additive(result)
    check_trees(result, rows, lambda z, s: path_expectation(model, z, s, True), 5)


def test_random_forest_of_100_trees():
    from sklearn.ensemble import RandomForestRegressor

    x, y = data(width=4)
    model = RandomForestRegressor(n_estimators=100, max_depth=6, random_state=0, n_jobs=1).fit(x, y)
    ex = explainer_for(model, numeric_sig(4))
    rows = x[:3]
    result = ex.explain(rows)
    assert ex.name == "tree-path" and result.output == "prediction"
    np.testing.assert_allclose(result.values[:, 0], model.predict(rows), atol=1e-12)
    assert_additive(result)
    check_trees(result, rows, lambda z, s: np.mean([path_expectation(t, z, s, False) for t in model.estimators_],
                                                   axis=0), 4)
    assert_additive(ex.explain(x[:64]))


def test_random_forest_classifier_probabilities_are_additive():
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    x, y = data(width=6, classes=2)
    for cls in (RandomForestClassifier, ExtraTreesClassifier):
        model = cls(n_estimators=100, max_depth=8, random_state=0, n_jobs=1).fit(x, y)
        result = explainer_for(model, numeric_sig(6, "label", ["0", "1"])).explain(x[:20])
        assert result.method == "tree-path" and result.output == "probability"
        np.testing.assert_allclose(result.values, model.predict_proba(x[:20]), atol=1e-12)
        assert_additive(result)
        # Two probabilities that sum to one: the attributions of one class are the other's, negated.
        np.testing.assert_allclose(result.attributions[:, :, 0], -result.attributions[:, :, 1], atol=1e-12)


@pytest.mark.parametrize("classes", [2, 3])
def test_gradient_boosting_explains_the_raw_decision_function(classes):
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = data(width=4, classes=classes)
    model = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    labels = [str(c) for c in range(classes)]
    ex = explainer_for(model, numeric_sig(4, "label", labels))
    rows = x[:3]
    result = ex.explain(rows)
    assert ex.name == "tree-path"
    assert result.output == ("log-odds" if classes == 2 else "decision-function")
    decision = model.decision_function(rows).reshape(len(rows), -1)
    np.testing.assert_allclose(result.values, decision, atol=1e-12)
    assert_additive(result)
    stages, lr = model.estimators_, model.learning_rate

    def value_of(z, s):
        return np.array([lr * sum(path_expectation(stages[i, k], z, s, False)[0] for i in range(len(stages)))
                         for k in range(stages.shape[1])])

    check_trees(result, rows, value_of, 4)


def test_gradient_boosting_regressor_and_histogram_boosting_are_additive():
    from sklearn.ensemble import (GradientBoostingRegressor, HistGradientBoostingClassifier,
                                  HistGradientBoostingRegressor)

    x, y = data(width=5)
    x[::7, 2] = np.nan  # histogram boosting routes missing values itself
    hgb = HistGradientBoostingRegressor(max_iter=40, random_state=0).fit(x, y)
    result = explainer_for(hgb, signature.parse({
        "inputs": [{"name": f"f{i}", "type": "number", "nullable": True} for i in range(5)],
        "output": {"type": "value"}})).explain(x[:30])
    assert result.method == "tree-path" and result.output == "prediction"
    np.testing.assert_allclose(result.values[:, 0], hgb.predict(x[:30]), atol=1e-9)
    assert_additive(result)
    x = np.nan_to_num(x)
    gbr = GradientBoostingRegressor(n_estimators=40, random_state=0).fit(x, y)
    result = explainer_for(gbr, numeric_sig(5)).explain(x[:30])
    assert result.method == "tree-path"
    assert_additive(result)
    xc, yc = data(width=5, classes=3)
    hgc = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(xc, yc)
    result = explainer_for(hgc, numeric_sig(5, "label", ["0", "1", "2"])).explain(xc[:30])
    assert result.method == "tree-path" and result.output == "decision-function"
    np.testing.assert_allclose(result.values, hgc.decision_function(xc[:30]), atol=1e-9)
    assert_additive(result)


# --- kiln-train's pipelines: one-hot categories summed back to their feature ------------------------

MIXED = {"inputs": [{"name": "age", "type": "integer"}, {"name": "income", "type": "number", "nullable": True},
                    {"name": "colour", "type": "category"}, {"name": "member", "type": "boolean"}],
         "output": {"type": "label", "classes": ["0", "1"]}}
COLOURS = ["red", "green", "blue"]


def mixed_rows(n=300, seed=1):
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    income = rng.normal(50, 15, n)
    income[::11] = np.nan
    colour = rng.choice(COLOURS, n)
    member = rng.random(n) < 0.4
    score = (age - 45) / 15 + np.nan_to_num(income - 50) / 10 + (colour == "red") * 1.2 - member * 0.7
    y = (score + rng.normal(scale=0.5, size=n) > 0).astype(np.int64)
    frame = pd.DataFrame({"age": age.astype(np.float64), "income": income, "colour": colour.astype(object),
                          "member": member.astype(np.float64)})
    rows = np.empty((n, 4), dtype=object)
    rows[:, 0] = age.tolist()
    rows[:, 1] = [None if np.isnan(v) else float(v) for v in income]
    rows[:, 2] = colour.tolist()
    rows[:, 3] = member.tolist()
    return frame, y, rows


def kiln_pipeline(estimator: str, params: dict):
    from kiln_runtime.train.estimators import make_pipeline
    from kiln_runtime.train.spec import Column

    columns = (Column("age", "integer"), Column("income", "number"), Column("colour", "category"),
               Column("member", "boolean"))
    return make_pipeline(estimator, params, columns)


def test_a_kiln_forest_pipeline_with_one_hot_categories():
    frame, y, rows = mixed_rows()
    model = kiln_pipeline("RandomForestClassifier", {"n_estimators": 20, "max_depth": 5, "random_state": 0})
    model.fit(frame, y)
    sig = signature.parse(MIXED)
    ex = explainer_for(model, sig)
    assert ex.name == "tree-path"
    result = ex.explain(rows[:8])
    assert result.features == ("age", "income", "colour", "member")
    runtime = SklearnRuntime(model, sig)
    np.testing.assert_allclose(result.values, model.predict_proba(runtime._input(rows[:8])), atol=1e-12)
    assert_additive(result)
    # By definition over the six preprocessed columns (age, income, member, colour=blue/green/red in
    # the ColumnTransformer's order), then the colour columns summed into colour.
    z_rows = model[:-1].transform(runtime._input(rows[:3]))
    assert z_rows.shape[1] == 6
    forest = model[-1]
    groups = [0, 1, 3, 2, 2, 2]
    for r, z in enumerate(z_rows):
        phi, _, _ = shapley_by_definition(
            lambda s: np.mean([path_expectation(t, z, s, True) for t in forest.estimators_], axis=0), 6)
        np.testing.assert_allclose(result.attributions[r], grouped(phi, groups, 4), atol=1e-9)


def test_a_kiln_logistic_pipeline_uses_the_scalers_means_and_every_level():
    frame, y, rows = mixed_rows()
    model = kiln_pipeline("LogisticRegression", {}).fit(frame, y)
    sig = signature.parse(MIXED)
    ex = explainer_for(model, sig)
    assert ex.name == "linear-exact"
    result = ex.explain(rows[:6])
    runtime = SklearnRuntime(model, sig)
    np.testing.assert_allclose(result.values[:, 0], model.decision_function(runtime._input(rows[:6])), atol=1e-12)
    assert_additive(result)
    # The background in the model's input space: scaled numbers at their training mean (0), the
    # boolean at its most frequent value, each colour level equally likely.
    pre, lr = model[:-1], model[-1]
    member_mode = float(model[0].named_transformers_["boolean"].statistics_[0])
    background = np.array([0.0, 0.0, member_mode, 1 / 3, 1 / 3, 1 / 3])
    groups = [0, 1, 3, 2, 2, 2]
    for r, z in enumerate(pre.transform(runtime._input(rows[:6]))):
        def v(s):
            take = np.array([g in s for g in groups])
            return lr.decision_function(np.where(take, z, background)[None])

        phi, empty, _ = shapley_by_definition(v, 4)
        np.testing.assert_allclose(result.attributions[r, :, 0], phi[:, 0], atol=1e-9)
        np.testing.assert_allclose(result.base, empty, atol=1e-9)


# --- sampling -------------------------------------------------------------------------------------

def test_sampling_is_additive_deterministic_and_exact_for_a_linear_model():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x, y = data(width=5, classes=2)
    svc = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(x, y)
    ex = explainer_for(svc, numeric_sig(5, "label", ["0", "1"]))
    assert ex.name == "sampling"
    first, again = ex.explain(x[:4]), ex.explain(x[:4])
    assert first.output == "probability"
    np.testing.assert_allclose(first.values, svc.predict_proba(x[:4]), atol=1e-12)
    assert_additive(first)
    np.testing.assert_array_equal(first.attributions, again.attributions)
    # Against one background row, a linear model's marginal contribution is the same along every
    # permutation: sampling must find the exact values.
    xr, yr = data(width=5)
    ridge = make_pipeline(StandardScaler(), Ridge()).fit(xr, yr)
    exact = explainer_for(ridge, numeric_sig(5))
    sampled = explain.SamplingMethod(exact).explain(xr[:4])
    assert_additive(sampled)
    np.testing.assert_allclose(sampled.attributions, exact.explain(xr[:4]).attributions, atol=1e-9)


def test_preprocessing_that_mixes_features_falls_back_to_sampling():
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.pipeline import make_pipeline

    x, y = data(width=4)
    model = make_pipeline(PCA(n_components=3), RandomForestRegressor(n_estimators=10, random_state=0)).fit(x, y)
    ex = explainer_for(model, numeric_sig(4))
    assert ex.name == "sampling"
    result = ex.explain(x[:3])
    assert_additive(result)
    np.testing.assert_allclose(result.values[:, 0], model.predict(x[:3]), atol=1e-12)


def test_an_answer_that_does_not_add_up_is_explained_by_sampling_instead(caplog):
    from sklearn.tree import DecisionTreeRegressor

    x, y = data(width=4)
    model = DecisionTreeRegressor(max_depth=4, random_state=0).fit(x, y)
    ex = explainer_for(model, numeric_sig(4))
    run = ex.method._run
    ex.method._run = lambda z: ((lambda phi, out: (phi + 0.1, out))(*run(z)))  # a bug, simulated
    result = ex.explain(x[:2])
    assert result.method == "sampling" and "explaining by sampling instead" in caplog.text
    assert_additive(result)


# --- HTTP -----------------------------------------------------------------------------------------

class Client:
    """One connection into the app, fed on the loop as asyncio would."""

    def __init__(self, loop, app):
        self.loop, self.conn, self.transport = loop, Connection(app), Transport()
        self.conn.connection_made(self.transport)

    def send(self, raw: bytes):
        self.loop.call_soon(self.conn.data_received, raw)
        self.loop.run_until_complete(asyncio.sleep(0))

    def answers(self):
        return parse_answers(bytes(self.transport.out))

    def wait(self, count: int = 1, timeout: float = 60):
        deadline = perf_counter() + timeout
        while len(self.answers()) < count and perf_counter() < deadline:
            self.loop.run_until_complete(asyncio.sleep(0.005))
        return self.answers()


request = http_request


def exchange(loop, app, raw: bytes, count: int = 1):
    client = Client(loop, app)
    client.send(raw)
    return client.wait(count)


@pytest.fixture(scope="module")
def forest():
    from sklearn.ensemble import RandomForestClassifier

    x, y = data(width=4, classes=2)
    model = RandomForestClassifier(n_estimators=25, max_depth=5, random_state=0, n_jobs=1).fit(x, y)
    return model, x


def make_app(loop, runtime, sig):
    settings = SimpleNamespace(model_name="m", model_version="1", max_payload_bytes=1 << 20,
                               max_batch_size=64, max_latency_ms=0.0)
    metrics = Metrics("m", "1", "x", runtime.kind, "skops", runtime.classes)
    return App(settings, sig, runtime, metrics, None, loop, "test", RequestIds("0badcafe"), None)


@pytest.fixture
def app(loop, forest):
    model, _ = forest
    sig = numeric_sig(4, "label", ["0", "1"])
    return make_app(loop, SklearnRuntime(model, sig), sig)


def test_v1_explain_answers_attributions_per_row(loop, app, forest):
    model, x = forest
    rows = x[:3].tolist()
    objects = [dict(zip(["f0", "f1", "f2", "f3"], r)) for r in rows]
    (plain,), (named,) = (exchange(loop, app, request("POST", "/v1/models/m:explain",
                                                      orjson.dumps({"instances": inst})))
                          for inst in (rows, objects))
    assert plain[0] == 200 and plain[1][b"x-request-id"].startswith(b"0badcafe-")
    doc = orjson.loads(plain[2])
    assert doc["method"] == "tree-path" and doc["output"] == "probability"
    proba = model.predict_proba(np.array(rows))
    for i, e in enumerate(doc["explanations"]):
        assert list(e) == ["target", "base", "value", "attributions"]
        assert list(e["attributions"]) == ["f0", "f1", "f2", "f3"]
        assert e["target"] == int(np.argmax(proba[i]))
        assert abs(e["value"] - proba[i].max()) < 1e-12
        assert abs(e["base"] + sum(e["attributions"].values()) - e["value"]) < TOL
    assert orjson.loads(named[2]) == doc
    (one,) = exchange(loop, app, request("POST", "/v1/models/m:explain",
                                         orjson.dumps({"instances": rows, "parameters": {"target": "1"}})))
    assert [e["target"] for e in orjson.loads(one[2])["explanations"]] == [1, 1, 1]


def test_v2_explain_answers_tensors(loop, app, forest):
    model, x = forest
    body = {"id": "ex-1", "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                                      "data": x[:2].reshape(-1).tolist()}],
            "outputs": [{"name": "anything"}], "parameters": {"target": 0}}
    (answer,) = exchange(loop, app, request("POST", "/v2/models/m/versions/1/explain", orjson.dumps(body)))
    assert answer[0] == 200, answer[2]
    doc = orjson.loads(answer[2])
    assert doc["id"] == "ex-1" and doc["model_name"] == "m" and doc["model_version"] == "1"
    assert doc["parameters"] == {"method": "tree-path", "output": "probability", "features": ["f0", "f1", "f2", "f3"]}
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["attributions"]["shape"] == [2, 4] and out["attributions"]["datatype"] == "FP64"
    assert out["target"]["data"] == ["0", "0"]
    attributions = np.array(out["attributions"]["data"]).reshape(2, 4)
    np.testing.assert_allclose(np.array(out["base"]["data"]) + attributions.sum(axis=1), out["value"]["data"],
                               atol=TOL)
    np.testing.assert_allclose(out["value"]["data"], model.predict_proba(x[:2])[:, 0], atol=1e-12)
    # Triton's binary tensors are read as for /infer.
    raw = x[:2].astype(np.float32).tobytes()
    head = orjson.dumps({"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}], "outputs": [{"name": "x"}]})
    (binary,) = exchange(loop, app, request("POST", "/v2/models/m/explain", head + raw,
                                            f"Inference-Header-Content-Length: {len(head)}"))
    assert binary[0] == 200, binary[2]


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/models/m:explain", b'{"instances": [[1, 2]]}', 400, "instances\\[0\\] has 2 values; the model takes 4"),
    ("POST", "/v1/models/m:explain", b'{"instances": [[1, 2, "a", 4]]}', 400, "expected a number, got a string"),
    ("POST", "/v1/models/m:explain", b"{nope", 400, "not valid JSON"),
    ("POST", "/v1/models/m:explain", b'{"instances": [[1, 2, 3, 4]], "parameters": {"target": [1]}}', 400,
     "'parameters.target' must be a class label"),
    ("POST", "/v1/models/m:explain", b'{"instances": [[1, 2, 3, 4]], "parameters": {"target": "cat"}}', 400,
     "parameters.target: target 'cat' is not one of the model's classes"),
    ("POST", "/v1/models/m:explain", orjson.dumps({"instances": [[1, 2, 3, 4]] * 65}), 400,
     "65 rows; an explanation takes at most 64 rows"),
    ("POST", "/v2/models/m/explain", b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1]}]}',
     400, "data has 1 values, shape \\[1, 4\\] needs 4"),
    ("POST", "/v2/models/m/explain", b'{"inputs": [{"name": "f0", "shape": [1], "datatype": "FP64", "data": [1]}, '
     b'{"name": "f9", "shape": [1], "datatype": "FP64", "data": [1]}]}', 400, "inputs\\[1\\]: unknown input 'f9'"),
    ("POST", "/v1/models/other:explain", b'{"instances": [[1, 2, 3, 4]]}', 404, "model 'other' is not served here"),
    ("POST", "/v2/models/other/explain", b"{}", 404, "model 'other' is not served here"),
    ("POST", "/v2/models/m/versions/9/explain", b"{}", 404, "has no version '9'"),
    ("GET", "/v1/models/m:explain", b"", 405, "takes POST"),
    ("GET", "/v2/models/m/explain", b"", 405, "takes POST"),
    ("POST", "/v1/models/m:why", b"{}", 404, "V1 serves :predict and :explain"),
])
def test_bad_explain_requests_are_4xx_naming_the_problem(loop, app, method, path, body, status, message):
    import re

    (answer,) = exchange(loop, app, request(method, path, body))
    assert answer[0] == status, answer[2]
    assert re.search(message, orjson.loads(answer[2])["error"]), answer[2]
    if status == 405:
        assert answer[1][b"allow"] == b"post"  # (header lines are read lower-cased)


def test_a_regressors_rows_have_no_target(loop):
    from sklearn.linear_model import Ridge

    x, y = data(width=4)
    sig = numeric_sig(4)
    app = make_app(loop, SklearnRuntime(Ridge().fit(x, y), sig), sig)
    body = {"instances": x[:2].tolist()}
    plain, targeted = exchange(loop, app, request("POST", "/v1/models/m:explain", orjson.dumps(body))
                               + request("POST", "/v1/models/m:explain",
                                         orjson.dumps({**body, "parameters": {"target": "1"}})), 2)
    doc = orjson.loads(plain[2])
    assert (doc["method"], doc["output"]) == ("linear-exact", "prediction")
    assert [list(e) for e in doc["explanations"]] == [["base", "value", "attributions"]] * 2
    assert targeted[0] == 400 and "takes no target" in orjson.loads(targeted[2])["error"]


def test_a_model_the_server_cannot_explain_is_503_naming_why(loop):
    class Fake:  # a runtime without a scikit-learn model (as the request-id tests' fake)
        kind, has_proba, classes, label_datatype = "sklearn", False, None, "FP64"

        def predict(self, x, proba):
            return x[:, 0], None

    sig = numeric_sig(4)
    app = make_app(loop, Fake(), sig)
    (answer,) = exchange(loop, app, request("POST", "/v1/models/m:explain", b'{"instances": [[1, 2, 3, 4]]}'))
    assert answer[0] == 503 and "no scikit-learn model" in orjson.loads(answer[2])["error"]


def test_the_endpoint_listing_and_openapi_name_the_explain_routes(loop, app):
    listing, doc = exchange(loop, app, request("GET", "/") + request("GET", "/openapi.json"), 2)
    assert {"/v1/models/m:explain", "/v2/models/m/explain"} <= set(orjson.loads(listing[2])["endpoints"])
    paths = orjson.loads(doc[2])["paths"]
    assert "/v1/models/{model_name}:explain" in paths and "/v2/models/{model_name}/explain" in paths


class Gate:
    """An explainer that holds every explanation until released."""

    def __init__(self, real):
        self.real, self.open, self.entered = real, threading.Event(), threading.Event()
        self.name = real.name

    def explain(self, x):
        self.entered.set()
        assert self.open.wait(30), "the test never released the explanation"
        return self.real.explain(x)


def gated(app, forest):
    model, _ = forest
    gate = Gate(explainer_for(model, app.sig))
    app.explanations.factory = lambda: gate
    return gate


def test_predictions_are_answered_while_an_explanation_is_in_flight(loop, app, forest):
    _, x = forest
    gate = gated(app, forest)
    try:
        explaining = Client(loop, app)
        explaining.send(request("POST", "/v1/models/m:explain", orjson.dumps({"instances": x[:1].tolist()})))
        assert gate.entered.wait(30)
        predicting = Client(loop, app)
        predicting.send(request("POST", "/v1/models/m:predict", orjson.dumps({"instances": x[:2].tolist()})))
        (answer,) = predicting.wait()
        assert answer[0] == 200 and len(orjson.loads(answer[2])["predictions"]) == 2
        assert explaining.answers() == []  # still held
    finally:
        gate.open.set()
    (explained,) = explaining.wait()
    assert explained[0] == 200 and orjson.loads(explained[2])["method"] == "tree-path"


def test_explanations_beyond_the_bound_are_refused_not_queued(loop, app, forest):
    _, x = forest
    gate = gated(app, forest)
    app.explanations.max_pending = 2
    body = orjson.dumps({"instances": x[:1].tolist()})
    clients = [Client(loop, app) for _ in range(3)]
    try:
        for c in clients:
            c.send(request("POST", "/v1/models/m:explain", body))
        (refused,) = clients[2].wait()
        assert refused[0] == 503 and refused[1][b"retry-after"] == b"1"
        assert "retry later" in orjson.loads(refused[2])["error"]
        assert app.explanations.pending == 2
    finally:
        gate.open.set()
    assert [c.wait()[0][0] for c in clients[:2]] == [200, 200]
    assert app.explanations.pending == 0
    (again,) = exchange(loop, app, request("POST", "/v1/models/m:explain", body))
    assert again[0] == 200


def test_an_onnx_served_model_is_explained_by_its_scikit_learn_model(loop, tmp_path):
    import serve_models
    from kiln_runtime.serve import loader, settings

    files = serve_models.build(tmp_path / "lr", "lr", "matrix")
    s = settings.load({**files.env(), "KILN_HANDOFF_SOCKET": "off"})
    artifacts = loader.fetch(s)
    runtime = loader.build(s, artifacts)
    assert runtime.kind == "onnx" and runtime.sklearn_source is not None
    app = make_app(loop, runtime, artifacts.signature)
    rows = files.X[:2]
    (answer,) = exchange(loop, app, request("POST", "/v1/models/m:explain",
                                            orjson.dumps({"instances": rows.tolist(), "parameters": {"target": "1"}})))
    assert answer[0] == 200, answer[2]
    doc = orjson.loads(answer[2])
    assert doc["method"] == "linear-exact" and doc["output"] == "log-odds"
    decision = files.model.decision_function(rows)
    for e, d in zip(doc["explanations"], decision):
        assert abs(e["value"] - d) < 1e-9 and abs(e["base"] + sum(e["attributions"].values()) - d) < TOL
