"""Live quality as a user sees it: numbers in status that say what they were measured on, a condition
against the floor, and one run per cooldown when the model got worse."""

from kiln_operator import quality
from kiln_operator.validation import parse

NOW = "2026-11-23T10:00:00Z"
LATER = "2026-11-23T10:05:00Z"


def isvc(floor=None, status=None):
    spec = {"model": {"modelName": "loans", "stage": "Production"}, "feedback": {}, "monitoring": {}}
    if floor is not None:
        quality_floor = {"metric": "accuracy", "min": 0.8, "minRows": 50, "action": "retrain",
                         "pipelineRef": {"name": "loans"}, "cooldownSeconds": 600, **floor}
        spec["monitoring"]["quality"] = {k: v for k, v in quality_floor.items() if v is not None}
    return parse({"kind": "InferenceService", "metadata": {"name": "loans", "namespace": "ml"}, "spec": spec,
                  "status": status or {}})


def report(rows, **metrics):
    return {"quality": {"rows": rows, "metrics": metrics, "window": 1000}}


def conditions(outcome):
    return {c[0]: c[1:] for c in outcome.conditions}


def test_pods_windows_combine_weighted_by_their_labelled_rows():
    verdict = quality.from_reports([report(300, accuracy=0.9), report(100, accuracy=0.5), {"quality": {"rows": 0}}])
    assert verdict.rows == 400 and abs(verdict.metrics["accuracy"] - 0.8) < 1e-12
    assert quality.from_reports([{"features": {}}, report(0)]) is None


def test_quality_below_the_floor_is_named_with_its_rows_and_asks_for_one_run_per_cooldown():
    outcome = quality.plan(isvc({}), quality.from_reports([report(200, accuracy=0.61, f1=0.5)]), "loans-v1", NOW)
    status, reason, message = conditions(outcome)["QualityDegraded"]
    assert (status, reason) == ("True", "BelowFloor")
    assert "accuracy 0.61 on the last 200 labelled rows of loans-v1" in message and "0.8" in message
    assert outcome.request_run == f"quality-{NOW}"
    assert outcome.status["quality"] == {"version": "loans-v1", "metrics": {"accuracy": 0.61, "f1": 0.5},
                                         "rows": 200, "observedAt": NOW, "lastRetrainRequest": NOW}
    again = quality.plan(isvc({}, {"quality": outcome.status["quality"]}),
                         quality.from_reports([report(220, accuracy=0.6)]), "loans-v1", LATER)
    assert again.request_run is None  # within the cooldown


def test_too_few_labels_are_no_verdict_and_a_met_floor_asks_nothing():
    few = quality.plan(isvc({}), quality.from_reports([report(20, accuracy=0.1)]), "loans-v1", NOW)
    assert conditions(few)["QualityDegraded"][:2] == ("Unknown", "TooFewLabels") and few.request_run is None
    good = quality.plan(isvc({}), quality.from_reports([report(500, accuracy=0.93)]), "loans-v1", NOW)
    assert conditions(good)["QualityDegraded"][:2] == ("False", "QualityMet") and good.events == []


def test_error_metrics_have_a_ceiling():
    spec = isvc({"metric": "mae", "min": None, "max": 2.0})
    outcome = quality.plan(spec, quality.from_reports([report(100, mae=2.5, rmse=3.0)]), "loans-v1", NOW)
    assert conditions(outcome)["QualityDegraded"][:2] == ("True", "BelowFloor")
    assert "above the maximum 2" in conditions(outcome)["QualityDegraded"][2]


def test_numbers_read_again_unchanged_write_nothing_new():
    first = quality.plan(isvc(), quality.from_reports([report(100, accuracy=0.9)]), "loans-v1", NOW)
    again = quality.plan(isvc(status={"quality": first.status["quality"]}),
                         quality.from_reports([report(100, accuracy=0.9)]), "loans-v1", LATER)
    assert again.status["quality"]["observedAt"] == NOW
    assert "QualityDegraded" not in conditions(again)  # no floor set: numbers only
