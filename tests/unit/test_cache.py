"""The watch-fed cache and what a change calls for: the owner of a child, the followers of a version."""

from kiln_operator import dependents
from kiln_operator.cache import Cache
from kiln_operator.reconcilers import HASH_ANNOTATION, stamped


def obj(kind, name, ns="ml", uid=None, rv="1", labels=None, owner_uid=None, spec=None, status=None):
    meta = {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "resourceVersion": rv,
            "labels": labels or {}, "managedFields": [{"manager": "kubectl"}]}
    if owner_uid:
        meta["ownerReferences"] = [{"uid": owner_uid}]
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec or {}, "status": status or {}}


def child_labels(kind, owner):
    return {"kiln.dev/kind": kind, "kiln.dev/owner": owner, "app.kubernetes.io/part-of": "kiln"}


def test_children_are_found_by_label_and_kept_only_for_their_live_owner():
    cache = Cache()
    isvc = obj("InferenceService", "iris")
    cache.put(isvc)
    cache.put(obj("Deployment", "iris-primary", labels=child_labels("inferenceservice", "iris"), owner_uid="uid-iris",
                  spec={"template": {"metadata": {"labels": {"v": "1"}}, "spec": {"containers": [{}] * 3}}}))
    # Left by an earlier object of the same name: same labels, another owner uid.
    cache.put(obj("Deployment", "iris-canary", labels=child_labels("inferenceservice", "iris"), owner_uid="uid-old"))
    cache.put(obj("Pod", "iris-primary-x", labels={"app.kubernetes.io/name": "kiln-serve",
                                                   "app.kubernetes.io/instance": "iris"}, spec={"containers": []}))
    assert [d["metadata"]["name"] for d in cache.children(isvc, "Deployment")] == ["iris-primary"]
    assert [p["metadata"]["name"] for p in cache.children(isvc, "Pod")] == ["iris-primary-x"]
    dep = cache.get("Deployment", "ml", "iris-primary")
    assert "managedFields" not in dep["metadata"] and "spec" not in dep["spec"]["template"]
    assert dep["spec"]["template"]["metadata"]["labels"] == {"v": "1"}  # what the rollout reads is kept
    assert "spec" not in cache.get("Pod", "ml", "iris-primary-x")


def test_an_older_version_never_replaces_a_newer_one_and_deletion_forgets():
    cache = Cache()
    cache.put(obj("InferenceService", "iris", rv="7", status={"x": "new"}))
    cache.put(obj("InferenceService", "iris", rv="5", status={"x": "old"}))  # a late watch event
    assert cache.get("InferenceService", "ml", "iris")["status"] == {"x": "new"}
    cache.remove(obj("InferenceService", "iris", uid="someone-else"))
    assert cache.get("InferenceService", "ml", "iris") is not None  # another object of that name stays
    cache.remove(obj("InferenceService", "iris"))
    assert cache.get("InferenceService", "ml", "iris") is None and cache.list("InferenceService", "ml") == []


def test_a_stage_change_wakes_the_services_that_follow_that_model_in_that_namespace_only():
    cache = Cache()
    by_stage = obj("InferenceService", "a", spec={"model": {"modelName": "iris", "stage": "Production"}})
    by_ref = obj("InferenceService", "b", spec={"model": {"versionRef": {"name": "iris-v2"}}})
    other_model = obj("InferenceService", "c", spec={"model": {"modelName": "wine", "stage": "Production"}})
    elsewhere = obj("InferenceService", "d", ns="other", spec={"model": {"modelName": "iris", "stage": "Production"}})
    pipeline = obj("TrainingPipeline", "iris-forest", spec={"modelName": "iris", "datasetRef": {"name": "iris"}})
    for o in (by_stage, by_ref, other_model, elsewhere, pipeline):
        cache.put(o)
    mv = obj("ModelVersion", "iris-v3", spec={"modelName": "iris", "stage": "Production"})
    assert sorted(dependents.of(mv, cache)) == [("InferenceService", "ml", "a"), ("ModelVersion", "ml", "iris-v3"),
                                                 ("TrainingPipeline", "ml", "iris-forest")]
    assert ("InferenceService", "ml", "b") in dependents.of(obj("ModelVersion", "iris-v2", spec={"modelName": "x"}), cache)
    assert dependents.of(obj("Dataset", "iris"), cache) == [("Dataset", "ml", "iris"), ("TrainingPipeline", "ml", "iris-forest")]
    job_pod = obj("Pod", "iris-forest-r1-0", labels=child_labels("trainingpipeline", "iris-forest"))
    assert dependents.of(job_pod, cache) == [("TrainingPipeline", "ml", "iris-forest")]
    assert dependents.of(obj("Pod", "unrelated"), cache) == []


def test_the_applied_hash_moves_with_the_manifest_and_only_with_it():
    manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "iris", "namespace": "ml"},
                "spec": {"ports": [{"port": 80}]}}
    first = stamped(manifest)["metadata"]["annotations"][HASH_ANNOTATION]
    assert stamped(manifest)["metadata"]["annotations"][HASH_ANNOTATION] == first
    changed = {**manifest, "spec": {"ports": [{"port": 81}]}}
    assert stamped(changed)["metadata"]["annotations"][HASH_ANNOTATION] != first
    assert "annotations" not in manifest["metadata"]  # the plan's manifest is not modified


