"""The real local node (issue 9): pods are real containers on the kubelet + containerd node that
hack/cluster-up.sh starts; Services through kube-proxy, names through CoreDNS, metrics through
metrics-server. Every pod here runs the local Debian base image (python3 and a shell) under the
restricted Pod Security Standard.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = pytest.mark.cluster

IMAGE = "docker.io/kiln/base:dev"
# A TEST-NET-3 address (RFC 5737): never routed anywhere. Used only as a connect target that must fail
# inside the pod before any packet is sent.
OUTSIDE = "203.0.113.7"
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}


def container(name: str, script: str, **extra) -> dict:
    """A restricted container running a shell script, with a writable /tmp (the root is read-only)."""
    return {"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script], "securityContext": CONTAINER_SECURITY,
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}], **extra}


def pod_spec(*containers: dict, restart: str = "Always", **extra) -> dict:
    return {"securityContext": POD_SECURITY, "restartPolicy": restart, "terminationGracePeriodSeconds": 1,
            "containers": list(containers), "volumes": [{"name": "tmp", "emptyDir": {}}], **extra}


def pod(name: str, spec: dict) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def deployment(name: str, replicas: int, spec: dict) -> str:
    labels = {"app": name}
    return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                       "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                                "template": {"metadata": {"labels": labels}, "spec": spec}}})


def service(name: str, port: int, target: int) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                       "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target}]}})


def job(name: str, spec: dict, **job_spec) -> str:
    return json.dumps({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                       "spec": {"backoffLimit": 0, "template": {"spec": spec}, **job_spec}})


def phase(kubectl, ns: str, name: str) -> str:
    return kubectl.run("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}").stdout


def run_to_completion(kubectl, ns: str, name: str, script: str, timeout: float = 90) -> str:
    """Runs a one-off pod to completion and returns its log (fails if it does not succeed)."""
    kubectl.apply(pod(name, pod_spec(container("main", script), restart="Never")), "-n", ns)
    final = kubectl.wait_for(lambda: (p := phase(kubectl, ns, name)) in ("Succeeded", "Failed") and p,
                             timeout=timeout, what=f"pod {name} to finish")
    logs = kubectl.run("logs", name, "-n", ns).stdout
    assert final == "Succeeded", f"pod {name} {final}:\n{logs}"
    return logs


# An HTTP server answering its own pod name, on 8080, from a read-only root (files under /tmp).
WEB = ("mkdir -p /tmp/www && hostname > /tmp/www/index.html && "
       "exec python3 -m http.server 8080 --bind 0.0.0.0 --directory /tmp/www")


def web_container(**extra) -> dict:
    return container("web", WEB, ports=[{"containerPort": 8080}],
                     readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}, **extra)


def test_node_is_ready_at_the_pinned_release(kubectl):
    node = kubectl.json("get", "node", "kiln-node")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    assert {"type": "InternalIP", "address": "10.244.0.1"} in node["status"]["addresses"]
    assert node["spec"]["podCIDR"] == "10.244.0.0/24"


def test_deployment_is_reached_by_cluster_ip_and_dns_name(kubectl, namespace):
    kubectl.apply(deployment("web", 3, pod_spec(web_container())), "-n", namespace)
    kubectl.apply(service("web", 80, 8080), "-n", namespace)
    kubectl.run("wait", "-n", namespace, "--for=condition=Available", "deploy/web", "--timeout=120s",
                timeout=130)
    pods = {p["metadata"]["name"] for p in kubectl.json("get", "pods", "-n", namespace, "-l", "app=web")["items"]}
    assert len(pods) == 3
    ip = kubectl.run("get", "svc", "web", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ip.startswith("10.96.")

    # From another pod: by ClusterIP, by short name, by full name; many requests reach every replica.
    script = f"""
import socket, time, urllib.request
seen = set()
# Every name answers; then requests go on until each replica has answered (kube-proxy may add the last
# endpoint a moment after the Deployment is Available on a busy machine).
hosts = ["{ip}", "web", "web.{namespace}.svc.cluster.local"]
deadline = time.monotonic() + 30
for i in range(1000):
    if i >= len(hosts) and (len(seen) == 3 or time.monotonic() > deadline):
        break
    seen.add(urllib.request.urlopen(f"http://{{hosts[i % 3]}}/", timeout=5).read().decode().strip())
print("ADDR", socket.gethostbyname("web.{namespace}.svc.cluster.local"))
print("SEEN", " ".join(sorted(seen)))
try:
    socket.getaddrinfo("example.com", 80)
    print("OUTSIDE-NAME resolved")
except socket.gaierror as e:
    print("OUTSIDE-NAME refused", e)
