"""The sidecar's HTTP endpoints: /metrics (Prometheus), /drift (the report as JSON), /healthz, /readyz,
and POST /feedback (labels for answered requests, relayed by kiln-serve; see feedback.py).

The standard library's threading server is enough: the callers are a Prometheus scraper, the
operator and probes, a few requests a minute, and each answer is rendered from data already
computed by the evaluator.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


MAX_FEEDBACK_BYTES = 64 << 20


def make_handler(registry: CollectorRegistry, drift: Callable[[], tuple[int, dict]],
                 ready: Callable[[], bool],
                 feedback: Callable[[bytes], tuple[int, dict]] | None = None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "kiln-monitor"
        protocol_version = "HTTP/1.1"  # keep-alive for scrapers that reuse connections

        def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/drift":
                status, body = drift()
                self._send(status, "application/json", orjson.dumps(body, option=orjson.OPT_INDENT_2))
            elif path == "/healthz":
                # Liveness: the process answers. Waiting for a baseline is not a reason to restart.
                self._send(200, "text/plain", b"ok\n")
            elif path == "/readyz":
                ok = ready()
                self._send(200 if ok else 503, "text/plain", b"ready\n" if ok else b"loading baseline\n")
            else:
                self._send(404, "text/plain", b"not found\n")

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path != "/feedback":
                self._json(404, {"error": f"no such endpoint: POST {path[:200]}; POST /feedback"})
                return
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                self.close_connection = True
                self._json(411, {"error": "POST /feedback needs a Content-Length"})
                return
            if length < 0 or length > MAX_FEEDBACK_BYTES:
                self.close_connection = True
                self._json(413, {"error": f"body over {MAX_FEEDBACK_BYTES} bytes; send feedback in batches"})
                return
            body = self.rfile.read(length)
            if feedback is None:
                self._json(503, {"error": "feedback is not accepted yet: the monitor is loading its baseline"})
                return
            try:
                status, answer = feedback(body)
            except Exception:
                log.exception("feedback failed")
                status, answer = 500, {"error": "internal error while joining feedback"}
            self._json(status, answer)

        def _json(self, status: int, doc: dict) -> None:
            self._send(status, "application/json", orjson.dumps(doc))

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            log.debug("%s " + format, self.address_string(), *args)  # scrapes are not news

    return Handler


def serve(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """Starts the server on a daemon thread and returns it (its port is server.server_port)."""
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
