"""A canary's share through a Gateway API HTTPRoute: the builders, the plan, the spec and discovery."""

import copy

import pytest
from kubernetes.dynamic.exceptions import NotFoundError

from kiln_operator import k8s
from kiln_operator.api.kinds import kind_by_name
from kiln_operator.builders import serving
from kiln_operator.config import OperatorConfig
from kiln_operator.inference import Observed, plan
from kiln_operator.validation import InvalidSpec, parse, parse_spec
from test_inference_plan import mv  # the same verified ModelVersion the plan tests use

CFG = OperatorConfig()
GATEWAY = {"parentRefs": [{"name": "web", "namespace": "infra", "sectionName": "http"}],
           "hostnames": ["iris.example.com"]}
CANARY = {"versionRef": {"name": "iris-v2"}, "trafficPercent": 20}




def isvc(status=None, **spec):
    return parse({"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService",
                  "metadata": {"name": "iris", "namespace": "ml", "uid": "isvc-1", "generation": 1},
                  "spec": {"model": {"modelName": "iris", "stage": "Production"},
                           "autoscaling": {"minReplicas": 2, "maxReplicas": 6}, **spec},
                  "status": status or {}})


VERSIONS = [mv(1, "Production"), mv(2)]


def applied(result, kind):
    return {m["metadata"]["name"]: m for m in result.apply if m["kind"] == kind}


def conditions(result):
    return {c[0]: c[1:] for c in result.conditions}


def serving_deployment(result, role):
    dep = copy.deepcopy(applied(result, "Deployment")[f"iris-{role}"])
    dep["metadata"]["generation"] = 1
    dep["status"] = {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                     "availableReplicas": 1}
    return dep


# Builders


def test_role_service_selects_only_its_roles_pods_and_is_owned():
    svc = serving.role_service(isvc(), "canary")
    assert svc["metadata"]["name"] == "iris-canary"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "kiln-serve", "app.kubernetes.io/instance": "iris",
                                       "kiln.dev/role": "canary"}
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "isvc-1"
    assert svc["metadata"]["labels"]["kiln.dev/role"] == "canary"
    # The all-pods Service carries no role label, so the role Services' selector never finds it.
    assert "kiln.dev/role" not in serving.service(isvc())["metadata"]["labels"]
    assert serving.role_service_label_selector(isvc()).endswith(",kiln.dev/role")


@pytest.mark.parametrize("percent,expected", [(20, {"primary": 80, "canary": 20}), (100, {"primary": 0, "canary": 100}),
                                              (None, {"primary": 100})])
def test_route_weights_read_as_percentages(percent, expected):
    assert serving.route_weights(percent) == expected


def test_http_route_weighs_the_role_services_behind_the_users_gateway():
    route = serving.http_route(isvc(gateway=GATEWAY), {"primary": 80, "canary": 20})
    assert (route["apiVersion"], route["kind"], route["metadata"]["name"]) == \
        ("gateway.networking.k8s.io/v1", "HTTPRoute", "iris")
    assert route["metadata"]["ownerReferences"][0]["uid"] == "isvc-1"
    assert route["spec"]["parentRefs"] == [{"name": "web", "namespace": "infra", "sectionName": "http"}]
    assert route["spec"]["hostnames"] == ["iris.example.com"]
    assert route["spec"]["rules"] == [{"backendRefs": [{"name": "iris-primary", "port": 80, "weight": 80},
                                                       {"name": "iris-canary", "port": 80, "weight": 20}]}]


def test_http_route_leaves_out_what_the_user_did_not_say():
    route = serving.http_route(isvc(gateway={"parentRefs": [{"name": "web"}]}), {"primary": 100})
    assert route["spec"]["parentRefs"] == [{"name": "web"}]
    assert "hostnames" not in route["spec"]


# The plan


def test_route_weighs_80_20_and_replicas_are_not_split_by_ratio():
    result = plan(isvc(canary=CANARY, gateway=GATEWAY), Observed(VERSIONS, {}, [], route_api=True), CFG)
    route = applied(result, "HTTPRoute")["iris"]
    weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}
    assert weights == {"iris-primary": 80, "iris-canary": 20}
    hpas = {name: m["spec"]["minReplicas"] for name, m in applied(result, "HorizontalPodAutoscaler").items()}
    assert hpas == {"iris-primary": 2, "iris-canary": 1}  # the ratio would have made the primary 4
    services = applied(result, "Service")
    assert set(services) == {"iris", "iris-primary", "iris-canary"}  # the all-pods one stays for in-cluster clients
    assert conditions(result)["Routed"] == ("True", "HTTPRoute", "HTTPRoute iris weighs primary 80%, canary 20%")
    assert result.delete == []


