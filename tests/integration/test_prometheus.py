"""The local Prometheus against the real control plane: discovery, relabeling, scraping, rules.

No node is needed: a pod that no node can take (a nodeSelector nothing matches) is created with the
serving pods' labels and annotations, and its status is given the pod IP 127.0.0.1, where this test
serves real kiln-serve and kiln-monitor exposition on the ports the pod declares. Prometheus then
finds it through the apiserver and scrapes it exactly as it would a running serving pod (loopback
only). tests/e2e/test_observability.py does the same with real serving pods.
"""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kiln_expositions
import prometheus_local
import pytest
import yaml

from kiln_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/kiln/alerts/kiln-rules.yaml"
# The serving pods' image (never pulled: no node takes the pod).
RUNTIME_IMAGE = OperatorConfig().runtime_image

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def prometheus(kubeconfig):
    yield from prometheus_local.session()


class _Exposition(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = self.server.render().encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def expositions():
    """Four loopback servers, as kiln-serve's `http`, kiln-monitor's `monitor`, the operator's `metrics`
    ports, and the `http` port of a kiln-serve serving a model set."""
    servers = []
    for render in (kiln_expositions.server, kiln_expositions.monitor, kiln_expositions.operator,
                   kiln_expositions.multi_server):
        s = ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
        s.render = render
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
    yield [s.server_address[1] for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


def fake_serving_pod(name: str, http: int, monitor: int, annotated: bool = True) -> dict:
    labels = {"app.kubernetes.io/name": "kiln-serve", "app.kubernetes.io/instance": "m",
              "app.kubernetes.io/part-of": "kiln", "kiln.dev/model": "m", "kiln.dev/model-version": "m-v1",
              "kiln.dev/role": "primary"}
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(http), "prometheus.io/path": "/metrics"}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations if annotated else {}},
        "spec": {
            # No node matches: the kubelet never runs it, so only this test decides its status.
            "nodeSelector": {"kiln.dev/test-no-such-node": "true"},
            "containers": [
                {"name": "server", "image": RUNTIME_IMAGE,
                 "ports": [{"name": "http", "containerPort": http}, {"name": "admin", "containerPort": 1}]},
                {"name": "monitor", "image": RUNTIME_IMAGE, "ports": [{"name": "monitor", "containerPort": monitor}]},
            ],
        },
    }


def fake_operator_pod(name: str, metrics: int) -> dict:
    """Labelled as the chart labels the operator's pods, the metrics port named as the chart names it."""
    labels = {"app.kubernetes.io/name": "kiln", "app.kubernetes.io/instance": "kiln",
              "app.kubernetes.io/component": "operator", "app.kubernetes.io/part-of": "kiln"}
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"nodeSelector": {"kiln.dev/test-no-such-node": "true"},
                 "containers": [{"name": "operator", "image": RUNTIME_IMAGE, "ports": [
                     {"name": "health", "containerPort": 1}, {"name": "metrics", "containerPort": metrics}]}]},
    }


