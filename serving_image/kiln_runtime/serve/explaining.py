"""Explanations over HTTP, beside the prediction path and never in it (docs/explanations.md): the
request's rows are validated by the prediction decoders (serve/app.py), then explained off the event
loop on one thread of their own, by the pure `explain` module, and encoded as V1 or V2 answers."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import orjson

from . import explain
from .errors import BadRequest, LoadError
from .http import JSON_HEADERS
from .signature import jtype

log = logging.getLogger("kiln.serve")

MAX_PENDING = 4  # explanations running or waiting per worker; more are answered 503 at once
MAX_ROWS = 64  # rows one explain request may hold
_RETRY_HEADERS = JSON_HEADERS + b"retry-after: 1\r\n"


class Explanations:
    """Explanations beside the prediction path, never in it. They skip the Batcher and run on one
    thread of their own (started on first use), so the event loop goes on reading, batching and
    answering predictions meanwhile; at most `max_pending` are running or waiting for that thread,
    and a request beyond that is answered 503 (with `Retry-After`) at once instead of queueing.
    The two threads share the interpreter lock, so predictions answered meanwhile can wait for it
    (benchmarks/explain.py measures predictions during explanations).

    The explainer is built on that thread by the first explanation (for an ONNX-served model that
    first deserializes the scikit-learn model, which stays the source of truth); a model that cannot
    be explained is remembered and answered 503 naming why."""

    def __init__(self, loop, runtime, sig, max_pending: int = MAX_PENDING,
                 max_rows: int = MAX_ROWS):
        self.loop, self.runtime, self.sig = loop, runtime, sig
        self.max_pending, self.max_rows = max_pending, max_rows
        self.pending = 0
        self.factory = self._build  # () -> an object whose explain(x) returns an explain.Explanation
        self._executor = None
        self._explainer = None
        self._unavailable = None

    def submit(self, conn, slot, x, target, encode) -> None:
        if self.pending >= self.max_pending:
            conn.fail(slot, 503, f"{self.pending} explanations are already running or waiting (the limit "
                      f"per server process is {self.max_pending}); retry later", _RETRY_HEADERS)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="kiln-explain")
        self.pending += 1
        future = self.loop.run_in_executor(self._executor, self._work, x, target, encode)
        future.add_done_callback(lambda f: self._done(conn, slot, f))

    def _done(self, conn, slot, future) -> None:
        self.pending -= 1
        if future.cancelled():
            conn.fail(slot, 503, "the explanation was cancelled")
            return
        exc = future.exception()
        if exc is not None:
            log.error("explanation failed", exc_info=exc)
            conn.fail(slot, 500, f"internal error while explaining: {type(exc).__name__}")
            return
        status, payload = future.result()
        if status == 200:
            conn.respond(slot, 200, payload)
        else:
            conn.fail(slot, status, payload)

    def _work(self, x, target, encode):
        """On the explanation thread: -> (200, body) or (status, error message)."""
        try:
            explainer = self._get()
        except explain.Unsupported as exc:
            return 503, f"this model cannot be explained: {exc}"
        try:
            result = explainer.explain(x)
            selected = result.select(target)
        except explain.UnknownTarget as exc:
            return 400, f"parameters.target: {exc}"
        except explain.Unsupported as exc:
            return 503, f"this model cannot be explained: {exc}"
        except (ValueError, TypeError, KeyError) as exc:
            # As for predictions: a value the model refuses (an unknown category) is the client's.
            return 400, f"the model rejected the input: {exc}"
        return 200, encode(result, selected)

    def _get(self):
        if self._explainer is None:
            if self._unavailable is not None:
                raise explain.Unsupported(self._unavailable)
            try:
                self._explainer = self.factory()
            except (explain.Unsupported, LoadError) as exc:
                self._unavailable = str(exc)
                log.warning("explanations are not available: %s", exc)
                raise explain.Unsupported(self._unavailable) from None
        return self._explainer

    def _build(self):
        runtime = self.runtime
        if runtime.kind != "sklearn" or getattr(runtime, "model", None) is None:
            source = getattr(runtime, "sklearn_source", None)
            if source is None:
                raise explain.Unsupported("the server holds no scikit-learn model to explain")
            from .runtime_sklearn import SklearnRuntime

            runtime = SklearnRuntime(source(), self.sig)
        explainer = explain.build(runtime.model, self.sig, runtime._input)
        log.info("explanations: method %s", explainer.name)
        return explainer


def target_of(params):
    """`parameters.target`: the class to explain (a label as :predict answers it), or None."""
    if params is None or type(params) is not dict:
        return None  # a non-object was refused by the decoder already
    target = params.get("target")
    if target is None:
        return None
    if type(target) not in (str, int, float, bool):
        raise BadRequest(f"'parameters.target' must be a class label (a string or a number), got {jtype(target)}")
    return target


def v2_explain_body(body: bytes, header_len):
    """The explain body as the V2 decoder takes it: `outputs` (which name predict's outputs) dropped.
    -> (body, header length, target). Anything malformed is left for the decoder to name."""
    head, tail = body, b""
    if header_len is not None:
        try:
            hlen = int(header_len)
        except ValueError:
            return body, header_len, None
        if not 0 < hlen <= len(body):
            return body, header_len, None
        head, tail = body[:hlen], body[hlen:]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError:
        return body, header_len, None
    if type(doc) is not dict:
        return body, header_len, None
    target = target_of(doc.get("parameters"))
    if "outputs" in doc:
        del doc["outputs"]
        head = orjson.dumps(doc)
        if header_len is not None:
            header_len = str(len(head)).encode()
    return head + tail, header_len, target


def v1_explanation(result, selected) -> bytes:
    targets, base, values, attributions = selected
    names = result.features
    rows = []
    for i, (b, v, a) in enumerate(zip(base.tolist(), values.tolist(), attributions.tolist())):
        row = {"base": b, "value": v, "attributions": dict(zip(names, a))}
        if targets[i] is not None:
            row = {"target": targets[i], **row}
        rows.append(row)
    return orjson.dumps({"method": result.method, "output": result.output, "explanations": rows})


def v2_explanation(prefix: bytes, result, selected) -> bytes:
    targets, base, values, attributions = selected
    n, width = attributions.shape
    outputs = [{"name": "attributions", "datatype": "FP64", "shape": [n, width],
                "data": attributions.reshape(-1).tolist()},
               {"name": "base", "datatype": "FP64", "shape": [n], "data": base.tolist()},
               {"name": "value", "datatype": "FP64", "shape": [n], "data": values.tolist()}]
    if targets and targets[0] is not None:
        outputs.append({"name": "target", "datatype": "BYTES", "shape": [n], "data": [str(t) for t in targets]})
    parameters = {"method": result.method, "output": result.output, "features": list(result.features)}
    return (prefix + b",".join(orjson.dumps(o) for o in outputs) + b'],"parameters":'
            + orjson.dumps(parameters) + b"}")
