"""The hand-off of served rows from kiln-serve to the kiln-monitor sidecar: the one definition of it.

Transport: a Unix datagram socket in a volume both containers mount (`KILN_HANDOFF_SOCKET`). The
monitor binds it; the server sends without ever blocking. A datagram is delivered whole or not at
all, so no framing state survives a lost message, and when the monitor is slow or absent the kernel
refuses the send at once and the server only counts the dropped rows: drift is a statistic over a
window, and losing rows under overload costs accuracy, never request latency. A refused frame is
kept (up to DEFAULT_BACKLOG_FRAMES) and offered again with the next frame or flush, so only an
overload longer than that backlog loses rows.

Frame (one datagram):
    b"KLN1" | header length (u32 little-endian) | header (JSON) | body
    header = {"model": str, "version": str, "rows": n,
              "numeric": [feature names carried in the body, in column order],
              "categorical": {feature name: [n values]},   # strings, booleans or null
              "predictions": [n values] or null,           # null: predictions are in the body
              "requests": [[id, rows, time], ...]}         # optional, see below
    body   = float64 little-endian n x len(numeric), row-major (NaN = missing),
             then float64 x n predictions when header["predictions"] is null.

"requests" says which request each row answered, run-length encoded in row order: a run is
[request id (str or null), rows (int > 0), answer time (unix seconds, float, or null)], with a
fourth element `first` (int >= 0) when the run does not start at the request's row 0 (a request
split over two frames). The runs' rows add up to n. Row k of a run is row `first + k` of its
request. Frames without the field (older senders) decode with no ids or times.

Request ids issued by kiln-serve read `{token}-{counter, hex}`, the token being 8 hex characters
unique to one server process (`process_token`); the monitor reads the token back (`issuer_token`)
to tell an id answered by another replica from one it never saw.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import select
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import orjson

MAGIC = b"KLN1"
_HEADER_LEN = struct.Struct("<I")
DEFAULT_SOCKET = "/var/run/kiln/handoff.sock"
# Linux's default limit for one Unix datagram is about 208 KiB (net.core.wmem_default); frames of
# 256 rows of 20 features are 42 KiB, leaving room for wide rows and categorical values.
DEFAULT_FRAME_ROWS = 256
# Frames kept for a retry while the monitor's queue is full: 64 x 256 rows, about 3 MB at 20 features.
DEFAULT_BACKLOG_FRAMES = 64


ISSUED_ID = re.compile(r"([0-9a-f]{8})-[0-9a-f]{1,16}")


def process_token(slot: int = 0) -> str:
    """8 hex characters from the host name (the pod), start time, process id and worker slot."""
    seed = f"{socket.gethostname()}|{time.time_ns()}|{os.getpid()}|{slot}".encode()
    return hashlib.blake2s(seed, digest_size=4).hexdigest()


def issuer_token(request_id: str) -> str | None:
    """The token of the kiln-serve process that issued `request_id`; None for a client's own id."""
    m = ISSUED_ID.fullmatch(request_id)
    return m.group(1) if m else None


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
    # Run-length [(id or None, rows, unix time or None, first row)], or None for a frame without
    # them. Per-row views are expanded on demand: the drift windows never need them.
    requests: list[tuple] | None = None

    @property
    def rows(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def request_ids(self) -> list | None:
        """One request id (or None) per row; None when the frame carries no requests."""
        if self.requests is None:
            return None
        out: list = []
        for rid, n, _ts, _first in self.requests:
            out.extend([rid] * n)
        return out

    @property
    def timestamps(self) -> np.ndarray | None:
        """Answer time per row, unix seconds (NaN where unknown); None without requests."""
        if self.requests is None:
            return None
        times = np.array([np.nan if ts is None else ts for _id, _n, ts, _f in self.requests], dtype=np.float64)
        return np.repeat(times, [n for _id, n, _ts, _f in self.requests])

    @property
    def row_in_request(self) -> np.ndarray | None:
        """Each row's index within its request (int32); None without requests."""
        if self.requests is None:
            return None
        sizes = np.array([n for _id, n, _ts, _f in self.requests], dtype=np.int64)
        firsts = np.array([f for _id, _n, _ts, f in self.requests], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes  # each run's first row within the frame
        return (np.arange(int(sizes.sum())) - np.repeat(starts - firsts, sizes)).astype(np.int32)


_NONE = type(None)
_ID_TYPES = frozenset((str, _NONE))
_TIME_TYPES = frozenset((float, int, _NONE))


def _runs(requests: list) -> list[tuple]:
    """header["requests"] as validated (id, rows, time, first) tuples; raises TypeError/ValueError.
    Runs without `first` (all of them unless a request was split) are checked by whole columns, so
    the cost per run stays at C level on the monitor's ingest path."""
    if type(requests) is not list:
        raise TypeError("requests must be a list of runs")
    if requests and set(map(type, requests)) == {list} and set(map(len, requests)) == {3}:
        ids, ns, times = zip(*requests)
        if set(map(type, ids)) <= _ID_TYPES and set(map(type, ns)) == {int} and min(ns) > 0 \
                and set(map(type, times)) <= _TIME_TYPES:
            return list(zip(ids, ns, times, repeat(0)))
    return [_run(r) for r in requests]  # the general form, or an error naming the problem


def _run(entry) -> tuple:
    """One validated run of header["requests"]; raises TypeError/ValueError for a bad one."""
    if type(entry) is not list or not 3 <= len(entry) <= 4:
        raise TypeError("a request run is [id, rows, time] or [id, rows, time, first]")
    rid, n, ts = entry[0], entry[1], entry[2]
    first = entry[3] if len(entry) == 4 else 0
    if rid is not None and type(rid) is not str:
        raise TypeError("a request id is a string or null")
    if type(n) is not int or n <= 0 or type(first) is not int or first < 0:
        raise ValueError("a request run's rows must be a positive integer and first >= 0")
    if ts is not None and type(ts) is not float and type(ts) is not int:
        raise TypeError("a request's time is a number or null")
    return rid, n, ts, first


def encode_frame(model: str, version: str, numeric: list[str], matrix: np.ndarray,
                 predictions, categorical: dict[str, list] | None = None,
                 requests: list | None = None) -> bytes:
    """`requests`: runs as the module docstring says ([id, rows, time] or with `first`), or None."""
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
    if requests is not None:
        header["requests"] = requests
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
        requests = header.get("requests")
        if requests is not None:
            requests = _runs(requests)
            if sum(r[1] for r in requests) != rows:
                raise ValueError(f"request runs cover {sum(r[1] for r in requests)} rows, not {rows}")
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
    return Frame(model, version, numeric, matrix, predictions, categorical, requests)


def _frame_runs(runs: list[tuple], frame_rows: int) -> list[list[list]]:
    """Request runs cut at frame boundaries: one list of header runs per frame. A request cut in
    two continues in the next frame with `first` set to the row it resumes at."""
    frames: list[list[list]] = [[]]
    room = frame_rows
    for rid, n, ts in runs:
        first = 0
        while n > 0:
            if room == 0:
                frames.append([])
                room = frame_rows
            take = min(n, room)
            frames[-1].append([rid, take, ts, first] if first else [rid, take, ts])
            first += take
            n -= take
            room -= take
    return frames


class HandoffSender:
    """Buffers served rows and sends them as frames; never blocks, never raises on the request path.

    The server calls `add` per request (or per batch) and `flush` from a timer in its event loop.
    """

    def __init__(self, path: str, model: str, version: str, numeric: list[str],
                 frame_rows: int = DEFAULT_FRAME_ROWS, backlog_frames: int = DEFAULT_BACKLOG_FRAMES):
        self.path, self.model, self.version, self.numeric = path, model, version, numeric
        self.frame_rows = frame_rows
        self.sent_rows = 0
        self.dropped_rows = 0
        self._matrices: list[np.ndarray] = []
        self._predictions: list[np.ndarray] = []
        self._categorical: dict[str, list] = {}
        self._pending = 0
        self._runs: list[tuple] = []
        self._with_runs = False
        self._sock: socket.socket | None = None
        # Frames the monitor's queue refused for now (EAGAIN), retried in order on the next frame or
        # flush, so a burst the monitor is briefly too slow for costs no rows; bounded.
        self.backlog_frames = backlog_frames
        self._backlog: deque[tuple[bytes, int]] = deque()

    def add(self, matrix: np.ndarray, predictions, categorical: dict[str, list] | None = None,
            requests: list | None = None) -> None:
        """`requests`: [(request id, rows, unix time), ...] covering the rows in order, or None."""
        self._matrices.append(matrix)
        self._predictions.append(np.asarray(predictions))
        for name, values in (categorical or {}).items():
            self._categorical.setdefault(name, []).extend(values)
        n = len(matrix)
        if requests is not None:
            self._runs.extend(requests)
            self._with_runs = True
        else:
            self._runs.append((None, n, None))
        self._pending += n
        if self._pending >= self.frame_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            if self._backlog:
                self._drain()
            return
        matrix = np.concatenate(self._matrices) if len(self._matrices) > 1 else self._matrices[0]
        preds = np.concatenate(self._predictions) if len(self._predictions) > 1 else self._predictions[0]
        categorical, rows = self._categorical, self._pending
        runs = _frame_runs(self._runs, self.frame_rows) if self._with_runs else None
        self._matrices, self._predictions, self._categorical, self._pending = [], [], {}, 0
        self._runs, self._with_runs = [], False
        for i, start in enumerate(range(0, rows, self.frame_rows)):
            end = start + self.frame_rows
            part = {k: v[start:end] for k, v in categorical.items()}
            frame = encode_frame(self.model, self.version, self.numeric, matrix[start:end],
                                 preds[start:end], part, runs[i] if runs is not None else None)
            self._send(frame, min(end, rows) - start)

    def _send(self, frame: bytes, rows: int) -> None:
        backlog = self._backlog
        backlog.append((frame, rows))
        if len(backlog) > self.backlog_frames:
            _, lost = backlog.popleft()  # the monitor is far behind: the oldest rows give way
            self.dropped_rows += lost
        self._drain()

    def _drain(self) -> bool:
        """Sends backlogged frames in order until the monitor's queue is full; True when empty."""
        backlog = self._backlog
        while backlog:
            frame, rows = backlog[0]
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    sock.connect(self.path)
                    self._sock = sock
                self._sock.send(frame)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    # The monitor is only busy: keep the frames for the next flush or frame.
                    return False
                # The monitor restarted or is gone: what waits is lost; reconnect on the next frame.
                self.dropped_rows += sum(r for _, r in backlog)
                backlog.clear()
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                return True
            backlog.popleft()
            self.sent_rows += rows
        return True

    @property
    def backlog_rows(self) -> int:
        return sum(r for _, r in self._backlog)

    def close(self, timeout: float = 2.0) -> None:
        """Flushes, then waits (shutdown only, at most `timeout`) for the monitor to take the backlog."""
        self.flush()
        deadline = time.monotonic() + timeout
        while not self._drain() and self._sock is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            poller = select.poll()
            poller.register(self._sock, select.POLLOUT)
            poller.poll(min(remaining, 0.05) * 1000)
        self.dropped_rows += self.backlog_rows
        self._backlog.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
