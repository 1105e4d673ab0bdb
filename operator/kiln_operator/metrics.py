"""The operator's own Prometheus metrics (docs/metrics.md lists them): what it reconciles, how long that
takes, what it asks of the apiserver, and what state the objects it serves are in.

Labels are bounded: kinds, results, verbs and condition reasons are small fixed sets; no object name
is ever a label.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily

RECONCILES = Counter("kiln_operator_reconciles_total", "Reconciles, by kind and result (ok or error).",
                     ["kind", "result"])
RECONCILE_SECONDS = Histogram("kiln_operator_reconcile_duration_seconds", "Time of one reconcile, by kind.",
                              ["kind"], buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
API_REQUESTS = Counter("kiln_operator_api_requests_total",
                       "Requests the reconciles sent to the apiserver (kopf's watches not included), "
                       "by verb and kind.", ["verb", "kind"])
EVENTS = Counter("kiln_operator_events_total", "Kubernetes Events the operator posted, by kind, type and reason.",
                 ["kind", "type", "reason"])
QUEUE_DEPTH = Gauge("kiln_operator_queue_depth", "Objects waiting for a reconcile.")
OLDEST_PENDING = Gauge("kiln_operator_oldest_pending_seconds",
                       "How long the object that has waited longest for a reconcile has waited.")


class ObjectsByReady:
    """`kiln_operator_objects{kind, ready, reason}`, computed from the cache when scraped."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str, str]]]) -> None:
        self._read = read

    def collect(self):
        family = GaugeMetricFamily("kiln_operator_objects", "Kiln objects, by kind and their Ready condition.",
                                   labels=["kind", "ready", "reason"])
        counts: dict[tuple[str, str, str], int] = {}
        for labels in self._read():
            counts[labels] = counts.get(labels, 0) + 1
        for labels, n in sorted(counts.items()):
            family.add_metric(list(labels), n)
        yield family


def serve(port: int, queue_depth: Callable[[], float], oldest: Callable[[], float],
          objects: Callable[[], Iterable[tuple[str, str, str]]]) -> None:
    disable_created_metrics()  # the *_created series double every counter for nothing a dashboard uses
    QUEUE_DEPTH.set_function(queue_depth)
    OLDEST_PENDING.set_function(oldest)
    REGISTRY.register(ObjectsByReady(objects))
    if port:
        start_http_server(port)
