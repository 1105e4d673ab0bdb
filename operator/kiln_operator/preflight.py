"""Before the watches start: can the operator list and watch every kind it keeps in its cache?

kopf starts no handler until every indexed kind has been listed once (handlers.py relies on that for a
whole cache), so one missing grant, say an image newer than its chart's RBAC or a hand-made Role without
a kind a new release watches, would leave every object unreconciled, with nothing but a retried 403 in
the log. Refusing to start, with each missing grant named, is what a user can act on; a pod that
crash-loops with that line is visible in `kubectl get pods` and `kubectl logs`.
"""

from __future__ import annotations

from typing import Callable, Iterable

Can = Callable[[str, str, str, str | None], bool]  # (verb, group, resource, namespace or None) -> allowed


def missing(watched: Iterable[tuple], namespaces: list[str] | None, can: Can) -> list[str]:
    """The grants the operator lacks, as `verb resource[.group] in namespace N` (or `cluster-wide`)."""
    gaps = []
    for group, _version, plural, *_ in watched:
        resource = f"{plural}.{group}" if group else plural
        for ns in namespaces or [None]:
            for verb in ("list", "watch"):
                if not can(verb, group, plural, ns):
                    gaps.append(f"{verb} {resource} " + (f"in namespace {ns}" if ns else "cluster-wide"))
    return gaps


def refusal(gaps: list[str]) -> str:
    return ("the operator's identity may not " + "; ".join(gaps) + ". Every kind the operator watches must be "
            "listed before it reconciles anything: grant these (charts/kiln's RBAC does) and start it again")
