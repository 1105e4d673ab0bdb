"""Real kiln-serve, kiln-monitor and operator exposition text, every family present, without running either.

Rendered by the processes' own metrics code (kiln_runtime.serve.metrics, kiln_runtime.monitor.metrics)
from a synthetic state: a classifier or regressor that answered a request, and a drift report holding
every statistic with one drop reason per counter. The unit tests compare it with docs/metrics.md; the
Prometheus integration test serves it to the real Prometheus as a fake serving pod's two ports.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from kiln_runtime.monitor.metrics import DriftCollector
from kiln_runtime.monitor.receiver import Counters
from kiln_runtime.serve.metrics import V1, Metrics


def server(model: str = "m", version: str = "1", classifier: bool = True) -> str:
    m = Metrics(model, version, "ab" * 32, "sklearn", "skops", ("0", "1") if classifier else None)
    m.request(V1, 200, 0.001)
    m.batch(2, 0.0005, np.array([0, 1]) if classifier else np.array([0.5, 3.0]))
    return m.render().decode()


def multi_server() -> str:
    """kiln-serve in multi-model mode: two models' series in one exposition, and the repository's."""
    from types import SimpleNamespace

    from kiln_runtime.serve.metrics import ServerMetrics
    from kiln_runtime.serve.repository import Budget, ModelState, Repository

    metrics = ServerMetrics()
    for name, classes in (("a", ("0", "1")), ("b", None)):
        m = Metrics(name, "1", "ab" * 32, "sklearn", "skops", classes)
        base = metrics.add(m)
        metrics.request(base + V1, 200, 0.001)
        m.batch(2, 0.0005, np.array([0, 1]) if classes else np.array([0.5, 3.0]))
    metrics.request(V1, 404, 0.0001)
    repo = Repository(None, {}, Budget(512 << 20, 100 << 20), None, rss=lambda: 150 << 20)
    state = ModelState(SimpleNamespace(name="a", version="1", key=()))
    state.served, state.cost = object(), 5 << 20
    repo.states["a"] = state
    repo._count_load(SimpleNamespace(name="a", version="1"), "ok", 0.2)
    repo._count_load(SimpleNamespace(name="b", version="2"), "failed", 0.1)
    repo.evictions["b"] = 1
    metrics.extra = repo.render_metrics
    return metrics.render().decode()


def monitor(model: str = "m", version: str = "1") -> str:
    stats = {"psi": 0.3, "missingRate": 0.0, "outOfRangeRate": 0.01, "evaluated": True, "drift": True}
    report = {
        "features": {"x": {**stats, "ksStatistic": 0.4, "ksPValue": 1e-9},
                     "c": {**stats, "chi2PValue": 0.5, "jsDistance": 0.1, "drift": False}},
        "prediction": {"psi": 0.1, "ksPValue": 0.2, "chi2PValue": 0.3, "missingRate": 0.0},
        "driftDetected": True, "windowRows": 500, "score": 0.3, "evaluatedAtUnix": 1.7e9, "evaluationSeconds": 0.01,
    }
    counters = Counters()
    counters.rows_received, counters.frames_received = 500, 2
    counters.frames_dropped["malformed"] = 1
    counters.rows_dropped["model_mismatch"] = 3
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DriftCollector((model, version), lambda: report, lambda: counters, 1000))
    from kiln_runtime.monitor.feedback import FeedbackStore
    from kiln_runtime.monitor.metrics import LoopCollector
    from kiln_runtime.monitor.payload_log import ParquetLog
    from kiln_runtime.monitor.quality import Quality
    quality = Quality(10)
    quality.extend([1, 0], [1, 1])
    log = ParquetLog("file:///nowhere", model, version, "00000000", flush_rows=1, flush_seconds=1, buffer_rows=1)
    log.rows_written, log.files_written = 5, 1
    log.rows_dropped["buffer_full"] = 1
    feedback = FeedbackStore(quality)
    feedback.labels_total["joined"] = 2
    registry.register(LoopCollector((model, version), log, log, feedback, quality))
    return generate_latest(registry).decode()


_operator_installed = False


def operator() -> str:
    """The operator's families (kiln_operator.metrics), each with one sample."""
    global _operator_installed
    from kiln_operator import metrics
    if not _operator_installed:
        metrics.install(lambda: 0, lambda: 0, lambda: [("InferenceService", "True", "Serving")])
        _operator_installed = True
    for result in ("ok", "error"):
        metrics.RECONCILES.labels(kind="InferenceService", result=result).inc()
    metrics.RECONCILE_SECONDS.labels(kind="InferenceService").observe(0.002)
    metrics.API_REQUESTS.labels(verb="apply", kind="Deployment").inc()
    metrics.EVENTS.labels(kind="InferenceService", type="Warning", reason="RolledBack").inc()
    return metrics.render().decode()