def create_with_loopback_ip(kubectl, namespace: str, pod: dict) -> None:
    kubectl.apply(json.dumps(pod), "-n", namespace)
    kubectl.run("-n", namespace, "patch", "pod", pod["metadata"]["name"], "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}))


def test_prometheus_listens_on_loopback_and_loads_the_chart_rules(prometheus):
    assert prometheus.get("/api/v1/status/buildinfo")["version"] == "3.16.0"
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{prometheus_local.PORT}"], capture_output=True, text=True).stdout
    assert listening.split() and all(
        line.split()[3].startswith("127.0.0.1:") for line in listening.splitlines()), listening
    want = {g["name"]: [r["alert"] for r in g["rules"]] for g in yaml.safe_load(RULES.read_text())["groups"]}

    def evaluated():
        groups = prometheus.get("/api/v1/rules")["groups"]
        got = {g["name"]: [r["name"] for r in g["rules"]] for g in groups}
        healthy = all(r["health"] == "ok" for g in groups for r in g["rules"])
        return got == want and healthy and groups

    prometheus.wait_for(evaluated, timeout=30, what="every chart rule loaded and evaluated without error")
    promtool = Path(subprocess.run(["bash", str(ROOT / "hack/build-prometheus.sh")], capture_output=True,
                                   text=True, check=True).stdout.strip()) / "promtool"
    checked = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_its_identity_may_only_read_pods(kubectl, prometheus):
    def can(*args: str) -> str:
        return kubectl.run("auth", "can-i", "--as", "kiln-prometheus", *args, check=False).stdout.strip()

    assert can("list", "pods", "--all-namespaces") == "yes" and can("watch", "pods", "-A") == "yes"
    assert can("create", "pods") == "no" and can("get", "secrets", "-A") == "no"


def test_discovers_relabels_and_scrapes_an_annotated_pod(kubectl, namespace, prometheus, expositions):
    http, monitor, _, _ = expositions
    create_with_loopback_ip(kubectl, namespace, fake_serving_pod("serving", http, monitor))
    create_with_loopback_ip(kubectl, namespace, fake_serving_pod("unannotated", http, monitor, annotated=False))

    def ours():
        found = [t for t in prometheus.targets() if t["labels"].get("namespace") == namespace]
        return found if len(found) == 2 and all(t["health"] == "up" for t in found) else None

    targets = prometheus.wait_for(ours, timeout=60, what="both ports of the pod scraped")
    by_container = {t["labels"]["container"]: t for t in targets}
    assert set(by_container) == {"server", "monitor"}
    for container, port in (("server", http), ("monitor", monitor)):
        labels = by_container[container]["labels"]
        assert labels == {"job": "kiln-pods", "instance": f"127.0.0.1:{port}", "namespace": namespace,
                          "pod": "serving", "container": container, "role": "primary", "modelversion": "m-v1"}
        assert by_container[container]["scrapeUrl"] == f"http://127.0.0.1:{port}/metrics"

    # Discovered but dropped: the unannotated pod, and the port that is neither `http` nor `monitor`.
    # (The second pod may reach Prometheus in a later discovery update than the first.)
    def dropped():
        return {(d["__meta_kubernetes_pod_name"], d.get("__meta_kubernetes_pod_container_port_name"))
                for d in (t["discoveredLabels"] for t in prometheus.targets("dropped"))
                if d.get("__meta_kubernetes_namespace") == namespace}

    prometheus.wait_for(lambda: dropped() >= {("serving", "admin"), ("unannotated", "http"), ("unannotated", "monitor")},
                        timeout=30, what="the unannotated pod and the unnamed port discovered and dropped")

    # The exposition's own model and version survive untouched beside the target labels.
    (info,) = prometheus.query(f'kiln_model_info{{namespace="{namespace}"}}')
    assert info["metric"]["model"] == "m" and info["metric"]["version"] == "1" and info["metric"]["pod"] == "serving"
    assert not any(k.startswith("exported_") for k in info["metric"])
    psi = prometheus.query(f'kiln_feature_drift_psi{{namespace="{namespace}"}}')
    assert {s["metric"]["feature"] for s in psi} == {"x", "c"}


def test_every_dashboard_panel_and_alert_evaluates_on_the_scraped_pod(kubectl, namespace, prometheus, expositions):
    """Every panel's PromQL is valid and returns data for this pod's series; the drift alert, whose
    condition the synthetic report meets, goes pending: rules are evaluated on what is scraped."""
    http, monitor, operator, multi = expositions
    create_with_loopback_ip(kubectl, namespace, fake_serving_pod("serving", http, monitor))
    create_with_loopback_ip(kubectl, namespace, fake_serving_pod("model-set", multi, monitor))  # the model-set panels
    create_with_loopback_ip(kubectl, namespace, fake_operator_pod("operator", operator))
    # The operator board's namespace is the operator's own: only this namespace's fake operator fills it.
    queries = prometheus_local.dashboard_queries({"namespace": namespace})

    def empty_panels():
        # A panel shows data when any of its queries returns a series (a classifier has no
        # regression buckets, and the other way round).
        return [f"{board} / {title}" for board, title, exprs in queries
                if not any(prometheus.query(e) for e in exprs)]

    # rate() needs two scrapes: give it a few scrape intervals.
    prometheus.wait_for(lambda: not empty_panels(), timeout=60, what="data in every panel")

    def drift_alert():
        return [a for a in prometheus.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == "KilnDriftDetected" and a["labels"].get("namespace") == namespace]

    (alert,) = prometheus.wait_for(drift_alert, timeout=30, what="KilnDriftDetected pending")
    assert alert["state"] in {"pending", "firing"} and alert["labels"]["model"] == "m"
