"""The generated CRDs on the real apiserver: examples accepted, bad manifests rejected naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(kind_file: str) -> dict:
    return yaml.safe_load((EXAMPLES / kind_file).read_text())


def mutate(kind_file: str, change) -> dict:
    body = copy.deepcopy(example(kind_file))
    body["metadata"]["name"] = "bad"
    change(body)
    return body


def _set(path: str, value):
    def change(body):
        node = body
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return change


_DELETE = object()

# (case, manifest, words the apiserver's message must contain: the field and the problem)
INVALID = [
    ("dataset without source", mutate("01-dataset.yaml", _set("spec.source", _DELETE)), ["spec.source", "Required"]),
    ("dataset uri scheme", mutate("01-dataset.yaml", _set("spec.source.uri", "ftp://x/y.csv")), ["spec.source.uri"]),
    ("dataset column type", mutate("01-dataset.yaml", _set("spec.schema.columns.0.type", "float")),
     ["spec.schema.columns[0].type", "Unsupported value"]),
    ("dataset min above max", mutate("01-dataset.yaml", _set("spec.schema.columns.0.min", 50)),
     ["spec.schema.columns[0].min", "min must not exceed max"]),
    ("dataset target not a column", mutate("01-dataset.yaml", _set("spec.target", "label")),
     ["spec.target", "target must name a column"]),
    ("dataset minRows as string", mutate("01-dataset.yaml", _set("spec.checks.minRows", "many")),
     ["spec.checks.minRows", "integer"]),
    ("pipeline estimator outside the allow-list", mutate("02-trainingpipeline.yaml",
     _set("spec.estimator.class", "os.system")), ["spec.estimator.class", "Unsupported value"]),
    ("pipeline trials out of range", mutate("02-trainingpipeline.yaml", _set("spec.search.trials", 0)),
     ["spec.search.trials", "greater than or equal to 1"]),
    ("pipeline regression metric for a classifier", mutate("02-trainingpipeline.yaml",
     _set("spec.search.metric", "rmse")), ["spec.search.metric", "must suit the estimator"]),
    ("pipeline joblib without opt-in", mutate("02-trainingpipeline.yaml", _set("spec.artifactFormat", "joblib")),
     ["spec.artifactFormat", "allowUnsafeArtifacts"]),
    ("pipeline without datasetRef", mutate("02-trainingpipeline.yaml", _set("spec.datasetRef", _DELETE)),
     ["spec.datasetRef", "Required"]),
    ("pipeline bad model name", mutate("02-trainingpipeline.yaml", _set("spec.modelName", "Iris_Model")),
     ["spec.modelName"]),
    ("pipeline testFraction of 1", mutate("02-trainingpipeline.yaml", _set("spec.evaluation.testFraction", 1)),
     ["spec.evaluation.testFraction"]),
    ("model version unknown stage", mutate("03-modelversion.yaml", _set("spec.stage", "Prod")),
     ["spec.stage", "Unsupported value"]),
    ("model version bad digest", mutate("03-modelversion.yaml", _set("spec.artifact.sha256", "abc")),
     ["spec.artifact.sha256"]),
    ("model version version zero", mutate("03-modelversion.yaml", _set("spec.version", 0)), ["spec.version"]),
    ("service canary over 100 percent", mutate("04-inferenceservice.yaml",
     _set("spec.canary", {"stage": "Production", "trafficPercent": 120})),
     ["spec.canary.trafficPercent", "less than or equal to 100"]),
    ("service both versionRef and stage", mutate("04-inferenceservice.yaml",
     _set("spec.model.versionRef", {"name": "iris-v1"})), ["spec.model.versionRef", "exactly one"]),
    ("service with both model and models", mutate("04-inferenceservice.yaml",
     _set("spec.models", {"stage": "Production"})), ["spec.model", "exactly one of model and models"]),
    ("service with neither model nor models", mutate("04-inferenceservice.yaml",
     _set("spec.model", _DELETE)), ["spec.model", "exactly one of model and models"]),
    ("model set with a canary", mutate("more/model-set.yaml", _set("spec.canary", {"stage": "Staging"})),
     ["spec.canary", "not supported with models"]),
    ("model set by stage and by list", mutate("more/model-set.yaml",
     _set("spec.models.versionRefs", [{"name": "iris-v1"}])), ["spec.models.stage", "exactly one of stage and versionRefs"]),
    ("model set names without a stage", mutate("more/model-set.yaml",
     _set("spec.models", {"versionRefs": [{"name": "iris-v1"}], "modelNames": ["iris"]})),
     ["spec.models.modelNames", "need stage"]),
    ("model set memory budget in words", mutate("more/model-set.yaml", _set("spec.models.memoryBudget", "lots")),
     ["spec.models.memoryBudget"]),
    ("model set retraining on drift", mutate("more/model-set.yaml", _set("spec.monitoring", {"drift": {
        "action": "retrain", "pipelineRef": {"name": "iris-forest"}}})), ["spec.monitoring.drift.action", "models"]),
    ("service min above max replicas", mutate("04-inferenceservice.yaml",
     _set("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2})), ["spec.autoscaling.minReplicas"]),
    ("service retrain without pipeline", mutate("04-inferenceservice.yaml",
     _set("spec.monitoring.drift.pipelineRef", _DELETE)), ["spec.monitoring.drift.pipelineRef", "retrain"]),
    ("service batch size as text", mutate("04-inferenceservice.yaml",
     _set("spec.batching", {"maxBatchSize": "big"})), ["spec.batching.maxBatchSize"]),
    ("window of rows and days", mutate("loop/loans-dataset.yaml",
     _set("spec.window", {"rows": 10, "days": 2, "timestampColumn": "ts"})), ["spec.window.rows", "exactly one"]),
    ("window of days without a timestamp column", mutate("loop/loans-dataset.yaml",
     _set("spec.window", {"days": 2})), ["spec.window.timestampColumn"]),
    ("checked https source", mutate("loop/loans-dataset.yaml",
     _set("spec.source.uri", "https://example.org/loans.csv")), ["spec.source.checkIntervalSeconds"]),
    ("pinned version not a digest", mutate("loop/loans-pipeline.yaml",
     _set("spec.datasetVersion", "latest")), ["spec.datasetVersion"]),
    ("quality floor without feedback", mutate("loop/loans-service.yaml",
     _set("spec.feedback", _DELETE)), ["spec.monitoring.quality", "feedback"]),
    ("quality floor with min and max", mutate("loop/loans-service.yaml",
     _set("spec.monitoring.quality.max", 0.9)), ["spec.monitoring.quality.min", "exactly one"]),
    ("payload log sample rate above 1", mutate("loop/loans-service.yaml",
     _set("spec.logging.sampleRate", 1.5)), ["spec.logging.sampleRate"]),
    ("pod toleration of an unknown effect", mutate("04-inferenceservice.yaml",
     _set("spec.pod", {"tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoScheduling"}]})),
     ["spec.pod.tolerations[0].effect", "Unsupported value"]),
    ("pod toleration of an unknown operator", mutate("01-dataset.yaml",
     _set("spec.pod", {"tolerations": [{"key": "dedicated", "operator": "In"}]})),
     ["spec.pod.tolerations[0].operator", "Unsupported value"]),
    ("pod tolerationSeconds without NoExecute", mutate("02-trainingpipeline.yaml",
     _set("spec.pod", {"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule",
                                        "tolerationSeconds": 30}]})),
     ["spec.pod.tolerations[0].tolerationSeconds", "NoExecute"]),
    ("pod toleration without key or Exists", mutate("02-trainingpipeline.yaml",
     _set("spec.pod", {"tolerations": [{"value": "ml"}]})), ["spec.pod.tolerations[0].key", "operator Exists"]),
    ("pod toleration with Exists and a value", mutate("04-inferenceservice.yaml",
     _set("spec.pod", {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "a100"}]})),
     ["spec.pod.tolerations[0].value", "must be empty"]),
    ("pod label key that is no label key", mutate("04-inferenceservice.yaml",
     _set("spec.pod", {"labels": {"team/risk/x": "a"}})), ["spec.pod.labels", "label keys must be valid"]),
    ("pod label value with a space", mutate("04-inferenceservice.yaml",
     _set("spec.pod", {"labels": {"team": "risk team"}})), ["spec.pod.labels.team"]),
    ("pod nodeSelector key with a space", mutate("01-dataset.yaml",
     _set("spec.pod", {"nodeSelector": {"node pool": "a"}})), ["spec.pod.nodeSelector", "nodeSelector keys"]),
    ("pod service account not a name", mutate("04-inferenceservice.yaml",
     _set("spec.pod", {"serviceAccountName": "Model_Reader"})), ["spec.pod.serviceAccountName"]),
    ("pipeline halving settings without strategy halving", mutate("02-trainingpipeline.yaml",
     _set("spec.search.halving", {"factor": 3})), ["spec.search.halving", "strategy halving"]),
    ("pipeline halving over a parameter without maxResources", mutate("more/halving.yaml",
     _set("spec.search.halving", {"resource": "max_iter"})), ["spec.search.halving.maxResources"]),
    ("pipeline halving factor of 1", mutate("more/halving.yaml", _set("spec.search.halving.factor", 1)),
     ["spec.search.halving.factor", "greater than or equal to 2"]),
    ("pipeline service accounts that differ", mutate("02-trainingpipeline.yaml",
     _set("spec", {**example("02-trainingpipeline.yaml")["spec"], "serviceAccountName": "a",
                   "pod": {"serviceAccountName": "b"}})), ["spec.serviceAccountName", "pod.serviceAccountName"]),
]


def test_examples_are_accepted(kubectl, crds, namespace):
    # Every Kiln object of examples/ (examples/gitops also holds the Argo CD Application that syncs them).
    docs = [d for p in sorted(EXAMPLES.glob("**/*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if d and d["apiVersion"].startswith("kiln.dev/")]
    assert len(docs) >= 10
    kubectl.apply(yaml.safe_dump_all(docs), "--dry-run=server", "-n", namespace)


@pytest.mark.parametrize("case,manifest,words", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(kubectl, crds, case, manifest, words):
    result = kubectl.apply(yaml.safe_dump(manifest), "--dry-run=server", "-n", "default", check=False)
    assert result.returncode != 0, f"{case}: the apiserver accepted it"
    for word in words:
        assert word in result.stderr, f"{case}: {word!r} not in {result.stderr!r}"


def test_model_version_spec_is_immutable_except_stage(kubectl, crds, namespace):
    kubectl.apply((EXAMPLES / "03-modelversion.yaml").read_text(), "-n", namespace)
    changed = example("03-modelversion.yaml")
    changed["spec"]["artifact"]["sha256"] = "a" * 64
    result = kubectl.apply(yaml.safe_dump(changed), "-n", namespace, check=False)
    assert result.returncode != 0 and "spec.artifact" in result.stderr and "immutable" in result.stderr
    changed = example("03-modelversion.yaml")
    changed["spec"]["metrics"] = {"accuracy": 0.99}
    result = kubectl.apply(yaml.safe_dump(changed), "-n", namespace, check=False)
    assert result.returncode != 0 and "spec.metrics" in result.stderr
    promoted = example("03-modelversion.yaml")
    promoted["spec"]["stage"] = "Production"
    kubectl.apply(yaml.safe_dump(promoted), "-n", namespace)
    assert kubectl.json("get", "modelversion", "iris-v1", "-n", namespace)["spec"]["stage"] == "Production"


def test_pod_settings_are_accepted_and_a_tolerations_operator_defaulted(kubectl, crds, namespace):
    body = example("02-trainingpipeline.yaml")
    body["spec"]["serviceAccountName"] = "trainer"  # the older spelling, agreeing with the new one
    body["spec"]["pod"] = {
        "serviceAccountName": "trainer", "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "nvidia.com/gpu", "effect": "NoSchedule", "value": "a100"},
                        {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
        "annotations": {"example.com/cost-center": "ml 42", "team": ""},
        "labels": {"example.com/team": "risk", "tier": ""}}
    kubectl.apply(yaml.safe_dump(body), "-n", namespace)
    pod = kubectl.json("get", "trainingpipeline", body["metadata"]["name"], "-n", namespace)["spec"]["pod"]
    assert pod["tolerations"][0]["operator"] == "Equal" and pod["labels"] == body["spec"]["pod"]["labels"]


def test_defaults_are_filled_in_by_the_apiserver(kubectl, crds, namespace):
    kubectl.apply((EXAMPLES / "04-inferenceservice.yaml").read_text(), "-n", namespace)
    spec = kubectl.json("get", "inferenceservice", "iris", "-n", namespace)["spec"]
    assert spec["batching"] == {"maxBatchSize": 32, "maxLatencyMs": 2}
    assert spec["rollout"]["autoRollback"] is True
    assert spec["monitoring"]["drift"]["psiThreshold"] == 0.2


def test_kubectl_explain_describes_the_fields(kubectl, crds):
    out = kubectl.run("explain", "trainingpipeline.spec").stdout
    for field in ("datasetRef", "estimator", "search", "gates", "promoteTo"):
        assert field in out
    assert "allow-list" in kubectl.run("explain", "trainingpipeline.spec.estimator.class").stdout


def test_short_names_and_category(kubectl, crds, namespace):
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLES))
    out = kubectl.run("get", "kiln", "-n", namespace).stdout
    for name in ("dataset.kiln.dev/iris", "trainingpipeline.kiln.dev/iris-forest",
                 "modelversion.kiln.dev/iris-v1", "inferenceservice.kiln.dev/iris"):
        assert name in out, out
    for short in ("kds", "ktp", "kmv", "kisvc"):
        kubectl.run("get", short, "-n", namespace)
    header = kubectl.run("get", "kmv", "-n", namespace).stdout.splitlines()[0]
    assert header.split()[:5] == ["NAME", "MODEL", "VERSION", "STAGE", "VERIFIED"]
