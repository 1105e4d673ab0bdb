"""The Helm charts: lint and render with every values file in charts/kiln/ci (and charts/kiln-crds/ci), and
what each render says."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

import kiln_operator
from kiln_operator.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/kiln"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
CRD_CHART = ROOT / "charts/kiln-crds"
CRD_CI_VALUES = sorted((CRD_CHART / "ci").glob("*.yaml"))


def render(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(helm), "template", "kiln", str(CHART), "--namespace", "kiln-system", *args],
                            capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def objects(helm: Path, *args: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render(helm, *args).stdout) if doc]


def one(objs: list[dict], kind: str) -> dict:
    (found,) = [o for o in objs if o["kind"] == kind]
    return found


def env_of(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_ci_values_files_exist():
    assert {p.name for p in CI_VALUES} >= {"default-values.yaml", "namespaced-values.yaml",
                                            "standalone-values.yaml", "s3-values.yaml"}


LINTED = [(CHART, v) for v in CI_VALUES] + [(CRD_CHART, v) for v in CRD_CI_VALUES]


@pytest.mark.parametrize("chart,values", LINTED, ids=[f"{c.name}/{v.stem}" for c, v in LINTED])
def test_lint_is_clean(helm, chart, values):
    result = subprocess.run([str(helm), "lint", str(chart), "--strict", "-f", str(values)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_render_is_restricted_and_consistent(helm, values):
    objs = objects(helm, "-f", str(values))
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["command"] == ["kiln-operator"]
    assert not re.search(r":latest$", container["image"]) and ":" in container["image"]
    # The Service finds the operator's pods, and its port is the health port the operator listens on.
    service = one(objs, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert f"--health=http://0.0.0.0:{service['spec']['ports'][0]['port']}/healthz" in container["args"]
    # Every binding names the ServiceAccount the pods run as.
    for binding in (o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                        "namespace": "kiln-system"}]


def test_every_env_var_is_one_the_operator_reads(helm):
    read = set(re.findall(r'env\.get\("(KILN_[A-Z0-9_]+)"', (ROOT / "operator/kiln_operator/config.py").read_text()))
    for values in CI_VALUES:
        chart_env = {k for k in env_of(one(objects(helm, "-f", str(values)), "Deployment")) if k.startswith("KILN_")}
        assert chart_env <= read, f"{values.name}: {chart_env - read} are not read by config.from_env"


def test_defaults_agree_with_the_operator(helm):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    default = OperatorConfig()
    assert env_of(one(objects(helm), "Deployment"))["KILN_RUNTIME_IMAGE"] == default.runtime_image
    assert values["runtime"]["pullPolicy"] == default.image_pull_policy
    assert values["artifactStore"]["root"] == default.artifact_root
    assert values["artifactStore"]["s3"]["region"] == default.s3_region


def test_values_reach_the_operator_as_env(helm):
    objs = objects(helm, "-f", str(CHART / "ci/s3-values.yaml"))
    env = env_of(one(objs, "Deployment"))
    assert env["KILN_RUNTIME_IMAGE"] == "registry.example.com/ml-platform/kiln-runtime:0.1.0"
    assert env["KILN_IMAGE_PULL_POLICY"] == "Always"
    assert env["KILN_ARTIFACT_ROOT"] == "s3://ml-artifacts/kiln"
    assert env["KILN_S3_ENDPOINT"] == "http://minio.storage.svc:9000"
    assert env["KILN_S3_REGION"] == "eu-west-1"
    assert env["KILN_STORE_SECRET"] == "kiln-store"
    assert env["KILN_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    # An empty tag falls back to the chart's appVersion.
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{app_version}")
    # Unset values leave their variables out, so the operator's own defaults apply.
    plain = env_of(one(objects(helm), "Deployment"))
    assert "KILN_S3_ENDPOINT" not in plain and "KILN_STORE_SECRET" not in plain


def test_peering_cluster_wide_by_default(helm):
    objs = objects(helm)
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=kiln" in args and not any(a.startswith("--namespace") for a in args)
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "kiln"
    assert {o["kind"] for o in objs}.isdisjoint({"KopfPeering", "RoleBinding"})


def test_namespaced_mode_binds_and_peers_per_namespace(helm):
    objs = objects(helm, "-f", str(CHART / "ci/namespaced-values.yaml"))
    args = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    peerings = [o for o in objs if o["kind"] == "KopfPeering"]
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings} == {
        ("team-a", "kiln-tenants"), ("team-b", "kiln-tenants")}
    bindings = [o for o in objs if o["kind"] == "RoleBinding"]
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    # Cluster-wide, only the cluster-scoped role is bound.
    (cluster_binding,) = [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"].endswith("-cluster")
    assert "ClusterKopfPeering" not in {o["kind"] for o in objs}


def test_standalone_mode_has_one_replica_and_recreates(helm):
    objs = objects(helm, "-f", str(CHART / "ci/standalone-values.yaml"))
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--plain-logs" in args and not any(a.startswith("--peering") for a in args)
    kinds = {o["kind"] for o in objs}
    assert kinds.isdisjoint({"ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ClusterKopfPeering"})
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-kiln"


def test_replicas_get_a_disruption_budget_only_when_there_are_several(helm):
    objs = objects(helm)
    deployment, budget = one(objs, "Deployment"), one(objs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert budget["metadata"]["namespace"] == "kiln-system"
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    assert one(objects(helm, "--set", "replicas=3"), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    for lone in (objects(helm, "-f", str(CHART / "ci/standalone-values.yaml")),
                 objects(helm, "--set", "replicas=1")):
        assert "PodDisruptionBudget" not in {o["kind"] for o in lone}


def test_replicas_are_spread_over_nodes_by_preference(helm):
    deployment = one(objects(helm), "Deployment")
    (constraint,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    # ScheduleAnyway: one node (the local cluster) still schedules both replicas.
    assert constraint == {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                          "whenUnsatisfiable": "ScheduleAnyway",
                          "labelSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}}
    # Constraints of one's own; a labelSelector given is kept as it is.
    zoned = one(objects(helm, "-f", str(CHART / "ci/s3-values.yaml")), "Deployment")
    spread = zoned["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [(c["topologyKey"], c["whenUnsatisfiable"]) for c in spread] == [
        ("topology.kubernetes.io/zone", "DoNotSchedule"), ("kubernetes.io/hostname", "ScheduleAnyway")]
    own = one(objects(helm, "--set", "topologySpreadConstraints[0].maxSkew=2",
                      "--set", "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
                      "--set", "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
                      "--set", "topologySpreadConstraints[0].labelSelector.matchLabels.team=ml"), "Deployment")
    (constraint,) = own["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert constraint["labelSelector"] == {"matchLabels": {"team": "ml"}} and constraint["maxSkew"] == 2
    none = one(objects(helm, "--set", "topologySpreadConstraints=null"), "Deployment")
    assert "topologySpreadConstraints" not in none["spec"]["template"]["spec"]


def test_global_values_of_an_umbrella_chart_are_accepted(helm):
    """Helm hands `global` to every subchart; a schema refusing unknown keys must still take it."""
    assert one(objects(helm, "--set", "global.foo=bar"), "Deployment")


# --- images ------------------------------------------------------------------------------------------

APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
DIGEST_A, DIGEST_B = "sha256:" + "0a" * 32, "sha256:" + "b1" * 32


def images_of(helm: Path, *args: str) -> tuple[str, str]:
    """The operator's image and the runtime image it is told to use (KILN_RUNTIME_IMAGE)."""
    deployment = one(objects(helm, *args), "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"], env_of(deployment)["KILN_RUNTIME_IMAGE"]


