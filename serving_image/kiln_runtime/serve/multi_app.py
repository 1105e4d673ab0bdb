"""The data plane of the multi-model mode (KILN_MODELS_FILE): every per-model route of the single-model
App, for every model of the table by name, plus the V2 model repository extension.

A request names its model; the repository (serve/repository.py) answers with the loaded ServedModel
at once, or after loading it off the event loop, or with a 503 naming why it cannot. From there the
ServedModel's own decoders, batcher and explanations answer exactly as in the single-model mode, so
validation and error messages are the same. Metadata (`/v1/models/{name}`, `/v2/models/{name}`,
`.../config`) is answered from the table's signature while the model is not loaded.

Not here: the drift hand-off and the feedback relay (kiln-monitor watches one model), /openapi.json
(a document per model would need a route of its own), and several workers (settings.py says why).
"""

from __future__ import annotations

import orjson

from .errors import NotFound
from .explaining import _RETRY_HEADERS
from .http import JSON_HEADERS
from .metrics import OTHER, V1, V2
from .request_ids import RequestIds
from .routing import TEXT_METRICS, fail, request_path, require_get, require_post

class MultiApp:
    def __init__(self, settings, repository, metrics, server_version: str, request_ids: RequestIds):
        self.repo = repository
        self.metrics = metrics  # metrics.ServerMetrics: http.Connection counts every request into it
        self.ids = request_ids
        self.choose_id = request_ids.choose
        self.feedback = None
        self.drift = None
        self.max_payload = settings.max_payload_bytes
        self.max_batch_size = settings.max_batch_size
        self.connections: set = set()
        self.draining = False
        self.on_idle = None
        self._v2 = orjson.dumps({"name": "kiln-serve", "version": server_version,
                                 "extensions": ["binary_tensor_data", "model_configuration", "model_repository"]})

    def batchers(self) -> list:
        return [s.served.batcher for s in self.repo.loaded()]

    def connection_closed(self) -> None:
        if self.on_idle is not None:
            self.on_idle()

    # --- dispatch ---------------------------------------------------------------------------------

    def handle(self, conn, slot, method: bytes, url: bytes, body: bytes, header_len) -> None:
        try:
            self._route(conn, slot, method, url, body, header_len)
        except Exception as exc:
            fail(conn, slot, exc, f"{method.decode(errors='replace')} {url[:200].decode(errors='replace')}")

    def _with_model(self, conn, slot, state, protocol: int, work, explicit: bool = False) -> None:
        """Runs work(served) once the model is loaded (now, or when its load ends), answering its
        errors as handle() does; or answers why the model cannot be served."""

        def ready(served):
            slot.protocol = served.proto_base + protocol
            try:
                work(served)
            except Exception as exc:
                fail(conn, slot, exc, f"serving model {served.name}")

        def error(status: int, message: str, retry: bool):
            conn.fail(slot, status, message, _RETRY_HEADERS if retry else JSON_HEADERS)

        self.repo.acquire(state, ready, error, explicit)

    def _route(self, conn, slot, method: bytes, url: bytes, body: bytes, header_len) -> None:
        path = request_path(url)
        if path.startswith(b"/v1/"):
            slot.protocol = V1
            self._route_v1(conn, slot, method, path, body)
        elif path == b"/v2" or path.startswith(b"/v2/"):
            slot.protocol = V2
            self._route_v2(conn, slot, method, path, body, header_len)
        elif path == b"/metrics":
            slot.protocol = OTHER
            require_get(method)
            conn.respond(slot, 200, self.metrics.render(), TEXT_METRICS)
        elif path == b"/":
            slot.protocol = OTHER
            require_get(method)
            conn.respond(slot, 200, orjson.dumps({
                "name": "kiln-serve", "models": list(self.repo.states),
                "endpoints": ["/v1/models", "/v1/models/{name}:predict", "/v1/models/{name}:explain", "/v2",
                              "/v2/models/{name}/infer", "/v2/models/{name}/explain", "/v2/repository/index",
                              "/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload",
                              "/metrics"]}))
        else:
            slot.protocol = OTHER
            raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")

    def _answers(self, state) -> dict[bytes, bytes]:
        return state.served.answers if state.current() else state.table_answers(self.max_batch_size)

    def _route_v1(self, conn, slot, method, path: bytes, body: bytes) -> None:
        if path == b"/v1/models":
            require_get(method)
            conn.respond(slot, 200, orjson.dumps({"models": list(self.repo.states)}))
            return
        if not path.startswith(b"/v1/models/"):
            raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")
        name, sep, verb = path[len(b"/v1/models/"):].partition(b":")
        state = self.repo.lookup(name)
        if state.served is not None:  # counted under the model's labels, as the single-model server does
            slot.protocol = state.served.proto_base + V1
        if not sep:
            require_get(method)
            conn.respond(slot, 200, self._answers(state)[b"v1-model"])
        elif verb == b"predict":
            require_post(method, path)
            self._with_model(conn, slot, state, V1, lambda m: m.v1_predict(conn, slot, body))
        elif verb == b"explain":
            require_post(method, path)
            self._with_model(conn, slot, state, OTHER, lambda m: m.v1_explain(conn, slot, body))
        else:
            raise NotFound(f"no such verb :{verb[:50].decode(errors='replace')}; V1 serves :predict "
                           "and :explain")

    def _route_v2(self, conn, slot, method, path: bytes, body: bytes, header_len) -> None:
        if path == b"/v2":
            require_get(method)
            conn.respond(slot, 200, self._v2)
            return
        if path == b"/v2/health/live":
            require_get(method)
            conn.respond(slot, 200, b'{"live":true}')
            return
        if path == b"/v2/health/ready":
            require_get(method)
            conn.respond(slot, 503 if self.draining else 200,
                         b'{"ready":false}' if self.draining else b'{"ready":true}')
            return
        if path.startswith(b"/v2/repository/"):
            self._repository(conn, slot, method, path, body)
            return
        if not path.startswith(b"/v2/models/"):
            raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")
        parts = path[len(b"/v2/models/"):].split(b"/")
        state = self.repo.lookup(parts[0])
        if state.served is not None:
            slot.protocol = state.served.proto_base + V2
        parts = parts[1:]
        if len(parts) >= 2 and parts[0] == b"versions":
            asked = parts[1].decode(errors="replace")
            versions = {state.entry.version} | ({state.served.version} if state.served is not None else set())
            if asked not in versions:
                raise NotFound(f"model {state.entry.name!r} has no version {asked[:50]!r}; this server serves "
                               f"version {state.entry.version!r}")
            parts = parts[2:]
        if not parts:
            require_get(method)
            conn.respond(slot, 200, self._answers(state)[b"v2-model"])
        elif parts == [b"ready"]:
            require_get(method)
            ready = state.served is not None and not self.draining
            conn.respond(slot, 200 if ready else 503, b'{"name":' + orjson.dumps(state.entry.name)
                         + (b',"ready":true}' if ready else b',"ready":false}'))
        elif parts == [b"infer"]:
            require_post(method, path)
            self._with_model(conn, slot, state, V2, lambda m: m.v2_infer(conn, slot, body, header_len))
        elif parts == [b"explain"]:
            require_post(method, path)
            self._with_model(conn, slot, state, OTHER, lambda m: m.v2_explain(conn, slot, body, header_len))
        elif parts == [b"feedback"]:
            require_post(method, path)
            conn.fail(slot, 503, "feedback is not supported in multi-model mode (KILN_MODELS_FILE): it is "
                                 "joined by kiln-monitor, which watches one model")
        elif parts == [b"config"]:
            require_get(method)
            conn.respond(slot, 200, self._answers(state)[b"v2-config"])
        else:
            raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")

    # --- the model repository extension (Triton's and KServe's) -------------------------------------

    def _repository(self, conn, slot, method, path: bytes, body: bytes) -> None:
        if path == b"/v2/repository/index":
            require_post(method, path)
            index = self.repo.index()
            try:
                params = orjson.loads(body) if body.strip() else {}
            except orjson.JSONDecodeError:
                params = None
            if type(params) is not dict:
                from .errors import BadRequest

                raise BadRequest('the index takes an empty body or {"ready": true|false}')
            if params.get("ready") is True:
                index = [m for m in index if m["state"] == "READY"]
            conn.respond(slot, 200, orjson.dumps(index))
            return
        parts = path[len(b"/v2/repository/"):].split(b"/")
        if len(parts) != 3 or parts[0] != b"models" or parts[2] not in (b"load", b"unload"):
            raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")
        require_post(method, path)
        state = self.repo.lookup(parts[1])
        if parts[2] == b"load":
            self._with_model(conn, slot, state, V2, lambda m: conn.respond(slot, 200, b"{}"), explicit=True)
        else:
            self.repo.unload(state)
            conn.respond(slot, 200, b"{}")

