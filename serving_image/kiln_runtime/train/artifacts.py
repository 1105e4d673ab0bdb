"""Model files: skops by default (loading executes no code), joblib only on the pipeline's explicit
unsafe opt-in (the spec parser refuses joblib without allowUnsafeArtifacts)."""

from __future__ import annotations

import io

FILENAMES = {"skops": "model.skops", "joblib": "model.joblib"}
# Types a Kiln pipeline is made of; skops lists anything outside its own default trust as "untrusted"
# and we accept those only from these libraries, which is all an allow-listed pipeline contains.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")


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

        untrusted = sio.get_untrusted_types(data=data)
        foreign = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
        if foreign:
            raise ValueError(f"the model file holds types outside scikit-learn/numpy/scipy: {', '.join(foreign)}")
        return sio.loads(data, trusted=untrusted)
    if fmt == "joblib":
        import joblib

        return joblib.load(io.BytesIO(data))
    raise ValueError(f"unknown artifact format {fmt!r}")
