"""The operator's own Prometheus metrics (docs/metrics.md lists them): what it reconciles, how long that
takes, what it asks of the apiserver, and what state the objects it serves are in.

Labels are bounded: kinds, results, verbs and condition reasons are small fixed sets; no object name
is ever a label.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest, \
    start_http_server
from prometheus_client.core import GaugeMetricFamily

# Its own registry: the endpoint shows the kiln_operator_* families that docs/metrics.md lists, nothing else.
REGISTRY = CollectorRegistry(auto_describe=True)
disable_created_metrics()  # the *_created series double every counter for nothing a dashboard uses

RECONCILES = Counter("kiln_operator_reconciles_total", "Reconciles, by kind and result (ok or error).",
                     ["kind", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("kiln_operator_reconcile_duration_seconds", "Time of one reconcile, by kind.",
                              ["kind"], buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30), registry=REGISTRY)
API_REQUESTS = Counter("kiln_operator_api_requests_total",
                       "Requests the reconciles sent to the apiserver (kopf's watches not included), "
                       "by verb and kind.", ["verb", "kind"], registry=REGISTRY)
EVENTS = Counter("kiln_operator_events_total", "Kubernetes Events the operator posted, by kind, type and reason.",
                 ["kind", "type", "reason"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("kiln_operator_queue_depth", "Objects waiting for a reconcile.", registry=REGISTRY)
OLDEST_PENDING = Gauge("kiln_operator_oldest_pending_seconds",
                       "How long the object that has waited longest for a reconcile has waited.", registry=REGISTRY)


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


def install(queue_depth: Callable[[], float], oldest: Callable[[], float],
            objects: Callable[[], Iterable[tuple[str, str, str]]]) -> None:
    """Connects the gauges read at scrape time to the controller's queue and cache."""
    QUEUE_DEPTH.set_function(queue_depth)
    OLDEST_PENDING.set_function(oldest)
    REGISTRY.register(ObjectsByReady(objects))


def serve(port: int) -> None:
    if port:
        start_http_server(port, registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
