"""`inference.GRPCInferenceService`: method dispatch, and the narrow interface to the models.

A call arrives as (path, message bytes) from h2.GrpcConnection. ModelInfer is decoded and validated
by grpc/codec.py (the HTTP V2 decoder's checks) and queued in the model's own Batcher, which answers
through the connection as it answers HTTP; the drift hand-off and the metrics come with the Batcher.
Health and metadata are answered at once, metadata from the same JSON documents HTTP serves.

The models are reached through `SingleModel` or `ModelRepository`: `now(name, version)` gives the
model if it can answer at once (or raises NotFound), else `later(...)` calls back once the
repository has it (at once when loaded, after a load otherwise), exactly as an HTTP request is.
Errors are the shared code's exceptions, turned into gRPC codes by the connection (status.py).
"""

from __future__ import annotations

import logging

import orjson
from google.protobuf.message import DecodeError

from ..batching import Item
from ..errors import ClientError, NotFound, Unavailable
from . import codec
from . import messages as pb
from . import status as st

log = logging.getLogger("kiln.serve")

PREFIX = b"/" + pb.SERVICE.encode() + b"/"


class SingleModel:
    """The single-model mode: one ServedModel, always loaded."""

    def __init__(self, served):
        self.served = served

    def _check(self, name: str, version: str):
        served = self.served
        if name != served.name:
            raise NotFound(f"model {name[:100]!r} is not served here; this server serves {served.name!r}")
        if version and version != served.version:
            raise NotFound(f"model {served.name!r} has no version {version[:50]!r}; this server serves "
                           f"version {served.version!r}")
        return served

    def now(self, name: str, version: str):
        return self._check(name, version)

    def later(self, name, version, ready, error) -> None:  # never needed: now() always answers
        ready(self._check(name, version))

    def ready(self, name: str, version: str) -> bool:
        self._check(name, version)
        return True

    def metadata(self, name: str, version: str) -> bytes:
        return self._check(name, version).answers[b"v2-model"]


class ModelRepository:
    """The multi-model mode (KILN_MODELS_FILE): models by name from the repository, loaded on first use
    exactly as for HTTP (repository.Repository)."""

    def __init__(self, repo, max_batch_size: int):
        self.repo, self.max_batch_size = repo, max_batch_size

    def _state(self, name: str, version: str):
        state = self.repo.lookup(name.encode())
        if version:
            versions = {state.entry.version} | ({state.served.version} if state.served is not None else set())
            if version not in versions:
                raise NotFound(f"model {state.entry.name!r} has no version {version[:50]!r}; this server serves "
                               f"version {state.entry.version!r}")
        return state

    def now(self, name: str, version: str):
        self._state(name, version)  # an unknown name or version is refused here, before any waiting
        return None  # the repository decides (acquire): it also keeps the LRU order and retries loads

    def later(self, name: str, version: str, ready, error) -> None:
        self.repo.acquire(self._state(name, version), ready, lambda status, message, retry=False: error(status, message))

    def ready(self, name: str, version: str) -> bool:
        return self._state(name, version).served is not None

    def metadata(self, name: str, version: str) -> bytes:
        state = self._state(name, version)
        return state.served.answers[b"v2-model"] if state.current() else state.table_answers(self.max_batch_size)[b"v2-model"]


