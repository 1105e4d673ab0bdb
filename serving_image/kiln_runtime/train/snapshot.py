"""Immutable snapshots of validated dataset versions, and their retention.

validate-dataset stores, per version, under <output>/versions/<version>/:
  data.parquet     the validated table after the window: the schema's columns, typed (float64 for
                   number, integer and boolean as 0.0/1.0; str for category; missing = null), so
                   reading it back and validating it again gives the same table
  manifest.json    written last: {version, rows, uri, sha256 (of data.parquet), source, files [{key, size,
                   sha256, etag?}], window, createdAt}
A version names its content, so once its manifest exists nothing is written there again. Runs read the
snapshot by URI and digest (datasetSnapshot) and never the source: a source that grew or vanished
after validation cannot change what a run trains on.
"""

from __future__ import annotations

import datetime as dt
import io
import re

import pandas as pd

from kiln_runtime.store import sha256_hex

from . import storeio as kio
from .dataset import RawDataset
from .errors import DigestMismatch
from .spec import Config, Snapshot
from .tables import parse_table

_VERSION = re.compile(r"^[0-9a-f]{64}$")


def prefix(output: str, version: str) -> str:
    return f"{output}/versions/{version}"


def to_parquet(typed: pd.DataFrame) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(typed.reset_index(drop=True), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def store(cfg: Config, raw: RawDataset, typed: pd.DataFrame) -> dict:
    """Writes the version's snapshot unless its manifest exists; returns the manifest (with `written`)."""
    base = prefix(cfg.output, raw.version)
    manifest_uri, data_uri = f"{base}/manifest.json", f"{base}/data.parquet"
    if kio.exists(manifest_uri) and kio.exists(data_uri):
        manifest = kio.read_json(manifest_uri)
        if manifest.get("version") == raw.version and isinstance(manifest.get("sha256"), str):
            return {**manifest, "written": False}
    digest = kio.write(data_uri, to_parquet(typed))
    manifest = {"version": raw.version, "rows": int(len(typed)), "uri": data_uri, "sha256": digest,
                "source": cfg.dataset.uri, "files": [f.wire() for f in raw.files],
                "window": raw.window.wire() if raw.window else None,
                "createdAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")}
    kio.write_json(manifest_uri, manifest)  # last: its presence marks the snapshot complete
    return {**manifest, "written": True}


def load(snapshot: Snapshot, version: str) -> RawDataset:
    """The stored table of `version`, refused unless its bytes hash to the digest the run was given."""
    data = kio.read(snapshot.uri)
    actual = sha256_hex(data)
    if actual != snapshot.sha256:
        raise DigestMismatch(f"{snapshot.uri}: dataset snapshot digest mismatch: expected sha256 "
                             f"{snapshot.sha256[:12]}…, found {actual[:12]}…; the snapshot was altered or "
                             "replaced: validate the dataset again")
    return RawDataset(version=version, frame=parse_table(data, "parquet", snapshot.uri), size_bytes=len(data))


def retain(output: str, keep: tuple[str, ...], current: str) -> list[str]:
    """Deletes every stored version but `keep` and `current`; returns the deleted versions, sorted.
    Only names shaped like a version are touched: anything else below versions/ is not ours."""
    found = {o.key.split("/", 1)[0] for o in kio.list_objects(f"{output}/versions/") if "/" in o.key}
    doomed = sorted(v for v in found if _VERSION.match(v) and v not in keep and v != current)
    for version in doomed:
        kio.delete_prefix(prefix(output, version) + "/")
    return doomed
