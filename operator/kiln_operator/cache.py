"""The operator's picture of the cluster: every Kiln object and every child, kept current by kopf's watches.

Reconciles read here instead of asking the apiserver, so an object at rest costs nothing. kopf's
indexing step feeds it (see handlers.py), and kopf starts no handler before every watched kind has been
listed once, so the first reconciles already see every child. What the operator writes itself is put
here from the apiserver's answer too (write-through): the next reconcile must not act again on what it
just did because the watch event has not arrived yet.

Children are kept trimmed to what the plans read (no managedFields, no pod specs), so 1,000 services'
Deployments, Services, HPAs and PDBs do not cost the operator hundreds of megabytes.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Iterable

from .api.kinds import KINDS
from .builders.meta import LABEL_KIND, LABEL_OWNER
from .validation import Parsed, usable

Key = tuple[str, str, str]  # (kind, namespace, name)
KILN_KINDS = tuple(k.kind for k in KINDS)
_KIND_BY_LABEL = {k.kind.lower(): k.kind for k in KINDS}
SERVING_COMPONENT = "kiln-serve"  # serving pods carry the component and instance labels, not the owner's


def owner_of(obj: dict[str, Any]) -> Key | None:
    """The Kiln object a child (or a child's pod) belongs to, from the labels every child carries."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    ns = meta.get("namespace", "")
    kind = _KIND_BY_LABEL.get(labels.get(LABEL_KIND, ""))
    if kind and labels.get(LABEL_OWNER):
        return kind, ns, labels[LABEL_OWNER]
    if labels.get("app.kubernetes.io/name") == SERVING_COMPONENT and labels.get("app.kubernetes.io/instance"):
        return "InferenceService", ns, labels["app.kubernetes.io/instance"]
    return None


def trim(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy with what no plan reads left out; nested values are shared, never modified."""
    out = {k: v for k, v in obj.items() if k != "spec"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    spec = obj.get("spec")
    kind = obj.get("kind")
    if spec is None or kind == "Pod":
        return out
    if kind in ("Deployment", "Job"):
        template = spec.get("template") or {}
        out["spec"] = {**{k: v for k, v in spec.items() if k != "template"},
                       "template": {"metadata": template.get("metadata") or {}}}
    else:
        out["spec"] = spec
    return out


# Children whose status no plan reads: an HPA's status moves at every autoscaler sync (every few
# seconds, for each of them), which must not wake its InferenceService up.
STATUS_UNREAD = {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "HTTPRoute"}


def significant(obj: dict[str, Any]) -> Any:
    """What of an object can change a plan: two versions that agree here need no reconcile."""
    meta = obj.get("metadata") or {}
    ident = (meta.get("uid"), meta.get("generation"), meta.get("deletionTimestamp"), meta.get("labels"),
             meta.get("annotations"), meta.get("ownerReferences"))
    if obj.get("kind") in STATUS_UNREAD:
        return ident
    status = dict(obj.get("status") or {})
    if "conditions" in status:
        # Plans read a condition's type, status and reason. A controller re-stamping its times, or
        # retrying with a message that names a new pod each time (a ReplicaSet refused by a quota),
        # changes nothing they decide.
        status["conditions"] = [(c.get("type"), c.get("status"), c.get("reason")) for c in status["conditions"] or []]
    return ident, obj.get("spec") if obj.get("kind") != "Pod" else None, status


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _resource_version(obj: dict[str, Any]) -> int | None:
    try:
        return int(obj["metadata"].get("resourceVersion"))
    except (TypeError, ValueError):
        return None


class Cache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._by_namespace: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
        self._children: dict[Key, set[Key]] = defaultdict(set)
        self._moved: set[Key] = set()  # keys whose last put changed something significant
        # Namespaces being deleted, and since when: what was created before is going and is not kept.
        self._terminating: dict[str, str] = {}
        self._parsed: dict[Key, tuple[dict[str, Any], Parsed | None]] = {}

    def put(self, obj: dict[str, Any]) -> None:
        """Stores an object unless the cache already holds a newer version of it, and notes whether it
        changed in a way a plan can see (`moved`)."""
        obj = trim(obj)
        meta = obj["metadata"]
        key = key_of(obj)
        owner = owner_of(obj)
        with self._lock:
            deleting_since = self._terminating.get(key[1])
            if deleting_since and (meta.get("creationTimestamp") or "") < deleting_since:
                return
            old = self._objects.get(key)
            if old is not None:
                new_rv, old_rv = _resource_version(obj), _resource_version(old)
                if new_rv is not None and old_rv is not None and new_rv < old_rv:
                    return  # a write-through answer already put a later version here
                if old["metadata"].get("uid") != meta.get("uid"):
                    self._forget(key, old)
            if old is None or significant(old) != significant(obj):
                self._moved.add(key)
            self._objects[key] = obj
            self._by_namespace[(key[0], key[1])][key[2]] = obj
            if owner:
                self._children[owner].add(key)

    def moved(self, obj: dict[str, Any]) -> bool:
        """Whether the object's last put changed something significant (asked once per watch event)."""
        key = key_of(obj)
        with self._lock:
            if key in self._moved:
                self._moved.discard(key)
                return True
            return False

    def remove(self, obj: dict[str, Any]) -> None:
        key = key_of(obj)
        with self._lock:
            old = self._objects.get(key)
            if old is not None and old["metadata"].get("uid") == obj["metadata"].get("uid"):
                self._forget(key, old)

    def _forget(self, key: Key, old: dict[str, Any]) -> None:
        self._objects.pop(key, None)
        self._parsed.pop(key, None)
        self._by_namespace[(key[0], key[1])].pop(key[2], None)
        owner = owner_of(old)
        if owner:
            self._children[owner].discard(key)
            if not self._children[owner]:
                del self._children[owner]

    def namespace_deleting(self, namespace: str, since: str) -> None:
        """A namespace's deletion began at `since`: everything in it goes, and is not reconciled."""
        with self._lock:
            self._terminating[namespace] = since
        self.purge_namespace(namespace, created_before=since)

    def namespace_created(self, namespace: str, created: str) -> None:
        with self._lock:
            self._terminating.pop(namespace, None)
        self.purge_namespace(namespace, created_before=created)

    def purge_namespace(self, namespace: str, created_before: str) -> int:
        """Forgets the objects of a namespace's earlier life: those created before `created_before`
        (RFC 3339). kopf stops watching a namespace as soon as it is deleted, so its objects never get
        their DELETED events, and a namespace re-created under the same name would otherwise inherit
        them (a registry entry that no longer exists, a ModelVersion to serve that is gone)."""
        with self._lock:
            stale = [(key, obj) for key, obj in self._objects.items() if key[1] == namespace
                     and (obj["metadata"].get("creationTimestamp") or "") < created_before]
            for key, obj in stale:
                self._forget(key, obj)
        return len(stale)

    def remove_key(self, key: Key) -> None:
        """Forgets an object the operator deleted, before the watch says so."""
        with self._lock:
            old = self._objects.get(key)
            if old is not None:
                self._forget(key, old)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._by_namespace.get((kind, namespace), {}).values())

    def parsed(self, kind: str, namespace: str) -> list[Parsed]:
        """The Kiln objects of a kind in a namespace with their spec parsed; one whose spec does not
        validate is left out, as no plan can use it."""
        return [p for p in map(self._usable, self.list(kind, namespace)) if p is not None]

    def parsed_get(self, kind: str, namespace: str, name: str) -> Parsed | None:
        obj = self.get(kind, namespace, name)
        return self._usable(obj) if obj is not None else None

    def _usable(self, obj: dict[str, Any]) -> Parsed | None:
        """Parses each version of an object once: every reconcile reads many of them."""
        key = key_of(obj)
        with self._lock:
            memo = self._parsed.get(key)
        if memo is None or memo[0] is not obj:  # a put since replaced the object
            memo = (obj, usable(obj))
            with self._lock:
                if self._objects.get(key) is obj:
                    self._parsed[key] = memo
        return memo[1]

    def children(self, owner: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        """The `kind` children of a Kiln object (by label), owned by this very object (by uid)."""
        meta = owner["metadata"]
        uid = meta["uid"]
        with self._lock:
            keys = [k for k in self._children.get((owner["kind"], meta["namespace"], meta["name"]), ())
                    if k[0] == kind]
            found = [self._objects[k] for k in keys]
        if kind == "Pod":  # a pod's owner is its ReplicaSet or Job: the labels say whose it is
            return found
        return [o for o in found if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]

    def keys(self, kinds: Iterable[str]) -> list[Key]:
        wanted = set(kinds)
        with self._lock:
            return [k for k in self._objects if k[0] in wanted]
