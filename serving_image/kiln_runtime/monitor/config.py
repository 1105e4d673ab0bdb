"""kiln-monitor's configuration: environment variables only (the pod contract, docs/pod-contract.md).

The operator sets these on the sidecar container; nothing else configures it, so a bad value fails
the start with a message naming the variable instead of running with a silent default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from kiln_runtime.handoff import DEFAULT_SOCKET

from .evaluate import Thresholds


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    socket_path: str
    baseline_uri: str
    model: str
    version: str
    window_rows: int
    interval_seconds: float
    thresholds: Thresholds
    host: str
    port: int
    max_features: int
    # The data loop (payload logging, feedback, live quality); every field has a default.
    payload_uri: str | None = None  # None: payload logging off
    payload_sample_rate: float = 1.0
    payload_flush_seconds: float = 60.0
    payload_flush_rows: int = 50_000
    payload_buffer_rows: int = 200_000
    labelled_uri: str | None = None  # None: joined rows are not written
    label_column: str = "label"
    feedback_ttl_seconds: float = 3600.0
    feedback_max_rows: int = 200_000
    task: str | None = None  # classification | regression; None: decided from the predictions
    quality_window_rows: int = 1000


def _get(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"{name} is required")
    return default


def _number(env: Mapping[str, str], name: str, default, cast, lo, hi=None):
    raw = _get(env, name, str(default))
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a valid {cast.__name__}") from None
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name}={raw!r}: must be {bound}")
    return value


def _uri(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not (value.startswith("s3://") or value.startswith("file://")):
        raise ConfigError(f"{name}={value!r}: expected an s3://bucket/prefix or file:///path prefix")
    if value.startswith("s3://") and not value[5:].split("/", 1)[0]:
        raise ConfigError(f"{name}={value!r}: the s3 URI has no bucket")
    return value.rstrip("/")


def from_env(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    window = _number(env, "KILN_MONITOR_WINDOW_ROWS", 10000, int, 10, 10_000_000)
    # The default minimum fill is a tenth of the window (at least 100 rows): fewer rows make PSI on
    # ten bins mostly noise. It cannot exceed the window, or drift could never be decided.
    min_rows = _number(env, "KILN_MONITOR_MIN_ROWS", max(100, window // 10), int, 1, window)
    return Config(
        socket_path=_get(env, "KILN_HANDOFF_SOCKET", DEFAULT_SOCKET),
        baseline_uri=_get(env, "KILN_BASELINE_URI"),
        model=_get(env, "KILN_MODEL_NAME", "unknown"),
        version=_get(env, "KILN_MODEL_VERSION", "unknown"),
        window_rows=window,
        interval_seconds=_number(env, "KILN_MONITOR_INTERVAL_SECONDS", 15.0, float, 0.05),
        thresholds=Thresholds(
            psi=_number(env, "KILN_MONITOR_PSI_THRESHOLD", 0.2, float, 0.0),
            alpha=_number(env, "KILN_MONITOR_ALPHA", 0.001, float, 0.0, 1.0),
            min_rows=min_rows,
            top=_number(env, "KILN_MONITOR_TOP_FEATURES", 5, int, 1, 100),
        ),
        host=_get(env, "KILN_MONITOR_HOST", "0.0.0.0"),
        port=_number(env, "KILN_MONITOR_PORT", 9180, int, 0, 65535),
        max_features=_number(env, "KILN_MONITOR_MAX_FEATURES", 100, int, 1, 1000),
        **data_loop(env),
    )


def data_loop(env: Mapping[str, str]) -> dict:
    task = env.get("KILN_TASK", "").strip().lower() or None
    if task not in (None, "classification", "regression"):
        raise ConfigError(f"KILN_TASK={task!r}: use classification or regression")
    label = _get(env, "KILN_LABEL_COLUMN", "label")
    flush_rows = _number(env, "KILN_PAYLOAD_FLUSH_ROWS", 50_000, int, 1, 10_000_000)
    return dict(
        payload_uri=_uri(env, "KILN_PAYLOAD_URI"),
        payload_sample_rate=_number(env, "KILN_PAYLOAD_SAMPLE_RATE", 1.0, float, 0.0, 1.0),
        payload_flush_seconds=_number(env, "KILN_PAYLOAD_FLUSH_SECONDS", 60.0, float, 0.05, 86400.0),
        payload_flush_rows=flush_rows,
        payload_buffer_rows=_number(env, "KILN_PAYLOAD_BUFFER_ROWS", max(200_000, flush_rows), int, 1, 100_000_000),
        labelled_uri=_uri(env, "KILN_LABELLED_URI"),
        label_column=label,
        feedback_ttl_seconds=_number(env, "KILN_FEEDBACK_TTL_SECONDS", 3600.0, float, 1.0, 30 * 86400.0),
        feedback_max_rows=_number(env, "KILN_FEEDBACK_MAX_ROWS", 200_000, int, 0, 100_000_000),
        task=task,
        quality_window_rows=_number(env, "KILN_QUALITY_WINDOW_ROWS", 1000, int, 1, 10_000_000),
    )
