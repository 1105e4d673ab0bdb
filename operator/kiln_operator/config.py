"""Operator settings, from the environment (the Helm chart's values end up here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import __version__

# The runtime image as the chart names it by default (runtime.repository, tag = appVersion) and as
# `make images` tags its build; the chart always passes KILN_RUNTIME_IMAGE, so this default matters to an
# operator started by hand.
RUNTIME_REPOSITORY = "ghcr.io/kiln-dev/kiln-runtime"


@dataclass(frozen=True)
class OperatorConfig:
    runtime_image: str = f"{RUNTIME_REPOSITORY}:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    # Where runs write their artifacts: s3://bucket/prefix or file:///path (a volume every pod mounts).
    artifact_root: str = "s3://kiln/artifacts"
    # Secret (same namespace as the object) with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, passed to
    # runtime pods with envFrom so no credential ever passes through the operator.
    store_secret: str | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    # Prometheus for drift (optional; without it the operator reads the sidecars' reports).
    prometheus_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def store_env(self) -> list[dict]:
        env = [{"name": "AWS_REGION", "value": self.s3_region}]
        if self.s3_endpoint:
            env.append({"name": "AWS_ENDPOINT_URL", "value": self.s3_endpoint})
        return env + [{"name": k, "value": v} for k, v in sorted(self.extra_env.items())]

    def store_env_from(self) -> list[dict]:
        return [{"secretRef": {"name": self.store_secret}}] if self.store_secret else []


def from_env(env: dict[str, str] | None = None) -> OperatorConfig:
    env = dict(os.environ if env is None else env)
    default = OperatorConfig()
    return OperatorConfig(
        runtime_image=env.get("KILN_RUNTIME_IMAGE", default.runtime_image),
        image_pull_policy=env.get("KILN_IMAGE_PULL_POLICY", default.image_pull_policy),
        artifact_root=env.get("KILN_ARTIFACT_ROOT", default.artifact_root).rstrip("/"),
        store_secret=env.get("KILN_STORE_SECRET") or None,
        s3_endpoint=env.get("KILN_S3_ENDPOINT") or None,
        s3_region=env.get("KILN_S3_REGION", default.s3_region),
        prometheus_url=env.get("KILN_PROMETHEUS_URL") or None,
    )
