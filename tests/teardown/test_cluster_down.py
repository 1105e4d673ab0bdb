"""`make cluster-down` leaves nothing behind: no process, mount, network namespace, link, route,
iptables rule or cgroup (hack/check-clean.sh lists them).

This directory sorts after tests/e2e and tests/integration, so the cluster is stopped only once the
tests that use it are done; the test then starts it again when it was running before, so that the
session fixture finds the state it expects.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster


def sh(script: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "hack" / script)], capture_output=True, text=True, timeout=timeout)


def test_cluster_down_leaves_nothing_behind(kubectl):
    # Something to clean up: a running pod (its sandbox, netns, mounts and cgroups).
    kubectl.run("run", "leftover-check", "-n", "default", "--image=docker.io/kiln/base:dev",
                "--image-pull-policy=IfNotPresent", "--restart=Never", "--", "sleep", "3600")
    kubectl.run("wait", "-n", "default", "--for=condition=Ready", "pod/leftover-check", "--timeout=60s", timeout=70)
    assert sh("check-clean.sh", 60).returncode == 1, "check-clean.sh sees nothing while the cluster runs"

    down = sh("cluster-down.sh", 300)
    assert down.returncode == 0, down.stdout + down.stderr
    clean = sh("check-clean.sh", 60)
    try:
        assert clean.returncode == 0, f"left behind after cluster-down:\n{clean.stdout}{clean.stderr}"
    finally:
        up = sh("cluster-up.sh", 600)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        kubectl.run("delete", "pod", "leftover-check", "-n", "default", "--wait=false", check=False)
