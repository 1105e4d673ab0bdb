"""Prometheus metrics with the `kiln_` prefix, kept in one flat list of numbers per worker.

prometheus_client takes a lock and walks label dictionaries on every observation; on a request path
of a few tens of microseconds that shows. Here an observation is a list index increment (the layout
is fixed at start: the label values are a closed set - protocols, status codes, the model's classes),
and the text format is produced only when scraped. With several workers each one copies its list into
its own row of a shared memory block (one writer per row, no locks) and a scrape sums the rows.
"""

from __future__ import annotations

import mmap
from bisect import bisect_left

import numpy as np

# "grpc": every call on KILN_GRPC_PORT (serve/grpc/), counted under the HTTP status its gRPC code
# stands for (grpc/status.py), so one `code` label serves every protocol.
PROTOCOLS = ("v1", "v2", "other", "grpc")
_NPROTO = len(PROTOCOLS)
V1, V2, OTHER, GRPC = 0, 1, 2, 3
CODES = (200, 400, 404, 405, 413, 415, 500, 503)
_CODE_INDEX = {c: i for i, c in enumerate(CODES)}
_OTHER_CODE = len(CODES)  # rendered as code="other"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
INFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
DEFAULT_VALUE_BUCKETS = (-100.0, -10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 10.0, 100.0)


class Layout:
    """Offsets of every series in the flat vector."""

    def __init__(self, classes: tuple | None, value_buckets: tuple | None):
        self.classes = classes
        self.value_buckets = value_buckets
        n = 0
        self.req = n
        n += len(PROTOCOLS) * (len(CODES) + 1)
        self.lat = n
        n += len(PROTOCOLS) * (len(LATENCY_BUCKETS) + 1)
        self.lat_sum = n
        n += len(PROTOCOLS)
        self.batch = n
        n += len(BATCH_BUCKETS) + 1
        self.batch_sum = n
        n += 1
        self.infer = n
        n += len(INFER_BUCKETS) + 1
        self.infer_sum = n
        n += 1
        self.pred = n
        n += len(classes) if classes is not None else len(value_buckets) + 1
        self.pred_sum = n
        n += 1
        self.handoff = n  # sent, dropped
        n += 2
        self.size = n


class SharedRows:
    """An anonymous shared mapping (inherited across fork): one float64 row per worker."""

    def __init__(self, workers: int, width: int):
        self.workers, self.width = workers, width
        self._map = mmap.mmap(-1, max(8, workers * width * 8))
        self.rows = np.frombuffer(self._map, dtype=np.float64, count=workers * width).reshape(workers, width)


