"""kiln-serve's multi-model mode (KILN_MODELS_FILE) as a real process, driven over real HTTP.

The table is written the way Kubernetes mounts a ConfigMap key (`models.json -> ..data/models.json`,
`..data -> ..<timestamp>`, a rewrite swaps the `..data` symlink), read from a file:// store. Models
are small logistic regressions trained by tests/serve_models.py with different seeds (so they answer
differently), and, for the memory budget, 1-nearest-neighbour classifiers that hold their 7 MB of
training rows, so a few of them measurably move the process's RSS.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import serve_models
from serve_process import ServeProcess

POLL_S = 0.1


class Server(ServeProcess):
    def __init__(self, table: Path, log: Path, **env):
        super().__init__({"KILN_MODELS_FILE": str(table), "KILN_MODELS_POLL_S": str(POLL_S), **env}, log,
                         inherit_kiln_env=False)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def index(self) -> dict:
        answer = requests.post(self.url + "/v2/repository/index", timeout=10)
        assert answer.status_code == 200, answer.text
        return {m["name"]: m for m in answer.json()}

    def metrics(self) -> dict:
        text = requests.get(self.url + "/metrics", timeout=10).text
        check_exposition(text)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}


def check_exposition(text: str) -> None:
    """One valid exposition: it parses, and each family has one HELP and one TYPE, before its samples."""
    families = list(text_string_to_metric_families(text))
    assert families
    for kind in ("# HELP ", "# TYPE "):
        names = [line.split()[2] for line in text.splitlines() if line.startswith(kind)]
        assert len(names) == len(set(names)), f"a family has two {kind.strip()} lines"


@pytest.fixture
def spawn(tmp_path):
    started = []

    def start(table, **env) -> Server:
        server = Server(table, tmp_path / f"serve-{len(started)}.log", **env)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
            print(f"--- {server.log_path}\n{server.log()[-3000:]}")


class Table:
    """models.json as the kubelet mounts a ConfigMap key: every write swaps the ..data symlink."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = directory / "models.json"
        self._n = 0

    def write(self, models: list[dict] | None = None, raw: bytes | None = None) -> None:
        self._n += 1
        data_dir = self.dir / f"..2026_{self._n:04d}"
        data_dir.mkdir()
        (data_dir / "models.json").write_bytes(raw if raw is not None else
                                               json.dumps({"models": models}, sort_keys=True).encode())
        tmp = self.dir / "..data_tmp"
        tmp.symlink_to(data_dir.name)
        os.replace(tmp, self.dir / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/models.json")


def entry(name: str, files, version: str = "1", onnx: bool = False, sha: str | None = None) -> dict:
    e = {"name": name, "version": version, "modelVersion": f"{name}-v{version}", "uri": files.skops.as_uri(),
         "sha256": sha or files.sha["model.skops"], "format": "skops", "allowUnsafe": False,
         "signature": json.loads(files.signature.read_text())}
    if onnx:
        e.update(onnxUri=files.onnx.as_uri(), onnxSha256=files.sha["model.onnx"])
    return e


@pytest.fixture(scope="module")
def lrs(tmp_path_factory):
    """Four logistic regressions on the same 20 features; each answers differently."""
    root = tmp_path_factory.mktemp("lr")
    return [serve_models.build(root / f"lr{i}", "lr", seed=i + 1) for i in range(4)]


def v1_predict(session, url: str, name: str, x: np.ndarray):
    return session.post(f"{url}/v1/models/{name}:predict", json={"instances": x.tolist()}, timeout=30)


def v2_infer(session, url: str, name: str, x: np.ndarray):
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]}
    return session.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)


