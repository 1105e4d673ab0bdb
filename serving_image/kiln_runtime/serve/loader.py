"""Fetching, verifying and loading the model: the only place artifacts become code and data.

Two steps, so a multi-worker server verifies once in the parent and builds the runtime in each worker
after the fork (onnxruntime sessions are not meant to cross a fork):
- `fetch` reads every artifact by URI, refuses a digest mismatch, refuses a format other than skops
  unless unsafe loading was allowed, and refuses a skops file holding types outside the allow-list;
- `build` turns the verified bytes into a runtime: the parity-verified ONNX model when there is
  one, the scikit-learn model otherwise.
Every refusal is a LoadError whose message is the one line kiln-serve logs before exiting.
"""

from __future__ import annotations

import importlib
import io
import logging
from dataclasses import dataclass
from functools import partial

from kiln_runtime import store

from . import signature as signature_mod
from .errors import LoadError
from .settings import Settings

log = logging.getLogger("kiln.serve")

# A skops file names every type it will construct. scikit-learn, numpy and scipy classes are what a
# trained pipeline is made of; a function or a class from anywhere else could run code on predict,
# so it needs the same explicit opt-in as a pickle.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")


@dataclass(frozen=True)
class Artifacts:
    signature: signature_mod.Signature
    model_bytes: bytes
    onnx_bytes: bytes | None


def _read(uri: str, sha256: str, what: str) -> bytes:
    try:
        return store.read_verified(uri, sha256)
    except store.StoreError as exc:
        raise LoadError(f"{what}: {exc}") from None


def _signature(settings: Settings) -> signature_mod.Signature:
    raw = settings.signature.strip()
    if raw.startswith("{"):
        return signature_mod.parse(raw)
    if settings.signature_sha256:
        data = _read(raw, settings.signature_sha256, "signature")
    else:
        try:
            data = store.read_bytes(raw)
        except store.StoreError as exc:
            raise LoadError(f"signature: {exc}") from None
    return signature_mod.parse(data)


def untrusted_skops_types(data: bytes) -> list[str]:
    """Types in a skops file that are neither skops' defaults nor classes under the trusted prefixes."""
    import skops.io as sio

    try:
        names = sio.get_untrusted_types(data=data)
    except Exception as exc:
        raise LoadError(f"the model is not a readable skops file: {type(exc).__name__}: {exc}") from None
    refused = []
    for name in names:
        if not name.startswith(_TRUSTED_PREFIXES) or not _is_class(name):
            refused.append(name)
    return refused


def _is_class(dotted: str) -> bool:
    module, _, attr = dotted.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except Exception:
        return False
    return isinstance(obj, type)


def fetch(settings: Settings) -> Artifacts:
    if settings.model_format != "skops" and not settings.allow_unsafe:
        raise LoadError(f"refusing {settings.model_uri}: format {settings.model_format} can execute "
                        "arbitrary code when loaded; only skops is loaded by default "
                        "(set KILN_ALLOW_UNSAFE=true to accept it)")
    sig = _signature(settings)
    # Verified even when ONNX is served: the ModelVersion names both, and a tampered source of
    # truth must stop the rollout. It is deserialized (and its types vetted) only if served.
    model_bytes = _read(settings.model_uri, settings.model_sha256, "model")
    onnx_bytes = None
    if settings.onnx_uri:
        onnx_bytes = _read(settings.onnx_uri, settings.onnx_sha256, "onnx model")
    return Artifacts(sig, model_bytes, onnx_bytes)


def _deserialize(settings: Settings, data: bytes):
    if settings.model_format == "skops" and not settings.allow_unsafe:
        refused = untrusted_skops_types(data)
        if refused:
            raise LoadError(f"refusing {settings.model_uri}: the skops file holds types outside the "
                            f"allow-list: {', '.join(refused)} (set KILN_ALLOW_UNSAFE=true to accept them)")
    try:
        if settings.model_format == "skops":
            import skops.io as sio

            trusted = sio.get_untrusted_types(data=data)  # already vetted by fetch (or allowed)
            return sio.loads(data, trusted=trusted)
        import joblib

        return joblib.load(io.BytesIO(data))
    except Exception as exc:
        raise LoadError(f"cannot load {settings.model_uri} as {settings.model_format}: "
                        f"{type(exc).__name__}: {exc}") from None


def build(settings: Settings, artifacts: Artifacts):
    """The runtime to serve: ONNX when verified and loadable, else the scikit-learn model."""
    sig = artifacts.signature
    if artifacts.onnx_bytes is not None:
        from .runtime_onnx import OnnxRuntime

        try:
            runtime = OnnxRuntime(artifacts.onnx_bytes, sig)
        except LoadError as exc:
            # The skops model is the source of truth; ONNX is an accelerator, so fall back loudly.
            log.warning("ONNX model not served (%s); serving the %s model instead", exc, settings.model_format)
        else:
            # Explanations need the scikit-learn model itself: loaded (and its types vetted) only
            # when the first one is asked for, on the explanation thread.
            runtime.sklearn_source = partial(_deserialize, settings, artifacts.model_bytes)
            return runtime
    from .runtime_sklearn import SklearnRuntime

    return SklearnRuntime(_deserialize(settings, artifacts.model_bytes), sig)
