"""`kiln-train validate-dataset`: version, row count, schema checks, profile and snapshot of a Dataset.

Writes, when every check passes:
  <output>/<version>/profile.json             per-column statistics of every schema column
                                              (kiln_runtime/profile.py's shape)
  <output>/versions/<version>/data.parquet    the validated table runs train on (snapshot.py)
  <output>/versions/<version>/manifest.json
Content-addressed by version: validating an unchanged source again writes nothing, and a changed
source never overwrites what the version before it stored. With `keepVersions` in the configuration,
the snapshots of every other version (except the one just validated) are deleted.
"""

from __future__ import annotations

from kiln_runtime.profile import profile_frame
from kiln_runtime.store import sha256_hex

from . import snapshot
from . import storeio as kio
from .prepare import validated
from .spec import Config

PROFILE_SEED = 0  # the profile's sample depends on the data only, not on any pipeline


def run(cfg: Config) -> dict:
    # Always the source: validating is what makes a snapshot.
    raw, typed = validated(cfg, from_snapshot=False)  # raises ValidationFailed with the failures listed
    profile = profile_frame(typed, [{"name": c.name, "type": c.type} for c in cfg.dataset.columns],
                            seed=PROFILE_SEED)
    uri = f"{cfg.output}/{raw.version}/profile.json"
    # Written once per version, like the snapshot; the digest reported is the stored object's.
    digest = sha256_hex(kio.read(uri)) if kio.exists(uri) else kio.write_json(uri, profile)
    snap = snapshot.store(cfg, raw, typed)
    rows = len(typed)
    summary = {"command": "validate-dataset", "result": "Succeeded", "version": raw.version, "rows": rows,
               "columns": len(profile["columns"]), "bytes": raw.size_bytes, "files": len(raw.files),
               "profileUri": uri, "profileSha256": digest,
               "snapshotUri": snap["uri"], "snapshotSha256": snap["sha256"], "failures": [],
               "message": f"{rows} rows{_where(raw)}, {len(profile['columns'])} columns, all checks passed"}
    if cfg.keep_versions is not None:
        summary["deletedVersions"] = snapshot.retain(cfg.output, cfg.keep_versions, raw.version)
    return summary


def _where(raw) -> str:
    parts = []
    if len(raw.files) > 1:
        parts.append(f"from {len(raw.files)} files")
    if raw.window is not None:
        w = raw.window
        parts.append(f"(window: the newest {w.rows} rows)" if w.rows is not None
                     else f"(window: {w.days:g} days of {w.timestamp_column})")
    return "".join(" " + p for p in parts)
