"""The termination message: the JSON summary the kubelet copies into the Pod's status for the operator.

The kubelet keeps at most 4096 bytes of it (and 12 KiB across a Pod's containers), so the summary is
made to fit: long lists are cut first, then the optional bulky fields named in `SHRINK_ORDER`, each
noted in "truncated". The whole summary is the last line of the logs, and the full record stays in
the store (the URIs in the summary).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PATH_ENV = "KILN_TERMINATION_LOG"
DEFAULT_PATH = "/dev/termination-log"
LIMIT = 4096
# Dropped in this order when the summary is too large; the operator finds them in the store.
SHRINK_ORDER = ("traceback", "params", "metrics", "selection", "heldOut", "champion.metrics", "gates",
                "modelVersion.params", "modelVersion.signature",
                "onnx", "modelVersion.metrics", "failures")


def _encode(summary: dict) -> bytes:
    return json.dumps(summary, separators=(",", ":"), sort_keys=True, allow_nan=False, default=str).encode()


def _drop(summary: dict, dotted: str) -> bool:
    *parents, last = dotted.split(".")
    node = summary
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    return False


def fit(summary: dict, limit: int = LIMIT) -> bytes:
    """`summary` encoded in at most `limit` bytes, shrunk as described above."""
    out = json.loads(_encode(summary))  # a deep copy, and proof that it encodes
    data = _encode(out)
    if len(data) <= limit:
        return data
    truncated: list[str] = []
    failures = out.get("failures")
    while isinstance(failures, list) and len(failures) > 1 and len(_encode(out)) > limit:
        failures.pop()
        out["failuresTruncated"] = out.get("failuresTruncated", 0) + 1
    for key in SHRINK_ORDER:
        if len(_encode(out)) <= limit:
            break
        if _drop(out, key):
            truncated.append(key)
            out["truncated"] = truncated
    data = _encode(out)
    if len(data) > limit:
        # Last resort: the fields the operator cannot do without, with the message cut to fit.
        keep = {k: out[k] for k in ("v", "command", "result", "reason", "trial", "version", "rows",
                                    "profileUri", "snapshotUri", "snapshotSha256", "manifestUri") if k in out}
        keep["truncated"] = ["*"]
        room = limit - len(_encode({**keep, "message": ""})) - 8
        keep["message"] = str(out.get("message", ""))[:max(0, room)]
        data = _encode(keep)
    return data


def write(summary: dict) -> bytes:
    """Writes the summary, fitted, to the termination log, and prints it whole as the last line of the
    logs: where the operator reads it when the fitted one says "truncated" (a model with many features
    has a signature larger than the kubelet keeps)."""
    data = fit(summary)
    whole = _encode(json.loads(_encode(summary)))
    path = Path(os.environ.get(PATH_ENV) or DEFAULT_PATH)
    try:
        path.write_bytes(data)
    except OSError as exc:
        print(f"kiln-train: cannot write the termination message to {path}: {exc}", file=sys.stderr)
    sys.stdout.write(whole.decode() + "\n")
    sys.stdout.flush()
    return data
