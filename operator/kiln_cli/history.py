"""`kubectl kiln history MODEL`: a model's versions, their stage changes over time, and what serves them."""

from __future__ import annotations

from typing import Any

from kiln_operator.api.training import CLASSIFICATION_METRICS, REGRESSION_METRICS

from . import tables
from .errors import CliError

METRIC_ORDER = CLASSIFICATION_METRICS + REGRESSION_METRICS


def versions_of(model: str, mvs: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    mine = [m for m in mvs if (m.get("spec") or {}).get("modelName") == model]
    if not mine:
        names = sorted({(m.get("spec") or {}).get("modelName") for m in mvs} - {None})
        raise CliError(f'model "{model}" has no modelversions in namespace "{namespace}"'
                       f"{' (models here: ' + ', '.join(names) + ')' if names else ''}")
    return sorted(mine, key=lambda m: (m["spec"].get("version") or 0, m["metadata"]["name"]))


def history_view(mvs: list[dict[str, Any]]) -> dict[str, Any]:
    """`mvs`: one model's versions, oldest first. Stage changes are merged over versions by time; each
    names the stage it left: the entry's own `from` when the registry records it, else the version's
    previous entry (the registry appends an entry per change, so the two agree)."""
    versions, changes = [], []
    for mv in mvs:
        spec, status, meta = mv.get("spec") or {}, mv.get("status") or {}, mv["metadata"]
        versions.append({"name": meta["name"], "version": spec.get("version"), "stage": spec.get("stage"),
                         "metrics": spec.get("metrics") or {}, "created": meta.get("creationTimestamp"),
                         "servedBy": status.get("servedBy") or [],
                         "datasetVersion": (spec.get("lineage") or {}).get("datasetVersion")})
        previous = None
        for entry in status.get("stageHistory") or []:
            change = {"time": entry.get("time"), "version": meta["name"],
                      "from": entry.get("from", previous), "stage": entry.get("stage"), "by": entry.get("by"),
                      "reason": entry.get("reason")}
            changes.append(change)
            previous = entry.get("stage")
    changes.sort(key=lambda c: (c["time"] or "", c["version"]))
    return {"versions": versions, "stageChanges": changes}


def history_table(view: dict[str, Any]) -> str:
    versions = view["versions"]
    seen = {k for v in versions for k in v["metrics"]}
    metrics = [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER))
    rows = [[v["version"], v["name"], v["stage"], *[v["metrics"].get(m) for m in metrics],
             tables.short(v["datasetVersion"]), v["created"], ",".join(v["servedBy"]) or None] for v in versions]
    top = tables.render(["VERSION", "NAME", "STAGE", *[m.upper() for m in metrics], "DATA", "CREATED",
                         "SERVED BY"], rows)
    changes = [[c["time"], c["version"], c["from"], c["stage"], c["by"], c["reason"]] for c in view["stageChanges"]]
    bottom = tables.render(["TIME", "VERSION", "FROM", "TO", "BY", "REASON"], changes) if changes \
        else "no stage changes recorded"
    return f"{top}\n\nStage changes:\n{bottom}"
