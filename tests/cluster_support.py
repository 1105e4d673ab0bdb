"""What the tests that run Kiln on the real cluster share: a namespace holding the artifact store's
Secret, the operator's settings for that store, and waiting on an InferenceService's status."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator

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


class SteadyLoad:
    """`clients` threads sending requests back to back while the `with` block runs. `request(i)` sends
    the i-th and returns what to count it as (the version that answered, say); any exception is a
    failed request (refused, reset, non-200). Answers are counted, in order, with when each was first seen."""

    def __init__(self, request: Callable[[int], Hashable], clients: int = 4):
        self.request, self.clients = request, clients
        self.answers: Counter = Counter()
        self.timeline: list = []
        self.first_seen: dict = {}
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _client(self, offset: int) -> None:
        i = offset
        while not self.stop.is_set():
            try:
                answer = self.request(i)
                with self.lock:
                    self.answers[answer] += 1
                    self.timeline.append(answer)
                    self.first_seen.setdefault(answer, time.monotonic())
            except Exception as exc:  # noqa: BLE001 - every way a request can fail counts as one
                with self.lock:
                    self.failures.append(f"request {i}: {type(exc).__name__}: {exc}")
            i += self.clients

    def __enter__(self) -> "SteadyLoad":
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        self.seconds = time.monotonic() - self.started

    def report(self, what: str) -> str:
        total = sum(self.answers.values())
        return (f"{what}: {total} requests in {self.seconds:.0f} s ({total / self.seconds:.0f}/s), "
                f"{len(self.failures)} failed, by answer {dict(sorted(self.answers.items()))}")
