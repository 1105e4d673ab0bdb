"""The whole loop on the local cluster, step by step: data -> training -> registry -> serving -> drift ->
retraining -> the new version served. `make demo` runs it after starting the cluster and the artifact
store; the end-to-end test runs it too and checks what it leaves behind.

Everything happens the way a user would do it: `kubectl apply` of the examples, HTTP requests to the
InferenceService's ClusterIP, and waiting on conditions. Exits non-zero naming the step that failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
KUBECONFIG = CACHE / "state/kubeconfig"
NAMESPACE = "kiln-demo"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SHIFTED = "petal_length"
T0 = time.monotonic()


class StepFailed(Exception):
    pass


def say(message: str) -> None:
    print(f"[demo {time.monotonic() - T0:6.1f}s] {message}", flush=True)


def kubectl_binary() -> str:
    found = sorted(CACHE.glob("k8s-v*/bin/kubectl"))
    if not found:
        raise StepFailed("no kubectl in ~/.cache/kiln: run `make cluster-up` first")
    return str(found[-1])


KUBECTL = None


def kubectl(*args: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run([KUBECTL, "--kubeconfig", str(KUBECONFIG), *args], input=stdin, capture_output=True,
                              text=True, timeout=240)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"kubectl {' '.join(args)} did not finish in 240 s") from None
    if done.returncode != 0:
        raise StepFailed(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def get(kind: str, name: str) -> dict:
    return json.loads(kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json"))


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def wait(what: str, check, timeout: float, every: float = 2.0):
    """Polls `check` (returning a truthy value when done) and prints what changes meanwhile."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        value, progress = check()
        if progress and progress != last:
            say(f"  {progress}")
            last = progress
        if value:
            return value
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})")
        time.sleep(every)


def wait_ready(kind: str, name: str, timeout: float) -> dict:
    def check():
        try:
            obj = get(kind, name)
        except StepFailed:
            return None, f"{kind} {name} does not exist yet"
        ready = condition(obj, "Ready")
        if ready.get("status") == "False" and ready.get("reason") in FAILED_REASONS:
            raise StepFailed(f"{kind} {name} failed: {ready['reason']}: {ready.get('message')}")
        return (obj if ready.get("status") == "True" else None), f"{kind} {name}: {ready.get('reason', '...')} " \
                                                                 f"{ready.get('message', '')}".rstrip()
    return wait(f"{kind} {name} to be Ready", check, timeout)


# Reasons that will not turn into Ready by waiting: the demo stops and shows them.
FAILED_REASONS = {"InvalidSpec", "ChecksFailed", "ValidationFailed", "SourceNotFound", "AccessDenied",
                  "RunFailed", "RunGateFailed", "DigestMismatch", "VerificationFailed", "RolloutFailed"}


# --- the artifact store ----------------------------------------------------------------------------

def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="kiln-demo", aws_secret_access_key="kiln-demo")


def iris_frame():
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=dict(zip(data.feature_names, FEATURES)))
    frame["species"] = [data.target_names[t] for t in frame.pop("target")]
    return frame


def upload_data(endpoint: str) -> None:
    s3 = s3_client(endpoint)
    for bucket in ("kiln", "kiln-demo"):
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    body = io.StringIO()
    iris_frame().to_csv(body, index=False)
    s3.put_object(Bucket="kiln-demo", Key="iris.csv", Body=body.getvalue().encode())
    say(f"uploaded iris.csv (150 rows) to s3://kiln-demo/ on {endpoint}")


# --- the operator ----------------------------------------------------------------------------------

