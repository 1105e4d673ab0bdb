"""The Kubernetes floor the charts state is what the manifests the operator builds need: every field in this
table that a built manifest uses must be on by default at the charts' kubeVersion."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kiln_operator import datasets, pipelines
from kiln_operator.builders import serving, training
from kiln_operator.config import OperatorConfig
from kiln_operator.jobs import JobView
from kiln_operator.validation import parse

ROOT = Path(__file__).resolve().parents[2]
CFG = OperatorConfig()
NOW = "2026-12-01T00:00:00Z"

# A field path in a built manifest -> the minor release from which it is on by default.
FLOORS = {
    "spec.template.spec.containers[].lifecycle.preStop.sleep": 30,  # PodLifecycleSleepAction beta
    "spec.backoffLimitPerIndex": 29,  # JobBackoffLimitPerIndex beta
    "spec.podFailurePolicy": 26,  # JobPodFailurePolicy beta
}


def paths(node, prefix: str = ""):
    """Every field path in a manifest, list items written as []."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{prefix}.{key}" if prefix else key
            yield here
            yield from paths(value, here)
    elif isinstance(node, list):
        for item in node:
            yield from paths(item, prefix + "[]")


def example(name: str) -> dict:
    body = yaml.safe_load((ROOT / "examples" / name).read_text())
    body["metadata"].update(namespace="ml", uid=f"uid-{body['metadata']['name']}", generation=1)
    return body


def built_manifests() -> list[dict]:
    isvc = parse(example("04-inferenceservice.yaml"))
    mv = example("03-modelversion.yaml")
    mv["spec"]["baselineUri"] = "s3://kiln/b.json"
    mv = parse(mv)
    dataset = example("01-dataset.yaml")
    dataset["status"] = {"version": "ab" * 32, "conditions": [{"type": "Ready", "status": "True"}]}
    pipeline = parse(example("02-trainingpipeline.yaml"))
    run = pipelines.plan(pipeline, pipelines.Observed(dataset=parse(dataset), jobs={}, production=None), CFG, NOW)
    validation = datasets.plan(parse(example("01-dataset.yaml")), JobView(None), CFG, NOW)
    return [serving.deployment(isvc, mv, "primary", CFG), training.verify_job(mv, CFG), *run.apply,
            *validation.apply]


def chart_floor(chart: str) -> int:
    stated = yaml.safe_load((ROOT / "charts" / chart / "Chart.yaml").read_text())["kubeVersion"]
    return int(re.fullmatch(r">=1\.(\d+)\.0-0", stated).group(1))


def test_the_charts_floor_covers_every_field_the_operator_writes():
    used = {p for m in built_manifests() for p in paths(m)}
    assert used & set(FLOORS), "the table no longer matches what the builders write: update FLOORS"
    need = max(FLOORS[p] for p in used & set(FLOORS))
    for chart in ("kiln", "kiln-crds"):
        assert chart_floor(chart) >= need, f"charts/{chart} says 1.{chart_floor(chart)}; the manifests need 1.{need}"
    assert f"| Kubernetes | 1.{need} and newer" in (ROOT / "docs/compatibility.md").read_text()
