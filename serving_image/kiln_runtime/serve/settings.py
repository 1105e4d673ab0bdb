"""kiln-serve's configuration: environment variables only, read once at start.

The operator sets these from the ModelVersion and the InferenceService (docs/pod-contract.md, section
"kiln-serve", is the one table of them). A bad value stops the server before it listens, with one
line naming the variable, so a misconfigured pod fails its rollout instead of serving wrongly.
With KILN_MODELS_FILE (multi-model mode) the model variables must be unset: each model's come from
that file (serve/models_file.py, which checks them with this module's rules).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

from kiln_runtime.handoff import DEFAULT_SOCKET

PREFIX = "KILN_"


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    model_name: str
    model_version: str
    model_uri: str
    model_sha256: str
    model_format: str  # skops | joblib
    onnx_uri: str | None
    onnx_sha256: str | None
    signature: str  # inline JSON, or a URI to signature.json
    signature_sha256: str | None
    allow_unsafe: bool
    host: str
    port: int
    workers: int
    max_batch_size: int
    max_latency_ms: float
    max_payload_bytes: int
    handoff_socket: str | None  # None: hand-off switched off explicitly
    handoff_frame_rows: int
    shutdown_timeout_s: float
    log_level: str
    monitor_url: str | None = None  # kiln-monitor's HTTP base URL, for the feedback route
    # Multi-model mode (serve/models_file.py): the table of models, how often to re-read it, and the
    # resident memory the loaded models may bring the process to.
    models_file: str | None = None
    models_poll_s: float = 1.0
    memory_budget_bytes: int = 512 << 20
    # The Open Inference Protocol over gRPC (serve/grpc/) listens here; None: KILN_GRPC_PORT=off.
    grpc_port: int | None = 8081


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _get(env: dict[str, str], name: str, default: str | None = None) -> str:
    value = env.get(PREFIX + name)
    if value is None or value == "":
        if default is None:
            raise SettingsError(f"{PREFIX}{name} is required")
        return default
    return value


def _int(env, name, default: int, low: int, high: int) -> int:
    raw = _get(env, name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise SettingsError(f"{PREFIX}{name}={value} is outside [{low}, {high}]")
    return value


def _float(env, name, default: float, low: float, high: float) -> float:
    raw = _get(env, name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise SettingsError(f"{PREFIX}{name}={value} is outside [{low}, {high}]")
    return value


def _bool(env, name, default: bool) -> bool:
    raw = env.get(PREFIX + name)
    if raw is None:
        return default
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise SettingsError(f"{PREFIX}{name}={raw!r} is not a boolean (true/false)")


def _digest(env, name, required: bool) -> str | None:
    raw = env.get(PREFIX + name, "").strip().lower().removeprefix("sha256:")
    if not raw:
        if required:
            raise SettingsError(f"{PREFIX}{name} is required (the artifact's sha256)")
        return None
    return check_digest(raw, PREFIX + name)


# --- rules shared with the models file (serve/models_file.py), which names its fields instead ----

def check_digest(raw: str, what: str) -> str:
    """A sha256 as the operator writes it (any case, optional `sha256:`), normalised; `what` names it."""
    raw = raw.strip().lower().removeprefix("sha256:")
    if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
        raise SettingsError(f"{what} is not a sha256 hex digest")
    return raw


def check_format(raw: str, what: str) -> str:
    fmt = raw.lower()
    if fmt not in ("skops", "joblib"):
        raise SettingsError(f"{what}={fmt!r}: supported formats are skops and joblib")
    return fmt


# Variables that describe the one model of the single-model mode; the models file replaces them.
SINGLE_MODEL_VARIABLES = ("MODEL_NAME", "MODEL_URI", "MODEL_SHA256", "SIGNATURE")


def load(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    if (env.get(PREFIX + "MODELS_FILE") or "").strip():
        return _load_multi(env)
    fmt = check_format(_get(env, "MODEL_FORMAT", "skops"), PREFIX + "MODEL_FORMAT")
    onnx_uri = env.get(PREFIX + "ONNX_URI") or None
    onnx_sha = _digest(env, "ONNX_SHA256", required=onnx_uri is not None)
    if onnx_sha and not onnx_uri:
        raise SettingsError(f"{PREFIX}ONNX_SHA256 is set without {PREFIX}ONNX_URI")
    # The hand-off is on by default (the sidecar is part of every served pod); "off" is the only way
    # to switch it off, so an unset variable never silently disables drift monitoring.
    handoff = env.get(PREFIX + "HANDOFF_SOCKET", DEFAULT_SOCKET)
    handoff = None if handoff.strip().lower() in ("off", "none", "") else handoff
    log_level = _log_level(env)
    monitor_url = (env.get(PREFIX + "MONITOR_URL") or "").strip() or None
    if monitor_url is not None:
        parsed = urlparse(monitor_url)
        try:
            parsed.port
        except ValueError:
            raise SettingsError(f"{PREFIX}MONITOR_URL={monitor_url!r} has a bad port") from None
        if parsed.scheme != "http" or not parsed.hostname:
            raise SettingsError(f"{PREFIX}MONITOR_URL={monitor_url!r}: expected http://host:port "
                                "(the sidecar on localhost)")
    return Settings(
        **_server(env),
        model_name=_get(env, "MODEL_NAME"),
        model_version=_get(env, "MODEL_VERSION", "1"),
        model_uri=_get(env, "MODEL_URI"),
        model_sha256=_digest(env, "MODEL_SHA256", required=True),
        model_format=fmt,
        onnx_uri=onnx_uri,
        onnx_sha256=onnx_sha,
        signature=_get(env, "SIGNATURE"),
        signature_sha256=_digest(env, "SIGNATURE_SHA256", required=False),
        allow_unsafe=_bool(env, "ALLOW_UNSAFE", False),
        handoff_socket=handoff,
        log_level=log_level,
        monitor_url=monitor_url,
    )


def _log_level(env) -> str:
    log_level = _get(env, "LOG_LEVEL", "info").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"{PREFIX}LOG_LEVEL={log_level!r}: use debug, info, warning or error")
    return log_level


def _server(env) -> dict:
    """The settings both modes share: the listener, workers, batching, limits."""
    return dict(
        host=_get(env, "HOST", "0.0.0.0"),
        port=_int(env, "PORT", 8080, 0, 65535),
        grpc_port=_grpc_port(env),
        workers=_int(env, "WORKERS", 1, 1, 64),
        max_batch_size=_int(env, "MAX_BATCH_SIZE", 64, 1, 65536),
        max_latency_ms=_float(env, "MAX_LATENCY_MS", 2.0, 0.0, 10_000.0),
        max_payload_bytes=_int(env, "MAX_PAYLOAD_BYTES", 8 * 1024 * 1024, 1024, 1 << 31),
        handoff_frame_rows=_int(env, "HANDOFF_FRAME_ROWS", 256, 1, 1 << 20),
        shutdown_timeout_s=_float(env, "SHUTDOWN_TIMEOUT_S", 25.0, 0.0, 3600.0),
    )


def _grpc_port(env) -> int | None:
    raw = (env.get(PREFIX + "GRPC_PORT") or "").strip()
    if raw.lower() in ("off", "none"):
        return None
    port = _int(env, "GRPC_PORT", 8081, 0, 65535)
    http = (env.get(PREFIX + "PORT") or "8080").strip()
    if port and http == str(port):
        raise SettingsError(f"{PREFIX}GRPC_PORT={port} is also {PREFIX}PORT: gRPC needs a port of its own "
                            f"(or {PREFIX}GRPC_PORT=off)")
    return port


def _load_multi(env) -> Settings:
    """Multi-model mode: the models come from KILN_MODELS_FILE, so the model fields stay empty here
    (serve/models_file.py fills a copy per model). What the mode cannot do is refused by name."""
    path = env[PREFIX + "MODELS_FILE"].strip()
    for name in SINGLE_MODEL_VARIABLES:
        if (env.get(PREFIX + name) or "").strip():
            raise SettingsError(f"{PREFIX}{name} is set together with {PREFIX}MODELS_FILE: the models "
                                f"file names every model; unset {PREFIX}{name}")
    server = _server(env)
    if server["workers"] != 1:
        # Each worker process would load its own copy of every model it serves, so the memory budget
        # would hold per worker and the LRU order would split across processes.
        raise SettingsError(f"{PREFIX}WORKERS={server['workers']}: {PREFIX}MODELS_FILE (multi-model "
                            "mode) runs one worker; each worker would hold its own copies of the models")
    if (env.get(PREFIX + "MONITOR_URL") or "").strip():
        raise SettingsError(f"{PREFIX}MONITOR_URL is set together with {PREFIX}MODELS_FILE: feedback "
                            "is not supported in multi-model mode")
    handoff = (env.get(PREFIX + "HANDOFF_SOCKET") or "off").strip()
    if handoff.lower() not in ("off", "none", ""):
        raise SettingsError(f"{PREFIX}HANDOFF_SOCKET={handoff!r}: the drift hand-off is not supported in "
                            f"multi-model mode ({PREFIX}MODELS_FILE); set it to off")
    return Settings(
        **server,
        model_name="", model_version="", model_uri="", model_sha256="", model_format="skops",
        onnx_uri=None, onnx_sha256=None, signature="", signature_sha256=None, allow_unsafe=False,
        handoff_socket=None, log_level=_log_level(env), monitor_url=None,
        models_file=path,
        models_poll_s=_float(env, "MODELS_POLL_S", 1.0, 0.05, 3600.0),
        memory_budget_bytes=_int(env, "MEMORY_BUDGET_BYTES", 512 << 20, 32 << 20, 1 << 50),
    )
