"""Reading and writing objects for kiln-train, with failures sorted into the reasons the operator shows.

The artifact store says *what* failed (its StoreError keeps the backend's exception as the cause); this
module decides *which kind* of failure it is: a missing object and wrong credentials are permanent and
need a person, an unreachable endpoint is transient and worth the Job's retry.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import urlparse

from kiln_runtime import store

from .errors import InvalidSpec, SourceError, Unreachable

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken",
           "InvalidToken", "AuthorizationHeaderMalformed", "AllAccessDisabled"}
_UNREACHABLE_TYPES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                      "ConnectionClosedError", "ConnectionError", "ConnectionRefusedError", "TimeoutError"}
HTTP_TIMEOUT_S = 30


def _classify(uri: str, exc: BaseException, verb: str) -> SourceError:
    cause = exc.__cause__ or exc
    code = None
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code") or "") or None
    kind = type(cause).__name__
    if isinstance(exc, store.StoreError) and exc.__cause__ is None:
        # No backend was asked: the URI itself is wrong (scheme, missing key).
        return InvalidSpec(str(exc))
    if code in _NOT_FOUND or isinstance(cause, FileNotFoundError):
        return SourceError(f"cannot {verb} {uri}: not found ({code or kind})", reason="SourceNotFound")
    if code in _DENIED or kind in ("NoCredentialsError", "PartialCredentialsError") \
            or isinstance(cause, PermissionError):
        return SourceError(f"cannot {verb} {uri}: access denied ({code or kind}); check the credentials "
                           "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket policy",
                           reason="AccessDenied")
    if kind in _UNREACHABLE_TYPES or isinstance(cause, (ConnectionError, TimeoutError, OSError)) \
            and not isinstance(cause, (IsADirectoryError, NotADirectoryError)):
        return Unreachable(f"cannot {verb} {uri}: endpoint unreachable ({kind}: {_first_line(cause)})")
    return SourceError(f"cannot {verb} {uri}: {code or kind}: {_first_line(cause)}", reason="StoreError")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _read_http(uri: str) -> bytes:
    try:
        with urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310 (scheme checked)
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise SourceError(f"cannot read {uri}: access denied (HTTP {exc.code})", reason="AccessDenied")
        if exc.code == 404:
            raise SourceError(f"cannot read {uri}: not found (HTTP 404)", reason="SourceNotFound")
        raise Unreachable(f"cannot read {uri}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(f"cannot read {uri}: endpoint unreachable ({_first_line(exc)})") from exc


def read(uri: str, env_prefix: str = "") -> bytes:
    """Bytes at `uri` (s3://, file://, or http(s):// for a dataset source); `env_prefix` picks other
    S3 credentials (store.SOURCE_ENV_PREFIX: the Dataset's own Secret)."""
    if urlparse(uri).scheme in ("http", "https"):
        return _read_http(uri)
    try:
        return store.read_bytes(uri, env_prefix)
    except store.StoreError as exc:
        raise _classify(uri, exc, "read") from exc


def write(uri: str, data: bytes) -> str:
    """Writes `data` at `uri` and returns its sha256."""
    try:
        return store.write_bytes(uri, data)
    except store.StoreError as exc:
        raise _classify(uri, exc, "write") from exc


def read_json(uri: str):
    data = read(uri)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise SourceError(f"{uri}: not JSON: {exc}", reason="StoreError") from exc


def write_json(uri: str, obj) -> str:
    return write(uri, dumps(obj).encode())


def exists(uri: str) -> bool:
    try:
        return store.exists(uri)
    except store.StoreError as exc:
        raise _classify(uri, exc, "read") from exc


def list_objects(prefix: str, env_prefix: str = "") -> list[store.ObjectInfo]:
    """Every object below `prefix`; `env_prefix` as for read()."""
    try:
        return store.list_objects(prefix, env_prefix)
    except store.StoreError as exc:
        raise _classify(prefix, exc, "list") from exc


def keys_below(prefix: str) -> set[str]:
    """The keys (relative to `prefix`) of the objects below it; none yet is an empty set on any store
    (a file:// directory nobody has written to does not exist)."""
    try:
        return {o.key for o in list_objects(prefix)}
    except SourceError as exc:
        if exc.reason == "SourceNotFound" and prefix.startswith("file://"):
            return set()
        raise


def delete_prefix(prefix: str) -> int:
    try:
        return store.delete_prefix(prefix)
    except store.StoreError as exc:
        raise _classify(prefix, exc, "delete") from exc


def dumps(obj) -> str:
    """Compact JSON in insertion order (deterministic: the code builds every dict in a fixed order), never
    sorted: a profile's column order is the signature's, and the monitor keeps the first N columns."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)
