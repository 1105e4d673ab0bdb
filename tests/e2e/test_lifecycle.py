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
        script += ["echo skipped >&3"] if NOT_RUN in command else [command, 'echo "$?" >&3']
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


# --- kubectl kiln: the plugin, run through the real kubectl after the demo -------------------------

# The venv that runs the tests holds the console scripts pyproject declares (hack/venv.sh installs them):
# kubectl finds `kubectl-kiln` (and `kubectl_complete-kiln`) on PATH as a user's shell would.
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def kiln(demo, store, kubeconfig, kubectl, tmp_path_factory):
    """Runs `kubectl kiln ...` through the pinned kubectl with the venv's bin on PATH and the store's
    address and keys in the environment, as a user of the demo has them. Each command's output is kept
    in a file (and printed): docs/cli.md shows them."""
    binary = kubectl.binary  # the conftest's pinned kubectl
    assert (VENV_BIN / "kubectl-kiln").exists(), f"no kubectl-kiln in {VENV_BIN}: run `bash hack/venv.sh`"
    transcripts = tmp_path_factory.mktemp("kubectl-kiln")
    print(f"kubectl kiln outputs: {transcripts}")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "KUBECONFIG": str(kubeconfig),
           # This checkout's kiln_cli, whichever clone the shared venv's editable install points at.
           "PYTHONPATH": f"{ROOT / 'operator'}{os.pathsep}{ROOT / 'serving_image'}",
           "KILN_S3_ENDPOINT": store, "AWS_ACCESS_KEY_ID": "kiln-demo", "AWS_SECRET_ACCESS_KEY": "kiln-demo"}
    count = iter(range(1, 1000))

    def run(*args: str, code: int | None = 0, via: tuple[str, ...] = ("kiln",), cwd: Path | None = None):
        done = subprocess.run([str(binary), *via, *args], capture_output=True, text=True, timeout=120, env=env,
                              cwd=cwd)
        shown = " ".join(a if a and " " not in a else json.dumps(a) for a in args)
        text = f"$ kubectl {' '.join(via)} {shown}\n{done.stdout}{done.stderr}"
        (transcripts / f"{next(count):02d}-{'-'.join(via + args[:1])}.txt").write_text(text)
        print(f"{text}(exit {done.returncode})\n")
        assert code is None or done.returncode == code, f"exit {done.returncode}, expected {code}:\n{text}"
        return done
    return run


def _table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_kubectl_kiln_is_a_plugin_kubectl_lists_and_completes(kiln):
    # Its exit code also counts other plugins' warnings (one shadowing another on PATH): not this test's.
    listed = kiln("list", via=("plugin",), code=None).stdout
    assert str(VENV_BIN / "kubectl-kiln") in listed
    # kubectl completes `kubectl kiln ...` itself by running kubectl_complete-kiln from PATH.
    assert "promote" in kiln("kiln", "pro", via=("__complete",)).stdout.split()
    assert "loans-v2" in kiln("kiln", "diff", "-n", NS, "loans-v", via=("__complete",)).stdout.split()
    assert "complete -F _kubectl_kiln kubectl-kiln" in kiln("completion", "bash").stdout


def test_kubectl_kiln_runs_shows_the_pipelines_runs_and_a_runs_trials_best_first(kiln, kubectl):
    rows = {r[0]: r for r in _table(kiln("runs", "loans", "-n", NS).stdout)}
    assert rows["RUN"][:5] == ["RUN", "PHASE", "TRIGGER", "DATA", "PLANNED"]
    assert rows["r1"][1:3] == ["Succeeded", "create"] and "loans-v1" in rows["r1"]
    assert rows["r2"][1:3] == ["Succeeded", "quality"] and "loans-v2" in rows["r2"]
    assert rows["r2"][4:8] == ["2", "2", "0", "0"]  # planned, succeeded, failed, stopped: max_depth [3, 6]

    out = kiln("runs", "loans", "r2", "-n", NS).stdout
    assert out.startswith("run r2 of trainingpipeline loans: Succeeded, registered loans-v2")
    header, *trials = _table("\n".join(out.splitlines()[1:]))
    assert header == ["TRIAL", "STATUS", "ACCURACY", "ON", "PARAMETERS", "DURATION", "MESSAGE"]
    assert [t[1] for t in trials] == ["Succeeded", "Succeeded"]
    view = json.loads(kiln("runs", "loans", "r2", "-n", NS, "-o", "json").stdout)
    scores = [t["score"] for t in view["trials"]]
    assert scores == sorted(scores, reverse=True)
    # The best trial, listed first, is the one the run registered.
    registered = kubectl.json("get", "kmv", "loans-v2", "-n", NS)["spec"]["params"]
    assert view["trials"][0]["params"]["max_depth"] == registered["max_depth"]
    assert trials[0][4] == f"max_depth={registered['max_depth']}"

    failed = kiln("runs", "loans", "r2", "-n", NS, "--s3-endpoint", "http://127.0.0.1:9", code=1)
    assert failed.stderr.startswith("error: cannot reach the artifact store at http://127.0.0.1:9")
    assert "not found" in kiln("runs", "loans", "r9", "-n", NS, code=1).stderr