def test_status_traffic_reports_the_route_weights_not_the_ready_replicas():
    first = plan(isvc(canary=CANARY, gateway=GATEWAY), Observed(VERSIONS, {}, [], route_api=True), CFG)
    deployments = {role: serving_deployment(first, role) for role in ("primary", "canary")}  # 1 ready each: 50/50
    result = plan(isvc({"modelVersion": "iris-v1"}, canary=CANARY, gateway=GATEWAY),
                  Observed(VERSIONS, deployments, [], route_api=True), CFG)
    assert result.status["traffic"] == [{"version": "iris-v1", "percent": 80}, {"version": "iris-v2", "percent": 20}]
    without_route = plan(isvc({"modelVersion": "iris-v1"}, canary=CANARY), Observed(VERSIONS, deployments, []), CFG)
    assert without_route.status["traffic"][0]["percent"] == 50


def test_without_the_gateway_api_the_ratio_realises_the_share_and_the_condition_says_why():
    result = plan(isvc(canary=CANARY, gateway=GATEWAY), Observed(VERSIONS, {}, [], route_api=False), CFG)
    assert "HTTPRoute" not in {m["kind"] for m in result.apply}
    assert set(applied(result, "Service")) == {"iris"}
    hpas = {name: m["spec"]["minReplicas"] for name, m in applied(result, "HorizontalPodAutoscaler").items()}
    assert hpas == {"iris-primary": 4, "iris-canary": 1}
    status, reason, message = conditions(result)["Routed"]
    assert (status, reason) == ("False", "GatewayAPIMissing")
    assert "gateway.networking.k8s.io/v1" in message and "replica ratio" in message
    assert ("Warning", "GatewayAPIMissing", message) in result.events


def test_removing_the_canary_leaves_the_route_with_the_primary_only():
    observed = Observed(VERSIONS, {"canary": {"spec": {}}}, [], route_api=True, route={"kind": "HTTPRoute"},
                        role_services={"primary", "canary"})
    result = plan(isvc(gateway=GATEWAY), observed, CFG)
    route = applied(result, "HTTPRoute")["iris"]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "iris-primary", "port": 80, "weight": 100}]
    assert ("v1", "Service", "iris-canary") in result.delete
    assert ("apps/v1", "Deployment", "iris-canary") in result.delete
    assert ("gateway.networking.k8s.io/v1", "HTTPRoute", "iris") not in result.delete
    assert set(applied(result, "Service")) == {"iris", "iris-primary"}


def test_removing_spec_gateway_deletes_the_route_and_the_role_services():
    status = {"conditions": [{"type": "Routed", "status": "True", "reason": "HTTPRoute", "message": "",
                              "lastTransitionTime": "2025-01-01T00:00:00Z"}]}
    observed = Observed(VERSIONS, {}, [], route_api=True, route={"kind": "HTTPRoute"},
                        role_services={"primary", "canary"})
    result = plan(isvc(status, canary=CANARY), observed, CFG)
    assert sorted(result.delete) == [("gateway.networking.k8s.io/v1", "HTTPRoute", "iris"),
                                     ("v1", "Service", "iris-canary"), ("v1", "Service", "iris-primary")]
    assert "HTTPRoute" not in {m["kind"] for m in result.apply}
    assert conditions(result)["Routed"][:2] == ("False", "NoGateway")


def test_a_service_that_never_had_a_route_gets_no_routed_condition_and_no_deletions():
    result = plan(isvc(canary=CANARY), Observed(VERSIONS, {}, [], route_api=True), CFG)
    assert "Routed" not in conditions(result)
    assert result.delete == []


# The spec


def test_gateway_spec_needs_a_parent_and_checks_hostnames():
    kind = kind_by_name("InferenceService")
    base = {"model": {"modelName": "iris", "stage": "Production"}}
    parse_spec(kind, {**base, "gateway": GATEWAY})
    for bad in ({"parentRefs": []}, {"parentRefs": [{"name": "web"}], "hostnames": ["Not A Host"]},
                {"parentRefs": [{"name": "web", "port": 80}]}):
        with pytest.raises(InvalidSpec):
            parse_spec(kind, {**base, "gateway": bad})


# Discovery


class FakeDynamic:
    def __init__(self, resources):
        self.resources, self.calls = resources, 0

    def request(self, method, path):
        self.calls += 1
        if self.resources is None:
            raise NotFoundError(type("E", (), {"status": 404, "reason": "NotFound", "body": "", "headers": {}})())
        return type("Doc", (), {"to_dict": lambda _: {"resources": [{"name": r} for r in self.resources]}})()


def test_discovery_answers_whether_the_kind_is_served_and_is_cached(monkeypatch):
    monkeypatch.setattr(k8s, "_served", {})
    fake = FakeDynamic(["httproutes", "httproutes/status"])
    monkeypatch.setattr(k8s, "dynamic", lambda: fake)
    assert k8s.serves("gateway.networking.k8s.io/v1", "httproutes")
    assert k8s.serves("gateway.networking.k8s.io/v1", "httproutes")
    assert fake.calls == 1
    monkeypatch.setattr(k8s, "_served", {})
    missing = FakeDynamic(None)
    monkeypatch.setattr(k8s, "dynamic", lambda: missing)
    assert not k8s.serves("gateway.networking.k8s.io/v1", "httproutes")
