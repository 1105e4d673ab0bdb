"""The whole loop on the local cluster, step by step: data -> training -> registry -> serving -> payload
logs and feedback -> drift and a live-quality drop -> retraining on the newest data -> a better model
served. `make demo` runs it after starting the cluster and the artifact
store; the end-to-end test runs it too and checks what it leaves behind.

Everything happens the way a user would do it: `kubectl apply` of the examples, HTTP requests to the
InferenceService's ClusterIP, and waiting on conditions. Exits non-zero naming the step that failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loans_data  # noqa: E402  (hack/, beside this script)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
KUBECONFIG = CACHE / "state/kubeconfig"
NAMESPACE = "kiln-demo"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]  # iris, for --upload-only
MODEL = "loans"
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
    # The operator lists growing sources with its own store identity.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_S3_ENDPOINT": endpoint,
           "AWS_ACCESS_KEY_ID": "kiln-demo", "AWS_SECRET_ACCESS_KEY": "kiln-demo",
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

def post(url: str, body: dict) -> tuple[dict, str]:
    request = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer), answer.headers.get("X-Request-Id", "")


def predict(url: str, rows: list[list[float]]) -> tuple[list, str]:
    answer, request_id = post(f"{url}/v1/models/{MODEL}:predict", {"instances": rows})
    return answer["predictions"], request_id


def serve_period(url: str, which: int, rows: int, seed: int, feedback: bool = True, batch: int = 20) -> float:
    """Sends a period's rows as a client would, and the true outcomes afterwards with each answer's
    request id (the feedback a loan system sends once it knows). Returns the answers' accuracy."""
    frame = loans_data.period(which, rows, seed)
    predictions = []
    for start in range(0, rows, batch):
        part = frame.iloc[start:start + batch]
        answer, request_id = predict(url, part[loans_data.FEATURES].values.tolist())
        predictions += answer
        if feedback:
            joined, _ = post(f"{url}/v2/models/{MODEL}/feedback",
                             {"id": request_id, "labels": part[loans_data.TARGET].tolist()})
            if joined.get("joined") != len(part):
                raise StepFailed(f"feedback for {request_id} was not joined: {joined}")
    return loans_data.accuracy(predictions, frame[loans_data.TARGET].tolist())


def service_url() -> str:
    svc = get("service", MODEL)
    return f"http://{svc['spec']['clusterIP']}:80"


def condition_is(type_: str, status: str, timeout: float) -> dict:
    def check():
        found = condition(get("inferenceservice", MODEL), type_)
        done = found if found.get("status") == status else None
        return done, f"{type_}={found.get('status', '?')} {found.get('reason', '')}: {found.get('message', '')}"
    return wait(f"{type_}={status}", check, timeout, every=3)


def payload_rows(endpoint: str) -> int:
    """Rows in the service's payload logs, read back as a user would (pyarrow over the Hive layout)."""
    import pyarrow.parquet as pq

    s3, rows = s3_client(endpoint), 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="kiln-demo", Prefix=f"payloads/model={MODEL}/"):
        for obj in page.get("Contents") or []:
            body = s3.get_object(Bucket="kiln-demo", Key=obj["Key"])["Body"].read()
            rows += pq.read_metadata(io.BytesIO(body)).num_rows
    return rows


