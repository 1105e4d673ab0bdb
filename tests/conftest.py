"""Session fixtures: the real local cluster and a kubectl bound to it.

The cluster is started by the project's own scripts. If it cannot start, every test that needs it
FAILS with the script's output: a missing control plane is a broken build, never a skip.
"""

from __future__ import annotations

import calendar
import collections
import json
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KILN_CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
KILN_STATE = Path(os.environ.get("KILN_STATE", KILN_CACHE / "state"))
KUBECTL = KILN_CACHE / "k8s-v1.37.2/bin/kubectl"


class Kubectl:
    """Our pinned kubectl against the local cluster, with a timeout on every call."""

    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig
        self.binary = KUBECTL  # for tests that run kubectl themselves (e.g. with a plugin on PATH)

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, manifest: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("apply", "-f", "-", *args, input=manifest, check=check)

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.5, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def run_shown(request, cmd: list[str], timeout: float) -> tuple[int, str]:
    """Runs cmd with its output shown as it comes, past pytest's capture (a cold cluster-up builds for
    many minutes and prints its progress), and returns its exit code and the end of its output."""
    tail: collections.deque[str] = collections.deque(maxlen=60)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            for line in proc.stdout:
                sys.stderr.write(line)
                tail.append(line)
        finally:
            watchdog.cancel()
        code = proc.wait()
    return code, "".join(tail)


def delete_stale_test_namespaces(kubeconfig: Path, older_than_s: float = 3600) -> None:
    """The cluster's state outlives a test run (it is cached outside the repo), and a run stopped
    before its teardowns leaves its namespaces behind, their controllers busy for good: a later run's
    measurements would pay for them. Test namespaces (`t-...`) older than an hour go; younger ones may
    be another run's in progress."""
    listed = subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), "get", "namespaces", "-o", "json"],
                            capture_output=True, text=True, timeout=60)
    now = time.time()
    stale = [ns["metadata"]["name"] for ns in json.loads(listed.stdout or '{"items": []}')["items"]
             if ns["metadata"]["name"].startswith("t-") and not ns["metadata"].get("deletionTimestamp")
             and now - calendar.timegm(time.strptime(ns["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
             > older_than_s]
    if stale:
        subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), "delete", "namespace", "--wait=false", *stale],
                       capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def kubeconfig(request) -> Path:
    """Brings the local cluster up (or reuses a running one) and leaves it as it found it."""
    path = KILN_STATE / "kubeconfig"
    was_up = path.exists() and KUBECTL.exists() and subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(path), "--request-timeout=5s", "get", "--raw", "/readyz"],
        capture_output=True).returncode == 0
    # On a clean machine this builds Kubernetes, the node's parts and the images: half an hour or more.
    code, output = run_shown(request, ["bash", str(ROOT / "hack/cluster-up.sh")], timeout=3600)
    if code != 0:
        pytest.fail(f"the local cluster did not start (hack/cluster-up.sh exited {code}):\n{output}", pytrace=False)
    os.environ["KUBECONFIG"] = str(path)
    delete_stale_test_namespaces(path)
    yield path
    if not was_up and os.environ.get("KILN_KEEP_CLUSTER") != "1":
        subprocess.run(["bash", str(ROOT / "hack/cluster-down.sh")], capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm, built from its Go module by hack/build-helm.sh on first use (about a minute), then reused."""
    built = subprocess.run(["bash", str(ROOT / "hack/build-helm.sh")], capture_output=True, text=True, timeout=1200)
    if built.returncode != 0:
        pytest.fail(f"hack/build-helm.sh exited {built.returncode}:\n{built.stderr[-3000:]}", pytrace=False)
    return Path(built.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(kubeconfig)


@pytest.fixture(scope="session")
def crds(kubectl: Kubectl) -> None:
    """The Kiln CRDs from crds/, installed and established."""
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
    # Discovery lags Established by a moment; kubectl explain and short names need it.
    kubectl.wait_for(lambda: kubectl.run("get", "kiln", check=False).returncode == 0, timeout=30,
                     what="the kiln category in discovery")


@pytest.fixture()
def namespace(kubectl: Kubectl, request) -> str:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    # The hash tells apart parametrized cases whose names differ only past the cut.
    digest = hashlib.sha256(request.node.name.encode()).hexdigest()[:4]
    name = "t-" + request.node.name.lower().replace("_", "-")[:36].strip("-") + f"-{digest}-{os.getpid() % 10000}"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)
