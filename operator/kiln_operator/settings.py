"""kopf settings: where kopf keeps its bookkeeping, and how it logs."""

from __future__ import annotations

import random
from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Bookkeeping in annotations under our own prefix: the status schema is strict (a structural
    # schema prunes unknown fields), and status belongs to what users read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kiln.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kiln.dev", key="last-handled-configuration")
    settings.posting.level = 20  # Events for info and above; debug chatter stays in the log.
    # Transient API errors retry with backoff instead of failing the handler at once.
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.execution.max_workers = 8
    # Peering: kopf pauses every operator that sees a live peer of its own priority, so replicas of one
    # Deployment (same flags) would all stand by. A random priority makes one of them the highest: it
    # acts, the others wait, and the next highest resumes as soon as it leaves or its lease lapses.
    settings.peering.priority = random.getrandbits(62)  # fits the int64 the apiserver stores