def test_only_changes_a_plan_can_see_wake_the_owner():
    cache = Cache()
    hpa = obj("HorizontalPodAutoscaler", "iris-primary", labels=child_labels("inferenceservice", "iris"),
              spec={"minReplicas": 1}, status={"currentReplicas": 1})
    cache.put(hpa)
    assert cache.moved(hpa) and not cache.moved(hpa)  # new: seen once
    cache.put({**hpa, "status": {"currentReplicas": 1, "lastScaleTime": "now"}})
    assert not cache.moved(hpa)  # the autoscaler's own bookkeeping
    cache.put({**hpa, "metadata": {**hpa["metadata"], "generation": 2}, "spec": {"minReplicas": 4}})
    assert cache.moved(hpa)
    dep = obj("Deployment", "iris-primary", labels=child_labels("inferenceservice", "iris"),
              status={"readyReplicas": 1, "conditions": [{"type": "Available", "lastUpdateTime": "t1"}]})
    cache.put(dep)
    cache.moved(dep)
    cache.put({**dep, "status": {"readyReplicas": 1, "conditions": [{"type": "Available", "lastUpdateTime": "t2"}]}})
    assert not cache.moved(dep)
    cache.put({**dep, "status": {"readyReplicas": 0, "conditions": [{"type": "Available", "lastUpdateTime": "t3"}]}})
    assert cache.moved(dep)


def test_a_recreated_namespace_does_not_inherit_its_earlier_objects():
    cache = Cache()
    old = obj("ModelVersion", "iris-v1")
    old["metadata"]["creationTimestamp"] = "2026-12-01T10:00:00Z"
    new = obj("ModelVersion", "iris-v2")
    new["metadata"]["creationTimestamp"] = "2026-12-01T10:05:00Z"
    elsewhere = obj("ModelVersion", "iris-v1", ns="other")
    elsewhere["metadata"]["creationTimestamp"] = "2026-12-01T09:00:00Z"
    for o in (old, new, elsewhere):
        cache.put(o)
    # The namespace's deletion began at 10:02: what was created before belongs to its earlier life.
    assert cache.purge_namespace("ml", "2026-12-01T10:02:00Z") == 1
    assert [m["metadata"]["name"] for m in cache.list("ModelVersion", "ml")] == ["iris-v2"]
    assert cache.get("ModelVersion", "other", "iris-v1") is not None
    # While a namespace is being deleted nothing of it is kept or reconciled; created anew, it is served.
    cache.namespace_deleting("ml", since="2026-12-01T10:06:00Z")
    cache.put(new)  # a late event of an object that is going
    assert cache.list("ModelVersion", "ml") == []
    again = obj("ModelVersion", "iris-v1", uid="uid-new")
    again["metadata"]["creationTimestamp"] = "2026-12-01T10:08:00Z"
    cache.put(again)  # created anew before the operator saw the namespace come back: kept
    cache.namespace_created("ml", "2026-12-01T10:07:00Z")
    assert [m["metadata"]["uid"] for m in cache.list("ModelVersion", "ml")] == ["uid-new"]


def test_a_service_that_moves_to_a_version_wakes_the_version_it_left_and_the_one_it_serves():
    cache = Cache()
    old = obj("ModelVersion", "iris-v1", spec={"modelName": "iris"}, status={"servedBy": ["a"]})
    cache.put(old)
    isvc = obj("InferenceService", "a", status={"modelVersion": "iris-v2", "canaryVersion": "iris-v3"})
    assert sorted(dependents.of(isvc, cache)) == [("InferenceService", "ml", "a"), ("ModelVersion", "ml", "iris-v1"),
                                                   ("ModelVersion", "ml", "iris-v2"), ("ModelVersion", "ml", "iris-v3")]


def test_kiln_objects_are_parsed_once_per_version_and_one_whose_spec_does_not_validate_is_left_out():
    spec = {"modelName": "iris", "version": 1, "framework": {"version": "1.6.1"},
            "artifact": {"uri": "s3://b/m", "sha256": "a" * 64},
            "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}}}
    cache = Cache()
    cache.put(obj("ModelVersion", "iris-v1", spec=spec))
    cache.put(obj("ModelVersion", "iris-v2", spec={**spec, "artifact": {"uri": "s3://b/m"}}))  # no digest
    (first,) = cache.parsed("ModelVersion", "ml")
    assert first.name == "iris-v1" and first.spec.stage == "None"  # the api's default, filled in
    assert cache.parsed("ModelVersion", "ml")[0] is first and cache.parsed_get("ModelVersion", "ml", "iris-v1") is first
    assert cache.parsed_get("ModelVersion", "ml", "iris-v2") is None
    cache.put(obj("ModelVersion", "iris-v1", rv="2", spec={**spec, "stage": "Production"}))
    assert cache.parsed_get("ModelVersion", "ml", "iris-v1").spec.stage == "Production"