def test_each_model_answers_as_itself_loaded_on_first_request(spawn, lrs, tmp_path):
    table = Table(tmp_path / "table")
    bad_sha = hashlib.sha256(b"not the model").hexdigest()
    table.write([entry("a", lrs[0]), entry("b", lrs[1], onnx=True), entry("c", lrs[2]),
                 entry("bad", lrs[3], version="7", sha=bad_sha)])
    server = spawn(table.path).wait_ready()
    x = lrs[0].X[:40]
    own = {name: files.model.predict(x) for name, files in zip("abc", lrs)}
    assert not np.array_equal(own["a"], own["b"]) and not np.array_equal(own["a"], own["c"])

    # Nothing is loaded at start; metadata comes from the table meanwhile.
    assert {n: (m["state"], m["reason"]) for n, m in server.index().items()} == {
        n: ("UNAVAILABLE", "not loaded") for n in ("a", "b", "c", "bad")}
    meta = requests.get(server.url + "/v2/models/b", timeout=5)
    assert meta.status_code == 200 and meta.json()["platform"] == "onnxruntime_onnx"
    assert requests.get(server.url + "/v2/models/a/ready", timeout=5).json() == {"name": "a", "ready": False}
    assert requests.get(server.url + "/v1/models", timeout=5).json() == {"models": ["a", "b", "c", "bad"]}

    s = requests.Session()
    for name in ("a", "b"):
        answer = v1_predict(s, server.url, name, x)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == own[name].tolist()
        answer = v2_infer(s, server.url, name, x)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_name"] == name and answer.json()["outputs"][0]["data"] == own[name].tolist()
    index = server.index()
    assert (index["a"]["state"], index["b"]["state"], index["c"]["state"]) == ("READY", "READY", "UNAVAILABLE")
    assert requests.get(server.url + "/v2/models/a/ready", timeout=5).json() == {"name": "a", "ready": True}

    # Same validation and messages as the single-model server.
    bad_row = v1_predict(s, server.url, "a", x[:, :3])
    assert bad_row.status_code == 400 and "20" in bad_row.json()["error"]
    unknown = v1_predict(s, server.url, "nope", x)
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["error"]
    assert v2_infer(s, server.url, "nope", x).status_code == 404
    assert requests.get(server.url + "/v2/models/a/versions/9", timeout=5).status_code == 404
    explained = s.post(server.url + "/v1/models/c:explain", json={"instances": x[:2].tolist()}, timeout=30)
    assert explained.status_code == 200, explained.text

    # A wrong digest: 503 naming the model, version and why; the others are unaffected.
    failed = v1_predict(s, server.url, "bad", x)
    assert failed.status_code == 503
    message = failed.json()["error"]
    assert "'bad'" in message and "'7'" in message and "sha256" in message, message
    again = v2_infer(s, server.url, "bad", x)  # not retried within 30 s: the same answer, at once
    assert again.status_code == 503 and again.json()["error"] == message
    assert v1_predict(s, server.url, "a", x).json()["predictions"] == own["a"].tolist()
    bad = server.index()["bad"]
    assert bad["state"] == "UNAVAILABLE" and "sha256" in bad["reason"] and bad["version"] == "7"

    # The repository extension: load, unload, unknown names.
    assert requests.post(server.url + "/v2/repository/models/bad/load", timeout=30).status_code == 503
    assert requests.post(server.url + "/v2/repository/models/nope/load", timeout=30).status_code == 404
    assert requests.post(server.url + "/v2/repository/models/nope/unload", timeout=30).status_code == 404
    assert requests.get(server.url + "/v2/repository/index", timeout=5).status_code == 405
    loaded = requests.post(server.url + "/v2/repository/models/c/load", timeout=30)
    assert (loaded.status_code, loaded.json()) == (200, {})
    assert server.index()["c"]["state"] == "READY"
    assert requests.post(server.url + "/v2/repository/models/c/unload", timeout=30).status_code == 200
    assert (server.index()["c"]["state"], server.index()["c"]["reason"]) == ("UNAVAILABLE", "unloaded")
    assert v1_predict(s, server.url, "c", x).json()["predictions"] == own["c"].tolist()  # loads again

    # Metrics: one valid exposition, with per-model series and the repository's own.
    m = server.metrics()
    assert m[("kiln_requests_total", (("code", "200"), ("model", "a"), ("protocol", "v1"), ("version", "1")))] >= 2
    assert m[("kiln_requests_total", (("code", "200"), ("model", "b"), ("protocol", "v2"), ("version", "1")))] == 1
    assert m[("kiln_model_info", (("digest", lrs[1].sha["model.onnx"]), ("format", "onnx"), ("model", "b"),
                                  ("runtime", "onnx"), ("version", "1")))] == 1
    assert sum(v for (name, labels), v in m.items() if name == "kiln_model_loads_total"
               and dict(labels).get("model") == "bad" and dict(labels)["result"] == "failed") == 2
    assert sum(v for (name, labels), v in m.items() if name == "kiln_model_loads_total"
               and dict(labels).get("model") == "c" and dict(labels)["result"] == "ok") == 2
    assert m[("kiln_models_loaded", ())] == 3
    assert m[("kiln_model_load_seconds_count", ())] == 4
    assert m[("kiln_model_memory_bytes", (("model", "a"),))] > 0
    assert m[("kiln_requests_total", (("code", "404"), ("model", ""), ("protocol", "v1"), ("version", "")))] >= 1
    assert server.stop() == 0  # graceful SIGTERM as in the single-model mode


