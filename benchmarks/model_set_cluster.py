"""200 small models behind one InferenceService on the local node (issue 19, item 3's acceptance).

    python benchmarks/model_set_cluster.py [--models 200] [--budget-mi 200] [--keep]

Needs the node and the runtime image (`make cluster-up`). In a namespace of its own: an S3 server (moto)
on the bridge's host address holding N logistic regressions (10 features, each fitted to other data),
Kiln's operator, N ModelVersions in Production (each verified by its Job, as any version is), one
InferenceService with `spec.models` and a memory budget that holds only part of them, and, for
reference, a single-model InferenceService serving the first model. From the host, through the
Services' cluster IPs, it prints:

- the time until the model set is Ready with all N in its table (verification of N artifacts included);
- each model's first request (it loads the model) against a request to a loaded one, client-side;
- every model requested round-robin, three rounds from 4 clients: failures, evictions, and the server's
  resident set sampled throughout (VmRSS of kiln-serve, read in the pod), against the budget;
- the latency of a loaded model in the set against the single-model server, sequential requests on one
  kept-alive connection each, alternating blocks (target: p50 within 0.2 ms);
- one model promoted under steady load on all of them: failed requests (target 0), the time until the
  new version answers, and whether the server pod stayed the same.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Kubectl  # noqa: E402  (the tests' kubectl wrapper)
from operator_process import OperatorProcess  # noqa: E402
from s3_server import moto_server  # noqa: E402

CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
KUBECONFIG = CACHE / "state" / "kubeconfig"
BRIDGE_IP = "10.244.0.1"  # hack/lib.sh: the pod bridge's host side, reachable from pods
BUCKET = "kiln-bench-models"
FEATURES = 10
SIGNATURE = {"inputs": [{"name": f"f{i}", "type": "number"} for i in range(FEATURES)],
             "output": {"type": "label", "classes": ["0", "1"]}}


def build(seed: int) -> tuple[bytes, object]:
    """A logistic regression fitted to data of its own; (skops bytes, the model)."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, FEATURES))
    y = (x @ rng.normal(size=FEATURES) > 0).astype(np.int64)
    model = LogisticRegression(max_iter=200).fit(x, y)
    return sio.dumps(model), model


def model_version(name: str, model: str, version: int, stage: str, sha256: str) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"modelName": model, "version": version, "stage": stage, "signature": SIGNATURE,
                     "framework": {"name": "scikit-learn", "version": "1.8.0"},
                     "artifact": {"uri": f"s3://{BUCKET}/{name}/model.skops", "format": "skops", "sha256": sha256}}}


class Client:
    """One kept-alive connection to a Service's cluster IP."""

    def __init__(self, ip: str):
        self.conn = http.client.HTTPConnection(ip, 80, timeout=30)

    def infer(self, model: str, row: list[float]) -> tuple[int, str, str | None]:
        """(status, the version that answered or the error, the predicted label)."""
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP64", "data": row}]})
        self.conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
        answer = self.conn.getresponse()
        data = answer.read()
        if answer.status != 200:
            return answer.status, data.decode(errors="replace")[:200], None
        doc = json.loads(data)
        return 200, doc["model_version"], str(doc["outputs"][0]["data"][0])


def own(models: dict, name: str, row: list[float]) -> str:
    """The label the model itself predicts for the row."""
    return str(models[name].predict(np.array([row]))[0])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(1.0)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def status(kubectl: Kubectl, ns: str, name: str) -> dict:
    return kubectl.json("get", "inferenceservice", name, "-n", ns).get("status") or {}


def ready(st: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


def server_pod(kubectl: Kubectl, ns: str, instance: str) -> dict:
    pods = kubectl.json("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={instance}")["items"]
    return next(p for p in pods if not p["metadata"].get("deletionTimestamp"))


def resident_bytes(kubectl: Kubectl, ns: str, pod: str) -> int:
    out = kubectl.run("exec", "-n", ns, pod, "-c", "server", "--", "grep", "VmRSS", "/proc/1/status").stdout
    return int(out.split()[1]) * 1024


def repository_index(ip: str) -> list[dict]:
    conn = http.client.HTTPConnection(ip, 80, timeout=10)
    conn.request("POST", "/v2/repository/index", b"{}", {"Content-Type": "application/json"})
    return json.loads(conn.getresponse().read())


def metric(ip: str, name: str) -> float:
    """The sum of a metric's samples on the server's /metrics."""
    conn = http.client.HTTPConnection(ip, 80, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (line[len(name)] in " {"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--budget-mi", type=int, default=None,
                        help="the model set's memoryBudget, MiB (default: the server's resident set with one "
                             "model loaded + 6 MiB, measured first: room for a few dozen of these models)")
    parser.add_argument("--keep", action="store_true", help="leave the namespace for a look afterwards")
    args = parser.parse_args()
    kubectl = Kubectl(KUBECONFIG)
    kubectl.run("get", "--raw", "/readyz")
    ns = f"bench-models-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", ns)
    kubectl.apply(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kiln-store", "namespace": ns},
                              "stringData": {"AWS_ACCESS_KEY_ID": "b", "AWS_SECRET_ACCESS_KEY": "b"}}))
    names = [f"m{i:03d}" for i in range(args.models)]
    print(f"# model set benchmark: {args.models} models, namespace {ns}")
    try:
        with moto_server(BRIDGE_IP) as url:
            import boto3

            s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="b", aws_secret_access_key="b")
            s3.create_bucket(Bucket=BUCKET)
            models, shas = {}, {}
            # Version 1 of every model, and a version 2 of the one promoted at the end.
            for seed, name in enumerate([*(f"{n}-v1" for n in names), f"{names[7]}-v2"]):
                data, models[name] = build(seed)
                shas[name] = hashlib.sha256(data).hexdigest()
                s3.upload_fileobj(io.BytesIO(data), BUCKET, f"{name}/model.skops")
            log = Path(f"/tmp/{ns}-operator.log")
            env = {"KILN_S3_ENDPOINT": url, "KILN_STORE_SECRET": "kiln-store", "KILN_ARTIFACT_ROOT": f"s3://{BUCKET}/runs"}
            with OperatorProcess(KUBECONFIG, log, "--namespace", ns, env=env):
                run(kubectl, ns, names, models, shas, args.budget_mi)
    finally:
        if not args.keep:
            kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


