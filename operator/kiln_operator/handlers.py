"""kopf handlers: thin adapters from kopf's events to `reconcile`."""

from __future__ import annotations

from typing import Any

import kopf

from .api import GROUP, KINDS, VERSION
from .api.kinds import Kind
from .reconcile import decide, is_news, status_patch


def _register(kind: Kind) -> None:
    def reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
        plain = dict(body)
        outcome = decide(kind, plain)
        if not is_news(plain, outcome):
            return
        patch.status.update(status_patch(plain, outcome))
        post = kopf.warn if outcome.warning else kopf.info
        post(plain, reason=outcome.reason, message=outcome.message)
        logger.info(f"{kind.kind} Ready={outcome.ready} reason={outcome.reason}: {outcome.message}")

    reconcile.__name__ = f"reconcile_{kind.singular}"
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(GROUP, VERSION, kind.plural, id="reconcile")(reconcile)


for _kind in KINDS:
    _register(_kind)
