"""Noticing that a Dataset's source changed, without reading it: a listing of names, sizes and ETags.

The operator lists the source with its own identity (the standard AWS environment; IRSA-style roles
work), never with a Dataset's Secret: no user credential passes through the operator. A listing is
one request per thousand objects, so checking a source every minute costs nothing measurable; the
validation Job, not the operator, downloads the data, and only when the listing changed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

DATA_SUFFIXES = (".csv", ".parquet")


class SourceUnavailable(Exception):
    """The source could not be listed, or holds no data file; the message names the URI and why."""


@dataclass(frozen=True)
class Listing:
    fingerprint: str  # sha256 of the sorted (name, size, etag) lines
    files: int
    bytes: int


def _fingerprint(entries: list[tuple[str, int, str]]) -> Listing:
    lines = "\n".join(f"{name}\t{size}\t{tag}" for name, size, tag in sorted(entries))
    return Listing(hashlib.sha256(lines.encode()).hexdigest(), len(entries), sum(e[1] for e in entries))


def is_prefix(uri: str) -> bool:
    return uri.endswith("/")


def _wanted(name: str, prefix: bool) -> bool:
    return not prefix or name.lower().endswith(DATA_SUFFIXES)


@functools.lru_cache(maxsize=4)
def _client(endpoint: str | None, region: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10))


def _list_s3(uri: str, endpoint: str | None, region: str) -> list[tuple[str, int, str]]:
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    client = _client(endpoint, region)
    if not is_prefix(uri):
        head = client.head_object(Bucket=bucket, Key=key)
        return [(key, int(head["ContentLength"]), head.get("ETag", ""))]
    entries = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        for obj in page.get("Contents") or []:
            if _wanted(obj["Key"], True):
                entries.append((obj["Key"], int(obj["Size"]), obj.get("ETag", "")))
    return entries


def _list_file(uri: str) -> list[tuple[str, int, str]]:
    path = unquote(urlparse(uri).path)
    if not is_prefix(uri):
        st = os.stat(path)
        return [(path, st.st_size, str(st.st_mtime_ns))]
    entries = []
    for root, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            if _wanted(name, True):
                st = os.stat(full)
                entries.append((full, st.st_size, str(st.st_mtime_ns)))
    return entries


def list_source(uri: str, endpoint: str | None = None, region: str = "us-east-1") -> Listing:
    """The listing of an s3:// or file:// source; raises SourceUnavailable with the cause."""
    try:
        if uri.startswith("s3://"):
            entries = _list_s3(uri, endpoint, region)
        elif uri.startswith("file://"):
            entries = _list_file(uri)
        else:
            raise SourceUnavailable(f"{uri}: only s3:// and file:// sources can be listed")
    except SourceUnavailable:
        raise
    except Exception as exc:  # botocore and os raise many types; the message is what a user needs
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise SourceUnavailable(f"cannot list {uri}: {text}") from exc
    if not entries:
        raise SourceUnavailable(f"{uri}: no .csv or .parquet file found" if is_prefix(uri) else f"{uri}: not found")
    return _fingerprint(entries)
