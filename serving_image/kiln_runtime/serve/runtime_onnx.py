"""The compiled runtime: an ONNX model (exported by kiln-train with skl2onnx, parity verified) on
onnxruntime. Loading it executes no Python from the artifact, and a call costs microseconds where a
scikit-learn estimator costs hundreds of them.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import LoadError
from .signature import CATEGORY, LABEL, Signature

# ONNX tensor element types -> numpy, for the inputs skl2onnx produces.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(string)": object,
}


log = logging.getLogger("kiln.serve")

_V2_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64",
             "tensor(int32)": "INT32", "tensor(string)": "BYTES", "tensor(bool)": "BOOL"}


class OnnxRuntime:
    kind = "onnx"
    # Set by loader.build: loads the scikit-learn model this graph was exported from (explanations).
    sklearn_source = None

    def __init__(self, model_bytes: bytes, sig: Signature, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One thread per worker process: workers, not intra-op threads, use more cores, and a pinned
        # single-core server would only lose time to a spinning thread pool.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._opts = opts
        self.session = self._session(model_bytes)
        self.sig = sig
        inputs = self.session.get_inputs()
        self._plan_inputs(inputs, sig)
        outputs = self.session.get_outputs()
        self.label_name = outputs[0].name
        self.label_datatype = _V2_TYPES.get(outputs[0].type, "FP32")
        self.proba_name = None
        self._proba_is_map = False
        if sig.output == LABEL and len(outputs) > 1:
            self.proba_name = outputs[1].name
            # skl2onnx's default ZipMap returns a list of {class: p} dicts; kiln-train exports
            # without it, but a model that kept it still serves (its probabilities convert slowly).
            self._proba_is_map = outputs[1].type.startswith("seq(")
        self.classes = sig.classes or _graph_classes(model_bytes)
        self._fetch_label = [self.label_name]
        self._fetch_both = [self.label_name, self.proba_name] if self.proba_name else None
        self.fused = False
        if self._columns is not None and sig.numeric and all(c[2] is np.float32 for c in self._columns):
            self._try_fuse(model_bytes)
        self._run = self.session.run

    def _session(self, model_bytes: bytes):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(model_bytes, self._opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise LoadError(f"onnxruntime cannot load the ONNX model: {exc}") from None

    def _try_fuse(self, model_bytes: bytes) -> None:
        """Serve the per-feature graph through one matrix input when it answers identically."""
        from .onnx_fuse import FUSED_INPUT, fuse

        try:
            fused_bytes = fuse(model_bytes, [c[0] for c in self._columns])
            if fused_bytes is None:
                return
            fused = self._session(fused_bytes)
            probe = np.random.default_rng(0).normal(size=(64, self.sig.width)) * 3
            fetch = self._fetch_both or self._fetch_label
            want = self.session.run(fetch, self._feeds(probe))
            got = fused.run(fetch, {FUSED_INPUT: probe.astype(np.float32)})
        except Exception as exc:  # an optimisation only: any doubt keeps the original graph
            log.info("serving the ONNX model's per-feature inputs as they are (%s)", exc)
            return
        if all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(want, got)):
            self.session = fused
            self._matrix = (FUSED_INPUT, np.float32)
            self._columns = None
            self.fused = True

    @property
    def has_proba(self) -> bool:
        return self.proba_name is not None

    def _plan_inputs(self, inputs, sig: Signature):
        """How a batch matrix becomes the graph's feeds: one [N, F] matrix input, or one [N, 1]
        input per feature (kiln-train's layout, named in signature.onnx.inputs, else by feature name)."""
        by_name = {i.name: i for i in inputs}
        names = sig.onnx_inputs or sig.names
        if len(inputs) == 1 and (sig.width > 1 or inputs[0].name not in names):
            if not sig.numeric:
                raise LoadError("the ONNX model takes one matrix but the signature has non-numeric features")
            inp = inputs[0]
            width = inp.shape[1] if len(inp.shape) == 2 else None
            if isinstance(width, int) and width != sig.width:
                raise LoadError(f"the ONNX model takes {width} features, the signature lists {sig.width}")
            dtype = _ORT_DTYPES.get(inp.type)
            if dtype is None or dtype is object:
                raise LoadError(f"the ONNX model's input {inp.name!r} has type {inp.type}, not numeric")
            self._matrix = (inp.name, dtype)
            self._columns = None
            return
        if len(inputs) != sig.width:
            raise LoadError(f"the ONNX model has {len(inputs)} inputs; expected one per feature ({sig.width})")
        if any(n not in by_name for n in names):
            # skl2onnx sanitises column names (non-alphanumerics become "_") and the ModelVersion's
            # signature does not carry the mapping: kiln-train's graphs take the features in order.
            names = [i.name for i in inputs]
        self._matrix = None
        self._columns = []
        for j, (feat, name) in enumerate(zip(sig.features, names)):
            dtype = _ORT_DTYPES.get(by_name[name].type)
            if dtype is None or (dtype is not object and feat.type == CATEGORY):
                raise LoadError(f"the ONNX model's input {name!r} has type {by_name[name].type}, which "
                                f"does not fit feature {feat.name!r} ({feat.type})")
            self._columns.append((name, j, dtype, feat.type))

    def _feeds(self, x: np.ndarray) -> dict:
        if self._matrix is not None:
            name, dtype = self._matrix
            return {name: x.astype(dtype, copy=False)}
        feeds = {}
        numeric = x.dtype != object
        missing = self.sig.missing_category
        for name, j, dtype, ftype in self._columns:
            col = x[:, j:j + 1]
            if numeric:
                feeds[name] = col.astype(dtype)
            elif dtype is object:
                # Categories as strings, null as the signature's missing marker.
                feeds[name] = np.array([[missing if v is None else str(v)] for v in col[:, 0].tolist()],
                                       dtype=object).reshape(-1, 1)
            else:
                # Numbers and booleans (as 0/1) from checked Python values; null becomes NaN.
                feeds[name] = np.array([np.nan if v is None else float(v) for v in col[:, 0].tolist()],
                                       dtype=np.float64).astype(dtype).reshape(-1, 1)
        return feeds

    def predict(self, x: np.ndarray, proba: bool):
        feeds = self._feeds(x)
        if proba and self._fetch_both:
            labels, probs = self._run(self._fetch_both, feeds)
            if self._proba_is_map:
                keys = list(probs[0].keys()) if probs else []
                probs = np.array([[row[k] for k in keys] for row in probs], dtype=np.float32)
        else:
            labels, probs = self._run(self._fetch_label, feeds)[0], None
        if labels.ndim > 1:
            labels = labels.reshape(-1)
        return labels, probs


def _graph_classes(model_bytes: bytes):
    """The class labels an skl2onnx classifier stores in its graph, for a signature that lists none."""
    try:
        import onnx

        model = onnx.load_from_string(model_bytes)
    except Exception:
        return None
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "classlabels_int64s" and attr.ints:
                return tuple(int(v) for v in attr.ints)
            if attr.name == "classlabels_strings" and attr.strings:
                return tuple(v.decode() for v in attr.strings)
    return None