def test_the_release_version_is_one_number():
    """The operator's __version__ tags the default runtime image; the chart's appVersion tags both images
    (hack/build-images.sh reads it); pyproject.toml's version is the package's. One release, one number."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    crds_app = yaml.safe_load((CRD_CHART / "Chart.yaml").read_text())["appVersion"]
    assert kiln_operator.__version__ == pyproject == APP_VERSION == crds_app


def test_default_images_are_fully_qualified_and_tagged_with_the_app_version(helm):
    """Names under the project's own registry namespace (an unqualified name resolves to Docker Hub), the
    tag the chart's appVersion, pulled only if absent (the local cluster's node has them imported)."""
    deployment = one(objects(helm), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/kiln-dev/kiln-operator:{APP_VERSION}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    env = env_of(deployment)
    assert env["KILN_RUNTIME_IMAGE"] == f"ghcr.io/kiln-dev/kiln-runtime:{APP_VERSION}" == OperatorConfig().runtime_image
    assert env["KILN_IMAGE_PULL_POLICY"] == "IfNotPresent"


def test_the_build_tags_the_images_the_chart_names():
    """hack/build-images.sh tags its build PROJECT_REGISTRY/kiln-NAME:appVersion: the chart's defaults."""
    script = (ROOT / "hack/build-images.sh").read_text()
    (registry,) = re.findall(r"^PROJECT_REGISTRY=(\S+)$", script, re.M)
    assert 'echo "$PROJECT_REGISTRY/kiln-$1:$APP_VERSION"' in script
    assert "charts/kiln/Chart.yaml" in script and "appVersion" in script
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == f"{registry}/kiln-operator"
    assert values["runtime"]["repository"] == f"{registry}/kiln-runtime"
    assert values["image"]["tag"] == values["runtime"]["tag"] == values["runtime"]["image"] == ""


