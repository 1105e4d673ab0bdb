"""The local node under a burst: N pods from `kubectl apply` to Ready, and the memory of each component.

    python benchmarks/node.py [--pods 50]

Runs against the local cluster (`make cluster-up`), in a namespace of its own that it deletes after.
The pods run the base image's python3 sleeping, restricted like every Kiln pod, with a readiness probe,
so "Ready" includes image lookup, sandbox and network set-up, container start and the first probe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
STATE = CACHE / "state"
KUBECTL = sorted(CACHE.glob("k8s-v*/bin/kubectl"))[-1]
NS = "kiln-bench-node"


def kubectl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run([str(KUBECTL), "--kubeconfig", str(STATE / "kubeconfig"), *args], input=stdin,
                          capture_output=True, text=True, check=True, timeout=600).stdout


def deployment(replicas: int) -> dict:
    container = {"name": "sleep", "image": "docker.io/kiln/base:dev", "imagePullPolicy": "IfNotPresent",
                 "command": ["python3", "-c", "import time; time.sleep(3600)"],
                 "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
                 "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}},
                 "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "burst", "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "burst"}},
                     "template": {"metadata": {"labels": {"app": "burst"}},
                                  "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                                               "seccompProfile": {"type": "RuntimeDefault"}},
                                           "terminationGracePeriodSeconds": 0, "containers": [container]}}}}


def ready_count() -> int:
    pods = json.loads(kubectl("get", "pods", "-n", NS, "-o", "json"))["items"]
    return sum(1 for p in pods for c in p.get("status", {}).get("conditions", [])
               if c["type"] == "Ready" and c["status"] == "True")


def component_memory() -> dict[str, float]:
    """Resident memory (MiB) of each process the cluster scripts started, by their pid files."""
    out = {}
    for pidfile in sorted((STATE / "pids").glob("*.pid")):
        try:
            status = Path(f"/proc/{pidfile.read_text().strip()}/status").read_text()
        except OSError:
            continue
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        out[pidfile.stem] = rss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50)
    args = parser.parse_args()
    kubectl("create", "namespace", NS)
    try:
        started = time.monotonic()
        kubectl("apply", "-f", "-", stdin=json.dumps(deployment(args.pods)))
        marks, seen = {}, 0
        while seen < args.pods:
            seen = ready_count()
            for share in (1, args.pods // 2, args.pods):
                if seen >= share and share not in marks:
                    marks[share] = time.monotonic() - started
            if time.monotonic() - started > 600:
                raise SystemExit(f"only {seen} of {args.pods} pods Ready after 600 s")
            time.sleep(0.5)
        print(f"node burst: {args.pods} pods from apply to Ready on {os.cpu_count()} CPUs")
        for share, seconds in sorted(marks.items()):
            print(f"  {share:3d} Ready after {seconds:6.1f} s")
        print(f"  throughput {args.pods / marks[args.pods]:.1f} pods/s")
        print("memory of the cluster's components with the pods running (RSS, MiB):")
        for name, mib in sorted(component_memory().items(), key=lambda kv: -kv[1]):
            print(f"  {name:24s} {mib:7.1f}")
    finally:
        kubectl("delete", "namespace", NS, "--wait=false")


if __name__ == "__main__":
    main()
