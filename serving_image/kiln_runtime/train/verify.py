"""`kiln-train verify`: is a stored artifact the one the registry names, and does it load safely?

The operator runs it for a ModelVersion's Verified condition. Each `--uri`/`--sha256` pair is read
from the store, its sha256 compared, then loaded the way kiln-serve would load it, without serving:
  skops    every type outside skops' defaults must be a class from scikit-learn, numpy or scipy
  onnx     an onnxruntime session must build (a graph executes no Python code on load)
  joblib   loading executes code: refused unless --allow-unsafe (the ModelVersion's allowUnsafe)
Nothing is written to the store.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from kiln_runtime.store import sha256_hex

from . import artifacts
from . import storeio as kio
from .errors import DigestMismatch, InvalidArtifact, InvalidSpec, TrainError

FORMATS = ("skops", "onnx", "joblib")
_SUFFIXES = {".skops": "skops", ".onnx": "onnx", ".joblib": "joblib"}


def _format_of(uri: str, given: str | None) -> str:
    if given:
        if given not in FORMATS:
            raise InvalidSpec(f"--format must be one of {', '.join(FORMATS)}, got {given!r}")
        return given
    fmt = _SUFFIXES.get(PurePosixPath(uri).suffix)
    if fmt is None:
        raise InvalidSpec(f"{uri}: cannot tell the format from the file name; pass --format "
                          f"({', '.join(FORMATS)})")
    return fmt


def _digest(value: str) -> str:
    digest = value.strip().lower().removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidSpec(f"--sha256 must be 64 hex digits, got {value!r}")
    return digest


def _load_onnx(uri: str, data: bytes) -> str:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InvalidArtifact(f"{uri}: not a loadable ONNX model: {first}") from exc
    return f"ONNX graph, {len(session.get_inputs())} input(s), outputs {[o.name for o in session.get_outputs()]}"


def _load_model(uri: str, data: bytes, fmt: str, allow_unsafe: bool) -> str:
    if fmt == "joblib" and not allow_unsafe:
        raise InvalidArtifact(f"{uri}: joblib executes code when loaded; pass --allow-unsafe only for a "
                              "ModelVersion with allowUnsafe", reason="UnsafeFormat")
    try:
        model = artifacts.loads(data, fmt)
    except InvalidArtifact as exc:
        raise InvalidArtifact(f"{uri}: {exc}", reason=exc.reason) from exc
    if not callable(getattr(model, "predict", None)):
        raise InvalidArtifact(f"{uri}: loads as {type(model).__name__}, which has no predict()")
    return type(model).__name__ + (f" ({type(model.steps[-1][1]).__name__})" if hasattr(model, "steps") else "")


def verify_one(uri: str, sha256: str, fmt: str | None, allow_unsafe: bool) -> dict:
    try:
        return _verify_one(uri, sha256, fmt, allow_unsafe)
    except TrainError as exc:
        exc.details.setdefault("uri", uri)  # which of several artifacts failed
        raise


def _verify_one(uri: str, sha256: str, fmt: str | None, allow_unsafe: bool) -> dict:
    expected = _digest(sha256)
    fmt = _format_of(uri, fmt)
    data = kio.read(uri)
    actual = sha256_hex(data)
    if actual != expected:
        # A digest says nothing about why it differs; the sizes at least tell truncation from tampering.
        raise DigestMismatch(f"{uri}: sha256 is {actual}, the registry expects {expected} ({len(data)} bytes read)",
                             details={"expected": expected, "actual": actual})
    loaded = _load_onnx(uri, data) if fmt == "onnx" else _load_model(uri, data, fmt, allow_unsafe)
    return {"uri": uri, "sha256": actual, "format": fmt, "bytes": len(data), "loaded": loaded}


def run(uris: list[str], digests: list[str], formats: list[str] | None, allow_unsafe: bool) -> dict:
    if not uris or len(uris) != len(digests):
        raise InvalidSpec(f"give each --uri its --sha256 (got {len(uris)} --uri, {len(digests)} --sha256)")
    if formats and len(formats) != len(uris):
        raise InvalidSpec(f"give --format for every --uri or for none (got {len(formats)} for {len(uris)})")
    checked = [verify_one(u, d, (formats or [None] * len(uris))[i], allow_unsafe)
               for i, (u, d) in enumerate(zip(uris, digests))]
    return {"command": "verify", "result": "Succeeded", "artifacts": checked,
            "message": "; ".join(f"{a['format']} {a['sha256'][:12]} verified: {a['loaded']}" for a in checked)}
