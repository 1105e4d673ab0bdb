#!/usr/bin/env python3
"""kiln-serve's multi-model mode (KILN_MODELS_FILE): 200 models behind one server under a memory budget.

    python benchmarks/multimodel.py              # ~1 min; prints the figures
    python benchmarks/multimodel.py --models 50  # fewer models

Models: logistic regressions on 10 numeric features, each fitted on its own synthetic data (so each
has its own coefficients and answers), stored with skops in a file:// store. One kiln-serve in
multi-model mode, pinned to core 0 (taskset), with a budget that fits about 50 of them: a probe
server first measures the idle server's RSS and what a loaded model adds (kiln_model_memory_bytes).
Load is generated from core 1.

Figures:
- first-request load time per model (the client's time for a model's first request, which loads it;
  p50 and max), and the server's own kiln_model_load_seconds;
- the RSS (VmRSS, sampled every 2 ms) while all models are requested round-robin, three passes,
  against the budget; evictions and loads counted by the server; every answer checked against the
  model's own prediction;
- p50/p99 latency of one loaded model at c=1 (wrk, V1, one row) against a single-model kiln-serve
  serving the same model in the same run, both on core 0 (target: p50 within 0.2 ms).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KILN_PY = Path(os.environ.get("KILN_PY", Path.home() / ".cache/kiln/venv/bin/python"))
SERVER_CORE, LOAD_CORE = "0", "1"
N_FEATURES = 10
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
SIG = {"inputs": [{"name": n, "type": "number"} for n in FEATURES],
       "output": {"type": "label", "classes": ["0", "1"]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_models(directory: Path, n: int) -> tuple[list[dict], list, np.ndarray]:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    probe = np.random.default_rng(12345).normal(size=(1, N_FEATURES))
    entries, models = [], []
    for i in range(n):
        rng = np.random.default_rng(i)
        x = rng.normal(size=(400, N_FEATURES))
        y = (x @ rng.normal(size=N_FEATURES) + rng.normal(size=1) > 0).astype(np.int64)
        model = LogisticRegression(max_iter=300).fit(x, y)
        data = sio.dumps(model)
        path = directory / f"m{i}" / "model.skops"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        entries.append({"name": f"m{i}", "version": "1", "modelVersion": f"m{i}-v1", "uri": path.as_uri(),
                        "sha256": hashlib.sha256(data).hexdigest(), "format": "skops", "allowUnsafe": False,
                        "signature": SIG})
        models.append(model)
    return entries, models, probe


class Server:
    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        full = {**{k: v for k, v in os.environ.items() if not k.startswith("KILN_")}, "KILN_HOST": "127.0.0.1",
                "KILN_PORT": str(self.port), "KILN_HANDOFF_SOCKET": "off", "KILN_GRPC_PORT": "off",
                "PYTHONPATH": str(ROOT / "serving_image"), **env}
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, str(KILN_PY), "-m", "kiln_runtime.serve"],
                                     env=full, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln-serve exited with {self.proc.returncode}; see {log}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kiln-serve not ready; see {log}")
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None, conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"content-type": "application/json"})
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            if own:
                conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def metric(self, name: str, **labels) -> float:
        text = self.get("/metrics")[1].decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or line.split("{", 1)[0].split(" ", 1)[0] != name:
                continue
            if want and want not in line:
                continue
            total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def write_table(directory: Path, entries: list[dict]) -> Path:
    path = directory / "models.json"
    path.write_text(json.dumps({"models": entries}, sort_keys=True))
    return path


def wrk_c1(port: int, name: str, row: np.ndarray, seconds: int, tmp: Path) -> tuple[float, float, int, int]:
    body = tmp / f"body-{name}.json"
    body.write_text(json.dumps({"instances": row.tolist()}))
    script = tmp / f"wrk-{name}.lua"
    script.write_text(f"""
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.4f %.4f %d\\n", summary.requests, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
""")
    out = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c1", f"-d{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/v1/models/{name}:predict"], capture_output=True, text=True,
                         timeout=seconds + 60)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    n, p50, p99, errors = line.split()[1:]
    return float(p50), float(p99), int(n), int(errors)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--fit", type=int, default=50, help="about how many models the budget holds")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="per latency figure")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kiln-multimodel-"))
    print(f"kiln-serve multi-model mode: {args.models} logistic regressions ({N_FEATURES} features, skops, file://); "
          f"server on core {SERVER_CORE}, clients on core {LOAD_CORE}")
    t0 = time.monotonic()
    entries, models, probe_row = build_models(tmp / "store", args.models)
    own = [int(m.predict(probe_row)[0]) for m in models]
    print(f"built {len(entries)} models in {time.monotonic() - t0:.1f} s; {len(set(map(tuple, (m.coef_.round(3).tolist()[0] for m in models))))} "
          f"distinct coefficient vectors; answers on the probe row: {own.count(0)} say 0, {own.count(1)} say 1")
    table = write_table(tmp, entries)
    body = json.dumps({"instances": probe_row.tolist()}).encode()

    # A probe server: the idle RSS, and what 20 loaded models add each.
    probe = Server({"KILN_MODELS_FILE": str(table)}, tmp / "probe.log")
    try:
        time.sleep(0.3)
        idle = probe.rss()
        for e in entries[:20]:
            probe.request("POST", f"/v1/models/{e['name']}:predict", body)
        costs = [probe.metric("kiln_model_memory_bytes", model=e["name"]) for e in entries[:20]]
        loaded_rss = probe.rss()
    finally:
        probe.stop()
    cost = statistics.median(costs)
    grown = (loaded_rss - idle) / 20
    per_model = max(cost, grown)
    budget = int(idle + max(2 << 20, (idle + args.fit * per_model) // 64) + (args.fit + 2) * per_model)
    budget = max(budget, 32 << 20)
    print(f"probe: idle RSS {idle / 2**20:.1f} MiB; a loaded model costs {cost / 1024:.0f} KiB accounted (median), "
          f"the RSS grew {grown / 1024:.0f} KiB per model over 20; budget {budget / 2**20:.1f} MiB "
          f"(about {args.fit} models)")

    server = Server({"KILN_MODELS_FILE": str(table), "KILN_MEMORY_BUDGET_BYTES": str(budget)}, tmp / "multi.log")
    peak = [server.rss()]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], server.rss())
            except OSError:
                return
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    first, wrong, failed = [], 0, 0
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    rr_t0 = time.monotonic()
    try:
        for p in range(args.passes):
            for i, e in enumerate(entries):
                t = time.perf_counter()
                status, answer = server.request("POST", f"/v1/models/{e['name']}:predict", body, conn)
                if p == 0:
                    first.append(time.perf_counter() - t)
                if status != 200:
                    failed += 1
                elif json.loads(answer)["predictions"] != [own[i]]:
                    wrong += 1
    finally:
        rr_elapsed = time.monotonic() - rr_t0
        done.set()
        sampler.join()
    loads_ok = server.metric("kiln_model_loads_total", result="ok")
    loads_failed = server.metric("kiln_model_loads_total", result="failed")
    evictions = server.metric("kiln_model_evictions_total")
    loaded = server.metric("kiln_models_loaded")
    load_sum, load_count = server.metric("kiln_model_load_seconds_sum"), server.metric("kiln_model_load_seconds_count")
    first_ms = sorted(x * 1000 for x in first)
    print(f"round-robin: {args.passes} passes over {len(entries)} models, {args.passes * len(entries)} requests in "
          f"{rr_elapsed:.1f} s: {failed} failed, {wrong} wrong answers")
    print(f"first request per model (loads it): p50 {statistics.median(first_ms):.2f} ms, max {first_ms[-1]:.2f} ms; "
          f"server-side load time mean {1000 * load_sum / max(load_count, 1):.2f} ms over {load_count:.0f} loads")
    print(f"loads {loads_ok:.0f} ok, {loads_failed:.0f} failed; evictions {evictions:.0f}; models loaded at the end "
          f"{loaded:.0f}")
    print(f"RSS max {peak[0] / 2**20:.1f} MiB against the budget {budget / 2**20:.1f} MiB: "
          f"{'under' if peak[0] <= budget else 'OVER'} the budget")

    # Latency of one loaded model at c=1, against a single-model server of the same model.
    name, row = entries[0]["name"], probe_row
    server.request("POST", f"/v1/models/{name}:predict", body)
    single = Server({"KILN_MODEL_NAME": name, "KILN_MODEL_URI": entries[0]["uri"],
                     "KILN_MODEL_SHA256": entries[0]["sha256"], "KILN_SIGNATURE": json.dumps(SIG)},
                    tmp / "single.log")
    try:
        results = {}
        for label, srv in (("single", single), ("multi", server), ("single", single), ("multi", server)):
            wrk_c1(srv.port, name, row, 2, tmp)  # warm-up
            p50, p99, n, errors = wrk_c1(srv.port, name, row, args.seconds // 2 or 1, tmp)
            results.setdefault(label, []).append((p50, p99, n, errors))
    finally:
        single.stop()
        server.stop()
    for label in ("single", "multi"):
        rs = results[label]
        p50 = statistics.median(r[0] for r in rs)
        p99 = statistics.median(r[1] for r in rs)
        print(f"c=1 V1 one row, {label}-model kiln-serve: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
              f"({sum(r[2] for r in rs)} requests, {sum(r[3] for r in rs)} errors; two alternating runs, medians)")
    diff = statistics.median(r[0] for r in results["multi"]) - statistics.median(r[0] for r in results["single"])
    print(f"p50 multi - single: {diff * 1000:+.0f} us (target: within 200 us): {'met' if abs(diff) <= 0.2 else 'NOT met'}")
    return 0 if peak[0] <= budget and not failed and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
