"""How a version being rolled out is answering: its pods' own request counters, read from kiln-serve's
/metrics while the rollout lasts (a few pods for a short while, so no Prometheus is needed for it)."""

from __future__ import annotations

import logging
import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .builders.meta import LABEL_ROLE, LABEL_VERSION
from .builders.serving import SERVER_PORT

log = logging.getLogger(__name__)
TIMEOUT = 2.0


def _requests_by_code(text: str) -> dict[str, float]:
    counts: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kiln_requests_total":
                counts[sample.labels.get("code", "")] += sample.value
    return counts


def answers(pods: list[dict[str, Any]], serving_version: str | None) -> dict[str, tuple[float, float]]:
    """(5xx answers, all answers) of each primary version other than the serving one, summed over its pods.

    A pod that does not answer is left out: it is starting, or the rollout check sees it crash."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for pod in pods:
        labels = pod["metadata"].get("labels", {})
        version, ip = labels.get(LABEL_VERSION), (pod.get("status") or {}).get("podIP")
        if labels.get(LABEL_ROLE) != "primary" or version == serving_version or not ip:
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:{SERVER_PORT}/metrics", timeout=TIMEOUT) as page:  # noqa: S310
                counts = _requests_by_code(page.read().decode())
        except (OSError, ValueError) as exc:
            log.debug(f"no metrics from {pod['metadata']['name']}: {exc}")
            continue
        totals[version][0] += sum(n for code, n in counts.items() if code.startswith("5"))
        totals[version][1] += sum(counts.values())
    return {version: (errors, total) for version, (errors, total) in totals.items()}