def test_kubectl_kiln_history_shows_v1_then_v2_and_what_serves_which(kiln, kubectl):
    out = kiln("history", "loans", "-n", NS).stdout
    versions, changes = out.split("\n\nStage changes:\n")
    rows = {r[1]: r for r in _table(versions)[1:]}
    assert rows["loans-v1"][:3] == ["1", "loans-v1", "Archived"]
    assert rows["loans-v2"][:2] == ["2", "loans-v2"]
    serving = kubectl.json("get", "kisvc", "loans", "-n", NS)["status"]["modelVersion"]
    assert rows[serving][-1] == "loans"  # SERVED BY
    history = [r[:4] for r in _table(changes)[1:]]
    v1 = [h[3] for h in history if h[1] == "loans-v1"]
    assert v1[0] in ("None", "Production") and v1[-1] == "Archived"
    first_v2 = next(i for i, h in enumerate(history) if h[1] == "loans-v2")
    assert all(h[1] == "loans-v1" for h in history[:first_v2])  # v1's registration comes before v2's
    assert "no modelversions" in kiln("history", "iris", "-n", NS, code=1).stderr


def test_kubectl_kiln_diff_shows_both_data_versions_and_the_metric_delta(kiln, kubectl):
    from kiln_cli.tables import delta

    a, b = (kubectl.json("get", "kmv", n, "-n", NS)["spec"] for n in ("loans-v1", "loans-v2"))
    lines = kiln("diff", "loans-v1", "loans-v2", "-n", NS).stdout.splitlines()
    data = next(line for line in lines if "data version" in line)
    assert data.startswith("* ") and a["lineage"]["datasetVersion"][:12] in data and b["lineage"]["datasetVersion"][:12] in data
    accuracy = next(line for line in lines if "metrics.accuracy" in line)
    assert accuracy.endswith(delta(a["metrics"]["accuracy"], b["metrics"]["accuracy"])) and "(better)" in accuracy
    assert any(line.startswith("* artifact sha256") for line in lines)
    err = kiln("diff", "loans-v1", "iris-v9", "-n", NS, code=1).stderr
    assert err.strip() == f'error: modelversion "iris-v9" not found in namespace "{NS}"'


def test_kubectl_kiln_promote_is_one_patch_and_history_then_shows_the_reason(kiln, kubectl):
    kiln("promote", "loans-v9", "--to", "Staging", "--reason", "x", "-n", NS, code=1)
    # The demo's chart installs the promotion policy: the apiserver's refusal is printed as is.
    refused = kiln("promote", "loans-v1", "--to", "Production", "-n", NS, code=1)
    assert refused.stderr.startswith("Error from server (") and "kiln.dev/stage-reason" in refused.stderr
    assert kubectl.json("get", "kmv", "loans-v1", "-n", NS)["spec"]["stage"] == "Archived"

    reason = "shadow test against loans-v2"
    out = kiln("promote", "loans-v1", "--to", "Staging", "--reason", reason, "-n", NS).stdout
    assert out.strip() == f'modelversion "loans-v1" Archived -> Staging (reason: "{reason}")'
    mv = kubectl.json("get", "kmv", "loans-v1", "-n", NS)
    assert mv["spec"]["stage"] == "Staging" and mv["metadata"]["annotations"]["kiln.dev/stage-reason"] == reason

    def recorded():
        entries = (kubectl.json("get", "kmv", "loans-v1", "-n", NS).get("status") or {}).get("stageHistory") or []
        return entries and entries[-1]["stage"] == "Staging" and entries[-1]
    entry = kubectl.wait_for(recorded, timeout=60, interval=1, what="the operator to record the stage change")
    history = kiln("history", "loans", "-n", NS).stdout
    last = [line for line in history.split("Stage changes:\n")[1].splitlines() if "loans-v1" in line][-1]
    assert last.split()[1:4] == ["loans-v1", "Archived", "Staging"]
    if entry.get("reason"):  # the registry records the reason (StageChange.reason) where it is deployed
        assert last.endswith(reason)
    kiln("promote", "loans-v1", "--to", "Archived", "--reason", "shadow test over", "-n", NS)


def test_kubectl_kiln_predict_answers_the_loans_rows_as_the_service_does(kiln, demo, tmp_path):
    import urllib.request

    sys.path.insert(0, str(ROOT / "hack"))
    import loans_data

    frame = loans_data.period(2, 6, seed=21)
    rows = tmp_path / "loans.csv"
    frame.to_csv(rows, index=False)
    out = kiln("predict", "loans", "-f", rows.name, "-n", NS, "--probabilities", cwd=tmp_path).stdout
    header, *answers = _table(out)
    assert header == ["INCOME", "DEBT_RATIO", "YEARS_EMPLOYED", "OUTCOME", "PREDICTION", "P(defaulted)", "P(repaid)"]
    request = urllib.request.Request(f"{demo['url']}/v1/models/loans:predict", method="POST",
                                     data=json.dumps({"instances": frame[loans_data.FEATURES].values.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        expected = json.load(answer)["predictions"]
    assert [a[4] for a in answers] == expected and set(expected) <= {"repaid", "defaulted"}
    first = json.loads(kiln("predict", "loans", "-f", str(rows), "-n", NS, "-o", "json").stdout)[0]
    assert first["prediction"] == expected[0] and first["income"] == frame["income"].iloc[0]  # typed as sent
    (tmp_path / "bad.csv").write_text("income,debt_ratio\n50,0.2\n")
    assert "has no column for the feature(s) years_employed" in kiln("predict", "loans", "-f", "bad.csv", "-n", NS,
                                                                      code=1, cwd=tmp_path).stderr