class Metrics:
    def __init__(self, model: str, version: str, digest: str, runtime: str, fmt: str,
                 classes: tuple | None, value_buckets: tuple | None = None,
                 shared: SharedRows | None = None, slot: int = 0, requests_only: bool = False):
        self.requests_only = requests_only  # ServerMetrics' own: requests that name no model
        if classes is None and value_buckets is None:
            value_buckets = DEFAULT_VALUE_BUCKETS
        self.layout = lay = Layout(classes, value_buckets if classes is None else None)
        self.v = [0.0] * lay.size
        self._pending: list[np.ndarray] = []
        self.shared, self.slot = shared, slot
        self.handoff = None  # set by the app: an object with sent_rows and dropped_rows
        self._labels = f'model="{_esc(model)}",version="{_esc(version)}"'
        self._info = "" if requests_only else self.info(model, version, digest, runtime, fmt)
        if classes is not None:
            # kiln-train lists classes as strings while the model answers its own label type (0, 1):
            # match on the text.
            self._class_index = {str(c): i for i, c in enumerate(classes)}
            # Labels 0..K-1 (the usual encoding) count with one bincount, no lookup.
            self._dense = [str(c) for c in classes] == [str(i) for i in range(len(classes))]
        self._req, self._lat, self._lat_sum = lay.req, lay.lat, lay.lat_sum
        self._ncodes = len(CODES) + 1
        self._nlat = len(LATENCY_BUCKETS) + 1

    def info(self, model: str, version: str, digest: str, runtime: str, fmt: str) -> str:
        """kiln_model_info's sample (reset when a version is loaded again from another artifact)."""
        self._info = (f'kiln_model_info{{model="{_esc(model)}",version="{_esc(version)}",'
                      f'digest="{_esc(digest)}",runtime="{runtime}",format="{fmt}"}} 1\n')
        return self._info

    # --- the request path ---------------------------------------------------------------------

    def request(self, protocol: int, status: int, seconds: float) -> None:
        v = self.v
        v[self._req + protocol * self._ncodes + _CODE_INDEX.get(status, _OTHER_CODE)] += 1
        v[self._lat + protocol * self._nlat + bisect_left(LATENCY_BUCKETS, seconds)] += 1
        v[self._lat_sum + protocol] += seconds

    def batch(self, rows: int, seconds: float, labels: np.ndarray) -> None:
        v, lay = self.v, self.layout
        v[lay.batch + bisect_left(BATCH_BUCKETS, rows)] += 1
        v[lay.batch_sum] += rows
        v[lay.infer + bisect_left(INFER_BUCKETS, seconds)] += 1
        v[lay.infer_sum] += seconds
        # Counted by class (or bucket) when published, once a second over everything gathered:
        # a numpy call per batch costs more than the batch's own bookkeeping.
        self._pending.append(labels)
        if len(self._pending) >= 4096:
            self._count_pending()

    def _count_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        labels = pending[0] if len(pending) == 1 else np.concatenate(pending)
        v, lay = self.v, self.layout
        if lay.classes is not None:
            self._count_classes(labels)
            return
        values = labels.astype(np.float64, copy=False).reshape(-1)
        counts = np.bincount(np.searchsorted(lay.value_buckets, values, side="left"),
                             minlength=len(lay.value_buckets) + 1)
        for i, c in enumerate(counts.tolist()):
            if c:
                v[lay.pred + i] += c
        v[lay.pred_sum] += float(values.sum())

    def _count_classes(self, labels: np.ndarray) -> None:
        v, base = self.v, self.layout.pred
        labels = labels.reshape(-1)
        if self._dense and labels.dtype.kind in "iu" and (not len(labels) or labels.min() >= 0):
            counts = np.bincount(labels, minlength=len(self._class_index)).tolist()
            for i, c in enumerate(counts[: len(self._class_index)]):
                if c:
                    v[base + i] += c
            return
        values, counts = np.unique(labels, return_counts=True)
        index = self._class_index
        for value, c in zip(values.tolist(), counts.tolist()):
            i = index.get(str(value))
            if i is not None:
                v[base + i] += c

    # --- publishing -----------------------------------------------------------------------------

    def publish(self) -> None:
        """Copies this worker's numbers into its shared row (called on a timer and before a scrape)."""
        self._count_pending()
        if self.handoff is not None:
            self.v[self.layout.handoff] = float(self.handoff.sent_rows)
            self.v[self.layout.handoff + 1] = float(self.handoff.dropped_rows)
        if self.shared is not None:
            self.shared.rows[self.slot, : len(self.v)] = self.v

    def totals(self) -> list[float]:
        self.publish()
        if self.shared is None:
            return list(self.v)
        return self.shared.rows[:, : len(self.v)].sum(axis=0).tolist()

    def render(self) -> bytes:
        return render([self])

    # --- one family's samples (render() puts each family's header once, before every server's) ----

    def families(self) -> dict[str, list[str]]:
        """Family name -> this object's sample lines."""
        v, lay, lbl = self.totals(), self.layout, self._labels
        fam: dict[str, list[str]] = {}
        out = fam["kiln_model_info"] = []
        if self._info:
            out.append(self._info)
        out = fam["kiln_requests_total"] = []
        for p, proto in enumerate(PROTOCOLS):
            for c in range(self._ncodes):
                n = v[lay.req + p * self._ncodes + c]
                code = CODES[c] if c < len(CODES) else "other"
                if n or (c == 0 and p < 2):
                    out.append(f'kiln_requests_total{{{lbl},protocol="{proto}",code="{code}"}} {_num(n)}\n')
        out = fam["kiln_request_duration_seconds"] = []
        for p, proto in enumerate(PROTOCOLS):
            base = lay.lat + p * self._nlat
            _histogram(out, "kiln_request_duration_seconds", f'{lbl},protocol="{proto}"', LATENCY_BUCKETS,
                       v[base: base + self._nlat], v[lay.lat_sum + p])
        if self.requests_only:
            return fam
        out = fam["kiln_batch_size"] = []
        _histogram(out, "kiln_batch_size", lbl, BATCH_BUCKETS,
                   v[lay.batch: lay.batch + len(BATCH_BUCKETS) + 1], v[lay.batch_sum])
        out = fam["kiln_inference_duration_seconds"] = []
        _histogram(out, "kiln_inference_duration_seconds", lbl, INFER_BUCKETS,
                   v[lay.infer: lay.infer + len(INFER_BUCKETS) + 1], v[lay.infer_sum])
        if lay.classes is not None:
            out = fam["kiln_predictions_total"] = []
            for i, cls in enumerate(lay.classes):
                out.append(f'kiln_predictions_total{{{lbl},class="{_esc(str(cls))}"}} {_num(v[lay.pred + i])}\n')
        else:
            out = fam["kiln_prediction_value"] = []
            nb = len(lay.value_buckets) + 1
            _histogram(out, "kiln_prediction_value", lbl, lay.value_buckets,
                       v[lay.pred: lay.pred + nb], v[lay.pred_sum])
        fam["kiln_handoff_rows_total"] = [
            f'kiln_handoff_rows_total{{{lbl},outcome="sent"}} {_num(v[lay.handoff])}\n',
            f'kiln_handoff_rows_total{{{lbl},outcome="dropped"}} {_num(v[lay.handoff + 1])}\n']
        return fam


