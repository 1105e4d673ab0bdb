from kiln_operator.conditions import get_condition, set_condition


def test_new_condition_gets_a_transition_time_and_generation():
    conditions = set_condition([], "Ready", "False", "InvalidSpec", "bad", 3, now="2026-01-01T00:00:00Z")
    assert conditions == [{"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": "bad",
                           "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}]


def test_transition_time_moves_only_when_the_status_changes():
    first = set_condition([], "Ready", "False", "Pending", "a", 1, now="2026-01-01T00:00:00Z")
    same = set_condition(first, "Ready", "False", "StillPending", "b", 2, now="2026-01-02T00:00:00Z")
    assert get_condition(same, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert get_condition(same, "Ready")["reason"] == "StillPending"
    flipped = set_condition(same, "Ready", "True", "Ready", "c", 2, now="2026-01-03T00:00:00Z")
    assert get_condition(flipped, "Ready")["lastTransitionTime"] == "2026-01-03T00:00:00Z"


def test_other_conditions_are_kept_and_types_stay_unique():
    conditions = set_condition([], "Verified", "True", "DigestMatches", "", 1)
    conditions = set_condition(conditions, "Ready", "True", "Ready", "", 1)
    conditions = set_condition(conditions, "Ready", "True", "Ready", "", 1)
    assert sorted(c["type"] for c in conditions) == ["Ready", "Verified"]