"""
    logs = run_to_completion(kubectl, namespace, "client", f"python3 -c '{script}'")
    assert f"ADDR {ip}" in logs
    seen = set(next(line for line in logs.splitlines() if line.startswith("SEEN")).split()[1:])
    assert seen == pods, f"requests reached {seen}, replicas are {pods}"
    assert "OUTSIDE-NAME refused" in logs, logs

    # From the host too: kube-proxy's rules serve ClusterIPs on the node itself.
    body = urllib.request.urlopen(f"http://{ip}/", timeout=5).read().decode().strip()
    assert body in pods


def test_pod_failing_readiness_leaves_the_endpointslice(kubectl, namespace):
    ready_probe = {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1}
    kubectl.apply(deployment("flaky", 1, pod_spec(
        container("main", "touch /tmp/ready && exec sleep 3600", readinessProbe=ready_probe))), "-n", namespace)
    kubectl.apply(service("flaky", 80, 8080), "-n", namespace)

    def endpoints():
        slices = kubectl.json("get", "endpointslices", "-n", namespace,
                              "-l", "kubernetes.io/service-name=flaky")["items"]
        return [(e["targetRef"]["name"], e["conditions"].get("ready")) for s in slices
                for e in (s.get("endpoints") or [])]

    ready = kubectl.wait_for(lambda: [e for e in endpoints() if e[1]], timeout=90, what="a ready endpoint")
    name = ready[0][0]
    kubectl.run("exec", "-n", namespace, name, "--", "rm", "/tmp/ready")
    kubectl.wait_for(lambda: all(not r for n, r in endpoints() if n == name), timeout=30,
                     what="the unready pod to leave the EndpointSlice's ready endpoints")


def test_job_with_completions_and_parallelism_completes(kubectl, namespace):
    kubectl.apply(job("batch", pod_spec(container("main", "echo work; sleep 1"), restart="Never"),
                      completions=3, parallelism=2), "-n", namespace)
    kubectl.run("wait", "-n", namespace, "--for=condition=Complete", "job/batch", "--timeout=120s", timeout=130)
    assert kubectl.json("get", "job", "batch", "-n", namespace)["status"]["succeeded"] == 3


def test_indexed_job_pods_see_their_completion_index(kubectl, namespace):
    kubectl.apply(job("indexed", pod_spec(container("main", 'echo "INDEX=$JOB_COMPLETION_INDEX"'), restart="Never"),
                      completions=3, parallelism=3, completionMode="Indexed"), "-n", namespace)
    kubectl.run("wait", "-n", namespace, "--for=condition=Complete", "job/indexed", "--timeout=120s", timeout=130)
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", "job-name=indexed")["items"]
    indexes = {kubectl.run("logs", "-n", namespace, p["metadata"]["name"]).stdout.strip() for p in pods}
    assert indexes == {"INDEX=0", "INDEX=1", "INDEX=2"}


def test_failing_container_restarts_with_backoff_on_failure(kubectl, namespace):
    kubectl.apply(pod("crash", pod_spec(container("main", "echo failing; exit 1"), restart="OnFailure")),
                  "-n", namespace)

    def restarted():
        st = kubectl.json("get", "pod", "crash", "-n", namespace)["status"].get("containerStatuses") or [{}]
        return st[0].get("restartCount", 0) >= 2 and st[0]
    status = kubectl.wait_for(restarted, timeout=90, what="two restarts")
    assert status["lastState"]["terminated"]["exitCode"] == 1
    # The kubelet spaces the restarts out: it reports each back-off as an event (during a back-off
    # 1.37 keeps showing the terminated state rather than waiting/CrashLoopBackOff).
    kubectl.wait_for(lambda: "BackOff" in kubectl.run(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=crash",
        "-o", "jsonpath={.items[*].reason}").stdout, timeout=30, what="a BackOff event")


def test_failing_container_fails_the_pod_with_restart_never(kubectl, namespace):
    kubectl.apply(pod("once", pod_spec(container("main", "exit 1"), restart="Never")), "-n", namespace)
    kubectl.wait_for(lambda: phase(kubectl, namespace, "once") == "Failed", timeout=60, what="phase Failed")
    status = kubectl.json("get", "pod", "once", "-n", namespace)["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0
    assert status["state"]["terminated"]["exitCode"] == 1


def test_logs_exec_and_top(kubectl, namespace):
    kubectl.apply(pod("talker", pod_spec(container("main", "echo hello-from-the-node; exec sleep 3600"))),
                  "-n", namespace)
    kubectl.run("wait", "-n", namespace, "--for=condition=Ready", "pod/talker", "--timeout=60s", timeout=70)
    assert "hello-from-the-node" in kubectl.run("logs", "-n", namespace, "talker").stdout
    assert kubectl.run("exec", "-n", namespace, "talker", "--", "cat", "/etc/hostname").stdout.strip() == "talker"
    assert kubectl.run("exec", "-n", namespace, "talker", "--", "id", "-u").stdout.strip() == "10001"
    # metrics-server scrapes every 10 s; the pod's first sample needs one or two rounds.
    top = kubectl.wait_for(lambda: (r := kubectl.run("top", "pod", "talker", "-n", namespace, "--no-headers",
                                                     check=False)).returncode == 0 and r.stdout,
                           timeout=90, interval=3, what="kubectl top pod")
    assert top.split()[0] == "talker" and top.split()[2].endswith("Mi")


def test_hpa_scales_up_under_cpu_load_and_back_down(kubectl, namespace):
    # Each pod burns CPU while /tmp/burn exists (capped at 200m by its limit); the test starts and
    # stops the load through kubectl exec.
    burner = container("main", "while :; do if [ -f /tmp/burn ]; then :; else sleep 1; fi; done",
                       resources={"requests": {"cpu": "50m"}, "limits": {"cpu": "200m"}})
    kubectl.apply(deployment("burn", 1, pod_spec(burner)), "-n", namespace)
    kubectl.run("wait", "-n", namespace, "--for=condition=Available", "deploy/burn", "--timeout=90s", timeout=100)
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "burn"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                    "minReplicas": 1, "maxReplicas": 3,
                    "metrics": [{"type": "Resource", "resource": {
                        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 100}}}],
                    "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                                 "scaleDown": {"stabilizationWindowSeconds": 5,
                                               "policies": [{"type": "Percent", "value": 100,
                                                             "periodSeconds": 5}]}}}}
    kubectl.apply(json.dumps(hpa), "-n", namespace)
    first = kubectl.json("get", "pods", "-n", namespace, "-l", "app=burn")["items"][0]["metadata"]["name"]
    kubectl.run("exec", "-n", namespace, first, "--", "touch", "/tmp/burn")

    def replicas():
        return kubectl.json("get", "hpa", "burn", "-n", namespace)["status"].get("desiredReplicas", 0)
    try:
        kubectl.wait_for(lambda: replicas() >= 2, timeout=150, interval=2, what="the HPA to scale up")
    finally:
        kubectl.run("exec", "-n", namespace, first, "--", "rm", "-f", "/tmp/burn", check=False)
    kubectl.wait_for(lambda: replicas() == 1 and kubectl.json("get", "deploy", "burn", "-n", namespace)
                     ["spec"]["replicas"] == 1, timeout=150, interval=2, what="the HPA to scale back to 1")


def test_read_only_root_filesystem_refuses_writes(kubectl, namespace):
    kubectl.apply(pod("rofs", pod_spec(container("main", "echo x > /probe && echo WROTE || echo REFUSED"),
                                       restart="Never")), "-n", namespace)
    kubectl.wait_for(lambda: phase(kubectl, namespace, "rofs") == "Succeeded", timeout=60,
                     what="the probe pod to finish")
    logs = kubectl.run("logs", "-n", namespace, "rofs").stdout
    assert "Read-only file system" in logs and "REFUSED" in logs, logs


def test_run_as_non_root_refuses_an_image_running_as_root(kubectl, namespace):
    spec = pod_spec(container("main", "id -u"), restart="Never")
    spec["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    kubectl.apply(pod("rootimage", spec), "-n", namespace)

    def refused():
        st = kubectl.json("get", "pod", "rootimage", "-n", namespace)["status"].get("containerStatuses") or [{}]
        return st[0].get("state", {}).get("waiting")
    waiting = kubectl.wait_for(lambda: (w := refused()) and w.get("reason") == "CreateContainerConfigError" and w,
                               timeout=60, what="the kubelet to refuse the container")
    assert "non-root" in waiting["message"], waiting


def test_pod_connect_outside_fails_at_once(kubectl, namespace):
    script = f"""
