"""Pure formatting: values to cells, rows to kubectl-style tables, views to JSON or YAML."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

NONE = "-"


def cell(value: Any) -> str:
    """One value as a table cell; missing values are a dash, as `kubectl get` shows `<none>` compactly."""
    if value is None or value == "" or value == [] or value == {}:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value)
    return str(value)


def number(value: float | int | None) -> str:
    if value is None:
        return NONE
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    # Four significant digits tell metrics apart without printing binary noise; large errors (rmse on
    # prices) keep their integer part instead of turning into exponents.
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def delta(a: float | None, b: float | None, lower_is_better: bool = False) -> str:
    """b - a, signed, with whether that is better; empty when either side is missing or they agree."""
    if a is None or b is None or a == b:
        return ""
    d = b - a
    better = (d < 0) if lower_is_better else (d > 0)
    return f"{'+' if d > 0 else ''}{number(d)} ({'better' if better else 'worse'})"


def short(digest: str | None, n: int = 12) -> str:
    return digest[:n] if digest else NONE


def render(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by three spaces, like `kubectl get`; the last column is not padded."""
    body = [[v if isinstance(v, str) else cell(v) for v in row] for row in rows]
    table = [list(headers)] + body
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    lines = []
    for row in table:
        parts = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("   ".join(parts).rstrip())
    return "\n".join(lines)


def dump(view: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(view, indent=2, sort_keys=False)
    import yaml

    return yaml.safe_dump(view, sort_keys=False, default_flow_style=False).rstrip("\n")
