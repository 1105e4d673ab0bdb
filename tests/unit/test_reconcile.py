"""The shared reconcile decision, without a cluster."""

import copy
from pathlib import Path

import pytest
import yaml

from kiln_operator.api import kind_by_name
from kiln_operator.reconcile import decide, is_news, status_patch

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("**/*.yaml"))


def _body(path):
    body = yaml.safe_load(path.read_text())
    body["metadata"]["generation"] = 1
    return body


# Kiln's objects; examples/gitops also holds the Argo CD Application that syncs them.
EXAMPLE_DOCS = [(path, i, doc) for path in EXAMPLES for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
                if doc["apiVersion"].startswith("kiln.dev/")]


@pytest.mark.parametrize("path,index,body", EXAMPLE_DOCS,
                         ids=[f"{p.parent.name}/{p.name}#{i}" for p, i, _ in EXAMPLE_DOCS])
def test_examples_are_accepted(path, index, body):
    body["metadata"]["generation"] = 1
    outcome = decide(kind_by_name(body["kind"]), body)
    assert (outcome.ready, outcome.reason) == ("True", "Accepted"), outcome.message


def test_an_invalid_spec_names_the_field():
    body = _body(EXAMPLES[1])
    body["spec"]["schedule"] = "every tuesday at noon"
    outcome = decide(kind_by_name("TrainingPipeline"), body)
    assert outcome.ready == "False" and outcome.reason == "InvalidSpec" and outcome.warning
    assert "spec.schedule" in outcome.message


def test_status_patch_records_generation_and_ready():
    body = _body(EXAMPLES[0])
    patch = status_patch(body, decide(kind_by_name("Dataset"), body))
    assert patch["observedGeneration"] == 1
    assert [(c["type"], c["status"], c["observedGeneration"]) for c in patch["conditions"]] == [("Ready", "True", 1)]


def test_repeating_an_outcome_is_not_news():
    body = _body(EXAMPLES[0])
    outcome = decide(kind_by_name("Dataset"), body)
    assert is_news(body, outcome)
    settled = copy.deepcopy(body)
    settled["status"] = status_patch(body, outcome)
    assert not is_news(settled, outcome)
    settled["metadata"]["generation"] = 2
    assert is_news(settled, outcome)
