"""`kubectl kiln diff A B`: two ModelVersions side by side, what differs marked, metric deltas signed."""

from __future__ import annotations

from typing import Any

from kiln_operator.api.training import LOWER_IS_BETTER

from . import tables


def _get(obj: dict[str, Any], *path: str) -> Any:
    for key in path:
        obj = (obj or {}).get(key) if isinstance(obj, dict) else None
    return obj


def _inputs(spec: dict[str, Any]) -> dict[str, str]:
    return {i.get("name"): i.get("type") for i in _get(spec, "signature", "inputs") or []}


def _output(spec: dict[str, Any]) -> str | None:
    out = _get(spec, "signature", "output")
    if not out:
        return None
    classes = out.get("classes")
    return f"{out.get('type')} {out.get('name') or ''}".strip() + (f" [{','.join(classes)}]" if classes else "")


def diff_view(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {field, a, b, differs, delta}: identity, data, image, artifact, params, metrics, signature."""
    sa, sb = a.get("spec") or {}, b.get("spec") or {}
    rows: list[dict[str, Any]] = []

    def row(field: str, va: Any, vb: Any, delta: str | None = None):
        differs = va != vb
        rows.append({"field": field, "a": va, "b": vb, "differs": differs,
                     "delta": delta if delta is not None else ("changed" if differs else "")})

    row("model", sa.get("modelName"), sb.get("modelName"))
    row("version", sa.get("version"), sb.get("version"))
    row("stage", sa.get("stage"), sb.get("stage"))
    for key, label in (("pipeline", "pipeline"), ("run", "run"), ("dataset", "dataset"),
                       ("datasetVersion", "data version"), ("image", "image"), ("imageDigest", "image digest")):
        va, vb = _get(sa, "lineage", key), _get(sb, "lineage", key)
        if va is not None or vb is not None:
            row(label, va, vb)
    row("artifact sha256", _get(sa, "artifact", "sha256"), _get(sb, "artifact", "sha256"))
    row("artifact format", _get(sa, "artifact", "format"), _get(sb, "artifact", "format"))
    row("onnx", bool(_get(sa, "artifact", "onnx")), bool(_get(sb, "artifact", "onnx")))
    row("framework", _get(sa, "framework", "version"), _get(sb, "framework", "version"))
    pa, pb = sa.get("params") or {}, sb.get("params") or {}
    for key in sorted(set(pa) | set(pb)):
        row(f"params.{key}", pa.get(key), pb.get(key))
    ma, mb = sa.get("metrics") or {}, sb.get("metrics") or {}
    for key in sorted(set(ma) | set(mb)):
        row(f"metrics.{key}", ma.get(key), mb.get(key), tables.delta(ma.get(key), mb.get(key), key in LOWER_IS_BETTER))
    ia, ib = _inputs(sa), _inputs(sb)
    for name in list(ia) + [n for n in ib if n not in ia]:
        change = "added" if name not in ia else "removed" if name not in ib else \
            "changed" if ia[name] != ib[name] else ""
        row(f"signature.input {name}", ia.get(name), ib.get(name), change)
    order_a = [n for n in ia if n in ib]
    order_b = [n for n in ib if n in ia]
    if order_a != order_b:
        row("signature.input order", ",".join(order_a), ",".join(order_b))
    row("signature.output", _output(sa), _output(sb))
    return rows


def diff_table(view: list[dict[str, Any]], name_a: str, name_b: str) -> str:
    def show(field: str, value: Any) -> Any:
        if field in ("data version", "artifact sha256", "image digest") and isinstance(value, str):
            return tables.short(value.removeprefix("sha256:"))
        return value
    rows = [[("* " if r["differs"] else "  ") + r["field"], show(r["field"], r["a"]), show(r["field"], r["b"]),
             r["delta"]] for r in view]
    table = tables.render(["  FIELD", name_a, name_b, "DELTA"], rows)
    data = next((r for r in view if r["field"] == "data version"), None)
    if data and data["differs"] and any(r["field"].startswith("metrics.") for r in view):
        # Each version's metrics are on its own test split; a run's champion/challenger scores are the
        # comparison on the same rows.
        table += ("\n\nmetrics are each version's own test split, of different data versions: "
                  "`kubectl kiln runs` shows a run's challenger and champion scored on the same rows")
    return table
