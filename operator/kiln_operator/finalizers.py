"""Removing the kopf finalizer that Kiln objects carried before the operator became event-driven.

Kiln keeps no state outside the cluster: children go by their ownerReferences, so no Kiln object needs
a finalizer, and a namespace is deleted whether or not an operator runs. Versions before 0.4 ran a kopf
timer per object, and kopf puts its finalizer on every object with a timer; once at start, the operator
takes it off every object still carrying it (docs/architecture.md, the operator's core).
"""

from __future__ import annotations

import logging

from . import k8s
from .api.kinds import API_VERSION, KINDS

log = logging.getLogger(__name__)
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def release_all(namespaces: list[str] | None) -> int:
    released = 0
    for kind in KINDS:
        for namespace in namespaces or [None]:
            try:
                items = k8s.list_kind(API_VERSION, kind.kind, namespace)
            except Exception as exc:  # e.g. a namespace-scoped install cannot list cluster-wide
                log.warning(f"could not list {kind.plural} to release finalizers: {exc}")
                continue
            for obj in items:
                if KOPF_FINALIZER not in (obj["metadata"].get("finalizers") or []):
                    continue
                if k8s.remove_finalizer(API_VERSION, kind.kind, obj, KOPF_FINALIZER):
                    released += 1
    if released:
        log.info(f"removed the finalizer of earlier versions from {released} object(s)")
    return released
