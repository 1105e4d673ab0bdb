"""Reading a rolling-out version's answers from kiln-serve's own exposition text."""

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from kiln_operator import rollout_metrics
from kiln_operator.rollout_metrics import _requests_by_code, answers
from kiln_runtime.serve.metrics import V1, V2, Metrics


def test_requests_are_counted_by_status_code_across_protocols():
    m = Metrics("m", "3", "ab" * 32, "sklearn", "skops", ("0", "1"))
    for proto, code in ((V1, 200), (V2, 200), (V2, 500), (V1, 400), (V1, 503)):
        m.request(proto, code, 0.001)
    assert dict(_requests_by_code(m.render().decode())) == {"200": 2.0, "400": 1.0, "500": 1.0, "503": 1.0}


def test_only_primary_pods_of_versions_not_yet_serving_are_asked(monkeypatch):
    m = Metrics("m", "3", "ab" * 32, "sklearn", "skops", ("0", "1"))
    for code in (200, 200, 200, 500):
        m.request(V2, code, 0.001)
    page = m.render()

    class Exposition(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_):
            pass

    server = HTTPServer(("127.0.0.1", 0), Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(rollout_metrics, "SERVER_PORT", server.server_address[1])

    def pod(version, role="primary", ip="127.0.0.1"):
        return {"metadata": {"name": f"p-{version}-{role}",
                             "labels": {"kiln.dev/model-version": version, "kiln.dev/role": role}},
                "status": {"podIP": ip} if ip else {}}

    # Every pod points at the same page: a pod asked that should not be would double a count.
    pods = [pod("iris-v2"), pod("iris-v3", role="canary"), pod("iris-v3"), pod("iris-v3", ip=None)]
    try:
        assert answers(pods, serving_version="iris-v2") == {"iris-v3": (1.0, 4.0)}
    finally:
        server.shutdown()
