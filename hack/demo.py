"""The whole loop on the local cluster, step by step: data -> training -> registry -> serving -> payload
logs and feedback -> drift and a live-quality drop -> retraining on the newest data -> a better model
served. `make demo` runs it after starting the cluster and the artifact
store; the end-to-end test runs it too and checks what it leaves behind.

Everything happens the way a user would do it: the operator is installed by the Helm chart
(charts/kiln, release `kiln` in namespace kiln-system, serving kiln-demo only) from the images
hack/build-images.sh imported, then `kubectl apply` of the examples, HTTP requests to the
InferenceService's ClusterIP, and waiting on conditions. The operator keeps running afterwards, so
docs/quickstart.md's next steps work; a re-run upgrades the release in place. `--host-operator` runs
the operator as a process on this machine instead, for debugging. Exits non-zero naming the step that
failed, with the operator's last log lines.
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
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loans_data  # noqa: E402  (hack/, beside this script)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
KUBECONFIG = CACHE / "state/kubeconfig"
NAMESPACE = "kiln-demo"
# The operator's Helm release: its own namespace, serving NAMESPACE only, so the operators other tests
# start as host processes in their own namespaces never race it.
RELEASE, SYSTEM_NAMESPACE = "kiln", "kiln-system"
DEPLOYMENT = "kiln-operator"  # the chart's name for release `kiln`
OPERATOR_PODS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
# The store's keys (moto takes any): the runtime pods' Secret in NAMESPACE, the operator's own (it
# lists growing Dataset sources) in SYSTEM_NAMESPACE.
STORE_KEYS = {"AWS_ACCESS_KEY_ID": "kiln-demo", "AWS_SECRET_ACCESS_KEY": "kiln-demo"}
STORE_SECRET, SOURCE_CHECKS_SECRET = "kiln-store", "kiln-source-checks"
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
                        aws_access_key_id=STORE_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=STORE_KEYS["AWS_SECRET_ACCESS_KEY"])


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

def helm_binary() -> str:
    """helm as hack/build-helm.sh provides it (built once from its Go module, then reused)."""
    if os.environ.get("KILN_HELM"):
        return os.environ["KILN_HELM"]
    done = subprocess.run(["bash", str(ROOT / "hack/build-helm.sh")], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise StepFailed(f"hack/build-helm.sh exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def secret(name: str, namespace: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                       "stringData": STORE_KEYS})


def stop_cluster_operator() -> None:
    """Scales an earlier run's in-cluster operator to nothing: no operator acts while the demo's
    namespace is deleted and made again (`helm upgrade` scales it back, with fresh pods that start with
    their RoleBinding in place and the newest image)."""
    if not kubectl("get", "deployment", DEPLOYMENT, "-n", SYSTEM_NAMESPACE, "--ignore-not-found", "-o", "name").strip():
        return
    kubectl("scale", "deployment", DEPLOYMENT, "-n", SYSTEM_NAMESPACE, "--replicas=0")
    wait("the earlier operator pods to stop",
         lambda: (not (left := kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-l", OPERATOR_PODS, "-o", "name").split()),
                  f"{len(left)} operator pod(s) stopping"), 90)
    say(f"the earlier in-cluster operator ({SYSTEM_NAMESPACE}/{DEPLOYMENT}) is stopped")


def install_operator(endpoint: str) -> None:
    """`helm upgrade --install` of charts/kiln, as docs/helm.md has a user do, with the demo's values."""
    helm = helm_binary()
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": SYSTEM_NAMESPACE}}))
    kubectl("apply", "-f", "-", stdin=secret(SOURCE_CHECKS_SECRET, SYSTEM_NAMESPACE))
    # One replica: the standby of the default two is no use on one node, and
    # `kubectl logs deploy/kiln-operator` then always shows the acting one.
    values = {"replicas": 1, "watchNamespaces": [NAMESPACE], "logFormat": "plain",
              "artifactStore": {"root": "s3://kiln/artifacts", "s3": {"endpoint": endpoint},
                                "secretName": STORE_SECRET},
              "sourceChecks": {"secretName": SOURCE_CHECKS_SECRET}}
    values_file = KUBECONFIG.parent / "demo-values.yaml"  # JSON is YAML
    values_file.write_text(json.dumps(values, indent=2) + "\n")
    command = [helm, "upgrade", "--install", RELEASE, str(ROOT / "charts/kiln"), "--namespace", SYSTEM_NAMESPACE,
               "--values", str(values_file), "--wait", "--timeout", "180s"]
    say(f"helm upgrade --install {RELEASE} charts/kiln -n {SYSTEM_NAMESPACE} --values {values_file} --wait")
    try:
        done = subprocess.run([*command, "--kubeconfig", str(KUBECONFIG)], capture_output=True, text=True,
                              timeout=240)
    except subprocess.TimeoutExpired:
        raise StepFailed("helm upgrade --install did not finish in 240 s") from None
    if done.returncode != 0:
        raise StepFailed(f"helm upgrade --install {RELEASE}: {(done.stderr or done.stdout).strip()[-2000:]}")
    # A Deployment scaled to nothing by an earlier run comes back with the release's replica count
    # (helm's three-way merge); made sure here, as --wait is content with zero of zero.
    deployment = json.loads(kubectl("get", "deployment", DEPLOYMENT, "-n", SYSTEM_NAMESPACE, "-o", "json"))
    if not deployment["spec"].get("replicas"):
        kubectl("scale", "deployment", DEPLOYMENT, "-n", SYSTEM_NAMESPACE, f"--replicas={values['replicas']}")
    kubectl("rollout", "status", "deployment", DEPLOYMENT, "-n", SYSTEM_NAMESPACE, "--timeout=180s")
    pods = kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-l", OPERATOR_PODS, "--field-selector=status.phase=Running",
                   "-o", "jsonpath={.items[*].spec.containers[0].image}").split()
    say(f"operator running in the cluster ({SYSTEM_NAMESPACE}/{DEPLOYMENT}, image {', '.join(sorted(set(pods)))}); "
        f"its log: kubectl logs -n {SYSTEM_NAMESPACE} deploy/{DEPLOYMENT} -f")


