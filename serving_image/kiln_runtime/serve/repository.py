"""Multi-model mode's model repository: which models of the table are loaded, loading them lazily off
the event loop, and keeping the process's resident memory under KILN_MEMORY_BUDGET_BYTES.

Everything here runs on the event loop except the load itself (loader.fetch + loader.build: reading
the artifacts, checking digests, vetting skops types, deserialising), which runs on one thread of its
own, so the models already loaded keep answering meanwhile. A request for a model that is not loaded
waits for its load (at most MAX_WAITING per model, then 503); concurrent first requests share one load.

Memory: a model's cost is the growth of the process's RSS across its load (at least its artifacts'
size), remembered per (name, version) with the load's peak (VmHWM, reset before each load). Before
a load the least recently used models with nothing in flight are evicted until the RSS plus that
peak fits (while a model builds, the artifact's bytes, the buffers deserialising them and the
objects built are all held at once); after it, again while the RSS is over. An
eviction ends with gc.collect() and glibc's malloc_trim(0), which hands the freed heap back to the
kernel, so the RSS actually falls. A model whose own cost does not fit beside the server's baseline
is refused (503 naming the budget).

A failed load is answered 503 naming the model, the version and the loader's message, and is not
retried for RETRY_S seconds (unless the table entry changes, or the repository API asks for it). A
model whose table entry changes while it is loaded keeps answering with the old version while the new
one loads, then switches in one step on the event loop: no request sees a gap.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

from . import loader
from .errors import LoadError, NotFound
from .metrics import _esc, _histogram, _num

log = logging.getLogger("kiln.serve")

RETRY_S = 30.0  # a failed load is tried again no sooner than this (unless its entry changes)
MAX_WAITING = 256  # requests waiting for one model's load; more are answered 503 with Retry-After
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
NOT_LOADED, EVICTED, UNLOADED = "not loaded", "evicted (least recently used)", "unloaded"

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """The process's resident set size, from /proc/self/statm (one read, no parsing of status)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss_since_reset() -> int | None:
    """VmHWM, the highest RSS since `reset_peak_rss()`, or None where it cannot be reset."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
        return True
    except OSError:
        return False


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc: freed memory stays in the heap, gc still runs
        return None


_LIBC = _libc()
_trim = _LIBC.malloc_trim if _LIBC is not None else None
_M_MMAP_THRESHOLD = -3


def fix_mmap_threshold() -> None:
    """glibc serves a block over 128 KiB with its own mmap, returned to the kernel when freed, but it
    raises that threshold after such a block is freed (up to 32 MiB): then an artifact's bytes read
    during a load stay in the heap after the load. Setting the threshold fixes it at 128 KiB, so a
    model's memory is counted in the RSS while it lives and leaves it when it goes."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def release_memory() -> None:
    """After an eviction: collect the model's reference cycles, then return the freed heap to the OS."""
    gc.collect()
    if _trim is not None:
        _trim(0)


def lru_victims(candidates: list[tuple[float, str, int]], need: int) -> list[str]:
    """The models to evict to free `need` bytes: (last used, name, cost) oldest first, until their
    costs cover it; all of them when they do not. Nothing when nothing is needed."""
    victims, freed = [], 0
    for _, name, cost in sorted(candidates):
        if freed >= need:
            break
        victims.append(name)
        freed += cost
    return victims


