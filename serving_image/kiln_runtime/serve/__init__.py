"""kiln-serve: the model server of the runtime image (KServe V1 and Open Inference Protocol V2).

Modules, one job each: settings (environment), loader (fetch, verify, load), signature and rows
(validation), runtime_onnx / runtime_sklearn (the model call), codec_v1 / codec_v2 (the protocols),
batching, metrics, drift (the sidecar hand-off), request_ids (X-Request-Id), feedback (the relay of
labels to kiln-monitor), http (the wire), served_model (one loaded model's answering parts), app
(routing, one model), openapi, server (processes, signals, shutdown), cli (the entry point).
Multi-model mode (KILN_MODELS_FILE) adds models_file (the table and its watcher), repository (lazy
loads, LRU eviction under the memory budget, the V2 repository extension's states) and multi_app
(routing by name).
"""

from .cli import main

__all__ = ["main"]
