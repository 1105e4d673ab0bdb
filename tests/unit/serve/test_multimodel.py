"""Multi-model mode's pure parts: its settings, the models file and its watcher, the LRU and budget
arithmetic, and the repository's bookkeeping (one load for concurrent requests, failures and their
retry, eviction, table changes) with a stand-in loader, clock and RSS."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import threading
from types import SimpleNamespace

import pytest

from kiln_runtime.serve import models_file, repository
from kiln_runtime.serve.errors import LoadError, NotFound
from kiln_runtime.serve.repository import Budget, Repository, lru_victims
from kiln_runtime.serve.settings import SettingsError, load

SHA = "a" * 64
SIG = {"inputs": [{"name": "x", "type": "number"}, {"name": "c", "type": "category"}],
       "output": {"type": "label", "classes": ["no", "yes"]}}
MULTI = {"KILN_MODELS_FILE": "/etc/kiln/models/models.json", "KILN_HANDOFF_SOCKET": "off"}


# --- settings ------------------------------------------------------------------------------------

def test_multi_model_settings_and_their_defaults():
    s = load(MULTI)
    assert (s.models_file, s.models_poll_s, s.memory_budget_bytes, s.workers) == (
        "/etc/kiln/models/models.json", 1.0, 512 << 20, 1)
    assert s.handoff_socket is None and s.monitor_url is None
    assert load({**MULTI, "KILN_HANDOFF_SOCKET": ""}).handoff_socket is None  # unset means off here
    assert load({**MULTI, "KILN_MEMORY_BUDGET_BYTES": str(64 << 20)}).memory_budget_bytes == 64 << 20


@pytest.mark.parametrize("change, names", [
    ({"KILN_MODEL_NAME": "m"}, "KILN_MODEL_NAME is set together with KILN_MODELS_FILE"),
    ({"KILN_MODEL_URI": "file:///m"}, "KILN_MODEL_URI is set together"),
    ({"KILN_MODEL_SHA256": SHA}, "KILN_MODEL_SHA256 is set together"),
    ({"KILN_SIGNATURE": "{}"}, "KILN_SIGNATURE is set together"),
    ({"KILN_WORKERS": "2"}, "KILN_WORKERS=2.*one worker"),
    ({"KILN_MONITOR_URL": "http://127.0.0.1:9180"}, "KILN_MONITOR_URL.*feedback is not supported"),
    ({"KILN_HANDOFF_SOCKET": "/run/h.sock"}, "KILN_HANDOFF_SOCKET.*not supported in multi-model mode"),
    ({"KILN_MEMORY_BUDGET_BYTES": str(16 << 20)}, "KILN_MEMORY_BUDGET_BYTES"),
    ({"KILN_MODELS_POLL_S": "soon"}, "KILN_MODELS_POLL_S"),
])
def test_what_multi_model_mode_cannot_do_is_refused_by_name(change, names):
    with pytest.raises(SettingsError, match=names):
        load({**MULTI, **change})


# --- the models file -----------------------------------------------------------------------------

def item(name="churn", **change):
    doc = {"name": name, "version": "3", "modelVersion": f"{name}-v3", "uri": f"s3://b/{name}/model.skops",
           "sha256": SHA, "format": "skops", "allowUnsafe": False, "signature": SIG}
    doc.update(change)
    return {k: v for k, v in doc.items() if v is not None}


def parse(*items, raw=None):
    data = raw if raw is not None else json.dumps({"models": list(items)}, sort_keys=True).encode()
    return models_file.parse(data, load(MULTI))


def test_each_entry_becomes_the_settings_the_loader_takes():
    table = parse(item("churn"), item("fraud", version=7, onnxUri="s3://b/f.onnx", onnxSha256="SHA256:" + "B" * 64))
    assert list(table) == ["churn", "fraud"]
    churn, fraud = table["churn"].settings, table["fraud"].settings
    assert (churn.model_name, churn.model_version, churn.model_uri, churn.model_sha256) == (
        "churn", "3", "s3://b/churn/model.skops", SHA)
    assert churn.onnx_uri is None and json.loads(churn.signature) == SIG and churn.port == 8080
    assert (fraud.model_version, fraud.onnx_uri, fraud.onnx_sha256) == ("7", "s3://b/f.onnx", "b" * 64)
    assert table["churn"].signature.classes == ("no", "yes") and table["churn"].model_version == "churn-v3"
    assert table["churn"].key != table["fraud"].key


@pytest.mark.parametrize("items, raw, message", [
    ((), b"{not json", "models.json: not valid JSON"),
    ((), b"[]", 'models.json: expected a JSON object {"models": [...]}'),
    ((item(), item(sha256="xyz")), None, "models.json: models[1].sha256 is not a sha256 hex digest"),
    ((item(sha256=None),), None, "models[0].sha256 must be a non-empty string"),
    ((item(name="a/b"),), None, "models[0].name 'a/b' must be letters"),
    ((item(), item()), None, "models[1].name 'churn' appears twice"),
    ((item(format="pickle"),), None, "models[0].format='pickle': supported formats are skops and joblib"),
    ((item(onnxUri="s3://b/m.onnx"),), None, "models[0]: onnxUri and onnxSha256 go together"),
    ((item(allowUnsafe="yes"),), None, "models[0].allowUnsafe must be true or false"),
    ((item(signature="s3://b/sig.json"),), None, "models[0].signature must be an object"),
    ((item(signature={"inputs": []}),), None, "models[0].signature.inputs must be a non-empty list"),
    ((item(uri=""),), None, "models[0].uri must be a non-empty string"),
])
def test_a_malformed_file_is_refused_naming_the_field(items, raw, message):
    with pytest.raises(models_file.TableError) as err:
        parse(*items, raw=raw)
    assert message in str(err.value)
    assert str(err.value).startswith("models.json: ")


def test_the_watcher_sees_a_configmap_symlink_swap_and_ignores_an_unchanged_rewrite(tmp_path):
    def publish(n: int, data: bytes):
        target = tmp_path / f"..v{n}"
        target.mkdir()
        (target / "models.json").write_bytes(data)
        (tmp_path / "..tmp").symlink_to(target.name)
        os.replace(tmp_path / "..tmp", tmp_path / "..data")

    publish(1, b'{"models": []}')
    (tmp_path / "models.json").symlink_to("..data/models.json")
    watcher = models_file.Watcher(str(tmp_path / "models.json"))
    assert watcher.read() == b'{"models": []}'
    assert watcher.poll() is None
    publish(2, b'{"models": []}')  # a new inode, the same bytes: not a change
    assert watcher.poll() is None
    publish(3, b'{"models": [1]}')
    assert watcher.poll() == b'{"models": [1]}'
    assert watcher.poll() is None


# --- LRU and budget arithmetic -------------------------------------------------------------------

def test_lru_victims_are_the_least_recently_used_until_enough_is_freed():
    candidates = [(5.0, "recent", 10), (1.0, "oldest", 10), (3.0, "middle", 10)]
    assert lru_victims(candidates, 0) == []
    assert lru_victims(candidates, 5) == ["oldest"]
    assert lru_victims(candidates, 11) == ["oldest", "middle"]
    assert lru_victims(candidates, 100) == ["oldest", "middle", "recent"]
    assert lru_victims([], 100) == []


def test_budget_expects_what_was_measured_and_reserves_the_load_peak():
    budget = Budget(limit=1000, baseline=400)
    assert budget.expected(("a", "1")) == 0 and budget.reserve(("a", "1")) == 0
    budget.record(("a", "1"), 100, 250)
    budget.record(("b", "1"), 120, None)
    assert budget.expected(("a", "1")) == 100 and budget.reserve(("a", "1")) == 250
    assert budget.expected(("c", "1")) == 110  # the median of the others
    assert budget.reserve(("c", "1")) == 250  # the others' median peak
    assert budget.fits_alone(600) and not budget.fits_alone(601)
    assert "KILN_MEMORY_BUDGET_BYTES=1000" in budget.too_large("a", "1", 700)
    assert budget.to_free(rss=900, reserve=0) < 0 and budget.to_free(rss=1100, reserve=0) == 100


# --- the repository, with a stand-in loader ------------------------------------------------------

class FakeServed:
    def __init__(self, entry, runtime, resident):
        self.name, self.version, self.runtime = entry.name, entry.version, runtime
        self.in_flight = False
        self.closed = False
        self._resident = resident

    def busy(self):
        return self.in_flight

    def close(self):
        self.closed = True
        self._resident.pop((self.name, self.version), None)


class World:
    """A repository on a real event loop, whose loads, RSS and clock the test decides."""

    MB = 1 << 20

    def __init__(self, names=("a", "b", "c", "d"), limit=100, baseline=20, cost=20):
        self.loop = asyncio.new_event_loop()
        self.now = 1000.0
        self.cost = cost * self.MB
        self.baseline = baseline * self.MB
        self.resident: dict = {}
        self.loads: list = []
        self.fail: dict = {}  # name -> LoadError message
        self.gate = None  # a threading.Event the load waits for, when set
        self.repo = Repository(self.loop, self.table(names), Budget(limit * self.MB, self.baseline),
                               lambda e, rt: FakeServed(e, rt, self.resident), load=self._load,
                               rss=lambda: self.baseline + sum(self.resident.values()), clock=lambda: self.now)

    def table(self, names, versions=None):
        data = json.dumps({"models": [item(n, version=(versions or {}).get(n, "1")) for n in names]}).encode()
        return models_file.parse(data, load(MULTI))

    def _load(self, entry):
        if self.gate is not None:
            self.gate.wait(5)
        self.loads.append((entry.name, entry.version))
        if entry.name in self.fail:
            raise LoadError(self.fail[entry.name])
        self.resident[(entry.name, entry.version)] = self.cost
        return f"runtime {entry.name} {entry.version}", self.cost, self.cost, 0.01, 0

    def settle(self):
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0.02))

    def ask(self, name, explicit=False):
        """-> a list that receives ("ok", served) or (status, message, retry)."""
        got = []
        self.repo.acquire(self.repo.lookup(name.encode()), lambda s: got.append(("ok", s)),
                          lambda status, message, retry: got.append((status, message, retry)), explicit)
        return got

    def state(self, name):
        return {m["name"]: (m["state"], m["reason"]) for m in self.repo.index()}[name]

    def close(self):
        self.repo.close()
        self.loop.close()


@pytest.fixture
def world():
    w = World()
    yield w
    w.close()


def test_concurrent_first_requests_share_one_load_and_are_answered_when_it_ends(world):
    world.gate = threading.Event()
    asked = [world.ask("a") for _ in range(3)]
    assert all(got == [] for got in asked)
    assert world.state("a")[0] == "LOADING"
    world.gate.set()
    world.settle()
    assert world.loads == [("a", "1")]
    assert all(got[0][0] == "ok" and got[0][1].runtime == "runtime a 1" for got in asked)
    assert world.state("a") == ("READY", "") and world.state("b") == ("UNAVAILABLE", "not loaded")
    with pytest.raises(NotFound, match="'zz' is not served here; this server serves 'a', 'b', 'c', 'd'"):
        world.repo.lookup(b"zz")


def test_waiting_is_bounded(world):
    world.gate = threading.Event()
    for _ in range(repository.MAX_WAITING):
        world.ask("a")
    over = world.ask("a")
    assert over[0][0] == 503 and over[0][2] is True  # answered with Retry-After
    world.gate.set()
    world.settle()


def test_a_failed_load_is_answered_503_and_retried_only_later_or_on_a_new_entry(world):
    world.fail["a"] = "model: sha256 mismatch"
    got = world.ask("a")
    world.settle()
    assert got == [(503, "model 'a' version '1' is unavailable: model: sha256 mismatch", False)]
    assert world.state("a") == ("UNAVAILABLE", "load failed: model: sha256 mismatch")
    assert world.ask("b") == [] and (world.settle() or True)  # others are unaffected
    assert world.state("b")[0] == "READY"
    world.now += repository.RETRY_S - 1
    assert world.ask("a")[0][0] == 503 and world.loads.count(("a", "1")) == 1  # not retried yet
    world.now += 1
    world.ask("a")
    world.settle()
    assert world.loads.count(("a", "1")) == 2  # 30 s later: tried again
    del world.fail["a"]
    world.repo.apply(world.table(("a", "b", "c", "d"), {"a": "2"}))
    got = world.ask("a")  # the entry changed: tried at once
    world.settle()
    assert got[0][0] == "ok" and got[0][1].version == "2"
    assert world.repo.loads == {("a", "1", "failed"): 2, ("b", "1", "ok"): 1, ("a", "2", "ok"): 1}


def test_least_recently_used_idle_models_are_evicted_to_fit_the_budget(world):
    # limit 100 MB, baseline 20, 20 MB per model (peak 20): 3 fit beside a load's reservation.
    for name in ("a", "b", "c"):
        world.ask(name)
        world.settle()
        world.now += 1
    assert [world.state(n)[0] for n in "abc"] == ["READY"] * 3
    world.ask("a")  # a is now the most recently used
    world.now += 1
    world.repo.states["b"].served.in_flight = True  # b has a request in its batcher: it stays
    world.ask("d")
    world.settle()
    assert world.state("c") == ("UNAVAILABLE", "evicted (least recently used)")
    assert [world.state(n)[0] for n in "abd"] == ["READY"] * 3
    assert world.repo.evictions == {"c": 1}
    assert world.baseline + sum(world.resident.values()) <= 100 * world.MB
    got = world.ask("c")  # evicted models load again on their next request
    world.settle()
    assert got[0][0] == "ok" and world.state("a") == ("UNAVAILABLE", "evicted (least recently used)")


def test_a_model_that_cannot_fit_alone_is_refused_naming_the_budget():
    w = World(limit=60, baseline=20, cost=50)
    try:
        got = w.ask("a")
        w.settle()
        assert got[0][0] == 503 and "KILN_MEMORY_BUDGET_BYTES" in got[0][1]
        assert w.repo.states["a"].served is None and w.repo.loaded() == []  # not kept
    finally:
        w.close()


def test_a_new_version_loads_beside_the_old_one_which_answers_until_the_switch(world):
    world.ask("a")
    world.settle()
    old = world.repo.states["a"].served
    world.gate = threading.Event()
    world.repo.apply(world.table(("a", "b"), {"a": "2"}))  # c and d removed too
    assert set(world.repo.states) == {"a", "b"}
    assert world.state("a") == ("LOADING", "loading; version 1 answers meanwhile")
    assert world.ask("a")[0][1] is old  # no wait, no error during the load
    world.gate.set()
    world.settle()
    new = world.ask("a")[0][1]
    assert new.version == "2" and old.closed and world.state("a") == ("READY", "")

    world.fail["a"] = "onnx model: sha256 mismatch"
    world.repo.apply(world.table(("a", "b"), {"a": "3"}))
    world.settle()
    assert world.ask("a")[0][1] is new  # the failed version 3 does not replace version 2
    assert world.state("a") == ("UNAVAILABLE", "load failed: onnx model: sha256 mismatch; version 2 answers meanwhile")


def test_removal_answers_the_waiting_404_and_unload_frees_the_model(world):
    world.gate = threading.Event()
    got = world.ask("c")
    world.repo.apply(world.table(("a", "b")))
    assert got[0][0] == 404 and "'c' was removed" in got[0][1]
    world.gate.set()
    world.settle()
    with pytest.raises(NotFound):
        world.repo.lookup(b"c")
    world.ask("a")
    world.settle()
    world.repo.unload(world.repo.states["a"])
    assert world.state("a") == ("UNAVAILABLE", "unloaded") and world.repo.loaded() == []
    assert ("a", "1") not in world.resident  # closed
    text = world.repo.render_metrics()
    assert "kiln_models_loaded 0\n" in text and 'kiln_model_loads_total{model="a",version="1",result="ok"} 1' in text


def test_what_a_first_load_imports_is_the_servers_memory_not_the_models(tmp_path, monkeypatch):
    # The first model of a kind imports its estimator's code: that memory stays whatever is evicted, so
    # charging it to the model would make the model look too large to fit (or an eviction look useless).
    (tmp_path / "kiln_heavy_estimator_code.py").write_text("BLOB = b'x' * (24 << 20)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    artifacts = SimpleNamespace(model_bytes=b"m" * 1000, onnx_bytes=None)
    monkeypatch.setattr(repository.loader, "fetch", lambda settings: artifacts)
    monkeypatch.setattr(repository.loader, "build",
                        lambda settings, a: importlib.import_module("kiln_heavy_estimator_code"))
    entry = SimpleNamespace(settings=None)
    runtime, cost, _, _, imported = repository.load_model(entry)
    assert cost == 1000 and imported >= 16 << 20
    runtime, cost, _, _, imported = repository.load_model(entry)  # imported already: nothing more
    assert imported == 0 and cost >= 1000

    world = World(limit=100, baseline=20, cost=20)
    world._load = lambda entry: ("runtime", 1 << 20, 1 << 20, 0.01, 30 << 20)
    world.repo._load = world._load
    assert world.ask("a") == [] and (world.settle() or True)
    assert world.repo.budget.baseline == (20 + 30) << 20
    assert world.repo.states["a"].cost == 1 << 20
