"""What the tests that run Kiln on the real cluster share: a namespace holding the artifact store's
Secret, the operator's settings for that store, and waiting on an InferenceService's status."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

STORE_SECRET = "kiln-store"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": "e2e"}


@contextmanager
def store_namespace(kubectl, prefix: str) -> Iterator[str]:
    """A fresh namespace `t-<prefix>-<random>` with the store's Secret; deleted afterwards (not waited for)."""
    name = f"t-{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", name)
    kubectl.apply(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": STORE_SECRET, "namespace": name},
                              "stringData": CREDENTIALS}))
    try:
        yield name
    finally:
        kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def operator_env(s3_url: str, artifact_root: str) -> dict[str, str]:
    """The operator's environment for the S3 server at `s3_url`, with the namespace's store Secret."""
    return {"KILN_S3_ENDPOINT": s3_url, "KILN_STORE_SECRET": STORE_SECRET, "KILN_ARTIFACT_ROOT": artifact_root}


def isvc_status(kubectl, ns: str, name: str) -> dict:
    return kubectl.json("get", "inferenceservice", name, "-n", ns).get("status") or {}


def wait_isvc_status(kubectl, ns: str, name: str, predicate: Callable[[dict], bool], what: str,
                     timeout: float) -> dict:
    """The InferenceService's status once `predicate` holds; fails naming `what` and showing the status."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = isvc_status(kubectl, ns, name)
        if predicate(status):
            return status
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; status: {json.dumps(status, indent=1)}")
