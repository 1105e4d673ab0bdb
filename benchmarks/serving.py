#!/usr/bin/env python3
"""kiln-serve against a minimal floor server, MLServer and KServe's model server (issues 5 and 10).

    python benchmarks/serving.py            # the full run (~25 min): prints the tables and the targets
    python benchmarks/serving.py --quick    # a smoke run (~3 min): logistic regression, 1 row, c=1 and 64
    python benchmarks/serving.py --only payload   # payload logging on vs off, then rows stored vs answered
    python benchmarks/serving.py --only grpc      # the gRPC rows: kiln-serve and MLServer (lr, 1 row, c=1/16/64)

Each server in turn is pinned to core 0 (taskset), wrk to core 1, loopback only. Servers:
- floor: benchmarks/floor_server.py (uvloop + httptools, V1 JSON parsed, onnxruntime on the rows);
- kiln: kiln-serve with its defaults (signature validation, metrics, both protocols, drift hand-off on:
  its socket has no listener, so frames are built and sent and the kernel refuses them);
- kiln+monitor: the same with a kiln-monitor sidecar bound to the hand-off socket, receiving every
  row (pinned to core 1 with the load generator: in a pod it is another container);
- kiln+payload: kiln+monitor with payload logging at 100% sampling (KILN_PAYLOAD_URI on a file://
  store); after its figures a graceful stop (SIGTERM to both), then the rows in the store (read back
  with pyarrow) are compared with the rows kiln-serve answered (kiln_predictions_total);
- mlserver-batch / mlserver: MLServer 1.7.1 + mlserver-sklearn, adaptive batching (32, 5 ms) on/off;
- kserve: KServe 0.21's Python model server with a sklearnserver-style model.
MLServer speaks V2 only and the floor V1 only.

gRPC (the Open Inference Protocol's `inference.GRPCInferenceService/ModelInfer`, protocol `grpc`): kiln-serve
on KILN_GRPC_PORT and MLServer on its grpc_port, loaded by h2load (Debian's nghttp2-client, installed by
hack/install-deps.sh) on one HTTP/2 connection carrying c concurrent streams (-c1 -m c, as one gRPC
channel does), posting one prebuilt gRPC-framed ModelInferRequest (1 row, FP64 in raw_input_contents);
latency percentiles come from h2load's per-request log. h2load only sees HTTP statuses, and gRPC
errors travel as HTTP 200 with a grpc-status trailer: so a tritonclient.grpc checker verifies sampled
answers during the run, and for kiln-serve its own counters must show no gRPC error over the run. Models (tests/serve_models.py): a logistic regression
and a 100-tree random forest (depth 8) on 20 numeric features; the floor and kiln serve the same ONNX
export, the peers the same model through joblib (what mlserver-sklearn loads).

A figure counts only when wrk saw no non-2xx answer and no socket error, and a checker thread that
sends sample requests during the run got the model's own predictions back; otherwise it is flagged.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import serve_models  # noqa: E402  (the test suite's model builder, shared)

CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache/kiln"))
BENCH_VENVS = CACHE / "bench-venvs"
KILN_PY = Path(os.environ.get("KILN_PY", CACHE / "venv/bin/python"))
SERVER_CORE, LOAD_CORE = "0", "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- servers ---------------------------------------------------------------------------------------

@dataclass
class Running:
    procs: list
    port: int
    workdir: Path
    grpc_port: int | None = None

    def pids(self) -> list[int]:
        return [self.procs[-1].pid]  # the server (and its children), not a sidecar

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@dataclass
class ServerKind:
    name: str
    protocols: tuple
    ready_path: str
    needs: str | None = None  # a bench venv this server runs in

    def available(self) -> bool:
        return self.needs is None or (BENCH_VENVS / self.needs / "bin/python").exists()


SERVERS = {
    "floor": ServerKind("floor", ("v1",), "/"),
    "kiln": ServerKind("kiln", ("v1", "v2", "grpc"), "/v2/health/ready"),
    "kiln+monitor": ServerKind("kiln+monitor", ("v1", "v2"), "/v2/health/ready"),
    "kiln+payload": ServerKind("kiln+payload", ("v1", "v2"), "/v2/health/ready"),
    "mlserver-batch": ServerKind("mlserver-batch", ("v2", "grpc"), "/v2/health/ready", "mlserver"),
    "mlserver": ServerKind("mlserver", ("v2", "grpc"), "/v2/health/ready", "mlserver"),
    "kserve": ServerKind("kserve", ("v1", "v2"), "/v1/models/m", "kserve"),
}


def pinned(core: str, argv: list) -> list:
    return ["taskset", "-c", core, *map(str, argv)]


def start(kind: ServerKind, files: serve_models.ModelFiles, workdir: Path, log) -> Running:
    port = free_port()
    grpc_port = free_port() if "grpc" in kind.protocols else None
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    if kind.name == "floor":
        argv = [KILN_PY, ROOT / "benchmarks/floor_server.py", files.onnx, port]
    elif kind.name.startswith("kiln"):
        handoff = workdir / "handoff.sock"
        env.update(files.env(), KILN_PORT=str(port), KILN_HOST="127.0.0.1", KILN_HANDOFF_SOCKET=str(handoff),
                   KILN_GRPC_PORT=str(grpc_port) if grpc_port else "off")
        if kind.name in ("kiln+monitor", "kiln+payload"):
            baseline = workdir / "baseline.json"
            baseline.write_text(json.dumps(_baseline(files)))
            menv = {**env, "KILN_BASELINE_URI": baseline.as_uri(), "KILN_MONITOR_PORT": str(free_port()),
                    "KILN_MONITOR_HOST": "127.0.0.1"}
            if kind.name == "kiln+payload":
                menv.update(KILN_PAYLOAD_URI=(workdir / "payload").as_uri(), KILN_PAYLOAD_SAMPLE_RATE="1")
            procs.append(subprocess.Popen(pinned(LOAD_CORE, [KILN_PY, "-m", "kiln_runtime.monitor"]),
                                          env=menv, stdout=log, stderr=subprocess.STDOUT))
            _wait_for(lambda: handoff.exists(), 60, "kiln-monitor's hand-off socket")
        argv = [KILN_PY, "-m", "kiln_runtime.serve"]
    elif kind.name.startswith("mlserver"):
        repo = workdir / "mlserver"
        (repo / "m").mkdir(parents=True, exist_ok=True)
        shutil.copy(files.joblib, repo / "m/model.joblib")
        (repo / "settings.json").write_text(json.dumps({
            "http_port": port, "grpc_port": grpc_port or free_port(), "metrics_port": free_port(),
            "host": "127.0.0.1"}))
        model = {"name": "m", "implementation": "mlserver_sklearn.SKLearnModel",
                 "parameters": {"uri": "./model.joblib", "version": "1"}}
        if kind.name == "mlserver-batch":
            model.update(max_batch_size=32, max_batch_time=0.005)
        (repo / "m/model-settings.json").write_text(json.dumps(model))
        argv = [BENCH_VENVS / "mlserver/bin/mlserver", "start", repo]
    elif kind.name == "kserve":
        argv = [BENCH_VENVS / "kserve/bin/python", ROOT / "benchmarks/kserve_server.py", files.joblib, port,
                free_port()]
    else:
        raise ValueError(kind.name)
    procs.append(subprocess.Popen(pinned(SERVER_CORE, argv), env=env, stdout=log, stderr=subprocess.STDOUT,
                                  cwd=workdir))
    running = Running(procs, port, workdir, grpc_port)

    def ready() -> bool:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"{kind.name} exited while starting (log: {log.name})")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", kind.ready_path)
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    try:
        _wait_for(ready, 180, f"{kind.name} to be ready")
    except Exception:
        running.stop()
        raise
    return running


def _baseline(files: serve_models.ModelFiles) -> dict:
    from kiln_runtime.profile import profile_column

    return {"rows": len(files.X),
            "columns": {f: profile_column(files.X[:, i], "number", seed=i) for i, f in enumerate(serve_models.FEATURES)},
            "predictions": profile_column(files.labels, "integer")}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def process_tree(pids: list[int]) -> set[int]:
    """The processes and all their descendants (MLServer forks workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = set(pids), list(pids)
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in process_tree(pids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the server's processes have used so far."""
    total = 0
    for pid in process_tree(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / _TICK


# --- requests ---------------------------------------------------------------------------------------

def body(protocol: str, rows: np.ndarray) -> bytes:
    if protocol == "v1":
        return json.dumps({"instances": rows.tolist()}).encode()
    return json.dumps({"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                                   "data": rows.reshape(-1).tolist()}]}).encode()


def path(protocol: str) -> str:
    return "/v1/models/m:predict" if protocol == "v1" else "/v2/models/m/infer"


def answer_labels(protocol: str, data: bytes) -> list:
    doc = json.loads(data)
    values = doc["predictions"] if protocol == "v1" else doc["outputs"][0]["data"]
    return [int(v) for v in values]


class Checker(threading.Thread):
    """Sends sample requests during a run and compares the answers with the model's own predictions."""

    def __init__(self, port: int, protocol: str, files, rows: int, duration: float, samples: int = 8):
        super().__init__(daemon=True)
        self.port, self.protocol, self.files, self.rows = port, protocol, files, rows
        self.interval = duration / (samples + 1)
        self.samples = samples
        self.errors: list[str] = []
        self.checked = 0

    def run(self) -> None:
        rng = np.random.default_rng(self.port)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            for _ in range(self.samples):
                time.sleep(self.interval)
                idx = rng.choice(len(self.files.X), size=self.rows, replace=False)
                conn.request("POST", path(self.protocol), body(self.protocol, self.files.X[idx]),
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    self.errors.append(f"status {resp.status}: {data[:200]!r}")
                elif answer_labels(self.protocol, data) != self.files.labels[idx].tolist():
                    self.errors.append("wrong predictions")
                self.checked += 1
        except Exception as exc:  # a failed check is a failed figure, with the reason
            self.errors.append(f"{type(exc).__name__}: {exc}")


# --- gRPC ----------------------------------------------------------------------------------------------

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


def grpc_request(rows: np.ndarray, request_id: str = ""):
    """A ModelInferRequest as tritonclient.grpc sends it: one FP64 tensor in raw_input_contents."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name="m", id=request_id)
    req.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    req.raw_input_contents.append(np.ascontiguousarray(rows, dtype="<f8").tobytes())
    return req


def grpc_body(rows: np.ndarray) -> bytes:
    """The request body of a unary gRPC call: 1-byte compressed flag, 4-byte big-endian length, message."""
    message = grpc_request(rows).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


class GrpcChecker(Checker):
    """The Checker's job over gRPC, with tritonclient.grpc (grpcio) on a channel of its own."""

    def run(self) -> None:
        import tritonclient.grpc as grpcclient

        rng = np.random.default_rng(self.port)
        try:
            client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{self.port}")
            for _ in range(self.samples):
                time.sleep(self.interval)
                idx = rng.choice(len(self.files.X), size=self.rows, replace=False)
                inp = grpcclient.InferInput("input-0", [self.rows, self.files.X.shape[1]], "FP64")
                inp.set_data_from_numpy(self.files.X[idx].astype(np.float64))
                result = client.infer("m", [inp], outputs=[grpcclient.InferRequestedOutput("predict")],
                                      client_timeout=30)
                if [int(v) for v in result.as_numpy("predict").reshape(-1)] != self.files.labels[idx].tolist():
                    self.errors.append("wrong predictions over gRPC")
                self.checked += 1
            client.close()
        except Exception as exc:  # a failed check is a failed figure, with the reason
            self.errors.append(f"{type(exc).__name__}: {exc}")


def run_h2load(port: int, rows: np.ndarray, concurrency: int, duration: float, tmp: Path) -> tuple:
    """h2load on one connection with `concurrency` streams -> (requests, seconds, p50 ms, p99 ms,
    non-2xx, failed or errored)."""
    if shutil.which("h2load") is None:
        raise RuntimeError("h2load is missing: run hack/install-deps.sh (Debian's nghttp2-client)")
    body_file = tmp / f"grpc-{len(rows)}.bin"
    body_file.write_bytes(grpc_body(rows))
    log_file = tmp / f"h2load-{port}-{concurrency}.log"
    argv = pinned(LOAD_CORE, ["h2load", "-c1", f"-m{concurrency}", f"-D{max(1, round(duration))}",
                              "-d", body_file, "-H", "content-type: application/grpc", "-H", "te: trailers",
                              f"--log-file={log_file}", f"http://127.0.0.1:{port}{GRPC_PATH}"])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout
    try:
        secs = float(text.split("finished in ", 1)[1].split("s,", 1)[0])
        counts = text.split("requests: ", 1)[1].splitlines()[0]
        fields = {v: int(k) for k, v in (part.strip().split(" ", 1) for part in counts.split(","))}
        codes = text.split("status codes: ", 1)[1].splitlines()[0]
        ok = int(codes.split(" 2xx", 1)[0])
    except (IndexError, ValueError):
        raise RuntimeError(f"h2load printed no result: {text[-500:]} {out.stderr[-500:]}") from None
    latencies = []
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            latencies.append(int(parts[2]) / 1000.0)
    p50, p99 = (float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))) if latencies else (0.0, 0.0)
    done = fields.get("succeeded", 0)
    return done, secs, p50, p99, fields.get("done", 0) - ok, fields.get("failed", 0) + fields.get("errored", 0)


def kiln_grpc_errors(port: int) -> float:
    """gRPC calls kiln-serve answered with an error so far (its kiln_requests_total, protocol grpc)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("kiln_requests_total{") and 'protocol="grpc"' in line and 'code="200"' not in line)


WRK_SCRIPT = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %.6f %.3f %.3f %d %d\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Figure:
    server: str
    model: str
    protocol: str
    rows: int
    concurrency: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non2xx: int = 0
    socket_errors: int = 0
    rss_mb: float = 0.0
    per_cpu_s: float = 0.0  # requests per CPU-second the server used: what other load on the core cannot skew
    errors: list = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors and self.non2xx == 0 and self.socket_errors == 0 and self.rps > 0


def run_wrk(port: int, protocol: str, rows: np.ndarray, concurrency: int, duration: float, tmp: Path) -> tuple:
    body_file = tmp / f"body-{protocol}-{len(rows)}.json"
    body_file.write_bytes(body(protocol, rows))
    script = tmp / f"wrk-{protocol}-{len(rows)}.lua"
    script.write_text(WRK_SCRIPT.replace("{body}", str(body_file)))
    argv = pinned(LOAD_CORE, ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
                              "-s", script, f"http://127.0.0.1:{port}{path(protocol)}"])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    n, secs, p50, p99, non2xx, sock = line.split()[1:]
    return int(n), float(secs), float(p50), float(p99), int(non2xx), int(sock)


def measure(kind: ServerKind, files, running: Running, protocol: str, rows: int, concurrency: int,
            duration: float, tmp: Path) -> Figure:
    fig = Figure(kind.name, files.kind, protocol, rows, concurrency)
    sample = files.X[:rows]
    grpc = protocol == "grpc"
    checker = (GrpcChecker(running.grpc_port, protocol, files, rows, duration) if grpc
               else Checker(running.port, protocol, files, rows, duration))
    checker.start()
    kiln_errors = kiln_grpc_errors(running.port) if grpc and kind.name.startswith("kiln") else None
    cpu0 = cpu_seconds(running.pids())
    try:
        if grpc:
            n, secs, fig.p50_ms, fig.p99_ms, fig.non2xx, fig.socket_errors = run_h2load(
                running.grpc_port, sample, concurrency, duration, tmp)
        else:
            n, secs, fig.p50_ms, fig.p99_ms, fig.non2xx, fig.socket_errors = run_wrk(
                running.port, protocol, sample, concurrency, duration, tmp)
        fig.rps = n / secs
        fig.per_cpu_s = n / max(cpu_seconds(running.pids()) - cpu0, 1e-9)
    except Exception as exc:
        fig.errors.append(str(exc))
    checker.join(duration + 30)
    fig.errors += checker.errors
    if checker.checked < checker.samples and not checker.errors:
        fig.errors.append(f"only {checker.checked} of {checker.samples} sample answers checked")
    if kiln_errors is not None:
        extra = kiln_grpc_errors(running.port) - kiln_errors
        if extra:
            fig.errors.append(f"{extra:.0f} gRPC calls answered with an error status")
    fig.rss_mb = rss_kb(running.pids()) / 1024
    return fig


def predict_floor(files, rows: int, calls: int = 2000) -> dict[str, float]:
    """The model's own in-process call time (median microseconds) on the server core: onnxruntime on
    the ONNX export (what the floor and kiln-serve run) and scikit-learn's predict (what the peers run).
    No server can answer faster than this."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(files.onnx), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    x = files.X[:rows].astype(np.float32)
    feeds = {names[0]: x} if len(names) == 1 else {n: x[:, j:j + 1] for j, n in enumerate(names)}
    label = [session.get_outputs()[0].name]
    out = {}
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    try:
        for name, call, n in (("onnxruntime", lambda: session.run(label, feeds), calls),
                              ("scikit-learn", lambda: files.model.predict(files.X[:rows]), calls // 10)):
            call()
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            out[name] = float(np.median(times)) * 1e6
    finally:
        os.sched_setaffinity(0, previous)
    return out


# --- reporting ----------------------------------------------------------------------------------------

def find(figs, server, model, protocol, rows, conc):
    for f in figs:
        if (f.server, f.model, f.protocol, f.rows, f.concurrency) == (server, model, protocol, rows, conc):
            return f
    return None


def ratio(a: Figure | None, b: Figure | None) -> str:
    if a is None or b is None or not a.valid or not b.valid:
        return "-"
    return f"{a.rps / b.rps:.2f}x"


def report(figs: list[Figure]) -> None:
    print()
    header = (f"{'model':5} {'server':15} {'proto':5} {'rows':>4} {'conc':>4} {'req/s':>9} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'RSS MB':>7} {'req/CPU-s':>9} {'vs floor':>9} {'vs MLServer':>11}  note")
    print(header)
    print("-" * len(header))
    for f in figs:
        floor = find(figs, "floor", f.model, "v1", f.rows, f.concurrency)
        mls = find(figs, "mlserver-batch", f.model, "grpc" if f.protocol == "grpc" else "v2", f.rows, f.concurrency)
        note = "" if f.valid else "INVALID: " + "; ".join(
            ([f"{f.non2xx} non-2xx"] if f.non2xx else []) + ([f"{f.socket_errors} socket errors"] if f.socket_errors else [])
            + f.errors)[:120]
        print(f"{f.model:5} {f.server:15} {f.protocol:5} {f.rows:>4} {f.concurrency:>4} {f.rps:>9.0f} "
              f"{f.p50_ms:>8.2f} {f.p99_ms:>8.2f} {f.rss_mb:>7.0f} {f.per_cpu_s:>9.0f} {ratio(f, floor):>9} "
              f"{ratio(f, mls):>11}  {note}")


def targets(figs: list[Figure]) -> list[tuple[str, bool | None, str]]:
    """Issue 10's targets, each measured in this run. None: not measured."""
    out = []
    models = sorted({f.model for f in figs})
    for m in models:
        floor64, floor1 = find(figs, "floor", m, "v1", 1, 64), find(figs, "floor", m, "v1", 1, 1)
        mls = find(figs, "mlserver-batch", m, "v2", 1, 64)
        for p in ("v1", "v2"):
            k64, k1 = find(figs, "kiln", m, p, 1, 64), find(figs, "kiln", m, p, 1, 1)
            if k64 and floor64 and k64.valid and floor64.valid:
                ok = k64.rps >= 0.5 * floor64.rps and k64.p99_ms <= 2 * floor64.p99_ms
                out.append((f"{m} {p} c64: >= 50% of floor req/s, p99 <= 2x floor", ok,
                            f"{k64.rps / floor64.rps:.0%} of {floor64.rps:.0f} req/s; p99 {k64.p99_ms:.2f} vs "
                            f"{floor64.p99_ms:.2f} ms; per CPU-second {k64.per_cpu_s / floor64.per_cpu_s:.0%}"))
            if k64 and mls and k64.valid and mls.valid:
                out.append((f"{m} {p} c64: >= 10x MLServer-with-batching req/s", k64.rps >= 10 * mls.rps,
                            f"{k64.rps / mls.rps:.1f}x ({k64.rps:.0f} vs {mls.rps:.0f}); per CPU-second "
                            f"{k64.per_cpu_s / mls.per_cpu_s:.1f}x"))
            if k1 and floor1 and k1.valid and floor1.valid:
                out.append((f"{m} {p} c1: p50 <= floor p50 + 0.3 ms", k1.p50_ms <= floor1.p50_ms + 0.3,
                            f"{k1.p50_ms:.3f} vs {floor1.p50_ms:.3f} ms"))
            if k64 and mls and k64.valid and mls.valid:
                ok = k64.rps >= 3 * mls.rps and k64.p99_ms <= 0.5 * mls.p99_ms
                out.append((f"{m} {p} c64 (issue 5): >= 3x MLServer-with-batching req/s, p99 <= half of it", ok,
                            f"p99 {k64.p99_ms:.2f} vs {mls.p99_ms:.2f} ms"))
            logged = find(figs, "kiln+payload", m, p, 1, 64)
            plain = find(figs, "kiln+monitor", m, p, 1, 64)
            if logged and plain and logged.valid and plain.valid:
                out.append((f"{m} {p} c64: payload logging (100%) >= 90% of the sidecar without it",
                            logged.rps >= 0.9 * plain.rps,
                            f"{logged.rps / plain.rps:.2f} ({logged.rps:.0f} vs {plain.rps:.0f} req/s)"))
            side = find(figs, "kiln+monitor", m, p, 1, 64)
            if side and k64 and side.valid and k64.valid:
                out.append((f"{m} {p} c64: with the sidecar >= 90% of without", side.rps >= 0.9 * k64.rps,
                            f"{side.rps / k64.rps:.0%} ({side.rps:.0f} vs {k64.rps:.0f})"))
        out += grpc_targets(figs, m)
    return out


def grpc_targets(figs: list[Figure], m: str) -> list[tuple[str, bool, str]]:
    """Issue 19's gRPC targets at c=64, one row: kiln-serve's gRPC >= 0.7x its own HTTP V2, and >= 10x
    MLServer's gRPC (the faster of MLServer with and without adaptive batching)."""
    out = []
    g64, v64 = find(figs, "kiln", m, "grpc", 1, 64), find(figs, "kiln", m, "v2", 1, 64)
    if g64 and v64 and g64.valid and v64.valid:
        out.append((f"{m} grpc c64: >= 0.7x kiln-serve's own HTTP V2 req/s", g64.rps >= 0.7 * v64.rps,
                    f"{g64.rps / v64.rps:.2f}x ({g64.rps:.0f} vs {v64.rps:.0f}); per CPU-second "
                    f"{g64.per_cpu_s / v64.per_cpu_s:.2f}x"))
    peers = [f for f in (find(figs, "mlserver-batch", m, "grpc", 1, 64), find(figs, "mlserver", m, "grpc", 1, 64))
             if f is not None and f.valid]
    if g64 and g64.valid and peers:
        best = max(peers, key=lambda f: f.rps)
        out.append((f"{m} grpc c64: >= 10x MLServer's gRPC req/s", g64.rps >= 10 * best.rps,
                    f"{g64.rps / best.rps:.1f}x ({g64.rps:.0f} vs {best.server} {best.rps:.0f}); per CPU-second "
                    f"{g64.per_cpu_s / best.per_cpu_s:.1f}x"))
    return out


def answered_rows(port: int) -> tuple[int, int]:
    """(rows kiln-serve predicted, rows its hand-off dropped), from its /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    rows = dropped = 0
    for line in text.splitlines():
        if line.startswith("kiln_predictions_total{"):
            rows += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("kiln_handoff_rows_total{") and 'outcome="dropped"' in line:
            dropped = int(float(line.rsplit(" ", 1)[1]))
    return rows, dropped


def stored_rows(directory: Path) -> tuple[int, int]:
    """(rows, files) of the Parquet payload log under `directory`, read back with pyarrow."""
    import pyarrow.dataset as ds

    if not directory.exists():
        return 0, 0
    dataset = ds.dataset(directory, format="parquet", partitioning="hive")
    return dataset.count_rows(), len(dataset.files)


# --- main -------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: lr, 1 row, c=1 and 64, 3 s per figure")
    ap.add_argument("--duration", type=float, help="seconds per figure (default 10, quick 3)")
    ap.add_argument("--servers", help=f"comma-separated subset of {','.join(SERVERS)}")
    ap.add_argument("--models", help="comma-separated subset of lr,rf")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--no-setup", action="store_true", help="do not install wrk and the peers' venvs")
    ap.add_argument("--only", choices=["payload", "grpc"],
                    help="payload: only kiln+monitor vs kiln+payload (lr, 1 row, c=64) and the stored-rows check; "
                         "grpc: only the gRPC rows (kiln, mlserver-batch, mlserver; lr, 1 row, c=1/16/64) and "
                         "kiln's HTTP V2 at c=64 for the ratio")
    args = ap.parse_args()
    if args.only == "payload":
        args.servers = args.servers or "kiln+monitor,kiln+payload"
        args.models = args.models or "lr"
        args.no_setup = True
    if args.only == "grpc":
        args.servers = args.servers or "kiln,mlserver-batch,mlserver"
        args.models = args.models or "lr"
    if (os.cpu_count() or 1) < 2:
        print("needs two cores: one for the servers, one for the load generator", file=sys.stderr)
        return 2
    if not args.no_setup:
        subprocess.run(["bash", str(ROOT / "benchmarks/setup_serving_peers.sh")], check=True,
                       stdout=subprocess.DEVNULL)
    # SIGTERM ends the run through the same `finally` blocks as an error, so no server is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # this driver and its checker share the load core
    duration = args.duration or (3.0 if args.quick else 10.0)
    models = (args.models or ("lr" if args.quick else "lr,rf")).split(",")
    server_names = (args.servers or ",".join(SERVERS)).split(",")
    row_counts = (1,) if (args.quick or args.only) else (1, 32)
    concurrencies = (64,) if args.only == "payload" else (1, 64) if args.quick else (1, 16, 64)
    print(f"# kiln serving benchmark: {', '.join(models)} x {', '.join(server_names)}; rows {row_counts}; "
          f"concurrency {concurrencies}; {duration:g} s per figure; servers on core {SERVER_CORE}, wrk on core "
          f"{LOAD_CORE}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    figs: list[Figure] = []
    floors: list[tuple] = []
    stores: list[tuple] = []  # (model, rows answered, hand-off drops, rows stored, files)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for model in models:
            files = serve_models.build(CACHE / "bench-models" / model, model)
            for rows in row_counts:
                floor = predict_floor(files, rows)
                print(f"  {model} in-process predict, {rows} row(s): " + ", ".join(
                    f"{k} {v:.0f} us" for k, v in floor.items()), flush=True)
                floors.append((model, rows, floor))
            for name in server_names:
                kind = SERVERS[name]
                if not kind.available():
                    print(f"# {name}: skipped, {BENCH_VENVS / kind.needs} is missing", flush=True)
                    continue
                workdir = tmp / f"{model}-{name.replace('+', '-')}"  # store.py reads file:// paths verbatim
                workdir.mkdir()
                with open(workdir / "server.log", "wb") as log:
                    try:
                        running = start(kind, files, workdir, log)
                    except Exception as exc:
                        print(f"# {name} on {model}: could not start: {exc}", flush=True)
                        print((workdir / "server.log").read_text(errors="replace")[-2000:], flush=True)
                        continue
                    try:
                        try:
                            if args.only == "grpc":
                                run_h2load(running.grpc_port, files.X[:1], 16, 1.0, tmp)  # warm-up
                            else:
                                run_wrk(running.port, kind.protocols[0], files.X[:1], 16, 1.0, tmp)  # warm-up
                        except Exception as exc:
                            print(f"# {name} on {model}: warm-up failed: {exc}", flush=True)
                            print((workdir / "server.log").read_text(errors="replace")[-2000:], flush=True)
                            continue
                        for protocol in kind.protocols:
                            for rows in row_counts:
                                for conc in concurrencies:
                                    if name in ("kiln+monitor", "kiln+payload") and (rows, conc) != (1, 64):
                                        continue  # the sidecar targets are c=64, one row
                                    if protocol == "grpc" and rows != 1:
                                        continue  # the gRPC targets are one row per call
                                    if args.only == "grpc" and protocol != "grpc" and (
                                            protocol != "v2" or name != "kiln" or conc != 64):
                                        continue  # kiln's HTTP V2 at c=64 only: the ratio's denominator
                                    fig = measure(kind, files, running, protocol, rows, conc, duration, tmp)
                                    figs.append(fig)
                                    print(f"  {model} {name:15} {protocol} rows={rows:<2} c={conc:<2} "
                                          f"{fig.rps:9.0f} req/s  p50 {fig.p50_ms:7.2f} ms  p99 {fig.p99_ms:8.2f} ms  "
                                          f"RSS {fig.rss_mb:4.0f} MB  {fig.per_cpu_s:6.0f} req/CPU-s "
                                          f"{'' if fig.valid else 'INVALID'}", flush=True)
                        if name == "kiln+monitor":
                            answered, dropped = answered_rows(running.port)
                            print(f"  {model} kiln+monitor: {answered} rows answered, {dropped} dropped by the "
                                  "hand-off (the sidecar shares the load generator's core)", flush=True)
                        if name == "kiln+payload":
                            answered, dropped = answered_rows(running.port)
                            running.stop()  # SIGTERM to both: the monitor flushes its buffer before exiting
                            stored, nfiles = stored_rows(workdir / "payload")
                            stores.append((model, answered, dropped, stored, nfiles))
                            print(f"  {model} kiln+payload graceful stop: {answered} rows answered, {dropped} dropped "
                                  f"by the hand-off, {stored} rows in {nfiles} Parquet files", flush=True)
                    finally:
                        running.stop()
    report(figs)
    print("\nThe model's own call, in process on the server core (median):")
    for model, rows, floor in floors:
        print(f"  {model} {rows:>2} row(s): " + ", ".join(f"{k} {v:.0f} us" for k, v in floor.items()))
    results = targets(figs)
    for model, answered, dropped, stored, nfiles in stores:
        results.append((f"{model} payload log after a graceful stop: rows stored == rows answered",
                        stored == answered, f"{stored} stored ({nfiles} files) vs {answered} answered; "
                        f"{dropped} dropped by the hand-off (counted by kiln-serve)"))
        results.append((f"{model} payload log after a graceful stop: rows stored == rows the monitor received "
                        "(answered - hand-off drops)", stored == answered - dropped,
                        f"{stored} vs {answered - dropped}"))
    print("\nTargets of issues 10 and 19 (measured in this run):")
    for label, ok, detail in results:
        print(f"  [{'met' if ok else 'MISSED'}] {label}: {detail}")
    if args.json:
        args.json.write_text(json.dumps([f.__dict__ | {"valid": f.valid} for f in figs], indent=1))
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