def test_table_changes_switch_versions_without_a_failed_request(spawn, lrs, tmp_path):
    table = Table(tmp_path / "table")
    table.write([entry("a", lrs[0]), entry("b", lrs[1])])
    server = spawn(table.path).wait_ready()
    x = lrs[0].X[:8]
    v1_labels, v2_labels, b_labels = (lrs[i].model.predict(x).tolist() for i in (0, 2, 1))
    assert v1_labels != v2_labels
    s = requests.Session()
    assert v2_infer(s, server.url, "a", x).status_code == 200
    assert v2_infer(s, server.url, "b", x).status_code == 200

    stop = threading.Event()
    clients = ("a", "a", "b")
    seen: list[list] = [[] for _ in clients]  # per client, in its own order
    failures: list = []

    def client(i: int):
        session = requests.Session()
        while not stop.is_set():
            answer = v2_infer(session, server.url, clients[i], x)
            if answer.status_code != 200:
                failures.append((clients[i], answer.status_code, answer.text))
                continue
            doc = answer.json()
            seen[i].append((doc["model_version"], doc["outputs"][0]["data"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        table.write([entry("a", lrs[2], version="2"), entry("b", lrs[1])])  # a's artifact and version change
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(any(v == "2" for v, _ in seen[i][-5:]) for i in (0, 1)):
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    for answers in seen[:2]:
        versions = [v for v, _ in answers]
        assert "1" in versions and versions[-1] == "2"
        assert set(versions[versions.index("2"):]) == {"2"}  # switched once, for good
        assert all(data == (v1_labels if v == "1" else v2_labels) for v, data in answers)
    assert seen[2] and all(data == b_labels for _, data in seen[2])
    assert server.index()["a"] == {"name": "a", "version": "2", "state": "READY", "reason": ""}

    # A malformed table later: logged, naming the field; the previous table keeps serving.
    table.write([entry("a", lrs[2], version="2"), {**entry("b", lrs[1]), "sha256": "xyz"}])
    deadline = time.monotonic() + 10
    while "models[1].sha256 is not a sha256 hex digest" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert v2_infer(s, server.url, "b", x).json()["outputs"][0]["data"] == b_labels

    # Removed from the table: 404, while the others answer.
    table.write([entry("a", lrs[2], version="2")])
    deadline = time.monotonic() + 10
    while v2_infer(s, server.url, "b", x).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "'b'" in v2_infer(s, server.url, "b", x).json()["error"]
    assert v2_infer(s, server.url, "a", x).json()["outputs"][0]["data"] == v2_labels
    assert set(server.index()) == {"a"}


def _knn(directory: Path, seed: int, rows: int = 40000):
    import skops.io as sio
    from sklearn.neighbors import KNeighborsClassifier

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, serve_models.N_FEATURES))
    y = (x @ rng.normal(size=serve_models.N_FEATURES) > 0).astype(np.int64)
    model = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x, y)
    data = sio.dumps(model)
    (directory / "model.skops").write_bytes(data)
    sig = {"inputs": [{"name": n, "type": "number"} for n in serve_models.FEATURES],
           "output": {"type": "label", "classes": ["0", "1"]}}
    return {"name": f"knn{seed}", "version": "1", "uri": (directory / "model.skops").as_uri(),
            "sha256": hashlib.sha256(data).hexdigest(), "format": "skops", "signature": sig}, model


def test_memory_budget_evicts_least_recently_used_models(spawn, tmp_path):
    models = [_knn(tmp_path / f"knn{i}", i) for i in range(12)]
    table = Table(tmp_path / "table")
    table.write([e for e, _ in models])
    x = np.random.default_rng(99).normal(size=(4, serve_models.N_FEATURES))
    own = [m.predict(x).tolist() for _, m in models]

    # A first server measures what one model costs beside an idle server.
    probe = spawn(table.path).wait_ready()
    time.sleep(0.2)
    baseline = probe.rss()
    assert v1_predict(requests, probe.url, "knn0", x).status_code == 200
    cost = probe.metrics()[("kiln_model_memory_bytes", (("model", "knn0"),))]
    probe.stop()

    budget = int(baseline + 5 * cost + (8 << 20))  # about three models resident, loads of a fourth
    server = spawn(table.path, KILN_MEMORY_BUDGET_BYTES=str(budget)).wait_ready()
    peak = [server.rss()]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], server.rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    s = requests.Session()
    try:
        for _ in range(2):
            for i, (e, _) in enumerate(models):
                answer = v1_predict(s, server.url, e["name"], x)
                assert answer.status_code == 200, answer.text
                assert answer.json()["predictions"] == own[i]
    finally:
        done.set()
        sampler.join()
    m = server.metrics()
    evictions = sum(v for (name, _), v in m.items() if name == "kiln_model_evictions_total")
    assert evictions >= 12, m
    assert 2 <= m[("kiln_models_loaded", ())] <= 6
    assert peak[0] <= budget, f"RSS peaked at {peak[0]}, over the budget {budget} (baseline {baseline}, cost {cost})"
    reasons = {v["reason"] for v in server.index().values() if v["state"] != "READY"}
    assert reasons == {"evicted (least recently used)"}


def test_a_malformed_table_at_start_exits_2_naming_the_field(spawn, lrs, tmp_path):
    table = Table(tmp_path / "table")
    table.write([entry("a", lrs[0]), {**entry("b", lrs[1]), "sha256": "12ab"}])
    server = spawn(table.path)
    assert server.proc.wait(timeout=60) == 2
    lines = [line for line in server.log().splitlines() if "ERROR" in line]
    assert len(lines) == 1 and "models.json: models[1].sha256 is not a sha256 hex digest" in lines[0], lines

    conflict = spawn(table.path, KILN_MODEL_NAME="x")
    assert conflict.proc.wait(timeout=60) == 2
    assert "KILN_MODEL_NAME is set together with KILN_MODELS_FILE" in conflict.log()
