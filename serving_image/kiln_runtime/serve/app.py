"""The data plane of the single-model mode: routes a parsed request to its endpoint, once for both
protocols. The model's own part (decoders, batcher, explanations, metadata) is a ServedModel
(serve/served_model.py), which the multi-model mode (serve/multi_app.py) holds one of per loaded model.

The two prediction URLs of the served model are compared as whole byte strings first, so the hot
path costs two comparisons; everything else (metadata, health, metrics, explanations, other models'
names, query strings, percent-encoding) goes through `_route`. Answers that never change (metadata,
the OpenAPI document) are rendered once at start.

Explanations (`:explain`, `/explain`; docs/explanations.md) are validated by the same decoders as
predictions, then leave the event loop: `Explanations` runs them on one thread of their own, never
through the Batcher, and refuses (503) what would queue beyond a small bound. The V2 repository
routes (`/v2/repository/...`) exist only in the multi-model mode: here they are 404.
"""

from __future__ import annotations

import orjson

from .errors import MethodNotAllowed, NotFound
from .metrics import V1, V2
from .request_ids import RequestIds
from .routing import TEXT_METRICS, fail, request_path, require_get, require_post
from .served_model import ServedModel

class App:
    def __init__(self, settings, sig, runtime, metrics, drift, loop, server_version: str,
                 request_ids: RequestIds | None = None, feedback=None):
        self.name, self.version = settings.model_name, settings.model_version
        self.ids = request_ids or RequestIds()
        self._choose_id = self.ids.choose
        self.feedback = feedback  # serve.feedback.Relay, or None when no monitor URL is set
        self.sig, self.runtime, self.metrics, self.drift = sig, runtime, metrics, drift
        self.max_payload = settings.max_payload_bytes
        self.connections: set = set()
        self.draining = False
        self.on_idle = None  # set while draining: called when a connection closes
        self.model = ServedModel(settings, sig, runtime, metrics, drift, loop, self._choose_id)
        self.batcher, self.v2, self.explanations = self.model.batcher, self.model.v2, self.model.explanations
        # The model's own methods, bound once: the hot path costs what it cost before the split.
        self._v1_predict, self._v2_infer = self.model.v1_predict, self.model.v2_infer
        self._v1_explain, self._v2_explain = self.model.v1_explain, self.model.v2_explain
        name = self.name.encode()
        self.v1_predict_url = b"/v1/models/" + name + b":predict"
        self.v2_infer_url = b"/v2/models/" + name + b"/infer"
        self._static = self._render_static(server_version)

    def batchers(self) -> list:
        return [self.batcher]

    # --- dispatch ---------------------------------------------------------------------------------

    def handle(self, conn, slot, method: bytes, url: bytes, body: bytes, header_len) -> None:
        try:
            if url == self.v1_predict_url:
                slot.protocol = V1
                if method != b"POST":
                    raise MethodNotAllowed(f"{url.decode()} takes POST", "POST")
                self._v1_predict(conn, slot, body)
            elif url == self.v2_infer_url:
                slot.protocol = V2
                if method != b"POST":
                    raise MethodNotAllowed(f"{url.decode()} takes POST", "POST")
                self._v2_infer(conn, slot, body, header_len)
            else:
                self._route(conn, slot, method, url, body, header_len)
        except Exception as exc:
            fail(conn, slot, exc, f"{method.decode(errors='replace')} {url[:200].decode(errors='replace')}")

    def _route(self, conn, slot, method: bytes, url: bytes, body: bytes, header_len) -> None:
        path = request_path(url)
        if path.startswith(b"/v1/"):
            slot.protocol = V1
            self._route_v1(conn, slot, method, path, body)
        elif path == b"/v2" or path.startswith(b"/v2/"):
            slot.protocol = V2
            self._route_v2(conn, slot, method, path, body, header_len)
        else:
            static = self._static.get(path)
            if static is None:
                raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")
            require_get(method)
            if path == b"/metrics":
                conn.respond(slot, 200, self.metrics.render(), TEXT_METRICS)
            else:
                conn.respond(slot, 200, static)

    def _route_v1(self, conn, slot, method, path: bytes, body: bytes) -> None:
        if path == b"/v1/models":
            require_get(method)
            conn.respond(slot, 200, self._static[b"v1-models"])
            return
        if not path.startswith(b"/v1/models/"):
            raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")
        rest = path[len(b"/v1/models/"):]
        name, sep, verb = rest.partition(b":")
        self._model(name)
        if not sep:
            require_get(method)
            conn.respond(slot, 200, self._static[b"v1-model"])
        elif verb == b"predict":
            require_post(method, path)
            self._v1_predict(conn, slot, body)
        elif verb == b"explain":
            require_post(method, path)
            self._v1_explain(conn, slot, body)
        else:
            raise NotFound(f"no such verb :{verb[:50].decode(errors='replace')}; V1 serves :predict "
                           "and :explain")

    def _route_v2(self, conn, slot, method, path: bytes, body: bytes, header_len) -> None:
        if path == b"/v2":
            require_get(method)
            conn.respond(slot, 200, self._static[b"v2"])
            return
        if path == b"/v2/health/live":
            require_get(method)
            conn.respond(slot, 200, b'{"live":true}')
            return
        if path == b"/v2/health/ready":
            require_get(method)
            if self.draining:
                conn.respond(slot, 503, b'{"ready":false}')
            else:
                conn.respond(slot, 200, b'{"ready":true}')
            return
        if not path.startswith(b"/v2/models/"):
            raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")
        parts = path[len(b"/v2/models/"):].split(b"/")
        self._model(parts[0])
        parts = parts[1:]
        if len(parts) >= 2 and parts[0] == b"versions":
            if parts[1].decode(errors="replace") != self.version:
                raise NotFound(f"model {self.name!r} has no version {parts[1][:50].decode(errors='replace')!r}; "
                               f"this server serves version {self.version!r}")
            parts = parts[2:]
        if not parts:
            require_get(method)
            conn.respond(slot, 200, self._static[b"v2-model"])
        elif parts == [b"ready"]:
            require_get(method)
            conn.respond(slot, 503 if self.draining else 200,
                         b'{"name":' + orjson.dumps(self.name) + (b',"ready":false}' if self.draining
                                                                  else b',"ready":true}'))
        elif parts == [b"infer"]:
            require_post(method, path)
            self._v2_infer(conn, slot, body, header_len)
        elif parts == [b"explain"]:
            require_post(method, path)
            self._v2_explain(conn, slot, body, header_len)
        elif parts == [b"feedback"]:
            require_post(method, path)
            if self.feedback is None:
                conn.fail(slot, 503, "feedback is not available on this server")
                return
            self.feedback.handle(conn, slot, body)
        elif parts == [b"config"]:
            require_get(method)
            conn.respond(slot, 200, self._static[b"v2-config"])
        else:
            raise NotFound(f"no such endpoint: {path[:200].decode(errors='replace')}")

    def _model(self, name: bytes) -> None:
        if name != self.name.encode():
            raise NotFound(f"model {name[:100].decode(errors='replace')!r} is not served here; "
                           f"this server serves {self.name!r}")

    # --- answers rendered once ----------------------------------------------------------------------

    def _render_static(self, server_version: str) -> dict[bytes, bytes]:
        dumps = orjson.dumps
        return {
            **self.model.answers,
            b"v1-models": dumps({"models": [self.name]}),
            b"v2": dumps({"name": "kiln-serve", "version": server_version,
                          "extensions": ["binary_tensor_data", "model_configuration"]}),
            b"/metrics": b"",
            b"/": dumps({"name": "kiln-serve", "model": self.name, "version": self.version,
                         "endpoints": ["/v1/models", f"/v1/models/{self.name}:predict",
                                       f"/v1/models/{self.name}:explain", "/v2",
                                       f"/v2/models/{self.name}/infer", f"/v2/models/{self.name}/explain",
                                       f"/v2/models/{self.name}/feedback", "/metrics", "/openapi.json"]}),
        }

    # --- shutdown -----------------------------------------------------------------------------------

    def connection_closed(self) -> None:
        if self.on_idle is not None:
            self.on_idle()
