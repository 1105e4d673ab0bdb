"""A Dataset's window: which rows of a growing source one version keeps.

  {"rows": N}                          the last N rows (sources.py orders files oldest first)
  {"days": N, "timestampColumn": c}    rows whose c lies within N days of the newest c in the data
The days window is relative to the data, not to the clock, so the same files always make the same
version. Timestamps are ISO 8601 text (a zone offset or Z; none means UTC) or parquet timestamps;
anything else, a missing value included, cannot be placed in the window and fails validation.
Applied before validation and snapshotting: a version is exactly the rows it keeps.
"""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pandas as pd

from .sources import Origins
from .spec import Window
from .validate import Failure


def timestamps(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """UTC timestamps, and which values are not one."""
    # Numbers are refused rather than guessed: seconds, milliseconds and days since an epoch all exist.
    usable = values.map(lambda v: isinstance(v, (str, dt.date, np.datetime64))).astype(bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(values.where(usable, None), errors="coerce", utc=True, format="ISO8601")
    return parsed, parsed.isna().to_numpy()


def apply(frame: pd.DataFrame, origins: Origins, window: Window | None
          ) -> tuple[pd.DataFrame, Origins, list[Failure]]:
    """The rows the window keeps (renumbered from 0), their origins, and why it could not be applied."""
    if window is None:
        return frame, origins, []
    n = len(frame)
    if window.rows is not None:
        keep = np.arange(max(0, n - window.rows), n)
    else:
        column = window.timestamp_column
        if column not in frame.columns:
            return frame, origins, [Failure(column, "present", f"column {column} (dataset.window.timestampColumn) "
                                                               "is missing from the data")]
        parsed, bad = timestamps(frame[column])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return frame, origins, [Failure(column, "type", f"column {column}: {int(bad.sum())} value(s) are not "
                                            f"timestamps (dataset.window.timestampColumn), first "
                                            f"{frame[column].iloc[i]!r} at {origins.where(i)}")]
        if n == 0:
            return frame, origins, []
        since = parsed.max() - pd.Timedelta(days=window.days)
        keep = np.flatnonzero((parsed >= since).to_numpy())
    return frame.iloc[keep].reset_index(drop=True), origins.take(keep), []
