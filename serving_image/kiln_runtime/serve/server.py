"""Processes, sockets, signals: one event loop per worker, and the graceful shutdown.

One worker (the default) serves in the main process. With KILN_WORKERS > 1 the main process forks
the workers after verifying the artifacts (each builds its own runtime: onnxruntime sessions are not
meant to cross a fork); every worker binds the port with SO_REUSEPORT, so the kernel spreads
connections over them without an accept lock, and the main process only forwards signals and reaps.
Each worker also listens on KILN_GRPC_PORT (SO_REUSEPORT alike) for the Open Inference Protocol over
gRPC (serve/grpc/), on the same event loop and into the same batcher.

Multi-model mode (KILN_MODELS_FILE, `run_multi`) serves in the main process only: the table is read,
no model is loaded, the socket listens; the table file is polled on the event loop.

SIGTERM (what the kubelet sends): stop accepting, mark not ready, close idle keep-alive connections,
answer every request already received (each with `Connection: close`; a gRPC connection gets GOAWAY
and closes once its calls are answered), flush the drift hand-off, exit 0; connections still busy
after KILN_SHUTDOWN_TIMEOUT_S are cut.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys

from . import loader
from .app import App
from .drift import DriftTap
from .errors import LoadError
from .feedback import Relay
from .http import Connection
from .metrics import GRPC, Metrics, SharedRows
from .request_ids import RequestIds, server_token

log = logging.getLogger("kiln.serve")

_SHARED_WIDTH = 4096  # numbers per worker row: the layout's size, with room for many classes
_PUBLISH_INTERVAL_S = 1.0


def make_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def serve_worker(settings, artifacts, version: str, reuse_port: bool = False,
                 shared: SharedRows | None = None, slot: int = 0) -> int:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    runtime = loader.build(settings, artifacts)
    digest = settings.onnx_sha256 if runtime.kind == "onnx" else settings.model_sha256
    fmt = "onnx" if runtime.kind == "onnx" else settings.model_format
    metrics = Metrics(settings.model_name, settings.model_version, digest, runtime.kind, fmt,
                      runtime.classes if artifacts.signature.output == "label" else None,
                      shared=shared, slot=slot)
    if shared is not None and metrics.layout.size > shared.width:
        raise LoadError(f"too many classes for the metrics layout ({metrics.layout.size} > {shared.width})")
    drift = None
    if settings.handoff_socket:
        drift = DriftTap(settings.handoff_socket, settings.model_name, settings.model_version,
                         artifacts.signature, settings.handoff_frame_rows)
        metrics.handoff = drift.sender
    relay = Relay(settings.monitor_url, drift.sender.flush if drift is not None else None)
    app = App(settings, artifacts.signature, runtime, metrics, drift, loop, version,
              RequestIds(server_token(slot)), relay)
    # Everything built so far lives as long as the process: move it out of the garbage collector's
    # reach, so collections triggered by per-request objects do not rescan the model and libraries.
    gc.collect()
    gc.freeze()
    grpc = None
    if settings.grpc_port is not None:
        from .grpc.service import GrpcService, SingleModel

        grpc = GrpcService(SingleModel(app.model), metrics, GRPC, version, settings.max_payload_bytes)
    # Listen only now: a connection accepted before the model is ready would wait unanswered.
    sock = make_socket(settings.host, settings.port, reuse_port)
    grpc_sock = make_socket(settings.host, settings.grpc_port, reuse_port) if grpc is not None else None

    def started(host, port) -> str:
        return (f"serving model {settings.model_name} version {settings.model_version} ({runtime.kind}, sha256 "
                f"{digest[:12]}) on {host}:{port}: {settings.workers} worker(s), batches up to "
                f"{settings.max_batch_size} rows within {settings.max_latency_ms:.1f} ms, drift hand-off "
                f"{settings.handoff_socket or 'off'}")

    try:
        return loop.run_until_complete(_lifecycle(loop, app, sock, settings, started, slot,
                                                  grpc=(grpc, grpc_sock) if grpc is not None else None))
    finally:
        loop.close()


def run_multi(settings, table: dict, watcher, version: str) -> int:
    """Multi-model mode (KILN_MODELS_FILE): one worker, the table read, no model loaded yet."""
    import uvloop

    from . import models_file
    from .metrics import Metrics, ServerMetrics
    from .multi_app import MultiApp
    from .repository import Budget, Repository, fix_mmap_threshold, rss_bytes
    from .served_model import ServedModel

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    fix_mmap_threshold()
    _preload_libraries(table)
    metrics = ServerMetrics()
    ids = RequestIds(server_token(0))
    by_version: dict[tuple[str, str], tuple[int, Metrics]] = {}  # the metrics of every version loaded

    def make_served(entry, runtime):
        digest = entry.settings.onnx_sha256 if runtime.kind == "onnx" else entry.settings.model_sha256
        fmt = "onnx" if runtime.kind == "onnx" else entry.settings.model_format
        classes = runtime.classes if entry.signature.output == "label" else None
        classes = tuple(classes) if classes is not None else None
        known = by_version.get((entry.name, entry.version))
        if known is not None and known[1].layout.classes == classes:
            base, m = known
            m.info(entry.name, entry.version, digest, runtime.kind, fmt)
        else:
            m = Metrics(entry.name, entry.version, digest, runtime.kind, fmt, classes)
            if known is not None:  # same version, other classes: its series are replaced, not doubled
                base = known[0]
                metrics.replace(base, m)
            else:
                base = metrics.add(m)
            by_version[(entry.name, entry.version)] = (base, m)
        return ServedModel(entry.settings, entry.signature, runtime, m, None, loop, ids.choose, base)

    # As in the single-model mode, what lives as long as the process (the libraries) leaves the
    # collector's reach: the gc.collect() after each eviction then scans only what came since.
    gc.collect()
    gc.freeze()
    baseline = rss_bytes()
    repo = Repository(loop, table, Budget(settings.memory_budget_bytes, baseline), make_served)
    metrics.extra = repo.render_metrics
    app = MultiApp(settings, repo, metrics, version, ids)
    source = os.path.basename(settings.models_file)

    unreadable = None  # the last error reading the file, logged once rather than every poll

    def poll():
        nonlocal unreadable
        try:
            data = watcher.poll()
            unreadable = None
        except OSError as exc:
            if str(exc) != unreadable:
                log.error("cannot read %s: %s; keeping the previous table", settings.models_file, exc)
            unreadable, data = str(exc), None
        if data is not None:
            try:
                new = models_file.parse(data, settings, source)
            except models_file.TableError as exc:
                log.error("%s; keeping the previous table", exc)
            else:
                repo.apply(new)
                log.info("%s: %d models in the table", source, len(new))
        if not repo.closed:
            loop.call_later(settings.models_poll_s, poll)

    loop.call_later(settings.models_poll_s, poll)
    grpc = None
    if settings.grpc_port is not None:
        from .grpc.service import GrpcService, ModelRepository

        grpc = GrpcService(ModelRepository(repo, settings.max_batch_size), metrics, GRPC, version,
                           settings.max_payload_bytes)
    sock = make_socket(settings.host, settings.port, False)
    grpc_sock = make_socket(settings.host, settings.grpc_port, False) if grpc is not None else None

    def started(host, port) -> str:
        return (f"serving {len(table)} models from {settings.models_file} on {host}:{port} (loaded on first "
                f"request; memory budget {settings.memory_budget_bytes} bytes, {baseline} in use at start)")

    try:
        return loop.run_until_complete(_lifecycle(loop, app, sock, settings, started, 0, repo.close,
                                                  grpc=(grpc, grpc_sock) if grpc is not None else None))
    finally:
        loop.close()


def _preload_libraries(table: dict) -> None:
    """Imports what loads will need, before the baseline RSS is taken: otherwise the first model's
    load would carry the libraries' memory as its own cost."""
    import skops.io  # noqa: F401
    import sklearn.pipeline  # noqa: F401

    if any(e.settings.onnx_uri for e in table.values()):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass


async def _lifecycle(loop, app, sock, settings, started, slot: int, on_drain=None, grpc=None) -> int:
    """Serves until SIGTERM/SIGINT, then drains. `started(host, port)`: the line logged once listening;
    `on_drain`: called when draining begins (the multi-model repository answers its waiting requests);
    `grpc`: (grpc.service.GrpcService, its listening socket), served beside HTTP on the same loop and
    drained with it (GOAWAY, then each connection closes once its calls are answered)."""
    server = await loop.create_server(lambda: Connection(app), sock=sock, backlog=4096)
    grpc_service, grpc_server = None, None
    if grpc is not None:
        from .grpc.h2 import GrpcConnection

        grpc_service, grpc_sock = grpc
        grpc_server = await loop.create_server(lambda: GrpcConnection(grpc_service, loop), sock=grpc_sock,
                                               backlog=4096)
    connections = app.connections if grpc_service is None else _Both(app.connections, grpc_service.connections)
    stopping = loop.create_future()

    def stop(signame: str):
        if not stopping.done():
            stopping.set_result(signame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    if app.drift is not None:
        app.drift.start(loop)

    def publish():
        app.metrics.publish()
        loop.call_later(_PUBLISH_INTERVAL_S, publish)

    publish()
    if slot == 0:
        host, port = sock.getsockname()[:2]
        if grpc_service is not None:
            ghost, gport = grpc[1].getsockname()[:2]
            log.info("%s; gRPC on %s:%d", started(host, port), ghost, gport)
        else:
            log.info("%s; gRPC off", started(host, port))
    signame = await stopping
    busy = sum(1 for c in connections if not c.idle())
    log.info("%s: draining (%d connections, %d busy)", signame, len(connections), busy)
    app.draining = True
    if grpc_service is not None:
        grpc_service.draining = True
        grpc_server.close()
    for batcher in app.batchers():
        batcher.draining = True
    if on_drain is not None:
        on_drain()
    server.close()
    # One more pass of the loop first: requests whose bytes already sit in a socket's buffer are
    # read (and so answered) instead of being cut with the idle connection they arrived on.
    await asyncio.sleep(0.01)
    drained = loop.create_future()

    def check_idle():
        if not connections and not drained.done():
            drained.set_result(None)

    app.on_idle = check_idle
    for conn in list(app.connections):
        conn.drain()
    if grpc_service is not None:
        grpc_service.on_idle = check_idle
        grpc_service.drain()
    for batcher in app.batchers():
        if batcher.queue:
            batcher.flush()
    check_idle()
    code = 0
    try:
        await asyncio.wait_for(asyncio.shield(drained), timeout=settings.shutdown_timeout_s)
    except asyncio.TimeoutError:
        log.warning("%d connections still busy after %.0f s; closing them", len(connections),
                    settings.shutdown_timeout_s)
        for conn in list(connections):
            if conn.transport is not None:
                conn.transport.abort()
        code = 0
    if app.drift is not None:
        app.drift.close()
    app.metrics.publish()
    log.info("drained; exiting")
    return code


class _Both:
    """The HTTP and the gRPC connections, counted and walked as one set while draining."""

    def __init__(self, first: set, second: set):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __iter__(self):
        return iter([*self.first, *self.second])


def run(settings, artifacts, version: str) -> int:
    if settings.workers == 1:
        return serve_worker(settings, artifacts, version)
    return _run_workers(settings, artifacts, version)


def _run_workers(settings, artifacts, version: str) -> int:
    shared = SharedRows(settings.workers, _SHARED_WIDTH)
    children: dict[int, int] = {}
    for slot in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = serve_worker(settings, artifacts, version, True, shared, slot)
            except LoadError as exc:
                log.error("refusing to serve: %s", exc)
                code = 3
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = slot
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        for child in list(children):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    result = 0
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and not stopping:
            # A worker died: the pod is no longer what it claims to be; stop it all and let the
            # kubelet restart it rather than serve on with fewer workers.
            log.error("worker pid %d exited with %d; stopping the server", pid, code)
            result = code if code > 0 else 1
            forward(signal.SIGTERM, None)
        elif code != 0:
            result = result or (code if code > 0 else 0)
    sys.stdout.flush()
    return result
