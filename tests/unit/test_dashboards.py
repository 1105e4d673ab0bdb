"""Dashboards, alerts and the metrics table agree with each other and with what the processes expose.

The chain checked here: kiln-serve's and kiln-monitor's real exposition == docs/metrics.md's table;
every metric a dashboard panel or an alert uses is in that table; the chart ships exactly the rule file
and the dashboard files. Whether the PromQL parses and returns data is checked against a real
Prometheus in tests/integration/test_prometheus.py and tests/e2e/test_observability.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import kiln_expositions
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/kiln"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RULES = CHART / "alerts/kiln-rules.yaml"
METRICS_DOC = ROOT / "docs/metrics.md"
METRIC_RE = re.compile(r"\bkiln_[a-z0-9_]+\b")


# --- what the processes expose ---------------------------------------------------------------------

def exposed() -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, label names other than model, version and le)."""
    families: dict[str, tuple[str, set[str]]] = {}
    types: dict[str, str] = {}
    # A classifier and a regressor differ in one family (predictions by class, or predicted values).
    for text in (kiln_expositions.server(classifier=True), kiln_expositions.server(classifier=False),
                 kiln_expositions.multi_server(), kiln_expositions.monitor(), kiln_expositions.operator()):
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                types[name] = kind
                families.setdefault(name, (kind, set()))
            elif line and not line.startswith("#"):
                sample = line.split("{", 1)[0].split(" ", 1)[0]
                family = next(f for f in (sample, *(sample.removesuffix(s) for s in
                                                    ("_total", "_bucket", "_sum", "_count"))) if f in types)
                labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', line.split("}", 1)[0]))
                families[family][1].update(labels - {"model", "version", "le"})
    return families


# --- what the docs say -----------------------------------------------------------------------------

def documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's table: metric name as queried -> (type, label names)."""
    rows = {}
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("| `kiln_"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = (cells[1], set(re.findall(r"`([a-z_]+)`", cells[2])))
    return rows


def queryable(doc: dict[str, tuple[str, set[str]]]) -> set[str]:
    """Every series name a query can use: histograms as _bucket, _sum and _count."""
    names = set()
    for name, (kind, _) in doc.items():
        names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


def test_the_metrics_table_is_exactly_what_the_processes_expose():
    doc, real = documented(), exposed()
    # prometheus_client names a counter family without its _total; the table uses the queried name.
    as_doc = {(n + "_total" if kind == "counter" and not n.endswith("_total") else n): (kind, labels)
              for n, (kind, labels) in real.items()}
    assert set(doc) == set(as_doc), f"only in docs: {set(doc) - set(as_doc)}; undocumented: {set(as_doc) - set(doc)}"
    for name, (kind, labels) in as_doc.items():
        assert doc[name] == (kind, labels), f"{name}: docs say {doc[name]}, the process exposes {(kind, labels)}"


# --- dashboards ------------------------------------------------------------------------------------

def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_the_dashboards_exist():
    assert {p.name for p in DASHBOARDS} == {"kiln-serving.json", "kiln-drift.json", "kiln-operator.json"}


# The model dashboards follow a picked model and version; the operator's follows the operator's namespace.
MODEL_DASHBOARDS = [p for p in DASHBOARDS if p.name != "kiln-operator.json"]


@pytest.mark.parametrize("path", MODEL_DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_valid_and_every_panel_queries_prometheus(path):
    d = load(path)
    variables = _valid(path, d)
    assert {"datasource", "namespace", "model", "version"} <= variables
    for p in panels(d):
        for t in p["targets"]:
            expr = t["expr"]
            # Every panel follows the dashboard's selectors, so a model and version can be picked.
            for var in ("$namespace", "$model", "$version"):
                assert var in expr, f"{p['title']}: {expr!r} ignores {var}"


def _valid(path, d: dict) -> set[str]:
    """Checks what every Kiln dashboard must be; returns its variables' names."""
    assert d["uid"] == path.stem and d["title"].startswith("Kiln / ") and d["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)) and ids
    variables = {v["name"] for v in d["templating"]["list"]}
    for p in panels(d):
        assert p["title"] and p["description"], p["id"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            expr = t["expr"]
            assert METRIC_RE.search(expr), f"{p['title']}: {expr!r} queries no kiln_ metric"
            for used in re.findall(r"\$(\w+)", expr):
                assert used in variables or used.startswith("__"), f"{p['title']}: undefined ${used}"
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    return variables


def test_the_operator_dashboard_shows_what_the_operator_exports():
    """Issue 15: reconciles by kind and result, their duration, errors, API requests, objects by kind and
    Ready, and the age of the oldest pending change, each from the operator's own metrics."""
    path = CHART / "dashboards/kiln-operator.json"
    d = load(path)
    assert _valid(path, d) == {"datasource", "namespace"}
    # One board per operator: every query follows the picked operator's namespace.
    for p in panels(d):
        assert all('namespace=~"$namespace"' in t["expr"] for t in p["targets"]), p["title"]
    used = {m for p in panels(d) for t in p["targets"] for m in METRIC_RE.findall(t["expr"])}
    exported = {m for m in queryable(documented()) if m.startswith("kiln_operator_")}
    assert {m.removesuffix("_bucket") for m in used} <= exported | {"kiln_operator_reconcile_duration_seconds"}
    for metric in ("kiln_operator_reconciles_total", "kiln_operator_reconcile_duration_seconds_bucket",
                   "kiln_operator_api_requests_total", "kiln_operator_objects", "kiln_operator_queue_depth",
                   "kiln_operator_oldest_pending_seconds", "kiln_operator_events_total"):
        assert metric in used, f"no panel shows {metric}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_metric_a_dashboard_uses_is_documented(path):
    known = queryable(documented())
    for p in panels(load(path)):
        for t in p["targets"]:
            unknown = set(METRIC_RE.findall(t["expr"])) - known
            assert not unknown, f"{path.name} / {p['title']}: {unknown} not in docs/metrics.md"


def test_the_serving_dashboard_covers_what_the_issue_asks():
    titles = {p["title"] for p in panels(load(CHART / "dashboards/kiln-serving.json"))}
    assert {"Requests/s", "Latency p50 / p95 / p99", "Error rate", "Replicas", "Prediction distribution",
            "Version timeline"} <= titles
    drift = {p["title"] for p in panels(load(CHART / "dashboards/kiln-drift.json"))}
    assert {"PSI per feature", "Drift detected"} <= drift


# --- alerts ----------------------------------------------------------------------------------------

def rules(operator: bool | None = None) -> list[dict]:
    """The alerting rules; operator=False: those about models, True: those about the operator."""
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
            if operator is None or (g["name"] == "kiln-operator") == operator]


def test_the_alerts_the_issue_asks_for_exist_and_are_complete():
    by_name = {r["alert"]: r for r in rules()}
    assert {"KilnDriftDetected", "KilnHighErrorRate", "KilnHighLatencyP99", "KilnNoTraffic"} <= set(by_name)
    known = queryable(documented())
    for name, r in by_name.items():
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert r["annotations"]["summary"] and r["annotations"]["description"], name
        assert re.fullmatch(r"\d+[smh]", r["for"]), name
        used = set(METRIC_RE.findall(r["expr"]))
        assert used and used <= known, f"{name}: {used - known} not in docs/metrics.md"
        # Alerts about models are per model and version, in a namespace: the labels the summaries name.
        if r in rules(operator=False):
            assert "by (namespace, model, version" in r["expr"], name


def test_the_operator_alerts_cover_it_being_down_failing_and_what_it_rolls_back():
    by_name = {r["alert"]: r for r in rules(operator=True)}
    assert {"KilnOperatorDown", "KilnOperatorReconcilesFailing", "KilnRolledBack", "KilnTrainingRunFailed"} <= set(by_name)
    assert all("kiln_operator_" in r["expr"] for r in by_name.values())


def rendered(helm: Path, *sets: str) -> list[dict]:
    import subprocess
    args = [str(helm), "template", "kiln", str(CHART), "--namespace", "kiln-system"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_chart_ships_the_rule_file_and_the_dashboards_unchanged(helm):
    objs = rendered(helm, "monitoring.podMonitor.enabled=true", "monitoring.prometheusRule.enabled=true",
                    "monitoring.prometheusRule.labels.release=kps")
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    maps = {k: json.loads(v) for o in objs if o["kind"] == "ConfigMap" and
            o["metadata"]["labels"].get("grafana_dashboard") == "1" for k, v in o["data"].items()}
    assert maps == {p.name: load(p) for p in DASHBOARDS}
    (pm,) = [o for o in objs if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("-serving")]
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["http", "monitor"]
    (op,) = [o for o in objs if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("-operator")]
    assert [e["port"] for e in op["spec"]["podMetricsEndpoints"]] == ["metrics"]
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    assert op["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {"name": "metrics", "containerPort": 8081} in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "kiln-serve"
    assert pm["spec"]["namespaceSelector"] == {"any": True}


def test_monitoring_objects_follow_the_values(helm):
    kinds = [o["kind"] for o in rendered(helm)]
    assert "PodMonitor" not in kinds and "PrometheusRule" not in kinds  # their CRDs may be absent
    assert kinds.count("ConfigMap") == len(DASHBOARDS)
    objs = rendered(helm, "monitoring.dashboards.enabled=false", "monitoring.podMonitor.enabled=true",
                    "watchNamespaces={ml,ml-canary}")
    assert not [o for o in objs if o["kind"] == "ConfigMap"]
    (pm,) = [o for o in objs if o["kind"] == "PodMonitor" and o["metadata"]["name"].endswith("-serving")]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml", "ml-canary"]}
