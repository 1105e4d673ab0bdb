"""Argo CD for the local cluster: its own core install (manifests/core-install.yaml of the pinned Argo CD
module), changed only where this machine needs it, printed as YAML for `kubectl apply --server-side`.

What changes, and why:
- Every Argo CD container runs the image hack/build-images.sh built from the Go module
  (docker.io/kiln/argocd:dev; no registry is reachable), Redis included: the image carries Debian's
  redis-server, started by name because the image's entrypoint is tini, not Redis's.
- The ApplicationSet controller is left out: Kiln's story needs Applications only, and two CPUs are
  better spent on the controller and the repo-server.
- argocd-cm gets Kiln's health checks from deploy/argocd-values.yaml (the file users install), so the
  test exercises exactly what is shipped, and a short reconciliation timeout (see RECONCILIATION);
  argocd-cmd-params-cm keeps each resource's health in the Application's status.
- The `default` AppProject, which argocd-server creates when it starts, is created here: the core
  install has no argocd-server.
- Pod templates carry the image's content hash, so a rebuilt image rolls the pods.

  python hack/argocd-manifests.py install CORE_INSTALL_YAML IMAGE_REF IMAGE_HASH   # all but the project
  python hack/argocd-manifests.py project                                         # once the CRDs serve
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "deploy/argocd-values.yaml"
NAMESPACE = "argocd"
# How often Argo CD compares each Application with git without being told (its default is 180 s).
# The tests refresh an Application after each commit, as a git webhook would; this is the fallback.
RECONCILIATION = "30s"
LEFT_OUT = "applicationset-controller"

DEFAULT_PROJECT = {
    "apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
    "metadata": {"name": "default", "namespace": NAMESPACE},
    "spec": {"sourceRepos": ["*"], "destinations": [{"namespace": "*", "server": "*"}],
             "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]},
}


def _left_out(doc: dict) -> bool:
    return LEFT_OUT in doc["metadata"]["name"]


def _pods(doc: dict) -> dict | None:
    return doc["spec"]["template"] if doc["kind"] in ("Deployment", "StatefulSet") else None


def render(core_install: str, image: str, image_hash: str) -> list[dict]:
    cm = yaml.safe_load(VALUES.read_text())["configs"]["cm"]
    out = []
    for doc in yaml.safe_load_all(core_install):
        if not doc or _left_out(doc):
            continue
        if doc["kind"] != "CustomResourceDefinition" and not doc["kind"].startswith("Cluster"):
            doc["metadata"]["namespace"] = NAMESPACE
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm":
            doc["data"] = {**(doc.get("data") or {}), **cm, "timeout.reconciliation": RECONCILIATION}
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-cmd-params-cm":
            # Each resource's health (Kiln's reason and message) in the Application's status, where
            # `kubectl get application -o yaml` and the tests read it; Argo CD 3 keeps it in Redis otherwise.
            doc["data"] = {**(doc.get("data") or {}), "controller.resource.health.persist": "true"}
        if (template := _pods(doc)) is not None:
            template.setdefault("metadata", {}).setdefault("annotations", {})["kiln.dev/image-hash"] = image_hash
            spec = template["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                c["image"], c["imagePullPolicy"] = image, "IfNotPresent"
                if c["name"] == "redis":
                    c["command"] = ["redis-server"]
        out.append(doc)
    return out


def main() -> None:
    if sys.argv[1:2] == ["project"]:
        docs = [DEFAULT_PROJECT]
    else:
        core_install, image, image_hash = sys.argv[2:5]
        docs = render(Path(core_install).read_text(), image, image_hash)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))


if __name__ == "__main__":
    main()
