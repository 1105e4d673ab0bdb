"""Reads and the one write (a merge patch) against the apiserver, with the kubeconfig a user has.

The Kubernetes Python client, not the kubectl binary: the plugin must work wherever it is installed,
kubectl or not. Every apiserver refusal becomes a CliError naming the object (see `api_error`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from kiln_operator.api.kinds import GROUP, VERSION

from .errors import CliError

PLURALS = {"trainingpipeline": "trainingpipelines", "modelversion": "modelversions",
           "inferenceservice": "inferenceservices", "dataset": "datasets"}
TIMEOUT_S = 15
# Names the writer of spec.stage in managedFields: without the promotion policy's stamp, the registry's
# stage history shows `fieldManager:kubectl-kiln` as who changed it (kubectl's own is kubectl-patch).
FIELD_MANAGER = "kubectl-kiln"


def status_message(body: str | None) -> tuple[str | None, str | None]:
    """(reason, message) of a Kubernetes Status body, or (None, None) when it is not one."""
    try:
        status = json.loads(body or "")
    except ValueError:
        return None, None
    if not isinstance(status, dict) or status.get("kind") != "Status":
        return None, None
    return status.get("reason"), status.get("message")


def api_error(status: int | None, body: str | None, kind: str, name: str | None, namespace: str,
              verb: str = "get") -> CliError:
    """An apiserver refusal as the user should read it: not found names the object and namespace;
    anything else is the apiserver's own message (an admission policy's words), as kubectl prints it."""
    what = f'{kind} "{name}"' if name else f"{kind}s"
    if status == 404:
        return CliError(f'{what} not found in namespace "{namespace}"')
    reason, message = status_message(body)
    if message:
        return CliError(f"Error from server ({reason or status}): {message}")
    return CliError(f"cannot {verb} {what} in namespace \"{namespace}\": HTTP {status}: {(body or '').strip()[:500]}")


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig's (chosen) context, else "default", as kubectl decides it."""
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(kubeconfig)
    except Exception:  # noqa: BLE001 - no kubeconfig: connect() reports it
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


@dataclass
class Cluster:
    api: Any  # kubernetes.client.ApiClient
    namespace: str

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> "Cluster":
        from kubernetes import client, config

        try:
            if kubeconfig or os.environ.get("KUBECONFIG") or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                api = config.new_client_from_config(config_file=kubeconfig, context=context)
            else:  # inside a pod, as kubectl does
                config.load_incluster_config()
                api = client.ApiClient()
        except Exception as exc:  # noqa: BLE001 - the config loaders raise several unrelated types
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise CliError(f"cannot load the kubeconfig {where}"
                           f"{f' (context {context!r})' if context else ''}: {exc}") from None
        return cls(api, namespace or context_namespace(kubeconfig, context))

    def _call(self, fn, kind: str, name: str | None, verb: str = "get", /, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(_request_timeout=TIMEOUT_S, **kwargs)
        except ApiException as exc:
            raise api_error(exc.status, exc.body, kind, name, self.namespace, verb) from None
        except HTTPError as exc:
            raise CliError(f"cannot reach the apiserver at {self.api.configuration.host}: {exc}") from None

    def _custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self._call(self._custom().get_namespaced_custom_object, kind, name, group=GROUP, version=VERSION,
                          namespace=self.namespace, plural=PLURALS[kind], name=name)

    def list(self, kind: str) -> list[dict[str, Any]]:
        found = self._call(self._custom().list_namespaced_custom_object, kind, None, "list", group=GROUP,
                           version=VERSION, namespace=self.namespace, plural=PLURALS[kind])
        return found.get("items") or []

    def merge_patch(self, kind: str, name: str, body: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        extra = {"dry_run": "All"} if dry_run else {}
        return self._call(self._custom().patch_namespaced_custom_object, kind, name, "patch", group=GROUP,
                          version=VERSION, namespace=self.namespace, plural=PLURALS[kind], name=name, body=body,
                          field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json", **extra)

    def service(self, name: str) -> dict[str, Any]:
        from kubernetes import client

        svc = self._call(client.CoreV1Api(self.api).read_namespaced_service, "service", name, name=name,
                         namespace=self.namespace)
        return self.api.sanitize_for_serialization(svc)

    def job(self, name: str) -> dict[str, Any] | None:
        """The Job, or None when it is gone (finished Jobs expire) or the user may not read Jobs."""
        from kubernetes import client

        try:
            job = self._call(client.BatchV1Api(self.api).read_namespaced_job, "job", name, name=name,
                             namespace=self.namespace)
        except CliError:
            return None
        return self.api.sanitize_for_serialization(job)
