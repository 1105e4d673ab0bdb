"""kiln-serve: the model server of the runtime image (KServe V1 and Open Inference Protocol V2).

Modules, one job each: settings (environment), loader (fetch, verify, load), signature and rows
(validation), runtime_onnx / runtime_sklearn (the model call), codec_v1 / codec_v2 (the protocols),
batching, metrics, drift (the sidecar hand-off), request_ids (X-Request-Id), feedback (the relay of
labels to kiln-monitor), http (the wire), app (routing), openapi, server (processes, signals,
shutdown), cli (the entry point).
"""

from .cli import main

__all__ = ["main"]
