"""Reading a dataset: its bytes, its version (the sha256 of those bytes) and its rows as a table.

Every column is read as text first (csv) or as stored (parquet), and typed later against the schema
(validate.py): pandas' own type guessing would turn a stray "n/a" in a numeric column into a silently
re-typed column instead of an error that names it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd

from . import storeio as kio
from .errors import DatasetChanged, InvalidData
from .spec import DatasetSpec
from kiln_runtime.store import SOURCE_ENV_PREFIX, sha256_hex


@dataclass(frozen=True)
class RawDataset:
    version: str  # sha256 of the source's bytes
    frame: pd.DataFrame  # every column as object: str/None for csv, native values for parquet
    size_bytes: int


def parse_table(data: bytes, fmt: str, uri: str = "") -> pd.DataFrame:
    if not data:
        raise InvalidData(f"{uri}: the file is empty (0 bytes)")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            frame = pq.read_table(io.BytesIO(data)).to_pandas()
        else:
            frame = pd.read_csv(io.BytesIO(data), dtype=object, keep_default_na=True, skipinitialspace=True)
    except ImportError as exc:
        raise InvalidData(f"{uri}: reading {fmt} needs pyarrow, which this image lacks") from exc
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise InvalidData(f"{uri}: not a readable {fmt} file: {first}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    # object dtype throughout, with None for missing: the validator types each column itself.
    return frame.astype(object).where(frame.notna(), None)


def load(spec: DatasetSpec, expected_version: str | None = None) -> RawDataset:
    data = kio.read(spec.uri, SOURCE_ENV_PREFIX)  # the Dataset's own Secret when it names one
    version = sha256_hex(data)
    if expected_version and version != expected_version:
        # The source changed between validation and training: training on it would record a
        # dataset version the model was not trained on.
        raise DatasetChanged(f"{spec.uri}: content changed since validation: expected version "
                             f"{expected_version[:12]}…, found {version[:12]}…; validate the new version first")
    return RawDataset(version=version, frame=parse_table(data, spec.format, spec.uri), size_bytes=len(data))
