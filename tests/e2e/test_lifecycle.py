"""The whole loop on the real local cluster, exactly as `make demo` runs it (hack/demo.py): a Dataset
validated by a Job, a pipeline's trials and selection as Jobs, a verified ModelVersion, an
InferenceService answering over its ClusterIP, drift on one shifted feature, a drift-triggered run and
the new version served. Afterwards the test checks what a user would look at.
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


def test_drift_retrains_and_the_new_version_is_served(demo, kubectl):
    assert demo["firstVersion"] == "iris-v1" and demo["secondVersion"] == "iris-v2"
    assert "petal_length" in demo["driftMessage"]
    isvc = kubectl.json("get", "inferenceservice", "iris", "-n", NS)
    assert isvc["status"]["modelVersion"] == "iris-v2"
    # The verdict follows the serving version: v2's windows start empty, so it is not "False" yet,
    # while the Events keep what was found on v1.
    drift = {c["type"]: c for c in isvc["status"]["conditions"]}["DriftDetected"]
    assert drift["status"] in ("True", "Unknown"), drift
    runs = kubectl.json("get", "trainingpipeline", "iris-forest", "-n", NS)["status"]["runs"]
    assert [r["trigger"] for r in runs] == ["create", "drift"]  # one run per cooldown: no storm
    events = kubectl.json("get", "events", "-n", NS)["items"]
    assert {"RunStarted", "ModelVersionCreated", "RolledOut", "DriftDetected", "RetrainRequested"} <= {
        e["reason"] for e in events}
    assert any("petal_length" in e["message"] for e in events if e["reason"] == "DriftDetected")


def test_registered_versions_carry_lineage_verification_and_the_gate_metric(demo, kubectl):
    dataset = kubectl.json("get", "dataset", "iris", "-n", NS)
    for name, run in (("iris-v1", "r1"), ("iris-v2", "r2")):
        # The server checks the digest itself when it loads, so v2 may serve before its verify Job ends.
        mv = kubectl.wait_for(lambda: (lambda m: m if (m.get("status") or {}).get("verifiedSha256") else None)(
            kubectl.json("get", "modelversion", name, "-n", NS)), timeout=180, interval=2, what=f"{name} verified")
        spec = mv["spec"]
        assert spec["lineage"]["pipeline"] == "iris-forest" and spec["lineage"]["run"] == run
        assert spec["lineage"]["datasetVersion"] == dataset["status"]["version"]
        assert spec["artifact"]["format"] == "skops" and spec["metrics"]["accuracy"] >= 0.9
        assert mv["status"]["verifiedSha256"] == spec["artifact"]["sha256"]
        assert not mv["metadata"].get("ownerReferences")  # deleting the pipeline never deletes models
    # The same data, seed and search give the same model quality (reproducible runs).
    first, second = (kubectl.json("get", "modelversion", n, "-n", NS)["spec"] for n in ("iris-v1", "iris-v2"))
    assert first["metrics"] == second["metrics"] and first["params"] == second["params"]


def test_a_bad_request_gets_a_4xx_naming_the_problem(demo):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{demo['url']}/v1/models/iris:predict", method="POST",
                                     data=json.dumps({"instances": [[1.0, 2.0]]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert 400 <= err.value.code < 500
    assert "has 2 values; the model takes 4 features" in err.value.read().decode()
