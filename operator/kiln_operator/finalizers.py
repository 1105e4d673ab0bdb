"""Releasing kopf's finalizers from Kiln objects whose deletion no running operator will finish.

kopf puts a finalizer on every object that has a timer, only so that it can stop the timer before
the object goes. Kiln has no deletion handler: children go by their ownerReferences, and
ModelVersions are never owned. But kopf does not watch a namespace that was already terminating when
it started, so objects deleted while the operator was down (an uninstall, then `kubectl delete
namespace`) would keep their finalizer and their namespace would stay Terminating forever. At start,
the operator therefore releases the finalizer of every Kiln object already being deleted: that is
exactly what kopf would have done, with nothing left to run.
"""

from __future__ import annotations

import logging

from kubernetes.client import ApiException

from . import k8s
from .api.kinds import API_VERSION, KINDS

log = logging.getLogger(__name__)
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def release_stuck(namespaces: list[str] | None) -> int:
    released = 0
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
                if not meta.get("deletionTimestamp") or KOPF_FINALIZER not in (meta.get("finalizers") or []):
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