def upload_loans(endpoint: str) -> None:
    s3 = s3_client(endpoint)
    body = io.StringIO()
    loans_data.period(1, 1000, seed=1).to_csv(body, index=False)
    s3.put_object(Bucket="kiln-demo", Key="loans/2026-11-01.csv", Body=body.getvalue().encode())
    say("uploaded loans/2026-11-01.csv (1,000 loans of the first period) to s3://kiln-demo/")


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
    upload_loans(endpoint)

    say("1. apply the Dataset, the TrainingPipeline and the InferenceService (examples/loop/)")
    kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples/loop"))
    dataset = wait_ready("dataset", MODEL, 300)
    say(f"Dataset loans Ready: version {dataset['status']['version'][:12]}, {dataset['status']['rows']} rows, "
        f"snapshot {dataset['status'].get('snapshotUri')}")

    say("2. training on the first period: trials scored on a validation split, the test split once")
    wait_ready("trainingpipeline", MODEL, 600)
    run1 = get("trainingpipeline", MODEL)["status"]["runs"][-1]
    first = run1["modelVersion"]
    say(f"run {run1['id']} produced {first}: test-split accuracy {run1['bestMetrics'].get('accuracy'):.3f} "
        f"on dataset version {run1['datasetVersion'][:12]}")
    wait_ready("modelversion", first, 300)

    say("3. serving the Production version, logging every request, accepting feedback")
    wait(f"InferenceService loans to serve {first}",
         lambda: ((s := get("inferenceservice", MODEL).get("status") or {}).get("modelVersion") == first
                  and condition(get("inferenceservice", MODEL), "Ready").get("status") == "True",
                  f"serving {s.get('modelVersion')}, {s.get('readyReplicas')} ready replica(s)"), 300)
    url = service_url()

    say("4. first-period traffic, with the true outcomes fed back: the model is as good live as in training")
    v1_first = serve_period(url, 1, 300, seed=11)
    met = condition_is("QualityDegraded", "False", 120)
    say(f"{first} live: {met['message']} (answers' accuracy {v1_first:.3f})")

    say("5. the second period: incomes rose and the rule changed")
    v1_second = serve_period(url, 2, 800, seed=12)
    say(f"{first} on second-period traffic: accuracy {v1_second:.3f}")
    degraded = condition_is("QualityDegraded", "True", 120)
    say(f"QualityDegraded: {degraded['message']}")
    drifted = condition_is("DriftDetected", "True", 120)
    say(f"DriftDetected: {drifted['message']}")

    say("6. the quality drop asked for a run: the newest data first, then the new model must beat the old")
    def retrained():
        runs = get("trainingpipeline", MODEL)["status"].get("runs") or []
        last = runs[-1] if runs else {}
        if last.get("trigger") == "quality" and last.get("phase") in ("Failed", "GateFailed"):
            raise StepFailed(f"the quality run {last['id']} ended {last['phase']}: {last.get('message')}")
        done = last if last.get("trigger") == "quality" and last.get("phase") == "Succeeded" else None
        return done, f"run {last.get('id')} ({last.get('trigger')}): {last.get('phase')}"
    run2 = wait("a quality-triggered run", retrained, 600, every=3)
    second = run2["modelVersion"]
    champion, challenger = run2.get("champion") or {}, run2.get("challenger") or {}
    say(f"run {run2['id']} on dataset version {run2['datasetVersion'][:12]}: {second} accuracy "
        f"{challenger.get('value', float('nan')):.3f} vs {champion.get('name')} "
        f"{champion.get('value', float('nan')):.3f} on the same test rows")
    wait(f"InferenceService loans to serve {second}",
         lambda: ((s := get("inferenceservice", MODEL).get("status") or {}).get("modelVersion") == second,
                  f"serving {s.get('modelVersion')}"), 300)
    wait_ready("modelversion", second, 180)

    say("7. fresh second-period traffic to the new version")
    v2_second = serve_period(url, 2, 300, seed=13)
    say(f"accuracy on second-period traffic: {first} {v1_second:.3f} -> {second} {v2_second:.3f}")

    answered = 300 + 800 + 300
    logged = wait("the payload logs to hold every answered row",
                  lambda: ((n := payload_rows(endpoint)) >= answered and n, f"{n} of {answered} rows logged"), 60)
    say(f"payload logs: {logged} rows under s3://kiln-demo/payloads/model={MODEL}/ for {answered} answered")
    summary = {"firstVersion": first, "secondVersion": second, "url": url,
               "v1Accuracy": {"firstPeriod": v1_first, "secondPeriod": v1_second},
               "v2Accuracy": {"secondPeriod": v2_second}, "run": run2, "firstRun": run1,
               "qualityMessage": degraded["message"], "driftMessage": drifted["message"],
               "payloadRows": logged, "answeredRows": answered}
    say("done: data -> training -> serving -> feedback -> quality drop -> newest data -> retraining -> a "
        "better model served, no human step")
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
