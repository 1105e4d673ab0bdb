"""What a Dataset's source holds: one file, or every csv and parquet file below a prefix (a URI ending
in "/"), read as one table, with where each row came from.

A prefix grows as labelled rows land in it, so its files are concatenated oldest first, by
(last-modified, key): the last rows are the newest, which is what a rows window keeps. Within a file,
rows keep their order. A file's format comes from its extension; other files (a _SUCCESS marker, a
README) are skipped, and so are hidden ones: uploaders write partial objects under a dot name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from kiln_runtime.store import SOURCE_ENV_PREFIX, sha256_hex

from . import storeio as kio
from .errors import SourceError
from .spec import DatasetSpec
from .tables import parse_table
from .validate import Failure

FORMATS = {".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class SourceFile:
    key: str  # relative to the prefix; the object's name for a single-file source
    uri: str
    size: int
    sha256: str
    etag: str | None = None
    modified: float | None = None

    def wire(self) -> dict:
        out = {"key": self.key, "size": self.size, "sha256": self.sha256}
        if self.etag:
            out["etag"] = self.etag
        return out


@dataclass(frozen=True)
class Origins:
    """Row i of the table is row `row[i]` (from 1, data rows only) of file `keys[file[i]]`."""

    keys: tuple[str, ...]
    file: np.ndarray
    row: np.ndarray
    named: bool  # name the file in messages (a prefix); a single file's rows are just "row N"

    def where(self, i: int) -> str:
        row = int(self.row[i])
        return f"{self.keys[int(self.file[i])]} row {row}" if self.named else f"row {row}"

    def take(self, positions: np.ndarray) -> Origins:
        return Origins(self.keys, self.file[positions], self.row[positions], self.named)


@dataclass
class Source:
    frame: pd.DataFrame  # object columns, None = missing (tables.parse_table's shape)
    files: list[SourceFile]
    origins: Origins
    failures: list[Failure]  # per-file problems the validator cannot see after concatenation

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


def format_of(key: str) -> str | None:
    return FORMATS.get(PurePosixPath(key).suffix.lower())


def listing(uri: str) -> list:
    """The data files below prefix `uri`, oldest first; SourceEmpty when there are none."""
    found = [o for o in kio.list_objects(uri, SOURCE_ENV_PREFIX)
             if format_of(o.key) and not any(part.startswith(".") for part in o.key.split("/"))]
    if not found:
        raise SourceError(f"{uri}: no csv or parquet files below this prefix", reason="SourceEmpty")
    return sorted(found, key=lambda o: (o.modified, o.key))


def fetch(spec: DatasetSpec) -> list[tuple[SourceFile, bytes]]:
    """Every file of the source with its bytes, in table order (read with the Dataset's own Secret
    when it names one)."""
    if not spec.is_prefix:
        data = kio.read(spec.uri, SOURCE_ENV_PREFIX)
        key = PurePosixPath(spec.uri.split("://", 1)[1]).name
        return [(SourceFile(key, spec.uri, len(data), sha256_hex(data)), data)]
    out = []
    for obj in listing(spec.uri):
        data = kio.read(obj.uri, SOURCE_ENV_PREFIX)
        out.append((SourceFile(obj.key, obj.uri, len(data), sha256_hex(data), obj.etag, obj.modified), data))
    return out


def assemble(spec: DatasetSpec, fetched: list[tuple[SourceFile, bytes]]) -> Source:
    """One table from the fetched files."""
    files = [f for f, _ in fetched]
    if not spec.is_prefix:
        [(file, data)] = fetched
        frame = parse_table(data, spec.format, spec.uri)
        return Source(frame, files, _origins([file.key], [len(frame)], named=False), [])

    # Only the schema's columns (and the window's timestamp) are kept from each file: production
    # label files carry request ids, predictions and the like, which are no part of the table.
    wanted = [c.name for c in spec.columns]
    if spec.window is not None and spec.window.timestamp_column and spec.window.timestamp_column not in wanted:
        wanted.append(spec.window.timestamp_column)
    frames, failures, missing = [], [], {}
    for file, data in fetched:
        frame = parse_table(data, format_of(file.key), file.uri)
        frames.append(frame[[c for c in wanted if c in frame.columns]])
        for c in wanted:
            if c not in frame.columns:
                missing.setdefault(c, []).append(file.key)
    table = pd.concat(frames, ignore_index=True, sort=False)
    table = table.astype(object).where(table.notna(), None)
    for column, keys in missing.items():
        if column in table.columns:  # absent from every file: the validator reports it once
            more = f" (and {len(keys) - 1} more file{'s' if len(keys) > 2 else ''})" if len(keys) > 1 else ""
            failures.append(Failure(column, "present", f"column {column} is missing from {keys[0]}{more}"))
    return Source(table, files, _origins([f.key for f in files], [len(f) for f in frames], named=True), failures)


def _origins(keys: list[str], lengths: list[int], *, named: bool) -> Origins:
    file = np.repeat(np.arange(len(keys)), lengths)
    row = np.concatenate([np.arange(1, n + 1) for n in lengths]) if lengths else np.zeros(0, dtype=int)
    return Origins(tuple(keys), file, row, named)
