"""constraints.txt (`make lock`, hack/lock.sh): one set of pins for both images, used wherever their
dependencies are installed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt: {line!r} is not an exact name==version pin"
        name = canonicalize_name(match[1])
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = match[2]
    return found


def image_requirements() -> list[Requirement]:
    extras = PYPROJECT["project"]["optional-dependencies"]
    return [Requirement(r) for r in extras["runtime"] + extras["operator"] + PYPROJECT["build-system"]["requires"]]


def test_every_image_dependency_is_pinned_within_its_range():
    pinned = pins()
    for req in image_requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} (pyproject.toml) is not pinned in constraints.txt: run `make lock`"
        assert req.specifier.contains(Version(pinned[name]), prereleases=True), \
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's {req}: run `make lock`"


def test_the_project_itself_is_not_pinned():
    """kiln is installed from the source; a pin of it would fail every install of another version."""
    assert "kiln" not in pins()


def test_every_install_of_the_image_dependencies_uses_the_constraints():
    for dockerfile in ("operator/Dockerfile", "serving_image/Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert re.search(r"^COPY .*\bconstraints\.txt\b.* /src/", text, re.M), dockerfile
        assert "-c /src/constraints.txt -r /tmp/requirements.txt" in text, dockerfile
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()
    build = (ROOT / "hack/build-images.sh").read_text()
    assert '-c "$KILN_ROOT/constraints.txt"' in build
    # The wheelhouse and the images are keyed by the pins: a new lock fetches and builds again.
    assert build.count("hash_of pyproject.toml constraints.txt") == 2
    venv = (ROOT / "hack/venv.sh").read_text()
    assert '-c "$root/constraints.txt"' in venv and '"$root/constraints.txt" | sha256sum' in venv