def start_operator(endpoint: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_S3_ENDPOINT": endpoint,
           "KILN_ARTIFACT_ROOT": "s3://kiln/artifacts", "KILN_STORE_SECRET": "kiln-store",
           "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'serving_image'}"}
    out = log.open("a")
    proc = subprocess.Popen([sys.executable, "-m", "kiln_operator", "--kubeconfig", str(KUBECONFIG),
                             "--namespace", NAMESPACE, "--health", "http://127.0.0.1:18080/healthz",
                             "--metrics-port", "18081"],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    say(f"operator started (pid {proc.pid}, log {log})")
    return proc


# --- traffic ---------------------------------------------------------------------------------------

def predict(url: str, rows: list[list[float]]) -> list:
    request = urllib.request.Request(f"{url}/v1/models/iris:predict", method="POST",
                                     data=json.dumps({"instances": rows}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["predictions"]


def send_traffic(url: str, rows: int, shift: float = 0.0, batch: int = 25) -> list:
    """Rows drawn from the training data; `shift` moves one feature."""
    frame = iris_frame()
    rng = random.Random(len(frame) + rows)
    predictions = []
    for start in range(0, rows, batch):
        sample = []
        for _ in range(min(batch, rows - start)):
            row = frame.iloc[rng.randrange(len(frame))]
            # Exact rows of the training data: iris is measured in steps of 0.1 cm, and the baseline's
            # quantile bins have their edges on those values, so jitter alone would read as drift.
            values = [float(row[f]) for f in FEATURES]
            values[FEATURES.index(SHIFTED)] += shift
            sample.append([round(v, 3) for v in values])
        predictions += predict(url, sample)
    return predictions


def service_url() -> str:
    svc = get("service", "iris")
    return f"http://{svc['spec']['clusterIP']}:80"


def drift_condition(status: str, timeout: float) -> dict:
    def check():
        isvc = get("inferenceservice", "iris")
        found = condition(isvc, "DriftDetected")
        done = found if found.get("status") == status else None
        return done, f"DriftDetected={found.get('status', '?')} {found.get('reason', '')}: {found.get('message', '')}"
    return wait(f"DriftDetected={status}", check, timeout, every=3)


# --- the loop --------------------------------------------------------------------------------------

def run(endpoint: str) -> dict:
    say(f"namespace {NAMESPACE}: CRDs, the store's credentials")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": NAMESPACE}}))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kiln-store", "namespace": NAMESPACE},
              "stringData": {"AWS_ACCESS_KEY_ID": "kiln-demo", "AWS_SECRET_ACCESS_KEY": "kiln-demo"}}
    kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    upload_data(endpoint)

    say("1. apply the Dataset, the TrainingPipeline and the InferenceService (examples/)")
    for name in ("01-dataset.yaml", "02-trainingpipeline.yaml", "04-inferenceservice.yaml"):
        kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / name))
    dataset = wait_ready("dataset", "iris", 300)
    say(f"Dataset iris Ready: version {dataset['status']['version'][:12]}, {dataset['status']['rows']} rows")

    say("2. training: 8 random-search trials, 2 at a time, then selection and the quality gate")
    wait_ready("trainingpipeline", "iris-forest", 600)
    run1 = get("trainingpipeline", "iris-forest")["status"]["runs"][-1]
    first = run1["modelVersion"]
    say(f"run {run1['id']} produced {first} with {run1.get('bestMetrics')}")
    mv = wait_ready("modelversion", first, 300)
    say(f"ModelVersion {first} verified (sha256 {mv['spec']['artifact']['sha256'][:12]}), stage {mv['spec']['stage']}")

    say("3. serving: the InferenceService follows the Staging stage")
    wait(f"InferenceService iris to serve {first}",
         lambda: ((s := get("inferenceservice", "iris").get("status") or {}).get("modelVersion") == first
                  and condition(get("inferenceservice", "iris"), "Ready").get("status") == "True",
                  f"serving {s.get('modelVersion')}, {s.get('readyReplicas')} ready replica(s)"), 300)
    url = service_url()
    answer = predict(url, [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    say(f"POST {url}/v1/models/iris:predict -> {answer}")

    say("4. in-distribution traffic: the monitoring sidecar sees no drift")
    send_traffic(url, 1200)
    drift_condition("False", 180)

    say(f"5. traffic with {SHIFTED} shifted by one standard deviation (+1.76 cm)")
    send_traffic(url, 2400, shift=1.76)
    detected = drift_condition("True", 240)
    say(f"DriftDetected: {detected['message']}")

    say("6. the drift asked the pipeline for a run; its model goes through the gate and is served")
    def retrained():
        runs = get("trainingpipeline", "iris-forest")["status"].get("runs") or []
        last = runs[-1] if runs else {}
        if last.get("trigger") == "drift" and last.get("phase") in ("Failed", "GateFailed"):
            raise StepFailed(f"the drift run {last['id']} ended {last['phase']}: {last.get('message')}")
        done = last.get("modelVersion") if last.get("trigger") == "drift" and last.get("phase") == "Succeeded" else None
        return done, f"run {last.get('id')} ({last.get('trigger')}): {last.get('phase')}"
    second = wait("a drift-triggered run", retrained, 600, every=3)
    wait(f"InferenceService iris to serve {second}",
         lambda: ((s := get("inferenceservice", "iris").get("status") or {}).get("modelVersion") == second,
                  f"serving {s.get('modelVersion')}"), 300)
    answer = predict(url, [[5.1, 3.5, 1.4, 0.2]])
    say(f"{second} serves: {answer}")
    # kiln-serve checked the digest when it loaded; the registry records its own check too, and the
    # operator stops with the demo, so the demo waits for it.
    wait_ready("modelversion", second, 180)
    summary = {"firstVersion": first, "secondVersion": second, "driftMessage": detected["message"],
               "url": url}
    say("done: data -> training -> registry -> serving -> drift -> retraining -> serving, no human step")
    return summary


def main() -> int:
    global KUBECTL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s3-endpoint", required=True, help="the artifact store (hack/store-up.sh prints it)")
    parser.add_argument("--summary", help="write the outcome as JSON here (the end-to-end test reads it)")
    parser.add_argument("--upload-only", action="store_true",
                        help="only put the examples' data (iris.csv) into the store, e.g. for the Helm chart's walk-through")
    args = parser.parse_args()
    if args.upload_only:
        upload_data(args.s3_endpoint)
        return 0
    KUBECTL = kubectl_binary()
    log = CACHE / "state/logs/operator-demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # A fresh start: an earlier run's namespace goes first (no finalizer holds it: children go by
    # ownerReference; one an older operator left is removed when this one starts).
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false")
    operator = start_operator(args.s3_endpoint, log)
    try:
        kubectl("wait", "--for=delete", f"namespace/{NAMESPACE}", "--timeout=180s")
        summary = run(args.s3_endpoint)
        if args.summary:
            Path(args.summary).write_text(json.dumps(summary))
        return 0
    except StepFailed as exc:
        say(f"FAILED: {exc}")
        say(f"operator log: {log}; objects: kubectl --kubeconfig {KUBECONFIG} get kiln,jobs,pods -n {NAMESPACE}")
        return 1
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
        say(f"operator stopped; the cluster keeps running: export KUBECONFIG={KUBECONFIG}; "
            "`make cluster-down` stops it")


if __name__ == "__main__":
    sys.exit(main())
