"""Kiln's writes for N InferenceServices without Kiln's operator: what the cluster pays for the
children themselves. Reads the namespace's InferenceServices and ModelVersions once, renders each
service's first plan with the operator's own pure functions (inference.plan: its Deployment, HPA,
Service and PDB), and sends those server-side applies and one status patch per service from 12
threads, as the operator's 12 workers would, then exits. No watches, no cache, no kopf: measured
beside Kiln's operator in benchmarks/operator.py, the difference is what the operator itself costs.

    python benchmarks/kiln_writes.py --namespace NS
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

from kiln_operator import inference, k8s
from kiln_operator.config import OperatorConfig
from kiln_operator.validation import usable

API_VERSION = "kiln.dev/v1alpha1"
WORKERS = 12  # the operator's default (KILN_WORKERS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", required=True)
    ns = parser.parse_args().namespace
    cfg = OperatorConfig()
    def parsed(kind: str) -> list:
        items = ({**o, "apiVersion": API_VERSION, "kind": kind} for o in k8s.list_(API_VERSION, kind, ns))
        return [p for p in map(usable, items) if p is not None]

    versions, services = parsed("ModelVersion"), parsed("InferenceService")

    def write(isvc) -> None:
        plan = inference.plan(isvc, inference.Observed(model_versions=versions, deployments={}, pods=[]), cfg)
        for manifest in plan.apply:
            k8s.apply(manifest)
        k8s.patch_status(API_VERSION, "InferenceService", ns, isvc.name,
                         {"observedGeneration": isvc.body["metadata"]["generation"]})

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(write, services))


if __name__ == "__main__":
    main()
