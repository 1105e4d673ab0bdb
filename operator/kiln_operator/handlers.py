"""kopf glue: the watches feed the cache and queue exactly the reconciles a change calls for.

For each watched resource, kopf's indexing step puts the object in the cache (kopf runs no other
handler before every indexed kind has been listed once, so the first reconciles see a whole cache),
and an event handler queues the object itself, a child's owner, or the objects that depend on a
ModelVersion or a Dataset (dependents.py). The reconciles run in the controller's worker threads.

No handler here needs a finalizer: there are no timers, daemons or deletion handlers, so deleting a
namespace never waits for the operator.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import controller, dependents, k8s, preflight
from .api import GROUP, VERSION
from .api.kinds import KINDS
from .builders.meta import PART_OF
from .cache import KILN_KINDS
from .reconcilers import CACHE, RECONCILERS

CONTROLLER = controller.from_env(CACHE, RECONCILERS)

# Children (and the pods of Jobs and Deployments) carry this label; kopf filters on it.
CHILD_LABELS = {"app.kubernetes.io/part-of": PART_OF}
CHILD_GONE_DELAY_SECONDS = 2.0
CHILDREN = (("batch", "v1", "jobs"), ("apps", "v1", "deployments"), ("", "v1", "pods"), ("", "v1", "services"),
            ("autoscaling", "v2", "horizontalpodautoscalers"), ("policy", "v1", "poddisruptionbudgets"),
            ("gateway.networking.k8s.io", "v1", "httproutes"), ("", "v1", "configmaps"))
WATCHED = tuple((GROUP, VERSION, k.plural, None) for k in KINDS) + tuple((*c, CHILD_LABELS) for c in CHILDREN)


def _watch(group: str, version: str, plural: str, labels: dict[str, str] | None) -> None:
    resource = dict(group=group, version=version, plural=plural, labels=labels)

    @kopf.index(**resource, id=f"cache-{plural}")
    async def feed(body: kopf.Body, **_: Any) -> None:
        CACHE.put(dict(body))
        return None  # kopf's own index stays empty: the cache is the index

    @kopf.on.event(**resource, id=f"queue-{plural}")
    async def changed(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        raw = dict(body)
        if event.get("type") == "DELETED":
            CACHE.remove(raw)
            if raw.get("kind") not in KILN_KINDS:
                # A child deleted: its owner may be going too (a namespace's deletion removes both,
                # in any order). Look a moment later, when the owner's own event has come.
                for key in dependents.of(raw, CACHE):
                    CONTROLLER.queue.add_after(key, CHILD_GONE_DELAY_SECONDS)
                return
        elif not CACHE.moved(raw) and event.get("type") is not None:
            return  # e.g. an HPA's status at each autoscaler sync: nothing any plan reads
        for key in dependents.of(raw, CACHE):
            CONTROLLER.queue.add(key)


for _resource in WATCHED:
    _watch(*_resource)


def missing_grants(namespaces: list[str] | None) -> list[str]:
    """What the operator may not list or watch among the kinds it caches (preflight.py says why it matters)."""
    return preflight.missing(WATCHED, namespaces, k8s.can)


@kopf.on.startup()
def start_workers(**_: Any) -> None:
    CONTROLLER.start()


@kopf.on.cleanup()
def stop_workers(**_: Any) -> None:
    CONTROLLER.stop()


def follow_namespaces(names: list[str]) -> None:
    """Serving a list of namespaces: forget a namespace's objects when it is deleted or created anew
    (kopf stops watching a namespace as soon as its deletion begins, so their DELETED events never come)."""
    def changed(event_type: str, name: str, created: str | None, deleted: str | None) -> None:
        if deleted:
            CACHE.namespace_deleting(name, since=deleted)
        elif created:
            CACHE.namespace_created(name, created)

    k8s.watch_namespaces(names, changed)
