"""Structured (JSON) logs: one object per line, so a log pipeline can filter by object and reason."""

from __future__ import annotations

import json
import logging


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # kopf attaches the object it is handling to its per-object loggers.
        k8s = getattr(record, "k8s_ref", None)
        if isinstance(k8s, dict):
            entry["object"] = {k: k8s.get(k) for k in ("kind", "namespace", "name") if k8s.get(k)}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str = "INFO", json_format: bool = True) -> None:
    handler = logging.StreamHandler()
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access chatter says nothing an operator's user needs.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    # kopf logs every watch event's handler as "succeeded": with thousands of children that is a line
    # per pod status change. The reconciles log what they decide under kiln_operator.*.
    logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, logging.getLogger().level))