def service(name: str, spec: dict, budget_mi: int) -> str:
    resources = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": f"{budget_mi + 256}Mi"}}
    return json.dumps({"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
                       "spec": {**spec, "autoscaling": {"minReplicas": 1, "maxReplicas": 1}, "resources": resources}})


def run(kubectl: Kubectl, ns: str, names: list[str], models: dict, shas: dict, budget_mi: int | None) -> None:
    started = time.monotonic()
    kubectl.apply("\n---\n".join(json.dumps(model_version(f"{n}-v1", n, 1, "Production", shas[f"{n}-v1"])) for n in names),
                  "-n", ns)
    probe = budget_mi is None
    models_spec = {"stage": "Production", "memoryBudget": f"{512 if probe else budget_mi}Mi"}
    kubectl.apply(service("tabular", {"models": models_spec}, 512 if probe else budget_mi), "-n", ns)
    kubectl.apply(service("single", {"model": {"modelName": names[0], "stage": "Production"}}, 512), "-n", ns)
    wait(lambda: ready(st := status(kubectl, ns, "tabular")) and len(st.get("models") or []) == len(names)
         and ready(status(kubectl, ns, "single")), 1200, f"the model set Ready with {len(names)} models")
    print(f"model set Ready with {len(names)} models in its table: {time.monotonic() - started:.0f} s after the "
          f"{len(names)} ModelVersions were applied (each verified by its Job)")
    if probe:
        # One model loaded first: the first load imports the estimator's code, which stays.
        Client(kubectl.json("get", "service", "tabular", "-n", ns)["spec"]["clusterIP"]).infer(names[0], [0.0] * FEATURES)
        idle = resident_bytes(kubectl, ns, server_pod(kubectl, ns, "tabular")["metadata"]["name"])
        budget_mi = -(-idle // 2**20) + 6
        print(f"server resident set with one model loaded: {idle / 2**20:.1f} MiB; memoryBudget set to {budget_mi}Mi")
        old = server_pod(kubectl, ns, "tabular")["metadata"]["uid"]
        kubectl.apply(service("tabular", {"models": {**models_spec, "memoryBudget": f"{budget_mi}Mi"}}, budget_mi), "-n", ns)
        wait(lambda: (p := server_pod(kubectl, ns, "tabular"))["metadata"]["uid"] != old
             and any(c.get("type") == "Ready" and c.get("status") == "True" for c in p["status"].get("conditions") or [])
             and len(kubectl.json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=tabular")["items"]) == 1,
             300, "the server restarted with the new budget")
    budget = budget_mi * 2**20
    ip = kubectl.json("get", "service", "tabular", "-n", ns)["spec"]["clusterIP"]
    wait(lambda: len(repository_index(ip)) == len(names), 60, "the server to read the whole table")
    single_ip = kubectl.json("get", "service", "single", "-n", ns)["spec"]["clusterIP"]
    pod = server_pod(kubectl, ns, "tabular")
    rng = np.random.default_rng(0)
    row = rng.normal(size=FEATURES).round(4).tolist()
    client = Client(ip)

    # First requests: each loads its model.
    first, warm = [], []
    for name in names:
        t = time.perf_counter()
        code, version, label = client.infer(name, row)
        first.append(time.perf_counter() - t)
        if (code, version, label) != (200, "1", own(models, f"{name}-v1", row)):
            raise SystemExit(f"{name}'s first answer is not its own: {code} {version} {label}")
        t = time.perf_counter()
        client.infer(name, row)
        warm.append(time.perf_counter() - t)
    print(f"first request (loads the model), client-side: p50 {percentile(first, 50) * 1e3:.1f} ms, "
          f"p95 {percentile(first, 95) * 1e3:.1f} ms, max {max(first) * 1e3:.1f} ms; the next request: "
          f"p50 {percentile(warm, 50) * 1e3:.2f} ms")

    # Round-robin, three rounds, with the resident set sampled meanwhile.
    rss: list[int] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss.append(resident_bytes(kubectl, ns, pod["metadata"]["name"]))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    evictions_before = metric(ip, "kiln_model_evictions_total")
    failures: list[str] = []
    answers = Counter()
    lock = threading.Lock()

    def round_robin(offset: int):
        c = Client(ip)
        for i in range(offset, 3 * len(names), 4):
            name = names[i % len(names)]
            try:
                code, version, label = c.infer(name, row)
                with lock:
                    answers[code] += 1
                if label != own(models, f"{name}-v1", row):
                    failures.append(f"{name}: {code} {version} {label}")
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                c = Client(ip)

    t = time.monotonic()
    workers = [threading.Thread(target=round_robin, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    sampler.join()
    evictions = metric(ip, "kiln_model_evictions_total") - evictions_before
    peak = max(rss)
    print(f"round-robin over all {len(names)} models, 3 rounds from 4 clients: {sum(answers.values())} requests in "
          f"{time.monotonic() - t:.1f} s, {len(failures)} failed, {evictions:.0f} evictions; resident set "
          f"max {peak / 2**20:.0f} MiB of the {budget / 2**20:.0f} MiB budget over {len(rss)} samples "
          f"[target: under the budget: {'met' if peak < budget else 'MISSED'}]")
    for line in failures[:5]:
        print("  failed:", line)

    # Latency of a loaded model against the single-model server.
    lat = {"set": [], "single": []}
    clients = {"set": Client(ip), "single": Client(single_ip)}
    for which in clients:
        for _ in range(200):
            clients[which].infer(names[0], row)
    for _ in range(10):
        for which, c in clients.items():
            for _ in range(300):
                t = time.perf_counter()
                c.infer(names[0], row)
                lat[which].append(time.perf_counter() - t)
    p50 = {k: statistics.median(v) * 1e3 for k, v in lat.items()}
    gap = p50["set"] - p50["single"]
    print(f"a loaded model, 3,000 sequential requests each: model set p50 {p50['set']:.3f} ms p99 "
          f"{percentile(lat['set'], 99) * 1e3:.3f} ms; single-model server p50 {p50['single']:.3f} ms p99 "
          f"{percentile(lat['single'], 99) * 1e3:.3f} ms; p50 difference {gap:+.3f} ms "
          f"[target: within 0.2 ms: {'met' if gap <= 0.2 else 'MISSED'}]")

    promote(kubectl, ns, ip, names, row, shas, pod)


def promote(kubectl: Kubectl, ns: str, ip: str, names: list[str], row: list[float], shas: dict, pod: dict) -> None:
    target = names[7]
    failures: list[str] = []
    answered = Counter()
    first_v2: list[float] = []
    stop = threading.Event()

    def load(offset: int):
        c = Client(ip)
        i = offset
        while not stop.is_set():
            name = names[i % len(names)]
            try:
                code, version, _ = c.infer(name, row)
                if code != 200:
                    failures.append(f"{name}: {code} {version}")
                else:
                    answered[name == target, version] += 1
                    if name == target and version == "2" and not first_v2:
                        first_v2.append(time.monotonic())
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                c = Client(ip)
            i += 4

    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(4)]
    for th in threads:
        th.start()
    kubectl.apply(json.dumps(model_version(f"{target}-v2", target, 2, "Staging", shas[f"{target}-v2"])), "-n", ns)
    wait(lambda: (kubectl.json("get", "modelversion", f"{target}-v2", "-n", ns).get("status") or {}).get("verifiedSha256"),
         300, f"{target}-v2 verified")
    promoted = time.monotonic()
    kubectl.run("patch", "modelversion", f"{target}-v2", "-n", ns, "--type", "merge", "-p", '{"spec":{"stage":"Production"}}')
    kubectl.run("patch", "modelversion", f"{target}-v1", "-n", ns, "--type", "merge", "-p", '{"spec":{"stage":"Archived"}}')
    deadline = time.monotonic() + 120
    while not first_v2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    stop.set()
    for th in threads:
        th.join(timeout=30)
    after = server_pod(kubectl, ns, "tabular")
    same = after["metadata"]["uid"] == pod["metadata"]["uid"]
    took = f"{first_v2[0] - promoted:.1f} s" if first_v2 else "never"
    print(f"{target} promoted under steady load on all models: {sum(answered.values())} answered, {len(failures)} "
          f"failed [target 0: {'met' if not failures else 'MISSED'}]; version 2 answered {took} after the stage "
          f"change; others kept version 1: {all(v == '1' for (t, v) in answered if not t)}; same server pod, no "
          f"restart: {same}")
    for line in failures[:5]:
        print("  failed:", line)


if __name__ == "__main__":
    main()
