"""The hand-off of served rows from kiln-serve to the kiln-monitor sidecar: the one definition of it.

Transport: a Unix datagram socket in a volume both containers mount (`KILN_HANDOFF_SOCKET`). The
monitor binds it; the server sends without ever blocking. A datagram is delivered whole or not at
all, so no framing state survives a lost message, and when the monitor is slow or absent the kernel
refuses the send at once and the server only counts the dropped rows: drift is a statistic over a
window, and losing rows under overload costs accuracy, never request latency.

Frame (one datagram):
    b"KLN1" | header length (u32 little-endian) | header (JSON) | body
    header = {"model": str, "version": str, "rows": n,
              "numeric": [feature names carried in the body, in column order],
              "categorical": {feature name: [n values]},   # strings, booleans or null
              "predictions": [n values] or null}           # null: predictions are in the body
    body   = float64 little-endian n x len(numeric), row-major (NaN = missing),
             then float64 x n predictions when header["predictions"] is null.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass, field

import numpy as np
import orjson

MAGIC = b"KLN1"
_HEADER_LEN = struct.Struct("<I")
DEFAULT_SOCKET = "/var/run/kiln/handoff.sock"
# Linux's default limit for one Unix datagram is about 208 KiB (net.core.wmem_default); frames of
# 256 rows of 20 features are 42 KiB, leaving room for wide rows and categorical values.
DEFAULT_FRAME_ROWS = 256


class FrameError(ValueError):
    """A datagram that is not a well-formed frame."""


@dataclass
class Frame:
    model: str
    version: str
    numeric: list[str]
    matrix: np.ndarray  # rows x len(numeric), float64
    predictions: np.ndarray  # float64 when numeric, else an object array
    categorical: dict[str, list] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.matrix.shape[0])


def encode_frame(model: str, version: str, numeric: list[str], matrix: np.ndarray,
                 predictions, categorical: dict[str, list] | None = None) -> bytes:
    matrix = np.ascontiguousarray(matrix, dtype="<f8")
    rows = matrix.shape[0]
    preds = np.asarray(predictions)
    numeric_preds = preds.dtype.kind in "biuf"
    header = {
        "model": model,
        "version": version,
        "rows": rows,
        "numeric": numeric,
        "categorical": categorical or {},
        "predictions": None if numeric_preds else preds.tolist(),
    }
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    parts = [MAGIC, _HEADER_LEN.pack(len(head)), head, matrix.tobytes()]
    if numeric_preds:
        parts.append(np.ascontiguousarray(preds, dtype="<f8").tobytes())
    return b"".join(parts)


def decode_frame(buf: bytes) -> Frame:
    if len(buf) < 8 or buf[:4] != MAGIC:
        raise FrameError("not a kiln hand-off frame (bad magic)")
    (head_len,) = _HEADER_LEN.unpack_from(buf, 4)
    body_at = 8 + head_len
    if body_at > len(buf):
        raise FrameError("truncated header")
    try:
        header = orjson.loads(buf[8:body_at])
        model, version = str(header["model"]), str(header["version"])
        rows, numeric = int(header["rows"]), list(header["numeric"])
        categorical = dict(header.get("categorical") or {})
        text_preds = header.get("predictions")
        if text_preds is not None and not isinstance(text_preds, list):
            raise TypeError("predictions must be a list or null")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise FrameError(f"bad header: {exc}") from exc
    width = len(numeric)
    need = 8 * rows * (width + (1 if text_preds is None else 0))
    if rows < 0 or len(buf) - body_at != need:
        raise FrameError(f"body is {len(buf) - body_at} bytes, expected {need} for {rows} rows")
    flat = np.frombuffer(buf, dtype="<f8", offset=body_at)
    matrix = flat[: rows * width].reshape(rows, width)
    if text_preds is None:
        predictions = flat[rows * width:]
    else:
        if len(text_preds) != rows:
            raise FrameError(f"{len(text_preds)} predictions for {rows} rows")
        predictions = np.asarray(text_preds, dtype=object)
    for name, values in categorical.items():
        if not isinstance(values, list) or len(values) != rows:
            raise FrameError(f"categorical feature {name!r} does not have {rows} values")
    return Frame(model, version, numeric, matrix, predictions, categorical)


class HandoffSender:
    """Buffers served rows and sends them as frames; never blocks, never raises on the request path.

    The server calls `add` per request (or per batch) and `flush` from a timer in its event loop.
    """

    def __init__(self, path: str, model: str, version: str, numeric: list[str],
                 frame_rows: int = DEFAULT_FRAME_ROWS):
        self.path, self.model, self.version, self.numeric = path, model, version, numeric
        self.frame_rows = frame_rows
        self.sent_rows = 0
        self.dropped_rows = 0
        self._matrices: list[np.ndarray] = []
        self._predictions: list[np.ndarray] = []
        self._categorical: dict[str, list] = {}
        self._pending = 0
        self._sock: socket.socket | None = None

    def add(self, matrix: np.ndarray, predictions, categorical: dict[str, list] | None = None) -> None:
        self._matrices.append(matrix)
        self._predictions.append(np.asarray(predictions))
        for name, values in (categorical or {}).items():
            self._categorical.setdefault(name, []).extend(values)
        self._pending += len(matrix)
        if self._pending >= self.frame_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        matrix = np.concatenate(self._matrices) if len(self._matrices) > 1 else self._matrices[0]
        preds = np.concatenate(self._predictions) if len(self._predictions) > 1 else self._predictions[0]
        categorical, rows = self._categorical, self._pending
        self._matrices, self._predictions, self._categorical, self._pending = [], [], {}, 0
        for start in range(0, rows, self.frame_rows):
            end = start + self.frame_rows
            part = {k: v[start:end] for k, v in categorical.items()}
            frame = encode_frame(self.model, self.version, self.numeric, matrix[start:end],
                                 preds[start:end], part)
            self._send(frame, min(end, rows) - start)

    def _send(self, frame: bytes, rows: int) -> None:
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.connect(self.path)
                self._sock = sock
            self._sock.send(frame)
            self.sent_rows += rows
        except OSError as exc:
            self.dropped_rows += rows
            # The monitor restarted or is gone: reconnect on the next frame. A full buffer
            # (EAGAIN) keeps the connection: the monitor is only busy.
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK) and self._sock is not None:
                self._sock.close()
                self._sock = None

    def close(self) -> None:
        self.flush()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
