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
import yaml

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
APP_VERSION = yaml.safe_load((ROOT / "charts/kiln/Chart.yaml").read_text())["appVersion"]
NS = "kiln-demo"
RELEASE, SYSTEM_NS = "kiln", "kiln-system"


@pytest.fixture(scope="module")
def store(kubeconfig):
    started = subprocess.run(["bash", str(ROOT / "hack/store-up.sh")], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip().splitlines()[-1]
    subprocess.run(["bash", str(ROOT / "hack/store-down.sh")], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def demo(store, helm, tmp_path_factory):
    """The demo as `make demo` runs it: the operator installed in the cluster by the Helm chart (release
    kiln in kiln-system, serving kiln-demo), the loop, and what it leaves running. The release is
    uninstalled afterwards: the store it uses stops with this module."""
    summary = tmp_path_factory.mktemp("demo") / "summary.json"
    done = subprocess.run([sys.executable, str(ROOT / "hack/demo.py"), "--s3-endpoint", store,
                           "--summary", str(summary)], capture_output=True, text=True, timeout=2400,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "KILN_HELM": str(helm)})
    print(done.stdout[-6000:])
    assert done.returncode == 0, f"the demo failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    yield json.loads(summary.read_text())
    subprocess.run([str(helm), "uninstall", RELEASE, "--namespace", SYSTEM_NS, "--wait", "--timeout", "60s"],
                   capture_output=True, timeout=120)


def test_the_operator_runs_in_the_cluster_from_the_chart_and_serves_the_demo_namespace_only(demo, kubectl):
    deployment = kubectl.json("get", "deployment", "kiln-operator", "-n", SYSTEM_NS)
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert deployment["status"].get("readyReplicas") == deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # The chart's default names, which hack/build-images.sh tags its build with and imports.
    assert container["image"] == f"ghcr.io/kiln-dev/kiln-operator:{APP_VERSION}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert f"--namespace={NS}" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KILN_RUNTIME_IMAGE"] == f"ghcr.io/kiln-dev/kiln-runtime:{APP_VERSION}"
    assert env["KILN_STORE_SECRET"] == "kiln-store"
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["kiln-source-checks"]
    # It lists the growing Dataset's prefix itself, with the Secret sourceChecks.secretName names.
    dataset = kubectl.json("get", "kds", "loans", "-n", NS)
    listing = next(c for c in dataset["status"]["conditions"] if c["type"] == "SourceAvailable")
    assert listing["status"] == "True", listing
    log = kubectl.run("logs", "-n", SYSTEM_NS, "deploy/kiln-operator").stdout
    denied = [line for line in log.splitlines() if any(w in line for w in ("Forbidden", "forbidden",
                                                                             "Not enough permissions"))]
    assert denied == [], "\n".join(denied[:20])


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
    isvc = kubectl.json("get", "kisvc", "loans", "-n", NS)
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


# --- docs/quickstart.md, run as written after the demo --------------------------------------------

QUICKSTART = ROOT / "docs/quickstart.md"
NOT_RUN = "not run by the test"  # the doc's mark on a command this test leaves out (it says why)
MARK = "@@kiln-doc-command"


def shell_commands(markdown: str) -> list[str]:
    """The commands of the page's ```bash blocks in order; a line ending in a backslash continues."""
    commands, in_block, pending = [], False, ""
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block and line.strip() == "```bash"
            continue
        if not in_block:
            continue
        pending += line + "\n"
        if line.rstrip().endswith("\\"):
            continue
        if pending.strip() and not pending.lstrip().startswith("#"):
            commands.append(pending.rstrip("\n"))
        pending = ""
    return commands


def run_commands(commands: list[str], cwd: Path, rc_file: Path, timeout: float = 900) -> list[dict]:
    """Runs the commands in one bash, one after the other as a reader pasting them would (variables
    and aliases carry over), from the repository's root. Returns each one's exit code (None: marked
    NOT_RUN) and output."""
    script = ["shopt -s expand_aliases", f"exec 3>'{rc_file}' 2>&1"]
    for i, command in enumerate(commands):
        script.append(f"printf '\\n{MARK} {i}\\n'")  # on a line of its own, after output without a newline
        script += ["echo skipped >&3"] if NOT_RUN in command else [command, f'echo "$?" >&3']
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}  # the page's own export counts
    done = subprocess.run(["bash", "-c", "\n".join(script)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)
    outputs: dict[int, list[str]] = {}
    current = None
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            current = int(line.split()[1])
            outputs[current] = []
        elif current is not None:
            outputs[current].append(line)
    codes = rc_file.read_text().split()
    assert len(codes) == len(commands), (f"bash stopped after {len(codes)} of {len(commands)} commands "
                                         f"(exit {done.returncode}):\n{done.stdout[-3000:]}")
    return [{"command": c, "code": None if code == "skipped" else int(code),
             "output": "\n".join(outputs.get(i, [])).strip()}
            for i, (c, code) in enumerate(zip(commands, codes))]


def test_every_command_of_the_quickstart_runs_as_written_after_the_demo(demo, kubectl, tmp_path):
    commands = shell_commands(QUICKSTART.read_text())
    results = run_commands(commands, ROOT, tmp_path / "codes")
    for result in results:
        print(f"$ {result['command']}\n  -> {'not run' if result['code'] is None else result['code']}")
    skipped = [r["command"] for r in results if r["code"] is None]
    # Only what would run the demo again or start the test suite itself is left out.
    assert [c.split()[:2] for c in skipped] == [["make", "demo"], ["make", "test"]], skipped
    failed = [r for r in results if r["code"] not in (None, 0)]
    assert not failed, "\n\n".join(f"$ {r['command']}\nexit {r['code']}\n{r['output'][-1500:]}" for r in failed)

    def output_of(start: str) -> str:
        return next(r["output"] for r in results if r["command"].startswith(start))

    # What the page says happens, happened.
    assert "loans-v2" in output_of("kubectl get kiln -n kiln-demo")
    assert "kiln-system" in output_of("~/.cache/kiln/tools/bin/helm list") and "deployed" in output_of(
        "~/.cache/kiln/tools/bin/helm list")
    answer = json.loads(output_of("curl").strip().splitlines()[-1])
    assert len(answer["predictions"]) == 2 and set(answer["predictions"]) <= {"repaid", "defaulted"}
    hpas = kubectl.json("get", "hpa", "-n", NS, "-l", "kiln.dev/owner=loans")["items"]
    assert hpas and all(h["spec"]["maxReplicas"] == 2 for h in hpas)
    # The annotation started a run; it ends (promoted or not) before the store stops with this module.
    run = kubectl.wait_for(lambda: (lambda r: r if r["trigger"] == "requested" and r["phase"] not in (
        "Pending", "Running", "Selecting", "Registering") else None)(
        kubectl.json("get", "trainingpipeline.kiln.dev", "loans", "-n", NS)["status"]["runs"][-1]),
        timeout=300, interval=3, what="the requested run to end")
    assert run["phase"] in ("Succeeded", "GateFailed"), run
