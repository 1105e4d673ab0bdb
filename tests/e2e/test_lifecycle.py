"""The whole loop on the real local cluster, exactly as `make demo` runs it (hack/demo.py): a growing
Dataset validated and snapshotted by Jobs, a pipeline's trials and selection as Jobs, a verified
ModelVersion, an InferenceService logging what it answers and joining the labels fed back, a second
period whose rule changed, a quality-triggered run on the newest data that must beat the serving model
on the same rows, and the better model served. Afterwards the test checks what a user would look at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
NS = "kiln-demo"


@pytest.fixture(scope="module")
def store(kubeconfig):
    started = subprocess.run(["bash", str(ROOT / "hack/store-up.sh")], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip().splitlines()[-1]
    subprocess.run(["bash", str(ROOT / "hack/store-down.sh")], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def demo(store, tmp_path_factory):
    summary = tmp_path_factory.mktemp("demo") / "summary.json"
    done = subprocess.run([sys.executable, str(ROOT / "hack/demo.py"), "--s3-endpoint", store,
                           "--summary", str(summary)], capture_output=True, text=True, timeout=2400,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    print(done.stdout[-6000:])
    assert done.returncode == 0, f"the demo failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return json.loads(summary.read_text())


def test_the_loop_retrains_on_production_data_and_the_new_model_is_better_on_it(demo, kubectl):
    first, second = demo["firstVersion"], demo["secondVersion"]
    assert (first, second) == ("loans-v1", "loans-v2")
    # v1 was good on the period it learned, bad on the new one; v2, trained on what production fed
    # back, is clearly better on the new period, live and on the run's shared test rows.
    assert demo["v1Accuracy"]["firstPeriod"] >= 0.85
    assert demo["v2Accuracy"]["secondPeriod"] >= demo["v1Accuracy"]["secondPeriod"] + 0.2
    run = demo["run"]
    assert run["trigger"] == "quality" and run["champion"]["name"] == first
    assert run["challenger"]["value"] >= run["champion"]["value"] + 0.02
    assert "income" in demo["driftMessage"]
    assert "accuracy" in demo["qualityMessage"] and "below the minimum 0.8" in demo["qualityMessage"]
    isvc = kubectl.json("get", "inferenceservice", "loans", "-n", NS)
    assert isvc["status"]["modelVersion"] == second
    events = kubectl.json("get", "events", "-n", NS)["items"]
    assert {"RunStarted", "ModelVersionCreated", "RolledOut", "DriftDetected", "QualityDegraded",
            "RetrainRequested", "NewVersion"} <= {e["reason"] for e in events}
    runs = kubectl.json("get", "trainingpipeline", "loans", "-n", NS)["status"]["runs"]
    assert [r["trigger"] for r in runs] == ["create", "quality"]  # one run per cooldown: no storm


def test_v2_differs_from_v1_in_data_and_model_and_both_are_reproducible_records(demo, kubectl):
    dataset = kubectl.json("get", "dataset", "loans", "-n", NS)
    kept = {v["version"]: v for v in dataset["status"]["versions"]}
    mvs = {}
    for name, run in (("loans-v1", "r1"), ("loans-v2", "r2")):
        mv = kubectl.wait_for(lambda: (lambda m: m if (m.get("status") or {}).get("verifiedSha256") else None)(
            kubectl.json("get", "modelversion", name, "-n", NS)), timeout=180, interval=2, what=f"{name} verified")
        spec = mvs[name] = mv["spec"]
        assert spec["lineage"]["pipeline"] == "loans" and spec["lineage"]["run"] == run
        # Every version a registered model was trained on is kept, snapshot and all.
        assert spec["lineage"]["datasetVersion"] in kept
        assert kept[spec["lineage"]["datasetVersion"]]["snapshotUri"].endswith("/data.parquet")
        assert mv["status"]["verifiedSha256"] == spec["artifact"]["sha256"]
        assert not mv["metadata"].get("ownerReferences")  # deleting the pipeline never deletes models
    assert mvs["loans-v1"]["lineage"]["datasetVersion"] != mvs["loans-v2"]["lineage"]["datasetVersion"]
    assert mvs["loans-v1"]["artifact"]["sha256"] != mvs["loans-v2"]["artifact"]["sha256"]
    assert mvs["loans-v1"]["stage"] == "Archived" and mvs["loans-v2"]["stage"] == "Production"
    # The production rows became training data: the new version holds more than the seed file.
    assert any(e["reason"] == "SourceChanged" for e in kubectl.json("get", "events", "-n", NS)["items"])


def test_every_answered_row_is_in_the_payload_logs(demo):
    assert demo["payloadRows"] == demo["answeredRows"]


def test_a_bad_request_gets_a_4xx_naming_the_problem(demo):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{demo['url']}/v1/models/loans:predict", method="POST",
                                     data=json.dumps({"instances": [[1.0, 2.0]]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert 400 <= err.value.code < 500
    assert "has 2 values; the model takes 3 features" in err.value.read().decode()


def test_feedback_for_an_unknown_request_id_is_refused_naming_the_reason(demo):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{demo['url']}/v2/models/loans/feedback", method="POST",
                                     data=json.dumps({"id": "never-answered", "labels": ["repaid"]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 404
    assert "unknown request id" in err.value.read().decode()
