"""`kubectl kiln predict SERVICE -f rows.csv`: CSV rows to the InferenceService, answers as a table.

KServe V1 (`POST /v1/models/<model>:predict`) with instances written as {feature: value} objects: the
server matches them to the signature by name, so the CSV's column order does not matter. The model's
name is the served ModelVersion's spec.modelName (status.modelVersion; with a model set, the version of
the model chosen with --model), which is also where the signature that types the CSV's strings comes from.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from typing import Any

from . import tables
from .errors import CliError

BATCH = 500
TRUE, FALSE = {"true", "1", "yes", "t", "y"}, {"false", "0", "no", "f", "n"}


def served_version(isvc: dict[str, Any], model: str | None = None) -> str:
    """The ModelVersion answering for the service: the one it serves, or with a model set (`status.models`)
    the version of `model`, which must then be chosen."""
    status = isvc.get("status") or {}
    name = isvc["metadata"]["name"]
    if (isvc.get("spec") or {}).get("models") is not None:
        served = {e["model"]: e["version"] for e in status.get("models") or []}
        listing = ", ".join(sorted(served)) or "none yet"
        if not model:
            raise CliError(f'inferenceservice "{name}" serves a model set: choose one with --model ({listing})')
        if model not in served:
            raise CliError(f'inferenceservice "{name}" serves no model "{model}" (it serves: {listing})')
        return served[model]
    if not status.get("modelVersion"):
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        why = f" (Ready {ready.get('status')}: {ready.get('reason')}: {ready.get('message')})" if ready else ""
        raise CliError(f'inferenceservice "{name}" serves no version yet{why}')
    return status["modelVersion"]


def service_url(service: dict[str, Any]) -> str:
    ip = (service.get("spec") or {}).get("clusterIP")
    if not ip or ip == "None":
        raise CliError(f'service "{service["metadata"]["name"]}" has no cluster IP; pass --url')
    return f"http://{ip}:80"


def _typed(value: str, kind: str, where: str) -> Any:
    text = value.strip()
    if text == "":
        return None  # null: the server decides whether the feature may be missing
    try:
        if kind == "number":
            return float(text)
        if kind == "integer":
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
    except ValueError:
        raise CliError(f"{where}: {value!r} is not {'a number' if kind == 'number' else 'an integer'}") from None
    if kind == "boolean":
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise CliError(f"{where}: {value!r} is not a boolean (true/false)")
    return text


def read_rows(text: str, signature: dict[str, Any], source: str) -> tuple[list[str], list[dict[str, str]],
                                                                          list[dict[str, Any]]]:
    """(the CSV's columns, its rows as read, the instances to send: the signature's features, typed).
    Other columns (an id, the true label) are shown beside the answers but not sent."""
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    if not columns:
        raise CliError(f"{source} is empty: it needs a header row of feature names")
    inputs = [(i["name"], i.get("type", "number")) for i in signature.get("inputs") or []]
    missing = [name for name, _ in inputs if name not in columns]
    if missing:
        raise CliError(f"{source} has no column for the feature(s) {', '.join(missing)}; the model takes "
                       f"{', '.join(n for n, _ in inputs)}; the header is {', '.join(columns)}")
    rows, instances = [], []
    for line, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise CliError(f"{source} line {line}: {len(columns)} columns expected")
        rows.append(row)
        instances.append({name: _typed(row[name], kind, f"{source} line {line}, {name}") for name, kind in inputs})
    if not instances:
        raise CliError(f"{source} has a header but no rows")
    return columns, rows, instances


def request_body(instances: list[dict[str, Any]], probabilities: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"instances": instances}
    if probabilities:
        body["parameters"] = {"probabilities": True}
    return body


def post(url: str, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    request = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - http(s) only, checked
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        raise CliError(f"POST {url}: HTTP {exc.code}: {exc.read().decode(errors='replace').strip()[:1000]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}; the service's cluster IP must be "
                       "routable from here, or pass --url") from None


def answers_view(columns: list[str], rows: list[dict[str, str]], instances: list[dict[str, Any]],
                 answers: list[dict[str, Any]], classes: list[str] | None) -> list[dict[str, Any]]:
    """One dict per row: its CSV columns (the features as sent, typed), the prediction, and each class's
    probability when asked."""
    predictions = [p for a in answers for p in a.get("predictions") or []]
    probabilities = [p for a in answers for p in a.get("probabilities") or []]
    if len(predictions) != len(rows):
        raise CliError(f"the service answered {len(predictions)} prediction(s) for {len(rows)} row(s)")
    out = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {c: instances[i][c] if c in instances[i] else row[c] for c in columns}
        item["prediction"] = predictions[i]
        if probabilities:
            names = classes or [str(k) for k in range(len(probabilities[i]))]
            item["probabilities"] = dict(zip(names, probabilities[i]))
        out.append(item)
    return out


def answers_table(view: list[dict[str, Any]], columns: list[str], rows: list[dict[str, str]]) -> str:
    """The CSV's cells as the file has them (123.456 stays 123.456, not rounded like a metric), then the answers."""
    classes = list(view[0].get("probabilities") or {}) if view else []
    rows = [[*[row[c] or tables.NONE for c in columns], r["prediction"], *[r["probabilities"][k] for k in classes]]
            for r, row in zip(view, rows)]
    return tables.render([*(c.upper() for c in columns), "PREDICTION", *(f"P({k})" for k in classes)], rows)


def batches(items: list, size: int = BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]
