"""Kiln's operator at 1,000s of objects, beside the cheapest kopf operator on the same objects.

    python benchmarks/operator.py [--objects 1000] [--rest-seconds 60] [--phases 1,2,3]

Runs against the local cluster (`make cluster-up`; the control plane is enough). Each phase gets a
namespace of its own with a ResourceQuota of 0 pods, so that what is measured is the operator and the
apiserver, not containers. The objects are created first, then the operator under test is started:

- phase 1: one ModelVersion in stage Production and N InferenceServices following it by stage;
- phase 2: N Datasets and N ModelVersions.

For each operator it prints: the time from its start until every object is reconciled (Kiln: its
observedGeneration set and its Deployment or Job owned; the peer: the same with a ConfigMap); the
requests per second it sends at rest (each operator talks to the apiserver through its own
`kubectl proxy -v=6`, whose log has one line per request, watches included); the apiserver's own count
(`apiserver_request_total`) less what the cluster sends with no operator, which also holds what the
controllers do for the children (a Deployment's ReplicaSet retrying pods the quota refuses); its CPU and
resident memory at rest; the kube-apiserver's CPU at rest; and the time to delete the namespace with it
running.
Phase 1 also times a stage change that every service follows: how long until every primary Deployment
has started the rollout to the new version. And it times Kiln's own writes without Kiln's operator
(benchmarks/kiln_writes.py: the same four children and a status patch per service, from a plain client
with as many threads as the operator has workers): the peer owns one ConfigMap per object, Kiln four
children that the cluster's controllers then work on, so that figure says how much of Kiln's time is
the children themselves and how much the operator.

Phase 3 (needs the node and the runtime image, `make images`): one real InferenceService whose pod runs,
in a namespace of its own, served by Kiln's operator alone and then with the N services of phase 1
present in another namespace: its serving pod killed → its Ready condition says so; its ModelVersion
promoted → its rollout starts. The targets of issue 15 are printed with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
STATE = CACHE / "state"
KUBECONFIG = STATE / "kubeconfig"
KUBECTL = sorted(CACHE.glob("k8s-v*/bin/kubectl"))[-1]
TICKS = os.sysconf("SC_CLK_TCK")


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    return subprocess.run([str(KUBECTL), "--kubeconfig", str(KUBECONFIG), *args], input=stdin,
                          capture_output=True, text=True, check=check, timeout=900).stdout


def get_json(*args: str) -> dict:
    return json.loads(kubectl("get", *args, "-o", "json"))


def apiserver_requests() -> float:
    total = 0.0
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")) / 1024


def apiserver_pid() -> int:
    return int((STATE / "pids/kube-apiserver.pid").read_text().strip())


def wait_until(what: str, done: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1.0)
    return time.monotonic() - start


def create_namespace(name: str) -> None:
    kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=true", "--timeout=600s")
    kubectl("create", "namespace", name)
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods", "namespace": name},
             "spec": {"hard": {"pods": "0"}}}
    kubectl("create", "-f", "-", stdin=json.dumps(quota))


def create_many(docs: list[dict]) -> None:
    for start in range(0, len(docs), 250):
        kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs[start:start + 250]}))


def model_version(ns: str, name: str, version: int, stage: str) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name, "namespace": ns},
            "spec": {"modelName": name.rsplit("-", 1)[0], "version": version, "stage": stage,
                     "artifact": {"uri": f"s3://kiln/bench/{name}/model.skops", "sha256": "0" * 64},
                     "framework": {"version": "1.6.1"},
                     "signature": {"inputs": [{"name": "x", "type": "number"}], "output": {"type": "label"}}}}


def inference_service(ns: str, name: str) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name, "namespace": ns},
            # The ModelVersions' digests are made up and no verification pod can run under the 0-pod quota:
            # opted in, as an unverified version is never rolled out otherwise.
            "spec": {"model": {"modelName": "bench", "stage": "Production"}, "allowUnverified": True,
                     "monitoring": {"drift": {"enabled": False}}}}


def dataset(ns: str, name: str) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": name, "namespace": ns},
            "spec": {"source": {"uri": f"s3://kiln/bench/{name}.csv", "format": "csv"}, "target": "y",
                     "schema": {"columns": [{"name": "x", "type": "number"}, {"name": "y", "type": "number"}]}}}


# The list paths the checks read. `kubectl get --raw` hands the apiserver's JSON over as it is: `get -o
# json` of 1,000 Deployments cost 0.8 s of kubectl's CPU and 0.27 s of the apiserver's per poll (measured
# here), so polling that way every second took about half of this 2-core machine away from the operator
# under test, and more from the one with the larger children.
LIST_PATHS = {"deployments": "/apis/apps/v1", "jobs": "/apis/batch/v1", "configmaps": "/api/v1",
              "inferenceservices": "/apis/kiln.dev/v1alpha1", "datasets": "/apis/kiln.dev/v1alpha1",
              "modelversions": "/apis/kiln.dev/v1alpha1", "trainingpipelines": "/apis/kiln.dev/v1alpha1"}


def list_raw(plural: str, ns: str) -> list[dict]:
    return json.loads(kubectl("get", "--raw", f"{LIST_PATHS[plural]}/namespaces/{ns}/{plural}"))["items"]


def reconciled(ns: str, plurals: list[str], child_kind: str) -> Callable[[], bool]:
    """Every object of `plurals` has observedGeneration == generation and owns a `child_kind`."""
    def check() -> bool:
        owners = set()
        for child in list_raw(child_kind, ns):
            owners |= {ref["uid"] for ref in child["metadata"].get("ownerReferences") or []}
        for plural in plurals:
            for obj in list_raw(plural, ns):
                if (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"] \
                        or obj["metadata"]["uid"] not in owners:
                    return False
        return True
    return check


PROXY_PORT = 18402


class CountingProxy:
    """`kubectl proxy -v=6` in front of the apiserver: one log line per request the operator sends."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.kubeconfig = log.with_suffix(".kubeconfig")
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{PROXY_PORT}"}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}]}))

    def __enter__(self) -> "CountingProxy":
        self.proc = subprocess.Popen([str(KUBECTL), "--kubeconfig", str(KUBECONFIG), "proxy", "--port",
                                      str(PROXY_PORT), "-v=6"], stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        time.sleep(1.5)
        return self

    def __exit__(self, *_) -> None:
        stop(self.proc)

    def requests(self) -> int:
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if '"Response" verb=' in line)