class GrpcService:
    """The host of every gRPC connection of a worker: what h2.GrpcConnection calls."""

    def __init__(self, models, metrics, protocol: int, server_version: str, max_payload: int,
                 extensions=("binary_tensor_data", "model_configuration")):
        self.models, self.metrics, self.protocol = models, metrics, protocol
        self.max_payload = max_payload
        self.connections: set = set()
        self.draining = False
        self.on_idle = None  # set while draining: called when a connection closes
        self._methods = {PREFIX + b"ServerLive": self._server_live, PREFIX + b"ServerReady": self._server_ready,
                         PREFIX + b"ModelReady": self._model_ready, PREFIX + b"ServerMetadata": self._server_metadata,
                         PREFIX + b"ModelMetadata": self._model_metadata, PREFIX + b"ModelInfer": self._model_infer}
        self._live = pb.ServerLiveResponse(live=True).SerializeToString()
        self._ready = {r: pb.ServerReadyResponse(ready=r).SerializeToString() for r in (True, False)}
        self._model_ready_answers = {r: pb.ModelReadyResponse(ready=r).SerializeToString() for r in (True, False)}
        self._server_meta = pb.ServerMetadataResponse(name="kiln-serve", version=server_version,
                                                      extensions=list(extensions)).SerializeToString()
        self._meta: dict[bytes, bytes] = {}  # a model's V2 metadata JSON -> its ModelMetadataResponse
        self._heads: dict[tuple, bytes] = {}  # (model, version) -> the answer's first two fields, serialized

    def connection_closed(self) -> None:
        if self.on_idle is not None:
            self.on_idle()

    # --- dispatch ---------------------------------------------------------------------------------

    def handle(self, conn, stream, path: bytes, message: bytes) -> None:
        method = self._methods.get(path)
        if method is None:
            conn.fail_code(stream, st.UNIMPLEMENTED, f"method {path[:200].decode(errors='replace')} is not "
                                                     "implemented by kiln-serve")
            return
        self._guarded(conn, stream, method, message)

    def _guarded(self, conn, stream, work, *args) -> None:
        try:
            work(conn, stream, *args)
        except (ClientError, Unavailable) as exc:
            conn.fail(stream, exc.status, str(exc))
        except DecodeError:
            conn.fail(stream, 400, f"the request is not a valid {_request_name(stream)} message")
        except Exception:
            log.exception("unexpected error in gRPC call %s", stream.head.path[:200].decode(errors="replace"))
            conn.fail(stream, 500, "internal error")

    # --- health and metadata ------------------------------------------------------------------------

    def _server_live(self, conn, stream, message: bytes) -> None:
        conn.reply(stream, self._live)

    def _server_ready(self, conn, stream, message: bytes) -> None:
        conn.reply(stream, self._ready[not self.draining])

    def _server_metadata(self, conn, stream, message: bytes) -> None:
        conn.reply(stream, self._server_meta)

    def _model_ready(self, conn, stream, message: bytes) -> None:
        req = pb.ModelReadyRequest.FromString(message)
        ready = self.models.ready(req.name, req.version) and not self.draining
        conn.reply(stream, self._model_ready_answers[ready])

    def _model_metadata(self, conn, stream, message: bytes) -> None:
        req = pb.ModelMetadataRequest.FromString(message)
        doc = self.models.metadata(req.name, req.version)
        answer = self._meta.get(doc)
        if answer is None:
            meta = orjson.loads(doc)
            answer = pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[_tensor(t) for t in meta["inputs"]], outputs=[_tensor(t) for t in meta["outputs"]],
            ).SerializeToString()
            if len(self._meta) > 256:
                self._meta.clear()
            self._meta[doc] = answer
        conn.reply(stream, answer)

    # --- inference -----------------------------------------------------------------------------------

    def _model_infer(self, conn, stream, message: bytes) -> None:
        req = pb.ModelInferRequest.FromString(message)
        served = self.models.now(req.model_name, req.model_version)
        if served is not None:
            self._infer(conn, stream, served, req)
            return
        self.models.later(req.model_name, req.model_version,
                          lambda m: self._guarded(conn, stream, self._infer, m, req),
                          lambda status, text: conn.fail(stream, status, text))

    def _infer(self, conn, stream, served, req) -> None:
        stream.protocol = served.proto_base + self.protocol
        choose = served.choose_id
        header_id = stream.client_id
        stream.rid = choose(header_id)
        rows, x, n, proba, ctx = codec.decode(served.v2, req)
        if req.id and stream.rid is not header_id:  # the header's id, if sane, wins (as over HTTP)
            stream.rid = choose(None, req.id)
        key = (served.name, served.version)  # not the model itself: an evicted model must be freed
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) > 256:  # multi-model: versions come and go
                self._heads.clear()
            head = self._heads[key] = codec.head_fields(served.name, served.version)
        ctx.prefix = head + codec.id_field(stream.rid)
        served.batcher.submit(Item(conn, stream, rows, x, n, codec.encode, proba, "inputs[0].data", ctx))

    # --- shutdown -----------------------------------------------------------------------------------

    def drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.drain()


def _tensor(t: dict):
    return pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])


def _request_name(stream) -> str:
    path = stream.head.path
    method = path[len(PREFIX):].decode(errors="replace") if path.startswith(PREFIX) else "request"
    return pb.METHODS.get(method, ("request",))[0]