# Family -> (type, help), in the order they are rendered.
FAMILIES = {
    "kiln_model_info": ("gauge", "The model this server serves (value 1)."),
    "kiln_requests_total": ("counter", "Requests answered, by protocol and HTTP status code (gRPC: its equivalent)."),
    "kiln_request_duration_seconds": ("histogram", "Time from a request's last byte to its response."),
    "kiln_batch_size": ("histogram", "Rows per model call (requests merged by the batcher)."),
    "kiln_inference_duration_seconds": ("histogram", "Time of one model call."),
    "kiln_predictions_total": ("counter", "Predictions served, by class."),
    "kiln_prediction_value": ("histogram", "Predicted values (regression), by bucket."),
    "kiln_handoff_rows_total": ("counter", "Rows handed to the monitoring sidecar, by outcome."),
}


def render(sources, extra: str = "") -> bytes:
    """One exposition of several Metrics (one per model version in multi-model mode): each family's
    HELP and TYPE once, then every source's samples of it. `extra`: more families, already rendered."""
    per_source = [m.families() for m in sources]
    out = []
    for name, (kind, text) in FAMILIES.items():
        lines = [line for fam in per_source for line in fam.get(name, ())]
        if not lines and not any(name in fam for fam in per_source):
            continue
        out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")
        out.extend(lines)
    out.append(extra)
    return "".join(out).encode()


class ServerMetrics:
    """Multi-model mode: the Metrics of every model version loaded so far, and what requests naming
    no model count under (model=""). http.Connection counts a request with `request(protocol, ...)`;
    here `protocol` also says whose it is (a model's `base + V1/V2/OTHER/GRPC`, base a multiple of
    len(PROTOCOLS)), so the request path needs no change and no lookup by name."""

    def __init__(self):
        self.server = Metrics("", "", "", "", "", None, requests_only=True)
        self.sources: list[Metrics] = [self.server]
        self.extra = None  # () -> str: the repository's own families

    def add(self, metrics: "Metrics") -> int:
        """Registers a model version's Metrics; -> its protocol base."""
        self.sources.append(metrics)
        return _NPROTO * (len(self.sources) - 1)

    def replace(self, base: int, metrics: "Metrics") -> None:
        """The same model version loaded again with other classes: its series are replaced, not doubled."""
        self.sources[base // _NPROTO] = metrics

    def request(self, protocol: int, status: int, seconds: float) -> None:
        owner, protocol = divmod(protocol, _NPROTO)
        self.sources[owner].request(protocol, status, seconds)

    def publish(self) -> None:
        for m in self.sources:
            m.publish()

    def render(self) -> bytes:
        return render(self.sources, self.extra() if self.extra is not None else "")


def _histogram(out: list, name: str, labels: str, bounds, counts, total: float) -> None:
    running = 0.0
    for bound, c in zip(bounds, counts):
        running += c
        out.append(f'{name}_bucket{{{labels},le="{_num(bound)}"}} {_num(running)}\n')
    running += counts[len(bounds)]
    out.append(f'{name}_bucket{{{labels},le="+Inf"}} {_num(running)}\n')
    out.append(f"{name}_sum{{{labels}}} {repr(float(total))}\n")
    out.append(f"{name}_count{{{labels}}} {_num(running)}\n")


def _num(x) -> str:
    f = float(x)
    return str(int(f)) if f.is_integer() else repr(f)


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
