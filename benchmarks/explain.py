#!/usr/bin/env python3
"""How long kiln-serve takes to explain one row (issue 19): tree-path attributions of a 100-tree
random forest, through serving_image/kiln_runtime/serve/explain/ as the explain route runs it.

    python benchmarks/explain.py                  # 10 features, 300 single-row explanations
    python benchmarks/explain.py --features 20 --rows 500

The forest is the serving benchmark's (tests/serve_models.py): 100 trees of depth at most 8 on
Gaussian features with a noisy linear label, 1500 training rows; here with --features columns
(default 10). Each explanation includes the model's own predict_proba for the row (the answer's
`value`) and the additivity check. Prints the explainer's build time, the median, p95 and max time
per single-row explanation (target: median under 20 ms), the time per row when 64 rows come in one
request, and the largest |base + sum(attributions) - predict_proba| seen. Last, what explaining
costs predictions: a one-row prediction of the forest's ONNX export (what kiln-serve serves for it)
timed on the main thread, as the event loop calls it, alone and then while another thread explains
rows without pause, as the explanation thread would under a stream of explain requests (threads
share the interpreter lock).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "serving_image"))

from kiln_runtime.serve import explain, signature  # noqa: E402
from kiln_runtime.serve.runtime_sklearn import SklearnRuntime  # noqa: E402


def forest(features: int, seed: int = 0):
    """tests/serve_models.py's recipe (its _data and its "rf" model), with `features` columns."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, features))
    w = rng.normal(size=features)
    y = (x @ w + 0.5 * rng.normal(size=2000) > 0).astype(np.int64)
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=seed, n_jobs=1)
    model.fit(x[:1500], y[:1500])
    return model, x[1500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--rows", type=int, default=300, help="single-row explanations timed")
    args = parser.parse_args()

    model, held_out = forest(args.features)
    sig = signature.parse({"inputs": [{"name": f"f{i}", "type": "number"} for i in range(args.features)],
                           "output": {"type": "label", "classes": ["0", "1"]}})
    runtime = SklearnRuntime(model, sig)
    t0 = time.perf_counter()
    explainer = explain.build(model, sig, runtime._input)
    built = time.perf_counter() - t0
    method = explainer.method
    leaves = len(method.leaf_value) if explainer.name == explain.TREE else 0
    print(f"model: RandomForestClassifier(n_estimators=100, max_depth=8), {args.features} features, "
          f"{leaves} leaves, at most {getattr(method, 'D', '?')} distinct features per path")
    print(f"method: {explainer.name}; explainer built in {built * 1000:.0f} ms")

    for row in held_out[:5]:  # warm-up
        explainer.explain(row[None])
    times, worst = [], 0.0
    for i in range(args.rows):
        row = held_out[i % len(held_out)][None]
        t0 = time.perf_counter()
        result = explainer.explain(row)
        times.append(time.perf_counter() - t0)
        total = result.base + result.attributions.sum(axis=1)
        worst = max(worst, float(np.abs(total - model.predict_proba(row)).max()))
    ms = np.array(times) * 1000
    print(f"one row:  median {np.median(ms):.2f} ms, p95 {np.percentile(ms, 95):.2f} ms, "
          f"max {ms.max():.2f} ms over {args.rows} explanations (target: median < 20 ms)")
    batch = held_out[:64]
    t0 = time.perf_counter()
    result = explainer.explain(batch)
    per_row = (time.perf_counter() - t0) / len(batch) * 1000
    total = result.base + result.attributions.sum(axis=1)
    worst = max(worst, float(np.abs(total - model.predict_proba(batch)).max()))
    print(f"64 rows in one request: {per_row:.2f} ms per row")
    print(f"additivity: max |base + sum(attributions) - predict_proba| = {worst:.2e} (bound 1e-6)")

    # What explaining costs predictions: kiln-serve serves this forest through its ONNX export.
    onnx_runtime = onnx_forest(model, held_out, sig)
    row = held_out[:1]
    alone = predict_times(onnx_runtime, row, 3.0)
    during = while_explaining(explainer, held_out, lambda: predict_times(onnx_runtime, row, 3.0))
    for label, t in (("alone", alone), ("during explanations (they share the interpreter lock)", during)):
        print(f"ONNX prediction (1 row) {label}: median {np.median(t):.3f} ms, p99 {np.percentile(t, 99):.3f} ms")
    return 0 if worst <= 1e-6 else 1


def onnx_forest(model, rows, sig):
    from skl2onnx import to_onnx

    from kiln_runtime.serve.runtime_onnx import OnnxRuntime

    onx = to_onnx(model, rows[:1].astype(np.float32), options={id(model): {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    return OnnxRuntime(onx.SerializeToString(), sig)


def while_explaining(explainer, rows, measure):
    """measure() while another thread explains rows without pause, as the explanation thread would
    under a steady stream of explain requests."""
    stop = threading.Event()

    def explain_forever():
        i = 0
        while not stop.is_set():
            explainer.explain(rows[i % len(rows)][None])
            i += 1

    busy = threading.Thread(target=explain_forever, daemon=True)
    busy.start()
    try:
        return measure()
    finally:
        stop.set()
        busy.join()


def predict_times(runtime, row, seconds: float) -> np.ndarray:
    """One-row predictions, each after a 0.5 ms pause (the loop waiting for the next request, without
    the interpreter lock), timed in ms."""
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        time.sleep(0.0005)
        t0 = time.perf_counter()
        runtime.predict(row, True)
        times.append(time.perf_counter() - t0)
    return np.array(times) * 1000


if __name__ == "__main__":
    sys.exit(main())