def test_a_digest_pins_the_image_and_the_tag_is_ignored(helm):
    operator, runtime = images_of(helm, "--set", f"image.digest={DIGEST_A}", "--set", "image.tag=9.9.9",
                                  "--set", f"runtime.digest={DIGEST_B}")
    assert operator == f"ghcr.io/kiln-dev/kiln-operator@{DIGEST_A}"
    assert runtime == f"ghcr.io/kiln-dev/kiln-runtime@{DIGEST_B}"
    # A tag of one's own without a digest.
    assert images_of(helm, "--set", "image.tag=0.1.1", "--set", "runtime.tag=0.1.1") == (
        "ghcr.io/kiln-dev/kiln-operator:0.1.1", "ghcr.io/kiln-dev/kiln-runtime:0.1.1")


def test_runtime_image_as_a_whole_reference_still_wins(helm):
    """Chart 0.1.0 took the runtime image as one reference; values files that set it keep working."""
    ref = "registry.example.com/team/kiln-runtime:custom"
    assert images_of(helm, "--set", f"runtime.image={ref}", "--set", f"runtime.digest={DIGEST_B}")[1] == ref
    assert images_of(helm, "--set", f"runtime.image={ref}", "--set", "global.imageRegistry=m.example.com")[1] == ref


def test_global_image_registry_replaces_the_registry_of_both_images(helm):
    assert images_of(helm, "--set", "global.imageRegistry=mirror.example.com:5000/ghcr") == (
        f"mirror.example.com:5000/ghcr/kiln-dev/kiln-operator:{APP_VERSION}",
        f"mirror.example.com:5000/ghcr/kiln-dev/kiln-runtime:{APP_VERSION}")
    # A repository without a registry part gets the registry in front.
    assert images_of(helm, "--set", "global.imageRegistry=r.example.com", "--set", "image.repository=kiln/op")[0] == \
        f"r.example.com/kiln/op:{APP_VERSION}"
    # The ci file: a mirror, and both images by digest.
    digests = yaml.safe_load((CHART / "ci/digest-values.yaml").read_text())
    assert images_of(helm, "-f", str(CHART / "ci/digest-values.yaml")) == (
        f"mirror.example.com/ghcr/kiln-dev/kiln-operator@{digests['image']['digest']}",
        f"mirror.example.com/ghcr/kiln-dev/kiln-runtime@{digests['runtime']['digest']}")