def start(cmd: list[str], log: Path, kubeconfig: Path) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'serving_image'}"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def at_rest(proc: subprocess.Popen, proxy: CountingProxy, seconds: float, baseline_rate: float) -> dict[str, float]:
    time.sleep(10)  # let the last writes and their watch events settle
    api_pid = apiserver_pid()
    before = (apiserver_requests(), cpu_seconds(proc.pid), cpu_seconds(api_pid), proxy.requests(), time.monotonic())
    time.sleep(seconds)
    after = (apiserver_requests(), cpu_seconds(proc.pid), cpu_seconds(api_pid), proxy.requests(), time.monotonic())
    elapsed = after[4] - before[4]
    # The two reads of /metrics are requests too: one of them falls inside the window.
    cluster = (after[0] - before[0] - 1) / elapsed
    return {"requests_per_s": (after[3] - before[3]) / elapsed,
            "cluster_requests_per_s": max(cluster - baseline_rate, 0.0),
            "operator_cpu": (after[1] - before[1]) / elapsed,
            "apiserver_cpu": (after[2] - before[2]) / elapsed, "rss_mib": rss_mib(proc.pid)}


def baseline(seconds: float) -> float:
    """Requests per second the cluster sends with no operator running (controllers, scheduler, node)."""
    first, t0 = apiserver_requests(), time.monotonic()
    time.sleep(seconds)
    return (apiserver_requests() - first - 1) / (time.monotonic() - t0)