class Budget:
    """The memory arithmetic: costs remembered per (name, version), what a load must find free."""

    def __init__(self, limit: int, baseline: int):
        self.limit, self.baseline = limit, baseline
        self.known: dict[tuple[str, str], int] = {}  # RSS growth that stays while loaded
        self.peaks: dict[tuple[str, str], int] = {}  # RSS growth at the load's highest point

    def expected(self, key: tuple[str, str]) -> int:
        """A model's cost: measured before, else the median of the others' (0 before any load)."""
        cost = self.known.get(key)
        if cost is not None:
            return cost
        return int(statistics.median(self.known.values())) if self.known else 0

    def reserve(self, key: tuple[str, str]) -> int:
        """What a load must find free: its peak measured before (while it builds, the artifact's bytes,
        the buffers deserialising them and the objects built are all held), else the others' median
        peak, else twice its expected cost."""
        peak = self.peaks.get(key)
        if peak is None and self.peaks:
            peak = int(statistics.median(self.peaks.values()))
        return max(peak or 0, self.expected(key) if peak is not None else 2 * self.expected(key))

    def record(self, key: tuple[str, str], cost: int, peak: int | None) -> None:
        self.known[key] = cost
        if peak is not None:
            self.peaks[key] = max(peak, cost)

    def fits_alone(self, cost: int) -> bool:
        return cost <= self.limit - self.baseline

    def too_large(self, name: str, version: str, cost: int) -> str:
        return (f"model {name!r} version {version!r} needs about {cost} bytes of memory; the memory budget "
                f"(KILN_MEMORY_BUDGET_BYTES={self.limit}) leaves {self.limit - self.baseline} bytes beside "
                f"the server's own {self.baseline}")

    def to_free(self, rss: int, reserve: int) -> int:
        """Bytes to evict so that `reserve` more fits under the limit (<= 0: nothing). A load also
        keeps back a little headroom (1/64 of the budget, at least 2 MiB) for what the event loop
        allocates meanwhile and for the measurements' noise."""
        headroom = max(2 << 20, self.limit // 64) if reserve else 0
        return rss + reserve + headroom - self.limit


class ModelState:
    """One name of the table: its entry, what answers for it now, and its load."""

    __slots__ = ("entry", "served", "served_entry", "loading", "waiters", "failure", "reason",
                 "last_used", "cost", "_answers")

    def __init__(self, entry):
        self.entry = entry  # the table's current entry (models_file.Entry)
        self.served = None  # the ServedModel answering, possibly of an older entry while a new one loads
        self.served_entry = None
        self.loading = None  # the entry being loaded, or None
        self.waiters: list = []  # (on_ready, on_error) of requests waiting for the load
        self.failure = None  # (entry key, message, monotonic time) of the last failed load
        self.reason = NOT_LOADED  # why nothing is served: not loaded, evicted, unloaded
        self.last_used = 0.0
        self.cost = 0  # accounted bytes while loaded
        self._answers = None  # (entry, metadata answers from the table)

    def current(self) -> bool:
        return self.served is not None and self.served_entry.key == self.entry.key

    def table_answers(self, max_batch_size: int) -> dict[bytes, bytes]:
        from .served_model import table_answers

        if self._answers is None or self._answers[0] is not self.entry:
            self._answers = (self.entry, table_answers(self.entry, max_batch_size))
        return self._answers[1]


def load_model(entry):
    """On the load thread: -> (runtime, cost in bytes, peak growth in bytes or None, seconds, the RSS
    growth that stays whatever is evicted). Raises LoadError as the loader does.

    A load that imports modules (the first model of a kind: its estimator's code, skops' loaders) grows
    the RSS by what those modules hold too, often more than the model itself, and no eviction gives that
    back: it is the server's, so it moves to the baseline, and the model is charged its artifacts' size."""
    t0 = perf_counter()
    measured = reset_peak_rss()
    modules = len(sys.modules)
    before = rss_bytes()
    artifacts = loader.fetch(entry.settings)
    size = len(artifacts.model_bytes) + len(artifacts.onnx_bytes or b"")
    runtime = loader.build(entry.settings, artifacts)
    del artifacts
    if _trim is not None:
        _trim(0)  # what the build freed (this thread's arena included) is not the model's
    growth = rss_bytes() - before
    peak = peak_rss_since_reset() if measured else None
    peak_growth = peak - before if peak is not None else None
    if len(sys.modules) > modules:
        return runtime, size, peak_growth, perf_counter() - t0, max(growth - size, 0)
    return runtime, max(growth, size), peak_growth, perf_counter() - t0, 0


class Repository:
    def __init__(self, loop, table: dict, budget: Budget, make_served, load=load_model, rss=rss_bytes,
                 clock=time.monotonic, executor=None):
        """`make_served(entry, runtime)` -> a ServedModel (on the loop); `load(entry)` runs on the
        load thread; `rss` and `clock` are the process's unless a test gives its own."""
        self.loop, self.budget, self.make_served = loop, budget, make_served
        self._load, self.rss, self.clock = load, rss, clock
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="kiln-load")
        self.states: dict[str, ModelState] = {name: ModelState(e) for name, e in table.items()}
        self.closed = False
        # metrics
        self.loads: dict[tuple[str, str, str], int] = {}  # (model, version, ok|failed) -> count
        self.evictions: dict[str, int] = {}
        self.load_seconds = [0.0] * (len(LOAD_BUCKETS) + 1)
        self.load_seconds_sum = 0.0

    # --- lookups ---------------------------------------------------------------------------------

    def lookup(self, name: bytes) -> ModelState:
        state = self.states.get(name.decode(errors="replace"))
        if state is None:
            names = sorted(self.states)
            shown = ", ".join(repr(n) for n in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10
                                                               else "")
            raise NotFound(f"model {name[:100].decode(errors='replace')!r} is not served here; this server "
                           f"serves {shown or 'no model'}")
        return state

    def acquire(self, state: ModelState, on_ready, on_error, explicit: bool = False) -> None:
        """Calls on_ready(served) now or once loaded, or on_error(status, message, retry_later)."""
        served = state.served
        # A loaded model answers at once, even while its table entry's new version loads; only an
        # explicit load (the repository API) waits for the version the table names.
        if served is not None and (not explicit or state.current()):
            state.last_used = self.clock()
            if not state.current() and state.loading is None and self._may_retry(state, False):
                self._start(state)  # the new version failed earlier: try again in the background
            on_ready(served)
            return
        if state.loading is None and not self._may_retry(state, explicit):
            on_error(503, self._unavailable(state), False)
            return
        if len(state.waiters) >= MAX_WAITING:
            on_error(503, f"model {state.entry.name!r} is loading and {MAX_WAITING} requests already wait "
                          "for it; retry later", True)
            return
        state.waiters.append((on_ready, on_error))
        if state.loading is None:
            self._start(state)

    def _may_retry(self, state: ModelState, explicit: bool) -> bool:
        failure = state.failure
        return (failure is None or failure[0] != state.entry.key or explicit
                or self.clock() - failure[2] >= RETRY_S)

    def _unavailable(self, state: ModelState) -> str:
        entry = state.entry
        return f"model {entry.name!r} version {entry.version!r} is unavailable: {state.failure[1]}"

    # --- loading ---------------------------------------------------------------------------------

    def _start(self, state: ModelState) -> None:
        entry = state.entry
        state.loading = entry
        key = (entry.name, entry.version)
        expected = self.budget.expected(key)
        if key in self.budget.known and not self.budget.fits_alone(expected):
            self._failed(state, entry, self.budget.too_large(entry.name, entry.version, expected), 0.0)
            return
        self.make_room(self.budget.reserve(key), keep=state)
        t0 = perf_counter()
        future = self.loop.run_in_executor(self.executor, self._load, entry)
        future.add_done_callback(lambda f: self._loaded(state, entry, f, t0))

    def _loaded(self, state: ModelState, entry, future, t0: float) -> None:
        state.loading = None
        if self.closed or self.states.get(entry.name) is not state:
            return  # shut down, or removed from the table meanwhile (its waiters were answered)
        seconds = perf_counter() - t0
        if future.cancelled():
            self._failed(state, entry, "the load was cancelled", seconds)
            return
        exc = future.exception()
        if entry.key != state.entry.key:
            # The table changed while this version loaded: load the one it names now, if anyone needs it.
            if state.waiters or state.served is not None:
                self._start(state)
            return
        if exc is not None:
            message = str(exc) if isinstance(exc, LoadError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, LoadError):
                log.error("loading model %s version %s failed", entry.name, entry.version, exc_info=exc)
            self._failed(state, entry, message, seconds)
            return
        runtime, cost, peak, _, imported = future.result()
        self.budget.baseline += imported
        self.budget.record((entry.name, entry.version), cost, peak)
        if not self.budget.fits_alone(cost):
            del runtime
            release_memory()
            self._failed(state, entry, self.budget.too_large(entry.name, entry.version, cost), seconds)
            return
        try:
            served = self.make_served(entry, runtime)
        except Exception as exc:  # noqa: BLE001 - a model the server cannot describe is a failed load
            log.exception("model %s version %s loaded but cannot be served", entry.name, entry.version)
            self._failed(state, entry, f"{type(exc).__name__}: {exc}", seconds)
            return
        old = state.served
        state.served, state.served_entry, state.cost = served, entry, cost
        state.failure, state.reason, state.last_used = None, "", self.clock()
        self._count_load(entry, "ok", seconds)
        log.info("model %s version %s loaded in %.3f s (%d bytes accounted)%s", entry.name, entry.version,
                 seconds, cost, f"; replaces version {old.version}" if old is not None else "")
        if old is not None:
            old.close()  # requests already in its batcher hold it until they are answered
        waiters, state.waiters = state.waiters, []
        for on_ready, _ in waiters:
            on_ready(served)
        self.make_room(0, keep=state)

    def _failed(self, state: ModelState, entry, message: str, seconds: float) -> None:
        state.loading = None
        state.failure = (entry.key, message, self.clock())
        self._count_load(entry, "failed", seconds)
        still = f"; version {state.served.version} goes on answering" if state.served is not None else ""
        log.error("model %s version %s failed to load: %s%s", entry.name, entry.version, message, still)
        waiters, state.waiters = state.waiters, []
        text = f"model {entry.name!r} version {entry.version!r} is unavailable: {message}"
        for _, on_error in waiters:
            on_error(503, text, False)

    def _count_load(self, entry, result: str, seconds: float) -> None:
        key = (entry.name, entry.version, result)
        self.loads[key] = self.loads.get(key, 0) + 1
        if result == "ok":
            from bisect import bisect_left

            self.load_seconds[bisect_left(LOAD_BUCKETS, seconds)] += 1
            self.load_seconds_sum += seconds

    # --- memory ----------------------------------------------------------------------------------

    def make_room(self, reserve: int, keep: ModelState | None = None) -> None:
        """Evicts least recently used idle models until RSS + reserve fits the budget, or none is left."""
        while True:
            need = self.budget.to_free(self.rss(), reserve)
            if need <= 0:
                return
            candidates = [(s.last_used, name, s.cost) for name, s in self.states.items()
                          if s.served is not None and s is not keep and not s.served.busy()]
            victims = lru_victims(candidates, need)
            if not victims:
                return
            for name in victims:
                self._evict(self.states[name], EVICTED)
            release_memory()

    def _evict(self, state: ModelState, reason: str) -> None:
        served = state.served
        state.served, state.served_entry, state.cost, state.reason = None, None, 0, reason
        if reason == EVICTED:
            self.evictions[served.name] = self.evictions.get(served.name, 0) + 1
        log.info("model %s version %s %s", served.name, served.version, reason)
        served.close()

    def unload(self, state: ModelState) -> None:
        if state.served is not None:
            self._evict(state, UNLOADED)
            release_memory()

    # --- the table -------------------------------------------------------------------------------

    def apply(self, table: dict) -> None:
        """A new table: new names become loadable, removed ones go (after the requests they hold),
        changed ones load their new version in the background if the old one is loaded."""
        removed = [name for name in self.states if name not in table]
        for name in removed:
            state = self.states.pop(name)
            if state.served is not None:
                self._evict(state, "removed from the table")
            for _, on_error in state.waiters:
                on_error(404, f"model {name!r} was removed from this server's table", False)
            state.waiters = []
        states = {}
        for name, entry in table.items():
            state = self.states.get(name)
            if state is None:
                state = ModelState(entry)
            elif entry.key != state.entry.key:
                log.info("model %s: version %s replaces %s in the table", name, entry.version, state.entry.version)
                state.entry, state.failure = entry, None
                if state.served is not None and state.loading is None:
                    self._start(state)  # the old version answers until the new one is loaded
            else:
                state.entry = entry  # the same model (a modelVersion rename at most)
            states[name] = state
        self.states = states
        if removed:
            release_memory()

    def close(self) -> None:
        """Shutdown: requests waiting for a load are answered 503; a running load is abandoned."""
        self.closed = True
        for state in self.states.values():
            waiters, state.waiters = state.waiters, []
            for _, on_error in waiters:
                on_error(503, "the server is shutting down", False)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- the repository extension and metrics ---------------------------------------------------

    def index(self) -> list[dict]:
        out = []
        for name, state in self.states.items():
            entry = state.entry
            served = state.served
            meanwhile = f"; version {served.version} answers meanwhile" if served is not None else ""
            if state.current():
                status, reason = READY, ""
            elif state.loading is not None:
                status, reason = LOADING, "loading" + meanwhile
            elif state.failure is not None and state.failure[0] == entry.key:
                status, reason = UNAVAILABLE, f"load failed: {state.failure[1]}" + meanwhile
            elif served is not None:
                status, reason = LOADING, "loads on the next request" + meanwhile
            else:
                status, reason = UNAVAILABLE, state.reason
            out.append({"name": name, "version": entry.version, "state": status, "reason": reason})
        return out

    def loaded(self) -> list[ModelState]:
        return [s for s in self.states.values() if s.served is not None]

    def render_metrics(self) -> str:
        out = []
        loaded = self.loaded()
        out.append("# HELP kiln_models_loaded Models loaded now (multi-model mode).\n"
                   "# TYPE kiln_models_loaded gauge\n"
                   f"kiln_models_loaded {len(loaded)}\n")
        out.append("# HELP kiln_model_loads_total Model loads, by model, version and result (ok, failed).\n"
                   "# TYPE kiln_model_loads_total counter\n")
        for (model, version, result), n in sorted(self.loads.items()):
            out.append(f'kiln_model_loads_total{{model="{_esc(model)}",version="{_esc(version)}",result="{result}"}} {n}\n')
        out.append("# HELP kiln_model_load_seconds Time of one successful model load (fetch, verify, build).\n"
                   "# TYPE kiln_model_load_seconds histogram\n")
        lines: list[str] = []
        _histogram(lines, "kiln_model_load_seconds", "", LOAD_BUCKETS, self.load_seconds, self.load_seconds_sum)
        out.extend(line.replace("{,", "{").replace("{}", "") for line in lines)
        out.append("# HELP kiln_model_evictions_total Models evicted to keep the memory budget, by model.\n"
                   "# TYPE kiln_model_evictions_total counter\n")
        for model, n in sorted(self.evictions.items()):
            out.append(f'kiln_model_evictions_total{{model="{_esc(model)}"}} {n}\n')
        out.append("# HELP kiln_memory_budget_bytes The resident memory the server keeps under "
                   "(KILN_MEMORY_BUDGET_BYTES).\n# TYPE kiln_memory_budget_bytes gauge\n"
                   f"kiln_memory_budget_bytes {self.budget.limit}\n")
        out.append("# HELP kiln_memory_rss_bytes The server's resident memory now.\n"
                   "# TYPE kiln_memory_rss_bytes gauge\n"
                   f"kiln_memory_rss_bytes {self.rss()}\n")
        out.append("# HELP kiln_model_memory_bytes Memory accounted to a loaded model (its RSS growth when "
                   "loaded).\n# TYPE kiln_model_memory_bytes gauge\n")
        for state in sorted(loaded, key=lambda s: s.entry.name):
            out.append(f'kiln_model_memory_bytes{{model="{_esc(state.entry.name)}"}} {_num(state.cost)}\n')
        return "".join(out)
