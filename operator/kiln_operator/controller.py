"""The workers: take a key from the queue, reconcile that object from the cache, and schedule its next
wake-up, its retry after an error, and the slow resync of every object.

At rest nothing is queued, so nothing is sent to the apiserver: the watches bring every change, the
wake-ups cover what no watch reports, and the resync (every `KILN_RESYNC_SECONDS`, 10 minutes by
default) is the safety net that finds what a lost event would have missed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from . import k8s, metrics
from .cache import KILN_KINDS, Cache, Key
from .conditions import get_condition
from .workqueue import WorkQueue

log = logging.getLogger("kiln_operator.controller")
# Retries after an unexpected error: quick at first, then no more often than once a minute.
BACKOFF_SECONDS = (1, 2, 5, 10, 30, 60)


class Controller:
    def __init__(self, cache: Cache, reconcilers: dict[str, Callable[[dict[str, Any]], float | None]],
                 workers: int = 12, resync_seconds: float = 600.0) -> None:
        self.cache, self.reconcilers = cache, reconcilers
        self.queue = WorkQueue()
        self.workers, self.resync_seconds = workers, resync_seconds
        self._failures: dict[Key, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.workers):
            self._spawn(self._work, f"reconcile-{i}")
        self._spawn(self._resync, "resync")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()

    def _resync(self) -> None:
        while not self._stop.wait(self.resync_seconds):
            for key in self.cache.keys(KILN_KINDS):
                self.queue.add(key)

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get()
            if key is None:
                return
            try:
                self.reconcile(key)
            finally:
                self.queue.done(key)

    def reconcile(self, key: Key) -> None:
        kind, namespace, name = key
        body = self.cache.get(kind, namespace, name)
        if body is None:
            self._failures.pop(key, None)
            return  # deleted meanwhile: its children go by ownerReference
        started = time.perf_counter()
        try:
            wake = self.reconcilers[kind](body)
        except Exception as exc:
            if k8s.namespace_terminating(exc):
                log.debug(f"{kind} {namespace}/{name}: its namespace is being deleted")
                return  # its DELETED event follows; nothing to retry
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
            metrics.RECONCILES.labels(kind=kind, result="error").inc()
            log.exception(f"reconcile failed (retry in {delay} s): {exc}",
                          extra={"k8s_ref": {"kind": kind, "namespace": namespace, "name": name}})
            self.queue.add_after(key, delay)
            return
        finally:
            metrics.RECONCILE_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
        self._failures.pop(key, None)
        metrics.RECONCILES.labels(kind=kind, result="ok").inc()
        if wake is not None:
            self.queue.add_after(key, wake)

    def ready_states(self):
        """(kind, Ready status, reason) of every Kiln object: the `kiln_operator_objects` gauge."""
        for kind, namespace, name in self.cache.keys(KILN_KINDS):
            obj = self.cache.get(kind, namespace, name) or {}
            ready = get_condition((obj.get("status") or {}).get("conditions"), "Ready") or {}
            yield kind, ready.get("status", "Unknown"), ready.get("reason", "")


def from_env(cache: Cache, reconcilers) -> Controller:
    return Controller(cache, reconcilers, workers=int(os.environ.get("KILN_WORKERS", "12")),
                      resync_seconds=float(os.environ.get("KILN_RESYNC_SECONDS", "600")))
