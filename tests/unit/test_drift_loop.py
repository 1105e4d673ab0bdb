"""The drift loop as a user sees it: a condition naming the worst features, an Event, one run per cooldown."""

from kiln_operator import drift
from kiln_operator.validation import parse

NOW = "2026-11-23T10:00:00Z"


def isvc(action="retrain", status=None):
    return parse({
        "kind": "InferenceService", "metadata": {"name": "iris", "namespace": "ml"},
        "spec": {"model": {"modelName": "iris", "stage": "Production"},
                 "monitoring": {"drift": {"action": action, "pipelineRef": {"name": "iris-forest"},
                                          "cooldownSeconds": 600}}},
        "status": status or {}})


def report(drifted: dict[str, float], calm: dict[str, float] = None, rows=2000):
    features = {n: {"evaluated": True, "psi": p, "drift": True} for n, p in drifted.items()}
    features.update({n: {"evaluated": True, "psi": p, "drift": False} for n, p in (calm or {}).items()})
    features["sparse"] = {"evaluated": False, "psi": None, "drift": False}
    return {"driftDetected": bool(drifted), "features": features, "windowRows": rows}


def conditions(outcome):
    return {c[0]: c[1:] for c in outcome.conditions}


def test_in_distribution_traffic_reports_no_drift_and_requests_nothing():
    outcome = drift.plan(isvc(), drift.from_reports([report({}, {"petal_length": 0.01})]), NOW)
    assert conditions(outcome)["DriftDetected"][:2] == ("False", "InDistribution")
    assert outcome.request_run is None and outcome.events == []


def test_a_shifted_feature_is_named_and_a_run_requested():
    verdict = drift.from_reports([report({"petal_length": 0.9}, {"sepal_width": 0.02}),
                                  report({"petal_length": 1.4}, {"sepal_width": 0.05})])
    outcome = drift.plan(isvc(), verdict, NOW)
    status, reason, message = conditions(outcome)["DriftDetected"]
    assert (status, reason) == ("True", "FeatureDrift")
    assert "petal_length (psi 1.4)" in message and "sepal_width" not in message
    assert outcome.status["drift"]["worstFeatures"][0] == {"name": "petal_length", "psi": 1.4}
    assert outcome.request_run == f"drift-{NOW}"
    assert outcome.status["drift"]["lastRetrainRequest"] == NOW
    assert [e[1] for e in outcome.events] == ["DriftDetected", "RetrainRequested"]


def test_no_second_run_within_the_cooldown():
    verdict = drift.from_reports([report({"petal_length": 0.9})])
    recent = isvc(status={"drift": {"lastRetrainRequest": "2026-11-23T09:55:00Z"}})
    assert drift.plan(recent, verdict, NOW).request_run is None
    old = isvc(status={"drift": {"lastRetrainRequest": "2026-11-23T09:45:00Z"}})
    assert drift.plan(old, verdict, NOW).request_run == f"drift-{NOW}"


def test_alert_only_never_requests_a_run():
    outcome = drift.plan(isvc(action="alert"), drift.from_reports([report({"petal_length": 0.9})]), NOW)
    assert conditions(outcome)["DriftDetected"][0] == "True" and outcome.request_run is None


def test_no_report_yet_is_unknown_not_false():
    assert drift.from_reports([{"status": "starting"}]) is None
    filling = {"driftDetected": False, "windowRows": 40, "features": {"x": {"evaluated": False, "psi": None}}}
    assert drift.from_reports([filling]) is None
    assert conditions(drift.plan(isvc(), None, NOW))["DriftDetected"][:2] == ("Unknown", "NoReport")


def test_prometheus_gauges_give_the_same_verdict():
    verdict = drift.from_prometheus({"petal_length": 0.9, "sepal_width": 0.01}, {"petal_length": 1.0, "sepal_width": 0.0})
    outcome = drift.plan(isvc(action="alert"), verdict, NOW)
    assert "petal_length" in conditions(outcome)["DriftDetected"][2]


def test_the_same_verdict_read_again_changes_no_status():
    # Drift is read every few seconds: a status that moved with every read would be a write each time.
    verdict = drift.from_reports([report({}, {"petal_length": 0.01})])
    first = drift.plan(isvc(action="alert"), verdict, NOW).status["drift"]
    again = drift.plan(isvc(action="alert", status={"drift": first}), verdict, "2026-11-23T10:00:15Z").status["drift"]
    assert again == first and first["observedAt"] == NOW
    moved = drift.from_reports([report({"petal_length": 0.9})])
    later = drift.plan(isvc(action="alert", status={"drift": first}), moved, "2026-11-23T10:00:30Z").status["drift"]
    assert later["observedAt"] == "2026-11-23T10:00:30Z" and later["score"] == 0.9