def cluster_operator_log(lines: int) -> str:
    try:
        return kubectl("logs", "-n", SYSTEM_NAMESPACE, f"deploy/{DEPLOYMENT}", f"--tail={lines}")
    except StepFailed as exc:
        return f"(no log: {exc})"


def start_operator(endpoint: str, log: Path) -> subprocess.Popen:
    """--host-operator: the operator as a process on this machine, for debugging."""
    # The operator lists growing sources with its own store identity.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_S3_ENDPOINT": endpoint, **STORE_KEYS,
           "KILN_ARTIFACT_ROOT": "s3://kiln/artifacts", "KILN_STORE_SECRET": STORE_SECRET,
           "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'serving_image'}"}
    out = log.open("a")
    proc = subprocess.Popen([sys.executable, "-m", "kiln_operator", "--kubeconfig", str(KUBECONFIG),
                             "--namespace", NAMESPACE, "--health", "http://127.0.0.1:18080/healthz",
                             "--metrics-port", "18081"],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    say(f"operator started on this machine (pid {proc.pid}, log {log})")
    return proc


# --- traffic ---------------------------------------------------------------------------------------

def post(url: str, body: dict) -> tuple[dict, str]:
    request = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.load(answer), answer.headers.get("X-Request-Id", "")
    except urllib.error.HTTPError as exc:
        raise StepFailed(f"POST {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None
    except OSError as exc:
        raise StepFailed(f"POST {url}: {exc}") from None


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


def serving_only(version: str) -> tuple[bool, str]:
    pods = json.loads(kubectl("get", "pods", "-n", NAMESPACE, "-l", f"kiln.dev/model={MODEL},app.kubernetes.io/name=kiln-serve",
                              "-o", "json"))["items"]
    versions = sorted(f"{p['metadata']['labels'].get('kiln.dev/model-version')}"
                      f"{' (terminating)' if p['metadata'].get('deletionTimestamp') else ''}" for p in pods)
    ready = [p for p in pods if condition(p, "Ready").get("status") == "True"]
    done = bool(ready) and all(p["metadata"]["labels"].get("kiln.dev/model-version") == version
                               and not p["metadata"].get("deletionTimestamp") for p in pods)
    return done, f"serving pods: {', '.join(versions) or 'none'}"


def service_url() -> str:
    svc = get("service", MODEL)
    return f"http://{svc['spec']['clusterIP']}:80"


def condition_is(type_: str, status: str, timeout: float) -> dict:
    def check():
        found = condition(get("kisvc", MODEL), type_)
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

def prepare(endpoint: str) -> None:
    say(f"namespace {NAMESPACE}: CRDs, the store's credentials")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": NAMESPACE}}))
    kubectl("apply", "-f", "-", stdin=secret(STORE_SECRET, NAMESPACE))
    upload_data(endpoint)
    upload_loans(endpoint)


def run(endpoint: str) -> dict:
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
         lambda: ((s := get("kisvc", MODEL).get("status") or {}).get("modelVersion") == first
                  and condition(get("kisvc", MODEL), "Ready").get("status") == "True",
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
         lambda: ((s := get("kisvc", MODEL).get("status") or {}).get("modelVersion") == second,
                  f"serving {s.get('modelVersion')}"), 300)
    wait_ready("modelversion", second, 180)
    # The rolling update is over only when no pod of the old version is left behind the Service (one
    # still draining would answer a request whose feedback then reaches the new pod, which never saw it).
    wait(f"every serving pod to run {second}", lambda: serving_only(second), 120)

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
    parser.add_argument("--host-operator", action="store_true",
                        help="run the operator as a process on this machine (for debugging), stopped at the end, "
                             "instead of the Helm release in the cluster")
    args = parser.parse_args()
    if args.upload_only:
        upload_data(args.s3_endpoint)
        return 0
    KUBECTL = kubectl_binary()
    log = CACHE / "state/logs/operator-demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    operator = None
    try:
        stop_cluster_operator()
        # A fresh start: an earlier run's namespace goes first (no finalizer holds it: children go by
        # ownerReference), with no operator acting meanwhile.
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false")
        kubectl("wait", "--for=delete", f"namespace/{NAMESPACE}", "--timeout=180s")
        # The namespace first: the release binds the operator's role in it.
        prepare(args.s3_endpoint)
        if args.host_operator:
            operator = start_operator(args.s3_endpoint, log)
        else:
            install_operator(args.s3_endpoint)
        summary = run(args.s3_endpoint)
        if args.summary:
            Path(args.summary).write_text(json.dumps(summary))
        return 0
    except StepFailed as exc:
        say(f"FAILED: {exc}")
        if operator is not None:
            tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
            say(f"the operator's last log lines ({log}):")
        else:
            tail = cluster_operator_log(40).splitlines()
            say(f"the operator's last log lines (kubectl logs -n {SYSTEM_NAMESPACE} deploy/{DEPLOYMENT}):")
        print("\n".join(f"    {line}" for line in tail), flush=True)
        say(f"objects: kubectl --kubeconfig {KUBECONFIG} get kiln,jobs,pods -n {NAMESPACE}")
        return 1
    finally:
        if operator is not None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
            say(f"host operator stopped (the in-cluster one stays scaled to 0 until the next `make demo`); "
                f"the cluster keeps running: export KUBECONFIG={KUBECONFIG}; `make cluster-down` stops it")
        else:
            say(f"the operator keeps running in the cluster ({SYSTEM_NAMESPACE}/{DEPLOYMENT}; its log: "
                f"kubectl logs -n {SYSTEM_NAMESPACE} deploy/{DEPLOYMENT}), and so do the cluster and the store: "
                f"export KUBECONFIG={KUBECONFIG}, then docs/quickstart.md; `make cluster-down` stops everything")


if __name__ == "__main__":
    sys.exit(main())
