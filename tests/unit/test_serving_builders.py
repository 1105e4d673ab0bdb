"""InferenceService children, built without a cluster."""

import json

import pytest

from kiln_operator.api import InferenceServiceSpec, ModelVersionSpec
from kiln_operator.builders import serving
from kiln_operator.config import OperatorConfig
from kiln_operator.validation import parse

ISVC = {
    "apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService",
    "metadata": {"name": "iris", "namespace": "ml", "uid": "u-1", "generation": 1},
    "spec": {"model": {"modelName": "iris", "stage": "Production"},
             "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCpuUtilization": 60},
             "batching": {"maxBatchSize": 16, "maxLatencyMs": 3},
             "monitoring": {"drift": {"enabled": True, "windowRows": 500, "psiThreshold": 0.25}},
             "rollout": {"progressDeadlineSeconds": 120}},
}
MV = {
    "apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion",
    "metadata": {"name": "iris-v3", "namespace": "ml", "uid": "u-3"},
    "spec": {"modelName": "iris", "version": 3, "baselineUri": "s3://b/baseline.json",
             "framework": {"version": "1.6.1"},
             "artifact": {"uri": "s3://b/model.skops", "sha256": "a" * 64, "format": "skops",
                          "onnx": {"uri": "s3://b/model.onnx", "sha256": "b" * 64, "parityVerified": True}},
             "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}}},
}
CFG = OperatorConfig(runtime_image="ghcr.io/kiln-dev/kiln-runtime:test", s3_endpoint="http://10.244.0.1:9000", store_secret="s3")


def containers(isvc, mv):
    return serving.deployment(parse(isvc), parse(mv), "primary", CFG)["spec"]["template"]["spec"]["containers"]


def env_of(container):
    return {e["name"]: e["value"] for e in container["env"]}


def test_deployment_runs_the_server_and_the_monitor_restricted():
    dep = serving.deployment(parse(ISVC), parse(MV), "primary", CFG)
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["server", "monitor"]
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert c["image"] == "ghcr.io/kiln-dev/kiln-runtime:test" and c["envFrom"] == [{"secretRef": {"name": "s3"}}]
    server = env_of(pod["containers"][0])
    assert server["KILN_MODEL_SHA256"] == "a" * 64 and server["KILN_ONNX_URI"] == "s3://b/model.onnx"
    assert json.loads(server["KILN_SIGNATURE"])["inputs"][0]["name"] == "x"
    assert server["KILN_MAX_BATCH_SIZE"] == "16" and server["AWS_ENDPOINT_URL"] == "http://10.244.0.1:9000"
    monitor = env_of(pod["containers"][1])
    assert monitor["KILN_HANDOFF_SOCKET"] == server["KILN_HANDOFF_SOCKET"]
    assert monitor["KILN_BASELINE_URI"] == "s3://b/baseline.json"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert dep["spec"]["progressDeadlineSeconds"] == 120
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert dep["spec"]["template"]["metadata"]["labels"]["kiln.dev/model-version"] == "iris-v3"


def test_unverified_onnx_is_not_served():
    mv = json.loads(json.dumps(MV))
    mv["spec"]["artifact"]["onnx"]["parityVerified"] = False
    server = env_of(containers(ISVC, mv)[0])
    assert "KILN_ONNX_URI" not in server


def test_no_monitor_without_a_baseline_or_when_disabled():
    mv = json.loads(json.dumps(MV))
    del mv["spec"]["baselineUri"]
    assert len(containers(ISVC, mv)) == 1
    isvc = json.loads(json.dumps(ISVC))
    isvc["spec"]["monitoring"]["drift"]["enabled"] = False
    assert len(containers(isvc, MV)) == 1


def test_service_selects_every_role_and_hpa_targets_its_deployment():
    svc = serving.service(parse(ISVC))
    primary = serving.deployment(parse(ISVC), parse(MV), "primary", CFG)
    canary = serving.deployment(parse(ISVC), parse(MV), "canary", CFG)
    for dep in (primary, canary):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
    assert primary["spec"]["selector"] != canary["spec"]["selector"]
    hpa = serving.hpa(parse(ISVC), "primary", 2, 5)
    assert hpa["spec"]["scaleTargetRef"]["name"] == primary["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60


def test_the_service_exposes_grpc_as_h2c_beside_http_on_every_role():
    ports = {p["name"]: p for p in serving.service(parse(ISVC))["spec"]["ports"]}
    assert ports["http"]["port"] == 80
    assert ports["grpc"]["port"] == 8081 and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert serving.role_service(parse(ISVC), "canary")["spec"]["ports"] == list(ports.values())
    (server,) = [c for c in serving.deployment(parse(ISVC), parse(MV), "primary", CFG)["spec"]["template"]["spec"]
                 ["containers"] if c["name"] == "server"]
    assert {"name": "grpc", "containerPort": 8081} in server["ports"]


@pytest.mark.parametrize("minimum,percent,expected", [(1, 0, (1, 0)), (1, 20, (4, 1)), (1, 50, (1, 1)),
                                                       (3, 10, (9, 1)), (2, 100, (0, 2)), (1, 1, (19, 1))])
def test_replica_split_realises_the_canary_share(minimum, percent, expected):
    assert serving.split_replicas(minimum, percent) == expected


def test_without_a_monitoring_sidecar_the_server_hands_off_nothing():
    from kiln_operator.builders.serving import server_env

    isvc_spec = InferenceServiceSpec.model_validate({**ISVC["spec"], "monitoring": {"drift": {"enabled": False}}})
    env = {e["name"]: e["value"] for e in server_env(isvc_spec, ModelVersionSpec.model_validate(MV["spec"]),
                                                     monitored=False)}
    assert env["KILN_HANDOFF_SOCKET"] == "off"


def test_payload_logging_and_feedback_configure_the_sidecar_even_without_drift():
    isvc = json.loads(json.dumps(ISVC))
    isvc["spec"]["monitoring"]["drift"]["enabled"] = False
    isvc["spec"]["logging"] = {"uri": "s3://logs/payloads", "sampleRate": 0.5, "flushSeconds": 5}
    isvc["spec"]["feedback"] = {"ttlSeconds": 600, "windowRows": 200, "labelledUri": "s3://data/labelled"}
    mv = json.loads(json.dumps(MV))
    mv["spec"]["signature"]["output"]["name"] = "default"
    server, monitor = containers(isvc, mv)
    env = env_of(monitor)
    assert (env["KILN_PAYLOAD_URI"], env["KILN_PAYLOAD_SAMPLE_RATE"], env["KILN_PAYLOAD_FLUSH_SECONDS"]) == (
        "s3://logs/payloads", "0.5", "5")
    assert (env["KILN_LABELLED_URI"], env["KILN_LABEL_COLUMN"], env["KILN_TASK"]) == (
        "s3://data/labelled", "default", "classification")
    assert env["KILN_FEEDBACK_TTL_SECONDS"] == "600" and env["KILN_QUALITY_WINDOW_ROWS"] == "200"
    assert monitor["envFrom"] == [{"secretRef": {"name": "s3"}}]  # it writes to the store
    assert env_of(server)["KILN_MONITOR_URL"] == f"http://127.0.0.1:{serving.MONITOR_PORT}"


def test_without_feedback_the_server_relays_nothing_and_the_sidecar_logs_nothing():
    server, monitor = containers(ISVC, MV)
    assert "KILN_MONITOR_URL" not in env_of(server)
    assert not {"KILN_PAYLOAD_URI", "KILN_LABELLED_URI"} & set(env_of(monitor))


POD = {"serviceAccountName": "model-reader", "nodeSelector": {"pool": "inference"},
       "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
       "annotations": {"example.com/team": "risk", "prometheus.io/port": "9999"},
       "labels": {"team": "risk", "app.kubernetes.io/name": "mine", "app.kubernetes.io/instance": "other",
                  "kiln.dev/role": "canary"}}


def test_spec_pod_reaches_the_serving_pods_and_never_overrides_kilns_labels_or_annotations():
    isvc = json.loads(json.dumps(ISVC))
    isvc["spec"]["pod"] = POD
    plain = serving.deployment(parse(ISVC), parse(MV), "primary", CFG)
    for role in ("primary", "canary"):
        dep = serving.deployment(parse(isvc), parse(MV), role, CFG)
        template = dep["spec"]["template"]
        pod = template["spec"]
        assert pod["serviceAccountName"] == "model-reader" and pod["nodeSelector"] == {"pool": "inference"}
        assert pod["tolerations"] == POD["tolerations"]
        assert pod["automountServiceAccountToken"] is False  # a ServiceAccount of one's own changes nothing here
        labels, annotations = template["metadata"]["labels"], template["metadata"]["annotations"]
        assert labels["team"] == "risk" and annotations["example.com/team"] == "risk"
        # Kiln's labels win: the Deployment's and the Service's selectors still find the pods.
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert serving.service(parse(isvc))["spec"]["selector"].items() <= labels.items()
        assert labels["kiln.dev/role"] == role and labels["app.kubernetes.io/name"] == "kiln-serve"
        # Kiln's scrape annotations stay.
        assert annotations["prometheus.io/port"] == "8080" and annotations["prometheus.io/scrape"] == "true"
        # The rest of the pod is what it is without spec.pod.
        bare = {k: v for k, v in pod.items() if k not in ("serviceAccountName", "nodeSelector", "tolerations")}
        assert bare == plain["spec"]["template"]["spec"]
    # Without spec.pod: none of it, and the namespace's default ServiceAccount.
    pod = plain["spec"]["template"]["spec"]
    assert not {"serviceAccountName", "nodeSelector", "tolerations"} & pod.keys()
    assert set(plain["spec"]["template"]["metadata"]["annotations"]) == {
        "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"}
    assert ISVC["spec"].get("pod") is None  # the builder copied, never mutated, the spec
