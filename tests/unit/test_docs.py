"""The docs keep up with the code: the generated API reference, the troubleshooting table, the links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiln_operator.api.docgen import render

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONDITION = re.compile(r'"(?:Ready|Validated|Progressing|RolledBack|DriftDetected|Verified|Routed)", "(?:True|False|Unknown)", "([A-Z]\w+)"')


def test_api_reference_is_generated_from_the_models():
    path = DOCS / "api-reference.md"
    assert path.exists() and path.read_text() == render(), "docs/api-reference.md is stale: run `make docs`"


def test_every_field_of_every_kind_is_in_the_reference():
    text = render()
    for field in ("spec.search.trials", "spec.autoscaling.maxReplicas", "spec.artifact.sha256", "status.version"):
        assert f"`{field}`" in text


def test_troubleshooting_covers_every_condition_reason():
    reasons = set()
    for path in (ROOT / "operator/kiln_operator").rglob("*.py"):
        text = path.read_text()
        reasons |= set(CONDITION.findall(text)) | set(re.findall(r'Outcome\("\w+", "([A-Z]\w+)"', text))
        # A finished run's phase becomes the pipeline's reason as Run<phase> (pipelines.py).
        reasons |= {"Run" + phase for phase in re.findall(r'_finish\(run, "([A-Z]\w+)"', text)}
    assert {"Accepted", "InvalidSpec", "Serving", "RollingOut", "RunGateFailed"} <= reasons  # the scan works
    first_cells = re.findall(r"^\| ([^|]+) \|", (DOCS / "troubleshooting.md").read_text(), re.M)
    documented = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    assert reasons - documented == set(), "add these reasons to docs/troubleshooting.md"


PAGES = sorted([*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "charts/kiln/README.md"])


def prose(text: str) -> str:
    """The page without code blocks and code spans, where `](` is code (a regex, a pattern), not a link."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name} links to missing {target}"


def test_the_argocd_page_shows_the_application_the_e2e_test_applies():
    import yaml
    page = (ROOT / "docs/argocd.md").read_text()
    shown = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if "kind: Application\n" in b]
    assert shown == [yaml.safe_load((ROOT / "examples/gitops/application.yaml").read_text())]
