"""The local cluster's Prometheus for tests: started by hack/prometheus-up.sh, queried over loopback.

`session()` is the body of a session fixture: it brings Prometheus up (building it on first use, a few
minutes cold) and, if it was not running before, stops it again afterwards. `dashboard_queries()`
turns the dashboards' Grafana templating into plain PromQL for a given selection.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORT = int(os.environ.get("KILN_PROMETHEUS_PORT", "9090"))
DASHBOARDS = sorted((ROOT / "charts/kiln/dashboards").glob("*.json"))


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params) -> dict:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def targets(self, state: str = "active") -> list[dict]:
        data = self.get("/api/v1/targets", state=state)
        return data["activeTargets" if state == "active" else "droppedTargets"]

    def wait_for(self, predicate, timeout: float = 60, what: str = "condition"):
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def _running() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def session():
    """Yields a Prometheus client; leaves Prometheus as it found it (KILN_KEEP_CLUSTER=1 keeps it)."""
    was_up = _running()
    up = subprocess.run(["bash", str(ROOT / "hack/prometheus-up.sh")], capture_output=True, text=True, timeout=1800)
    if up.returncode != 0:
        raise AssertionError(f"hack/prometheus-up.sh exited {up.returncode}:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    yield Prometheus(f"http://127.0.0.1:{PORT}")
    if not was_up and os.environ.get("KILN_KEEP_CLUSTER") != "1":
        subprocess.run(["bash", str(ROOT / "hack/prometheus-down.sh")], capture_output=True, timeout=120)


def dashboard_queries(selection: dict[str, str], rate_interval: str = "1m") -> list[tuple[str, str, list[str]]]:
    """(dashboard, panel title, [PromQL of each target]) with the variables replaced by `selection`
    (regexes, e.g. {"namespace": "t-x", "model": ".*"}; unlisted variables match everything)."""
    out = []
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        names = [v["name"] for v in d["templating"]["list"] if v["name"] != "datasource"]
        for p in d["panels"]:
            exprs = []
            for t in p["targets"]:
                e = t["expr"].replace("$__rate_interval", rate_interval)
                # Longest names first, so that $model does not clobber a $modelx.
                for name in sorted(names, key=len, reverse=True):
                    e = e.replace("$" + name, selection.get(name, ".*"))
                exprs.append(e)
            out.append((path.stem, p["title"], exprs))
    return out
