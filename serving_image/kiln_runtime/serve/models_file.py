"""The models file of the multi-model mode (KILN_MODELS_FILE): parsing it, and noticing it changed.

The operator writes it as a ConfigMap key, `{"models": [{name, version, uri, sha256, ...}]}`, one
entry per model the pod serves. Each entry is checked with the single-model settings' own rules
(settings.check_digest, check_format, signature.parse) and becomes a copy of the server's Settings
with the model fields filled in, so loader.fetch and loader.build load it unchanged. A bad entry
rejects the whole file: at start that stops the server (exit 2), later the previous table stays.

Kubernetes replaces a mounted ConfigMap by swapping a `..data` symlink, so the file is never seen half
written; `Watcher` stats the path (following the symlink) and re-reads it only when its inode, mtime
or size moved, then compares the bytes' hash, so an unchanged rewrite is not a change.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace

import orjson

from . import signature as signature_mod
from .errors import LoadError
from .settings import Settings, SettingsError, check_digest, check_format

# The name is a path segment of every route (`/v2/models/{name}/infer`, `/v1/models/{name}:predict`):
# no separators, nothing that needs percent-encoding.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


class TableError(ValueError):
    """The models file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Entry:
    """One model of the table: what to load, and what a request for it may know before it is loaded."""

    name: str
    version: str
    model_version: str | None  # the ModelVersion object it comes from (shown in the index)
    settings: Settings  # the server's settings with this model's fields
    signature: signature_mod.Signature
    key: tuple  # everything that decides what gets loaded: a different key is a different model


def parse(data: bytes, base: Settings, source: str = "models.json") -> dict[str, Entry]:
    """The table, name -> Entry, in file order; raises TableError naming `source` and the field."""
    try:
        return _parse(data, base)
    except TableError as exc:
        raise TableError(f"{source}: {exc}") from None


def _parse(data: bytes, base: Settings) -> dict[str, Entry]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TableError(f"not valid JSON: {exc}") from None
    if type(doc) is not dict or type(doc.get("models")) is not list:
        raise TableError('expected a JSON object {"models": [...]}')
    table: dict[str, Entry] = {}
    for i, item in enumerate(doc["models"]):
        entry = _entry(item, f"models[{i}]", base)
        if entry.name in table:
            raise TableError(f"models[{i}].name {entry.name!r} appears twice")
        table[entry.name] = entry
    return table


def _text(item: dict, field: str, where: str, required: bool = True) -> str | None:
    value = item.get(field)
    if value is None and not required:
        return None
    if type(value) is int and field == "version":
        value = str(value)
    if type(value) is not str or not value.strip():
        raise TableError(f"{where}.{field} must be a non-empty string")
    return value.strip()


def _entry(item, where: str, base: Settings) -> Entry:
    if type(item) is not dict:
        raise TableError(f"{where} must be an object")
    name = _text(item, "name", where)
    if not _NAME.fullmatch(name):
        raise TableError(f"{where}.name {name!r} must be letters, digits, '.', '_' or '-' (it is a URL "
                         "path segment)")
    version = _text(item, "version", where)
    model_version = _text(item, "modelVersion", where, required=False)
    uri = _text(item, "uri", where)
    onnx_uri = _text(item, "onnxUri", where, required=False)
    allow_unsafe = item.get("allowUnsafe", False)
    if type(allow_unsafe) is not bool:
        raise TableError(f"{where}.allowUnsafe must be true or false")
    try:
        sha = check_digest(_text(item, "sha256", where), f"{where}.sha256")
        fmt = check_format(_text(item, "format", where, required=False) or "skops", f"{where}.format")
        raw_onnx_sha = _text(item, "onnxSha256", where, required=False)
        onnx_sha = check_digest(raw_onnx_sha, f"{where}.onnxSha256") if raw_onnx_sha else None
    except SettingsError as exc:
        raise TableError(str(exc)) from None
    if bool(onnx_uri) != bool(onnx_sha):
        raise TableError(f"{where}: onnxUri and onnxSha256 go together (one is missing)")
    doc = item.get("signature")
    if type(doc) is not dict:
        raise TableError(f"{where}.signature must be an object (the model's signature)")
    try:
        sig = signature_mod.parse(doc)
    except LoadError as exc:
        raise TableError(f"{where}.{exc}") from None
    sig_json = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
    settings = replace(base, model_name=name, model_version=version, model_uri=uri, model_sha256=sha,
                       model_format=fmt, onnx_uri=onnx_uri, onnx_sha256=onnx_sha, signature=sig_json,
                       signature_sha256=None, allow_unsafe=allow_unsafe)
    key = (version, uri, sha, fmt, allow_unsafe, onnx_uri, onnx_sha, sig_json)
    return Entry(name, version, model_version, settings, sig, key)


class Watcher:
    """Says when the file's content changed: `poll()` -> the new bytes, or None."""

    def __init__(self, path: str):
        self.path = path
        self._stat = None
        self._digest = None

    def read(self) -> bytes:
        """The current bytes (at start: an OSError is the caller's to report)."""
        st = os.stat(self.path)
        with open(self.path, "rb") as f:
            data = f.read()
        self._stat = (st.st_ino, st.st_mtime_ns, st.st_size)
        self._digest = hashlib.sha256(data).digest()
        return data

    def poll(self) -> bytes | None:
        st = os.stat(self.path)  # follows the ..data symlink: a swap shows as a new inode
        if (st.st_ino, st.st_mtime_ns, st.st_size) == self._stat:
            return None
        previous = self._digest
        data = self.read()
        return None if self._digest == previous else data
