"""Parsing one file's bytes into a table of raw values.

Every column is read as text first (csv) or as stored (parquet), and typed later against the schema
(validate.py): pandas' own type guessing would turn a stray "n/a" in a numeric column into a silently
re-typed column instead of an error that names it.
"""

from __future__ import annotations

import io

import pandas as pd

from .errors import InvalidData


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
