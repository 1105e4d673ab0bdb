"""Where drift verdicts come from: the sidecars' /drift endpoints, or Prometheus when configured."""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from typing import Any

from . import drift, quality
from .builders.meta import LABEL_VERSION
from .builders.serving import MONITOR_PORT

log = logging.getLogger(__name__)
TIMEOUT = 2.0


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:  # noqa: S310 (cluster-internal http)
        return json.load(answer)


def sidecar_reports(pods: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    """The /drift report of every running pod of `version`; a pod that does not answer is left out."""
    reports = []
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if pod["metadata"].get("labels", {}).get(LABEL_VERSION) != version or not ip:
            continue
        try:
            reports.append(_get_json(f"http://{ip}:{MONITOR_PORT}/drift"))
        except (OSError, ValueError) as exc:  # 503 while the window fills, or a pod going away
            log.debug(f"no drift report from {pod['metadata']['name']}: {exc}")
    return reports


def _query(base_url: str, query: str, by: str) -> dict[str, float]:
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        result = _get_json(url)["data"]["result"]
    except (OSError, ValueError, KeyError) as exc:
        log.warning(f"Prometheus query {query!r} failed: {exc}")
        return {}
    return {r["metric"].get(by, ""): float(r["value"][1]) for r in result}


def selector(namespace: str, model: str, version: str) -> str:
    """The label selector of one serving version's sidecars: another namespace may serve a model of the
    same name and version, and its numbers are not this service's."""
    return f'namespace="{namespace}",model="{model}",version="{version}"'


def from_prometheus(base_url: str, where: str) -> drift.Verdict | None:
    """The drift verdict of the sidecars `where` selects (`selector`)."""
    def per_feature(metric: str) -> dict[str, float]:
        found = _query(base_url, f"max by (feature) ({metric}{{{where}}})", "feature")
        return {k: v for k, v in found.items() if k}

    return drift.from_prometheus(per_feature("kiln_feature_drift_psi"), per_feature("kiln_feature_drift_detected"))


def quality_from_prometheus(base_url: str, where: str) -> quality.Verdict | None:
    """The same live quality from the sidecars' gauges: each metric weighted by the pods' labelled rows."""
    rows = _query(base_url, f"sum(kiln_live_quality_rows{{{where}}})", "").get("", 0.0)
    if not rows:
        return None
    weighted = _query(base_url, f"sum by (metric) (kiln_live_quality{{{where}}} * on (pod) group_left "
                                f"kiln_live_quality_rows{{{where}}}) / {rows}", "metric")
    return quality.Verdict({k: v for k, v in weighted.items() if k}, int(rows))
