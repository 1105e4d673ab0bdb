"""Writes the Argo CD health checks of deploy/argocd-values.yaml out as Argo CD resource customizations.

deploy/argocd-values.yaml is the source of truth: its `resource.customizations.health.kiln.dev_<Kind>`
entries become deploy/argocd/resource_customizations/kiln.dev/<Kind>/health.lua, byte for byte (the
layout of Argo CD's own resource_customizations/ directory). The health_test.yaml and testdata/ next to
each script are written by hand. tests/unit/test_argocd_customizations.py fails when they drift.

    python hack/argocd-health.py           # rewrite the health.lua files
    python hack/argocd-health.py --check   # only say whether they are up to date (exit 1 if not)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "deploy/argocd-values.yaml"
OUT = ROOT / "deploy/argocd/resource_customizations"
PREFIX = "resource.customizations.health."


def scripts() -> dict[Path, str]:
    """health.lua path -> script, for every health customization in the values file."""
    cm = yaml.safe_load(VALUES.read_text())["configs"]["cm"]
    result = {}
    for key, script in cm.items():
        if key.startswith(PREFIX):
            group, kind = key[len(PREFIX):].rsplit("_", 1)
            result[OUT / group / kind / "health.lua"] = script
    return result


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, script in scripts().items():
        if path.exists() and path.read_text() == script:
            continue
        stale.append(path.relative_to(ROOT))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(script)
    for path in stale:
        print(f"{'stale' if check else 'wrote'}: {path}")
    if check and stale:
        print(f"run `python hack/argocd-health.py` to regenerate them from {VALUES.relative_to(ROOT)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
