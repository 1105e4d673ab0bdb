"""One loaded model version and what answers for it: its batcher, decoders, explanations and the
metadata rendered once. Both modes use it: the single-model App holds one for the server's life; the
multi-model app holds one per loaded model, built after a lazy load and dropped on eviction.

Predictions are validated by the codecs and queued in this model's Batcher; explanations are
validated by the same decoders, then leave the event loop (`Explanations`, one thread per model,
started on first use).
"""

from __future__ import annotations

import orjson

from . import codec_v1, codec_v2
from .batching import Batcher, Item
from .errors import BadRequest
from .explaining import Explanations, target_of, v1_explanation, v2_explain_body, v2_explanation
from .metrics import OTHER
from .openapi import document as openapi_document
from .rows import numeric_matrix
from .signature import BOOLEAN, CATEGORY, INTEGER, LABEL

_v1_encode, _v2_encode = codec_v1.encode, codec_v2.encode


class ServedModel:
    def __init__(self, settings, sig, runtime, metrics, drift, loop, choose_id, proto_base: int = 0):
        self.name, self.version = settings.model_name, settings.model_version
        self.sig, self.runtime, self.metrics, self.drift = sig, runtime, metrics, drift
        self._choose_id = self.choose_id = choose_id  # the gRPC service chooses ids with it too
        # Added to V1/V2/OTHER when this model's requests are counted (metrics.ServerMetrics); 0 in
        # the single-model mode, whose Connection counts into this model's Metrics directly.
        self.proto_base = proto_base
        self.batcher = Batcher(loop, runtime, sig, metrics, drift, settings.max_batch_size,
                               settings.max_latency_ms / 1000.0)
        self.v2 = codec_v2.Decoder(self.name, self.version, sig, runtime.has_proba)
        self.explanations = Explanations(loop, runtime, sig)
        self._submit = self.batcher.submit
        self._v1_decode = codec_v1.decode
        classes = list(runtime.classes) if runtime.classes is not None else None
        platform = "onnxruntime_onnx" if runtime.kind == "onnx" else "scikit-learn"
        self.answers = model_answers(self.name, self.version, sig, platform, classes, runtime.label_datatype,
                                     runtime.has_proba, settings.max_batch_size, ready=True)

    def busy(self) -> bool:
        """A request of this model is queued for a batch or being explained."""
        return bool(self.batcher.queue) or self.explanations.pending > 0

    def close(self) -> None:
        """Dropped (evicted, unloaded, replaced): an explanation running finishes on its thread, then
        the thread ends."""
        executor = self.explanations._executor
        if executor is not None:
            executor.shutdown(wait=False)

    # --- predictions ------------------------------------------------------------------------------

    def v1_predict(self, conn, slot, body: bytes) -> None:
        slot.rid = self._choose_id(slot.client_id)
        rows, x, n, proba = self._v1_decode(body, self.sig)
        if proba and not self.runtime.has_proba:
            raise BadRequest("this model has no probabilities (a regressor, or a classifier without "
                             "predict_proba)")
        self._submit(Item(conn, slot, rows, x, n, _v1_encode, proba, "instances"))

    def v2_infer(self, conn, slot, body: bytes, header_len) -> None:
        rows, x, n, proba, ctx = self.v2_decode(slot, body, header_len)
        ctx.prefix = self.v2.answer_head(slot.rid)
        self._submit(Item(conn, slot, rows, x, n, _v2_encode, proba, "inputs[0].data", ctx))

    def v2_decode(self, slot, body: bytes, header_len):
        """The V2 decoder's (rows, x, n, proba, ctx), with the request's id chosen."""
        header_id = slot.client_id
        slot.rid = self._choose_id(header_id)  # an answer to a bad request carries an id too
        rows, x, n, proba, ctx = self.v2.decode(body, header_len)
        if ctx.body_id is not None and slot.rid is not header_id:  # the header's id, if sane, wins
            slot.rid = self._choose_id(None, ctx.body_id)
        return rows, x, n, proba, ctx

    # --- explanations: validated like predictions, then off the event loop ------------------------

    def v1_explain(self, conn, slot, body: bytes) -> None:
        slot.protocol = self.proto_base + OTHER  # explanations take milliseconds: kept out of the V1 latency figures
        slot.rid = self._choose_id(slot.client_id)
        rows, x, n, _ = self._v1_decode(body, self.sig)
        x = self._explain_rows(rows, x, n, "instances")
        target = target_of(orjson.loads(body).get("parameters"))  # the decoder read the rest
        self.explanations.submit(conn, slot, x, target, v1_explanation)

    def v2_explain(self, conn, slot, body: bytes, header_len) -> None:
        slot.protocol = self.proto_base + OTHER
        body, header_len, target = v2_explain_body(body, header_len)
        rows, x, n, _, _ = self.v2_decode(slot, body, header_len)
        x = self._explain_rows(rows, x, n, "inputs[0].data")
        prefix = self.v2.answer_head(slot.rid)
        self.explanations.submit(conn, slot, x, target,
                                 lambda result, selected: v2_explanation(prefix, result, selected))

    def _explain_rows(self, rows, x, n: int, where: str):
        limit = self.explanations.max_rows
        if n > limit:
            raise BadRequest(f"{where}: {n} rows; an explanation takes at most {limit} rows per request")
        return numeric_matrix(rows, self.sig, where) if x is None else x


def model_answers(name: str, version: str, sig, platform: str, classes, label_datatype: str,
                  has_proba: bool, max_batch_size: int, ready: bool) -> dict[bytes, bytes]:
    """The model's metadata answers: `v1-model`, `v2-model`, `v2-config`, `/openapi.json`."""
    if sig.numeric:
        inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, sig.width]}]
    else:
        dt = {CATEGORY: "BYTES", BOOLEAN: "BOOL", INTEGER: "INT64"}
        inputs = [{"name": f.name, "datatype": dt.get(f.type, "FP64"), "shape": [-1]} for f in sig.features]
    outputs = [{"name": "predict", "datatype": label_datatype, "shape": [-1]}]
    if has_proba:
        outputs.append({"name": "probabilities", "datatype": "FP32",
                        "shape": [-1, len(classes) if classes else -1]})
    features = [{"name": f.name, "type": f.type} for f in sig.features]
    dumps = orjson.dumps
    return {
        b"v1-model": dumps({"name": name, "ready": ready, "version": version,
                            "features": features, "classes": classes}),
        b"v2-model": dumps({"name": name, "versions": [version], "platform": platform,
                            "inputs": inputs, "outputs": outputs,
                            "parameters": {"features": features, "classes": classes}}),
        b"v2-config": dumps({"name": name, "platform": platform, "max_batch_size": max_batch_size,
                             "input": inputs, "output": outputs}),
        b"/openapi.json": dumps(openapi_document(name, version, sig, has_proba)),
    }


def table_answers(entry, max_batch_size: int) -> dict[bytes, bytes]:
    """The same answers for a model not loaded yet, from its table entry: the signature gives the
    features and classes; the label's datatype is the classes' (numbers or strings) until loaded."""
    sig = entry.signature
    classes = list(sig.classes) if sig.classes is not None else None
    if sig.output != LABEL:
        label_datatype = "FP64"
    elif classes and all(type(c) is int or (type(c) is str and c.lstrip("-").isdigit()) for c in classes):
        label_datatype = "INT64"
    else:
        label_datatype = "BYTES"
    platform = "onnxruntime_onnx" if entry.settings.onnx_uri else "scikit-learn"
    return model_answers(entry.name, entry.version, sig, platform, classes, label_datatype,
                         sig.output == LABEL, max_batch_size, ready=False)