import socket, time
print(open("/proc/net/route").read())
s = socket.socket()
s.settimeout(10)
t = time.monotonic()
try:
    s.connect(("{OUTSIDE}", 80))
    print("CONNECTED")
except OSError as e:
    print("ERRNO", e.errno, e.strerror, "AFTER", round(time.monotonic() - t, 3))
"""
    logs = run_to_completion(kubectl, namespace, "outside", f"python3 -c '{script}'")
    errno_line = next(line for line in logs.splitlines() if line.startswith(("ERRNO", "CONNECTED")))
    parts = errno_line.split()
    assert parts[1] == "101" and "unreachable" in errno_line, logs  # ENETUNREACH
    assert float(parts[-1]) < 1.0, logs
    # No default route in the pod: only the node's /24 and the service range.
    routes = [line.split()[1] for line in logs.splitlines()[1:] if line.startswith("eth0")]
    assert "00000000" not in routes, logs


def test_project_images_entry_points_run_as_pods(kubectl, namespace):
    # The images `make images` built: each entry point starts as a non-root container on the node.
    commands = {"train": ("runtime", "kiln-train"), "serve": ("runtime", "kiln-serve"),
                "monitor": ("runtime", "kiln-monitor"), "operator": ("operator", "kiln-operator")}
    for pod_name, (image, command) in commands.items():
        c = container("main", f'{command} --help; echo "EXIT=$?"; echo "UID=$(id -u)"')
        c["image"] = f"docker.io/kiln/{image}:dev"
        kubectl.apply(pod(pod_name, pod_spec(c, restart="Never")), "-n", namespace)
    for pod_name, (image, command) in commands.items():
        kubectl.wait_for(lambda name=pod_name: phase(kubectl, namespace, name) in ("Succeeded", "Failed"),
                         timeout=120, what=f"the {command} pod of the {image} image")
        logs = kubectl.run("logs", "-n", namespace, pod_name).stdout
        assert f"usage: {command}" in logs and "UID=10001" in logs, logs