def run_phase(name: str, make_objects: Callable[[str], list[dict]], plurals: list[str], child_kind: str,
              peer_child: str, args, base: float, stage_change: bool, writes_only: bool = False
              ) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    logs = CACHE / "state/logs"
    logs.mkdir(parents=True, exist_ok=True)
    # kiln-stopped: Kiln's objects and children again (the stage change made too), deleted with no operator
    # running: what deleting that many objects costs the cluster by itself, the reference for Kiln's
    # deletion time.
    # kiln-writes (phase 1): the same children and status patches sent by a plain client with no
    # operator (benchmarks/kiln_writes.py): what the children cost the cluster by themselves.
    for who in ("kiln", "kopf-floor", "kiln-stopped") + (("kiln-writes",) if writes_only else ()):
        ns = f"bench-op-{name}-{who}"
        create_namespace(ns)
        create_many(make_objects(ns))
        if who == "kiln-writes":
            cmd = [sys.executable, str(ROOT / "benchmarks/kiln_writes.py"), "--namespace", ns]
            check = reconciled(ns, plurals, child_kind)
        elif who.startswith("kiln"):
            cmd = [sys.executable, "-m", "kiln_operator", "--namespace", ns, "--health",
                   "http://127.0.0.1:18190/healthz", "--metrics-port", "0", "--log-level", "WARNING"]
            check = reconciled(ns, plurals, child_kind)
        else:
            cmd = [sys.executable, str(ROOT / "benchmarks/cheapest_kopf_operator.py"), "--namespace", ns, *plurals]
            check = reconciled(ns, plurals, peer_child)
        proxy = CountingProxy(logs / f"bench-proxy-{name}-{who}.log").__enter__()
        proc = start(cmd, logs / f"bench-operator-{name}-{who}.log", proxy.kubeconfig)
        try:
            figures = {"reconciled_s": wait_until(f"{who} to reconcile {name}", check, timeout=900)}
            if who in ("kiln", "kopf-floor"):
                figures.update(at_rest(proc, proxy, args.rest_seconds, base))
            # kiln-stopped makes the stage change too before its operator stops: each Deployment then has
            # a second ReplicaSet to delete, as with kiln.
            if stage_change and who in ("kiln", "kiln-stopped"):
                kubectl("patch", "modelversion", "bench-2", "-n", ns, "--type=merge", "-p", '{"spec":{"stage":"Production"}}')
                figures["stage_change_s"] = wait_until("every service to start rolling out bench-2", lambda: all(
                    d["spec"]["template"]["metadata"]["labels"].get("kiln.dev/model-version") == "bench-2"
                    for d in list_raw("deployments", ns)), timeout=600)
            if who == "kiln-stopped":
                stop(proc)
            running = proc.poll() is None
            cpu_before = cpu_seconds(proc.pid) if running else 0.0
            kubectl("delete", "namespace", ns, "--wait=false")
            figures["delete_namespace_s"] = wait_until(f"namespace {ns} to go", lambda: subprocess.run(
                [str(KUBECTL), "--kubeconfig", str(KUBECONFIG), "get", "namespace", ns],
                capture_output=True).returncode != 0, timeout=900)
            if running:  # what the operator spends meanwhile, on the events of a namespace going away
                figures["delete_operator_cpu_s"] = cpu_seconds(proc.pid) - cpu_before
        finally:
            stop(proc)
            proxy.__exit__()
        results[who] = figures
        print(f"  {who}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()), flush=True)
    return results


BRIDGE_IP = "10.244.0.1"  # the pod bridge's host side (hack/lib.sh): pods reach the S3 server there


def reaction(n: int, logs: Path) -> dict[str, dict[str, float]]:
    """Seconds from a killed serving pod to its service's condition, and from a promotion to the rollout,
    with 0 and with n other InferenceServices served by the same operator."""
    sys.path.insert(0, str(ROOT / "tests"))
    import boto3
    import serve_models
    from s3_server import moto_server

    results: dict[str, dict[str, float]] = {}
    with moto_server(BRIDGE_IP) as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
        s3.create_bucket(Bucket="kiln-bench")
        files = serve_models.build(logs / "bench-model", "lr")
        s3.upload_file(str(files.skops), "kiln-bench", "m/model.skops")
        signature = json.loads(files.signature.read_text())
        signature.pop("onnx", None)
        for others in (0, n):
            real, crowd = "bench-op-real", "bench-op-crowd"
            create_namespace(real)
            kubectl("create", "secret", "generic", "kiln-store", "-n", real, "--from-literal=AWS_ACCESS_KEY_ID=bench",
                    "--from-literal=AWS_SECRET_ACCESS_KEY=bench")
            mvs = []
            for version, stage in ((1, "Production"), (2, "Staging")):
                mv = model_version(real, f"m-{version}", version, stage)
                mv["spec"].update(signature=signature, framework={"name": "scikit-learn", "version": "1.8.0"},
                                  artifact={"uri": "s3://kiln-bench/m/model.skops", "format": "skops",
                                            "sha256": files.sha["model.skops"]})
                mvs.append(mv)
            kubectl("delete", "resourcequota", "no-pods", "-n", real)
            isvc = inference_service(real, "m")
            isvc["spec"]["model"]["modelName"] = "m"
            isvc["spec"]["resources"] = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}
            create_many([*mvs, isvc])
            create_namespace(crowd)
            if others:
                create_many([model_version(crowd, "bench-1", 1, "Production")]
                            + [inference_service(crowd, f"svc-{i}") for i in range(others)])
            env_cmd = [sys.executable, "-m", "kiln_operator", "--namespace", real, "--namespace", crowd, "--health",
                       "http://127.0.0.1:18191/healthz", "--metrics-port", "0", "--log-level", "WARNING"]
            log = logs / f"bench-operator-reaction-{others}.log"
            proc = subprocess.Popen(env_cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={
                **os.environ, "KUBECONFIG": str(KUBECONFIG), "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'serving_image'}",
                "KILN_S3_ENDPOINT": url, "KILN_STORE_SECRET": "kiln-store", "KILN_ARTIFACT_ROOT": "s3://kiln-bench/runs"})
            try:
                def status() -> dict:
                    return get_json("inferenceservice", "m", "-n", real).get("status") or {}

                def ready() -> dict:
                    return next((c for c in status().get("conditions") or [] if c["type"] == "Ready"), {})

                wait_until("m-1 served", lambda: status().get("modelVersion") == "m-1" and ready().get("status") == "True",
                           timeout=600)
                if others:
                    wait_until(f"the {others} other services reconciled", reconciled(crowd, ["inferenceservices"],
                                                                                      "deployments"), timeout=900)
                time.sleep(5)
                pod = next(p["metadata"]["name"] for p in get_json("pods", "-n", real)["items"]
                           if p["metadata"]["labels"].get("kiln.dev/model-version") == "m-1")
                kubectl("delete", "pod", pod, "-n", real, "--grace-period=0", "--force", "--wait=false")
                killed = wait_until("the condition to reflect the killed pod", lambda: ready().get("status") == "False",
                                    timeout=120)
                wait_until("m-1 served again", lambda: ready().get("status") == "True", timeout=300)
                kubectl("patch", "modelversion", "m-2", "-n", real, "--type=merge", "-p", '{"spec":{"stage":"Production"}}')
                promoted = wait_until("the rollout of m-2 to start", lambda: get_json(
                    "deployment", "m-primary", "-n", real)["spec"]["template"]["metadata"]["labels"].get(
                    "kiln.dev/model-version") == "m-2", timeout=120)
            finally:
                stop(proc)
            for ns in (real, crowd):
                kubectl("delete", "namespace", ns, "--wait=false")
            results[f"{others} others"] = {"pod_killed_s": killed, "promoted_s": promoted}
            print(f"  with {others} other services: pod killed → condition {killed:.2f} s, "
                  f"promotion → rollout {promoted:.2f} s", flush=True)
    return results