@pytest.mark.parametrize("args,message", [
    (["--set", "peering.enabled=false"], "replicas > 1 needs peering.enabled"),
    (["--set", "topologySpreadConstraints[0].maxSkew=1", "--set",
      "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname", "--set",
      "topologySpreadConstraints[0].whenUnsatisfiable=Sometimes"], "whenUnsatisfiable"),
    (["--set", "replicaCount=2"], "replicaCount"),
    (["--set", "artifactStore.root=/data"], "artifactStore"),
    (["--set", "runtime.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "logFormat=xml"], "logFormat"),
    (["--set", "watchNamespaces[0]=Team_A"], "watchNamespaces"),
    (["--set", "serviceAccount.create=false"], "serviceAccount.name is required"),
    (["--set", "image.digest=sha256:abc"], "image.digest must be sha256:"),
    (["--set", "image.digest=" + "0a" * 32], "image.digest must be sha256:"),
    (["--set", "runtime.digest=sha256:" + "0A" * 32], "runtime.digest must be sha256:"),
    (["--set", "image.repository=ghcr.io/kiln dev/op"], "/image/repository"),
])
def test_bad_values_are_refused_with_a_reason(helm, args, message):
    result = render(helm, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# --- the promotion policy (templates/admission-policies.yaml, docs/governance.md) ----------------------

MAP_SERVED = ("--api-versions", "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")


def policies(objs: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objs if o["apiVersion"].startswith("admissionregistration.k8s.io/")}


def test_the_promotion_policy_is_on_by_default_for_the_whole_cluster(helm):
    found = policies(objects(helm))
    # helm template sees no cluster: without MutatingAdmissionPolicy served, the validating policy alone.
    assert sorted(found) == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    policy, binding = found["ValidatingAdmissionPolicy"], found["ValidatingAdmissionPolicyBinding"]
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == "kiln-promotion"
    assert binding["spec"]["validationActions"] == ["Deny"] and "matchResources" not in binding["spec"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["kiln.dev"] and rule["resources"] == ["modelversions"]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    # The operator is the chart's own ServiceAccount; only cluster admins may promote by default.
    sa = one(objects(helm), "ServiceAccount")["metadata"]["name"]
    assert variables["isOperator"] == f"variables.user == 'system:serviceaccount:kiln-system:{sa}'"
    assert "'system:masters' in variables.groups" in variables["allowed"]
    assert variables["allowed"].count("[]") == 3
    rules = policy["spec"]["validations"]
    assert any('variables.stage in ["Production"]' in r["expression"] for r in rules)
    assert all(r.get("message", "").startswith("kiln.dev promotion policy: ")
               or r["messageExpression"].startswith("'kiln.dev promotion policy: ") for r in rules)
    # Without the mutating policy nobody may write the stamps: history falls back to field managers.
    stamps = rules[-1]["expression"]
    assert stamps.startswith('["kiln.dev/stage-changed-by"') and "variables.user" not in stamps


def test_the_mutating_policy_stamps_stage_changes_where_the_cluster_serves_it(helm):
    found = policies(objects(helm, *MAP_SERVED))
    assert sorted(found) == ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
                             "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    mutating = found["MutatingAdmissionPolicy"]["spec"]
    (condition,) = mutating["matchConditions"]
    assert "object.spec.stage != oldObject.spec.stage" in condition["expression"]
    (mutation,) = mutating["mutations"]
    assert mutation["patchType"] == "ApplyConfiguration"
    expression = mutation["applyConfiguration"]["expression"]
    for stamp in ("'kiln.dev/stage-changed-by': string(request.userInfo.username)",
                  "'kiln.dev/stage-changed-to': string(object.spec.stage)", "'kiln.dev/stage-changed-reason':"):
        assert stamp in expression
    stamps = found["ValidatingAdmissionPolicy"]["spec"]["validations"][-1]["expression"]
    assert stamps.startswith("variables.changed ? variables.annotations[?'kiln.dev/stage-changed-by']"
                             ".orValue('') == variables.user")
    assert "MutatingAdmissionPolicy" not in policies(objects(helm, *MAP_SERVED, "--set", "promotion.mutatingPolicy=false"))
    assert "MutatingAdmissionPolicy" in policies(objects(helm, "--set", "promotion.mutatingPolicy=true"))


def test_the_promotion_policy_binds_to_the_watched_namespaces_and_names_who_may(helm):
    found = policies(objects(helm, *MAP_SERVED, "-f", str(CHART / "ci/namespaced-values.yaml"),
                             "--set", "promotion.allowed.groups={ml-leads}", "--set", "promotion.allowed.users={alice}",
                             "--set", "promotion.allowed.serviceAccounts={argocd/argocd-application-controller}",
                             "--set", "promotion.protectedStages={Staging,Production}"))
    namespaces = yaml.safe_load((CHART / "ci/namespaced-values.yaml").read_text())["watchNamespaces"]
    for kind in ("MutatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding"):
        assert found[kind]["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]
    spec = found["ValidatingAdmissionPolicy"]["spec"]
    allowed = {v["name"]: v["expression"] for v in spec["variables"]}["allowed"]
    assert 'variables.user in ["alice"]' in allowed
    assert 'variables.user in ["system:serviceaccount:argocd:argocd-application-controller"]' in allowed
    assert 'g in ["ml-leads"]' in allowed
    (who,) = [r["messageExpression"] for r in spec["validations"] if "messageExpression" in r]
    assert ("only members of group system:masters, members of group ml-leads, user alice, service account "
            "argocd/argocd-application-controller may move a ModelVersion into '") in who
    assert any('variables.stage in ["Staging","Production"]' in r["expression"] for r in spec["validations"])


@pytest.mark.parametrize("args,message", [
    (["--set", "promotion.allowed.serviceAccounts={argocd}"], "/promotion/allowed/serviceAccounts/0"),
    (["--set", "promotion.protectedStages={Prod}"], "/promotion/protectedStages/0"),
    (["--set", "promotion.allowed.users={o'brien}"], "/promotion/allowed/users/0"),
    (["--set", "promotion.mutatingPolicy=sometimes"], "/promotion/mutatingPolicy"),
])
def test_bad_promotion_values_are_refused(helm, args, message):
    result = render(helm, *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_promotion_policy_can_be_left_out(helm):
    assert policies(objects(helm, *MAP_SERVED, "--set", "promotion.enabled=false")) == {}


# --- charts/kiln-crds: the CRDs as templates, which `helm upgrade` upgrades (docs/upgrade.md) ----------

def crd_objects(helm: Path, *args: str) -> list[dict]:
    result = subprocess.run([str(helm), "template", "kiln-crds", str(CRD_CHART), "--namespace", "kiln-system", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def repo_crds() -> dict[str, dict]:
    return {body["metadata"]["name"]: body for body in
            (yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml")))}


def test_the_operator_chart_has_no_crds(helm):
    """A chart's crds/ is installed once and never upgraded by Helm: the operator chart leaves the CRDs to
    kiln-crds (and renders no CRD as a template either: its peering object needs the kind beforehand)."""
    assert not (CHART / "crds").exists()
    for values in CI_VALUES:
        assert "CustomResourceDefinition" not in {o["kind"] for o in objects(helm, "-f", str(values))}


def test_the_charts_are_released_together():
    kiln, crds = (yaml.safe_load((c / "Chart.yaml").read_text()) for c in (CHART, CRD_CHART))
    assert (kiln["version"], kiln["appVersion"], kiln["kubeVersion"]) == (
        crds["version"], crds["appVersion"], crds["kubeVersion"])


def test_crd_chart_renders_the_repo_crds_kept(helm):
    """Every CRD of crds/, field for field, plus the chart's labels and the keep policy."""
    rendered = {o["metadata"]["name"]: o for o in crd_objects(helm)}
    expected = repo_crds()
    assert sorted(rendered) == sorted(expected)
    for name, crd in rendered.items():
        meta = crd["metadata"]
        assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}, name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "kiln"
        assert meta["labels"]["helm.sh/chart"].startswith("kiln-crds-")
        # Apart from the metadata the chart adds, the CRD is the file: the same schema, defaults, rules.
        bare = {**crd, "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kiln"}}}
        assert bare == expected[name], f"{name} differs from crds/ once rendered"


def test_crd_chart_without_keep_or_peering(helm):
    objs = crd_objects(helm, "-f", str(CRD_CHART / "ci/no-keep-values.yaml"))
    assert {o["spec"]["group"] for o in objs} == {"kiln.dev"} and len(objs) == 4
    for crd in objs:
        assert crd["metadata"]["annotations"] == {"argocd.argoproj.io/sync-options": "Prune=false"}
        assert crd["metadata"]["labels"]["team"] == "ml-platform"


def test_crd_chart_refuses_unknown_values(helm):
    result = subprocess.run([str(helm), "template", "x", str(CRD_CHART), "--set", "keeep=true"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "keeep" in result.stderr, result.stderr
