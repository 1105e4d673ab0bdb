"""Reading a dataset: its version, its rows as a table, and where each row came from.

Two ways in. validate-dataset reads the source (one file or a prefix, sources.py), applies the window
(window.py) and names the result by its version. A run whose configuration carries datasetSnapshot
reads the table validate-dataset stored for that version instead (snapshot.py): the source may have
grown or vanished since, and every trial must train on the same rows.

Version: a single file without a window is the sha256 of its bytes (as before prefixes and windows
existed, so existing versions keep their names); anything else is the sha256 of the canonical JSON
{"files": [[key, sha256], ...] sorted by key, "window": the window or null}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from kiln_runtime.store import sha256_hex

from . import sources, window
from .errors import DatasetChanged
from .spec import DatasetSpec, Window
from .validate import Failure, row_label


@dataclass
class RawDataset:
    version: str
    frame: pd.DataFrame  # every column as object: str/None for csv, native values for parquet
    size_bytes: int
    files: list[sources.SourceFile] = field(default_factory=list)
    origins: sources.Origins | None = None
    failures: list[Failure] = field(default_factory=list)  # found before the validator ran
    window: Window | None = None

    def where(self, i: int) -> str:
        return self.origins.where(i) if self.origins is not None else row_label(i)


def version_of(files: list[sources.SourceFile], win: Window | None, single: bool) -> str:
    if single and win is None:
        return files[0].sha256
    canonical = {"files": sorted([f.key, f.sha256] for f in files), "window": win.wire() if win else None}
    return sha256_hex(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())


def load(spec: DatasetSpec, expected_version: str | None = None) -> RawDataset:
    fetched = sources.fetch(spec)
    files = [f for f, _ in fetched]
    version = version_of(files, spec.window, single=not spec.is_prefix)
    if expected_version and version != expected_version:
        # The source changed between validation and training: training on it would record a
        # dataset version the model was not trained on.
        raise DatasetChanged(f"{spec.uri}: content changed since validation: expected version "
                             f"{expected_version[:12]}…, found {version[:12]}…; validate the new version first")
    source = sources.assemble(spec, fetched)
    frame, origins, failures = window.apply(source.frame, source.origins, spec.window)
    return RawDataset(version=version, frame=frame, size_bytes=source.size_bytes, files=files, origins=origins,
                      failures=source.failures + failures, window=spec.window)
