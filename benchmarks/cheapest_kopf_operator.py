"""The cheapest kopf operator that does what the benchmark counts as "reconciled": for every object of
the kinds named on the command line, one owned child (a ConfigMap) and a Ready condition with
observedGeneration. Nothing else: no watches of children, no timers, no dependents. The floor any
operator built on kopf and the same apiserver can reach, measured beside Kiln's in benchmarks/operator.py.

    python benchmarks/cheapest_kopf_operator.py --namespace NS inferenceservices [datasets ...]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import kopf
from kubernetes import client, config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", required=True)
    parser.add_argument("plurals", nargs="+")
    args = parser.parse_args()
    config.load_kube_config(os.environ.get("KUBECONFIG"))
    core = client.CoreV1Api()

    def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        child = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": f"{body['metadata']['name']}-child"}, "data": {"owner": body["metadata"]["name"]}}
        kopf.adopt(child, owner=body)
        try:
            core.create_namespaced_config_map(body["metadata"]["namespace"], child)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        patch.status["observedGeneration"] = body["metadata"].get("generation")
        patch.status["conditions"] = [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # The same bookkeeping place as Kiln's (the status schema is strict), and no Events.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kiln.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kiln.dev", key="last-handled-configuration")
        settings.posting.enabled = False

    for plural in args.plurals:
        kopf.on.create("kiln.dev", "v1alpha1", plural)(reconcile)
        kopf.on.resume("kiln.dev", "v1alpha1", plural)(reconcile)

    kopf.run(namespaces=[args.namespace], standalone=True)


if __name__ == "__main__":
    main()
