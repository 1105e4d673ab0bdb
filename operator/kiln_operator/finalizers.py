"""Releasing kopf's finalizers from Kiln objects whose deletion no running operator will finish.

kopf puts a finalizer on every object that has a timer, only so that it can stop the timer before
the object goes. Kiln has no deletion handler: children go by their ownerReferences, and
ModelVersions are never owned. But kopf does not watch a namespace that was already terminating when
it started (nor, in a race, one whose deletion began while kopf was starting), so such objects would
keep their finalizer and their namespace would stay Terminating forever. The operator therefore
releases, now and then, the finalizer of every Kiln object that has been deleting for a while: that is
exactly what kopf would have done, with nothing left to run.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

from kubernetes.client import ApiException

from . import k8s
from .api.kinds import API_VERSION, KINDS

log = logging.getLogger(__name__)
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


# kopf releases its own finalizers within seconds where it watches; only what it leaves is ours.
GRACE_SECONDS = 15
EVERY_SECONDS = 20


def _deleting_for(meta: dict, now: datetime) -> float:
    since = datetime.fromisoformat(meta["deletionTimestamp"].replace("Z", "+00:00"))
    return (now - since).total_seconds()


def release_stuck(namespaces: list[str] | None, grace: float = GRACE_SECONDS) -> int:
    released = 0
    now = datetime.now(timezone.utc)
    for kind in KINDS:
        resource = k8s.dynamic().resources.get(api_version=API_VERSION, kind=kind.kind)
        for namespace in namespaces or [None]:
            try:
                items = resource.get(namespace=namespace).to_dict()["items"]
            except ApiException as exc:  # e.g. a namespace-scoped install cannot list cluster-wide
                log.warning(f"could not list {kind.plural} to release finalizers: {exc.reason}")
                continue
            for obj in items:
                meta = obj["metadata"]
                if (not meta.get("deletionTimestamp") or KOPF_FINALIZER not in (meta.get("finalizers") or [])
                        or _deleting_for(meta, now) < grace):
                    continue
                remaining = [f for f in meta["finalizers"] if f != KOPF_FINALIZER]
                try:
                    resource.patch(name=meta["name"], namespace=meta["namespace"],
                                   body={"metadata": {"finalizers": remaining,
                                                      "resourceVersion": meta["resourceVersion"]}},
                                   content_type="application/merge-patch+json")
                except ApiException as exc:  # changed or gone meanwhile: kopf's watch takes it from here
                    log.info(f"left {kind.kind} {meta['namespace']}/{meta['name']} to kopf: {exc.reason}")
                    continue
                log.info(f"released the finalizer of {kind.kind} {meta['namespace']}/{meta['name']}, "
                         "deleted while no operator ran")
                released += 1
    return released


def keep_releasing(namespaces: list[str] | None) -> threading.Thread:
    """Releases stuck finalizers at start and every EVERY_SECONDS after, beside kopf."""
    def loop() -> None:
        stop = threading.Event()
        while True:
            try:
                release_stuck(namespaces)
            except Exception as exc:  # never take the operator down over housekeeping
                log.warning(f"releasing stuck finalizers failed: {exc}")
            stop.wait(EVERY_SECONDS)

    thread = threading.Thread(target=loop, name="release-finalizers", daemon=True)
    thread.start()
    return thread
