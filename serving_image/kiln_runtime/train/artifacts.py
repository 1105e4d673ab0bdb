"""Model files: skops by default (loading executes no code), joblib only on the pipeline's explicit
unsafe opt-in (the spec parser refuses joblib without allowUnsafeArtifacts)."""

from __future__ import annotations

import importlib
import io

from .errors import InvalidArtifact

FILENAMES = {"skops": "model.skops", "joblib": "model.joblib"}
# skops lists every type outside its own default trust as "untrusted". An allow-listed pipeline adds
# only a few classes from these libraries (tree structures, KD-trees, distance metrics, numpy.dtype);
# functions are never accepted, since a function stored as a parameter (FunctionTransformer's func,
# say) would run at predict time. kiln-serve's loader applies the same rule.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")


def dumps(model, fmt: str) -> bytes:
    if fmt == "skops":
        import skops.io as sio

        return sio.dumps(model)
    if fmt == "joblib":
        import joblib

        buf = io.BytesIO()
        joblib.dump(model, buf)
        return buf.getvalue()
    raise ValueError(f"unknown artifact format {fmt!r}")


def loads(data: bytes, fmt: str):
    """Loads a model this runtime wrote (a trial's, for the selection step)."""
    if fmt == "skops":
        import skops.io as sio

        untrusted = untrusted_types(data)
        refused = [t for t in untrusted if not (t.startswith(_TRUSTED_PREFIXES) and _is_class(t))]
        if refused:
            raise InvalidArtifact(f"the skops file holds types Kiln does not trust: {', '.join(refused[:10])}",
                                  reason="UntrustedTypes")
        try:
            return sio.loads(data, trusted=untrusted)
        except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways
            raise InvalidArtifact(f"not a loadable skops file: {type(exc).__name__}: {exc}") from exc
    if fmt == "joblib":
        import joblib

        try:
            return joblib.load(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001
            raise InvalidArtifact(f"not a loadable joblib file: {type(exc).__name__}: {exc}") from exc
    raise ValueError(f"unknown artifact format {fmt!r}")


def untrusted_types(data: bytes) -> list[str]:
    import skops.io as sio

    try:
        return sio.get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001 - not a zip, no schema, truncated...
        raise InvalidArtifact(f"not a readable skops file: {type(exc).__name__}: {exc}") from exc


def _is_class(dotted: str) -> bool:
    module, _, attr = dotted.rpartition(".")
    try:
        return isinstance(getattr(importlib.import_module(module), attr), type)
    except Exception:  # noqa: BLE001 - a name that does not resolve is not trusted
        return False