def report(title: str, n: int, results: dict[str, dict[str, float]], objects: int) -> list[bool]:
    kiln, floor = results["kiln"], results["kopf-floor"]
    print(f"\n{title}")
    print("| | Kiln | cheapest kopf operator | ratio | target |\n|---|---|---|---|---|")
    rows = [
        ("all reconciled after start (s)", "reconciled_s", lambda k, f: k <= 3 * f, "≤ 3× the floor"),
        ("requests/s the operator sends at rest", "requests_per_s",
         lambda k, f: k <= 0.01 * objects, f"≤ {0.01 * objects:.2g} (0.01 per object)"),
        ("apiserver requests/s at rest above the no-operator baseline (incl. controllers on children)",
         "cluster_requests_per_s", lambda k, f: True, ""),
        ("operator CPU at rest (cores)", "operator_cpu", lambda k, f: k <= 0.05, "≤ 0.05"),
        ("operator RSS at rest (MiB)", "rss_mib", lambda k, f: k <= 1.5 * f, "≤ 1.5× the floor"),
        ("kube-apiserver CPU at rest (cores), controllers' work on the children included", "apiserver_cpu",
         lambda k, f: True, ""),
        ("delete the namespace, operator running (s)", "delete_namespace_s",
         lambda k, f: k <= results["kiln-stopped"]["delete_namespace_s"] + 5,
         f"≤ Kiln's objects with no operator ({results['kiln-stopped']['delete_namespace_s']:.3g} s, +5 s of polling)"),
    ]
    met = []
    for label, key, ok, target in rows:
        k, f = kiln[key], floor[key]
        ratio = f"{k / f:.2f}×" if f else "–"
        passed = ok(k, f)
        if target:
            met.append(passed)
        verdict = ("met" if passed else "MISSED") if target else ""
        print(f"| {label} | {k:.3g} | {f:.3g} | {ratio} | {target} {verdict} |")
    if "kiln-writes" in results:
        writes = results["kiln-writes"]["reconciled_s"]
        print(f"| the same children and status patches from a plain client, no operator (s) | {writes:.3g} | | "
              f"Kiln {kiln['reconciled_s'] / writes:.2f}× its own writes, floor {floor['reconciled_s'] / writes:.2f}× | |")
    if "stage_change_s" in kiln:
        passed = kiln["stage_change_s"] <= 30
        met.append(passed)
        print(f"| stage change → every one of {n} rolling out (s) | {kiln['stage_change_s']:.3g} | | | ≤ 30 {'met' if passed else 'MISSED'} |")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--rest-seconds", type=float, default=60.0)
    parser.add_argument("--no-reaction", action="store_true", help="skip phase 3 (control plane only)")
    parser.add_argument("--phases", default="1,2,3", help="which phases to run, e.g. 1 (default: 1,2,3)")
    args = parser.parse_args()
    phases = set(args.phases.split(",")) - ({"3"} if args.no_reaction else set())
    n = args.objects
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    print(f"baseline: the cluster's own requests with no operator, over {args.rest_seconds:.0f} s", flush=True)
    base = baseline(args.rest_seconds)
    print(f"  {base:.2f} requests/s")

    def services(ns: str) -> list[dict]:
        return ([model_version(ns, "bench-1", 1, "Production"), model_version(ns, "bench-2", 2, "Staging")]
                + [inference_service(ns, f"svc-{i}") for i in range(n)])

    def data_and_versions(ns: str) -> list[dict]:
        return ([dataset(ns, f"data-{i}") for i in range(n)]
                + [model_version(ns, f"model{i}-1", 1, "Staging") for i in range(n)])

    one = two = three = None
    if "1" in phases:
        print(f"phase 1: {n} InferenceServices following one ModelVersion", flush=True)
        one = run_phase("isvc", services, ["inferenceservices"], "deployments", "configmaps", args, base, True,
                        writes_only=True)
    if "2" in phases:
        print(f"phase 2: {n} Datasets and {n} ModelVersions", flush=True)
        two = run_phase("data", data_and_versions, ["datasets", "modelversions"], "jobs", "configmaps", args, base,
                        False)
    if "3" in phases:
        print(f"phase 3: one real InferenceService, alone and beside {n} others", flush=True)
        three = reaction(n, CACHE / "state/logs")
    met = []
    if one:
        met += report(f"Phase 1: {n} InferenceServices (baseline {base:.2f} requests/s without an operator)", n, one, n)
    if two:
        met += report(f"Phase 2: {n} Datasets + {n} ModelVersions", n, two, 2 * n)
    if three:
        print("\nPhase 3: reaction of one real InferenceService (its pod running)")
        print("| | alone | beside " + str(n) + " others | target |\n|---|---|---|---|")
        for label, key in (("serving pod killed → Ready=False (s)", "pod_killed_s"),
                           ("ModelVersion promoted → rollout started (s)", "promoted_s")):
            alone, crowded = three["0 others"][key], three[f"{n} others"][key]
            passed = crowded <= 5
            met.append(passed)
            print(f"| {label} | {alone:.2f} | {crowded:.2f} | ≤ 5 {'met' if passed else 'MISSED'} |")
    print(f"\n{sum(met)}/{len(met)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
