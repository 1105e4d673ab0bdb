"""Served rows (and joined labels) as Parquet files in the artifact store, written off the hot path.

Layout, Hive-style so pandas, pyarrow, DuckDB and Spark read a prefix as one table:
    {uri}/model={model}/version={version}/date={YYYY-MM-DD}/part-{HHMMSS}-{writer}-{seq:06d}.parquet
Columns: request_id (string), row (int32, the row's index within its request), timestamp
(timestamp[ms, UTC], when the answer was sent), one column per feature (float64 numeric, string
categorical, the features' own names), prediction (float64 or string), and for labelled rows the
label column. `date` is the UTC day of each row's timestamp; HHMMSS is the flush's UTC time, and
`writer` a token unique to this monitor process, so two replicas or a restart never write the same
name.

The receiver thread only appends blocks (frames it already copied) to a bounded buffer; a writer
thread turns them into a table and uploads it every KILN_PAYLOAD_FLUSH_SECONDS or
KILN_PAYLOAD_FLUSH_ROWS rows, so a slow store never stalls ingest. Rows beyond the buffer's bound,
and rows whose upload kept failing, are dropped and counted by reason; `stop` writes everything
still buffered.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import zlib
from collections import Counter
from datetime import datetime, timezone
from itertools import chain
from urllib.parse import quote

import numpy as np

from kiln_runtime import store
from kiln_runtime.handoff import Frame

log = logging.getLogger(__name__)

BUFFER_FULL = "buffer_full"  # the writer is behind (a slow or failing store): the bound held
STORE_ERROR = "store_error"  # the upload failed after its retries
ERROR = "error"  # rows that could not be turned into a table (logged with a traceback)
STOPPED = "stopped"  # rows offered after the final flush
_DAY_MS = 86_400_000
RETRY_DELAYS = (0.5, 1.0, 2.0)  # three retries: about 3.5 s before a file's rows are given up


# Column names the layout owns: the log's own columns and the Hive partition keys. A feature of one
# of these names is written as "{name}_feature", so neither it nor the key is lost on reading.
RESERVED = frozenset(("request_id", "row", "timestamp", "prediction", "model", "version", "date"))


def feature_column(name: str, reserved=RESERVED) -> str:
    return f"{name}_feature" if name in reserved else name


def text(value) -> str | None:
    """A categorical value or a text prediction as the string column holds it."""
    if value is None or isinstance(value, str):
        return value
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return None
    return str(value)


def _text_list(values) -> list:
    return [v if v is None or v.__class__ is str else text(v) for v in values]


class FrameBlock:
    """A received frame (detached from the receive buffer), optionally sampled by request."""

    __slots__ = ("frame", "keep", "received", "rows")

    def __init__(self, frame: Frame, keep: np.ndarray | None, received: float):
        self.frame, self.keep, self.received = frame, keep, received
        self.rows = frame.rows if keep is None else int(keep.sum())

    def columns(self) -> dict:
        f, keep = self.frame, self.keep
        n = f.rows
        ids = f.request_ids or [None] * n
        rows = f.row_in_request
        if rows is None:
            rows = [None] * n  # an older sender: the row's place in its request is unknown
        ts = f.timestamps
        if ts is None:
            ts = np.full(n, self.received)
        elif np.isnan(ts).any():
            ts = np.where(np.isnan(ts), self.received, ts)
        cols = {"request_id": ids, "row": rows, "timestamp": ts}
        for j, name in enumerate(f.numeric):
            cols[feature_column(name)] = f.matrix[:, j]
        for name, values in f.categorical.items():
            cols[feature_column(name)] = _text_list(values)
        preds = f.predictions
        cols["prediction"] = _text_list(preds.tolist()) if preds.dtype == object else preds
        if keep is not None:
            idx = np.flatnonzero(keep)
            picks = idx.tolist()
            cols = {k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in picks]) for k, v in cols.items()}
        return cols


class ColumnsBlock:
    """Rows already laid out as columns (the join's labelled rows)."""

    __slots__ = ("cols", "rows")

    def __init__(self, cols: dict, rows: int):
        self.cols, self.rows = cols, rows

    def columns(self) -> dict:
        return self.cols


def sampled(frame: Frame, rate: float) -> np.ndarray | None:
    """Which rows of the frame to log: None for all. Whole requests are in or out, decided by a hash
    of the request id so every replica and every restart decides alike; rows without an id are
    sampled at random."""
    if rate >= 1.0:
        return None
    threshold = rate * 4294967296.0
    runs = frame.requests or [(None, frame.rows, None, 0)]
    keep = np.empty(frame.rows, dtype=bool)
    at = 0
    for rid, n, _ts, _first in runs:
        if rid is None:
            keep[at: at + n] = np.random.random(n) < rate
        else:
            keep[at: at + n] = zlib.crc32(rid.encode()) < threshold
        at += n
    return keep


def to_table(cols: dict):
    import pyarrow as pa

    arrays, names = [], []
    for name, values in cols.items():
        if name == "request_id":
            arr = pa.array(values, type=pa.string())
        elif name == "row":
            arr = pa.array(values if isinstance(values, list) else np.asarray(values, dtype=np.int32),
                           type=pa.int32())
        elif name == "timestamp":
            ms = np.round(np.asarray(values, dtype=np.float64) * 1000.0).astype(np.int64)
            arr = pa.array(ms, type=pa.timestamp("ms", tz="UTC"))
        elif isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
            arr = pa.array(values.astype(np.float64, copy=False), type=pa.float64())
        else:
            arr = pa.array(values if isinstance(values, list) else list(values), type=pa.string())
        arrays.append(arr)
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


class ParquetLog:
    """One buffered Parquet writer (the payload log, or the labelled rows)."""

    def __init__(self, uri: str, model: str, version: str, token: str, *, flush_rows: int,
                 flush_seconds: float, buffer_rows: int, what: str = "payload",
                 write=store.write_bytes, retry_delays=RETRY_DELAYS, clock=time.time):
        self.uri, self.token, self.what = uri, token, what
        self.prefix = store.join(uri, f"model={quote(model, safe='')}", f"version={quote(version, safe='')}")
        # A buffer smaller than a flush would only ever drop: it flushes when full instead.
        self.flush_rows, self.flush_seconds, self.buffer_rows = min(flush_rows, buffer_rows), flush_seconds, buffer_rows
        self._write_bytes, self._delays, self._clock = write, retry_delays, clock
        self.rows_written = 0
        self.files_written = 0
        self.rows_dropped: Counter[str] = Counter()
        self._blocks: list = []
        self._buffered = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def buffered(self) -> int:
        return self._buffered

    def start(self) -> "ParquetLog":
        # Imported now, not at the first flush: the import holds the GIL for a good part of a second,
        # which the receiver thread would spend not reading datagrams.
        import pyarrow.parquet  # noqa: F401

        self._thread = threading.Thread(target=self._loop, name=f"{self.what}-writer", daemon=True)
        self._thread.start()
        return self

    def add(self, block) -> bool:
        """Queues a block; never blocks on the store. False (rows counted as dropped) when full."""
        n = block.rows
        if not n:
            return True
        with self._cond:
            if self._stopped:
                self.rows_dropped[STOPPED] += n
                return False
            if self._buffered + n > self.buffer_rows:
                first = not self.rows_dropped[BUFFER_FULL]
                self.rows_dropped[BUFFER_FULL] += n
                if first:
                    log.warning("%s log: buffer of %d rows is full (the store is slow or failing); "
                                "dropping rows and counting them", self.what, self.buffer_rows)
                return False
            self._blocks.append(block)
            self._buffered += n
            if self._buffered >= self.flush_rows:
                self._cond.notify()
        return True

    def stop(self, timeout: float = 120.0) -> None:
        """Writes everything buffered, then ends the writer thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._drain()
        with self._cond:
            self._stopped = True

    def flush_now(self) -> None:
        """Writes what is buffered on the caller's thread (tests, and a writer-less stop)."""
        self._drain()

    # --- the writer thread ---------------------------------------------------------------------
    def _take(self) -> list:
        with self._cond:
            blocks, self._blocks, self._buffered = self._blocks, [], 0
        return blocks

    def _drain(self) -> None:
        while True:
            blocks = self._take()
            if not blocks:
                return
            self._write(blocks)

    def _loop(self) -> None:
        next_flush = time.monotonic() + self.flush_seconds
        while True:
            with self._cond:
                while not self._stopping and self._buffered < self.flush_rows:
                    remaining = next_flush - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                stopping = self._stopping
            next_flush = time.monotonic() + self.flush_seconds
            self._drain()
            if stopping:
                return

    def _write(self, blocks: list) -> None:
        rows = sum(b.rows for b in blocks)
        try:
            files = self._files(blocks)
        except Exception:
            log.exception("%s log: could not build a table of %d rows; dropping them", self.what, rows)
            self.rows_dropped[ERROR] += rows
            return
        for uri, data, n in files:
            for attempt in range(len(self._delays) + 1):
                try:
                    self._write_bytes(uri, data)
                except Exception as exc:
                    if attempt < len(self._delays):
                        log.warning("%s log: writing %s failed (retrying in %.1f s): %s", self.what, uri,
                                    self._delays[attempt], exc)
                        time.sleep(self._delays[attempt])
                        continue
                    log.error("%s log: writing %s failed %d times; %d rows dropped: %s", self.what, uri,
                              attempt + 1, n, exc)
                    self.rows_dropped[STORE_ERROR] += n
                    break
                self.rows_written += n
                self.files_written += 1
                break

    def _files(self, blocks: list) -> list[tuple[str, bytes, int]]:
        """(uri, parquet bytes, rows) per file: one per day and column layout."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Blocks with the same columns are merged before conversion: one Arrow array per column and
        # file rather than one per frame keeps the writer's time (and its hold on the GIL) short.
        layouts: dict[tuple, list[dict]] = {}
        for block in blocks:
            cols = block.columns()
            key = tuple((name, isinstance(v, np.ndarray)) for name, v in cols.items())
            layouts.setdefault(key, []).append(cols)
        now = datetime.fromtimestamp(self._clock(), timezone.utc)
        out = []
        for key, parts in layouts.items():
            if len(parts) == 1:
                merged = parts[0]
            else:
                merged = {name: (np.concatenate([p[name] for p in parts]) if is_array
                                 else list(chain.from_iterable(p[name] for p in parts)))
                          for name, is_array in key}
            table = to_table(merged)
            days = table.column("timestamp").cast(pa.int64()).to_numpy() // _DAY_MS
            for day in np.unique(days).tolist():
                part = table if days[0] == days[-1] == day and np.all(days == day) else table.filter(pa.array(days == day))
                date = datetime.fromtimestamp(day * 86400, timezone.utc).strftime("%Y-%m-%d")
                self._seq += 1
                name = f"part-{now:%H%M%S}-{self.token}-{self._seq:06d}.parquet"
                sink = io.BytesIO()
                # Dictionary encoding only where values repeat (categories, classes): on float
                # features it costs most of the write and makes the file larger, not smaller.
                repeated = [f.name for f in part.schema if f.type == pa.string() and f.name != "request_id"]
                pq.write_table(part, sink, compression="zstd", use_dictionary=repeated)
                out.append((store.join(self.prefix, f"date={date}", name), sink.getvalue(), part.num_rows))
        return out

    def stats(self) -> dict:
        return {"uri": self.uri, "rowsWritten": self.rows_written,
                "rowsDropped": sum(self.rows_dropped.values()),
                "rowsDroppedByReason": dict(self.rows_dropped), "filesWritten": self.files_written,
                "rowsBuffered": self._buffered}
