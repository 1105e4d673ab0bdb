"""The artifact store: bytes at `file://` and `s3://` URIs.

S3 settings come from the standard AWS environment (`AWS_ENDPOINT_URL` for MinIO-style servers,
`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), which is also what a Kubernetes Secret
mounted with `envFrom` provides. Nothing here logs credentials.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


class StoreError(Exception):
    """An artifact could not be read or written; the message names the URI and the cause."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def join(prefix: str, *parts: str) -> str:
    """Joins URI path segments without doubling slashes."""
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts)])


_WHERE_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
# A Dataset's own Secret (spec.source.secretRef) reaches its Jobs under this prefix, beside the
# artifact store's credentials, so a run can read the data from one store and write to another.
SOURCE_ENV_PREFIX = "KILN_SOURCE_"


def client_settings(prefix: str = "") -> tuple:
    """The S3 settings under `prefix`: its credentials as a whole when it has an access key (never a
    mix of two identities), and its endpoint and region where given, the unprefixed ones otherwise."""
    env = os.environ
    own = bool(prefix) and bool(env.get(prefix + "AWS_ACCESS_KEY_ID"))
    where = tuple(env.get(prefix + k) or env.get(k) for k in _WHERE_ENV)
    return where + tuple(env.get((prefix if own else "") + k) for k in _CREDENTIAL_ENV) + (own,)


def _s3_client(prefix: str = ""):
    # Building a client costs ~40 ms; selecting among hundreds of trials reads a few objects each.
    # Keyed on the settings, so a process whose environment changes (tests) gets a fresh client.
    return _cached_client(client_settings(prefix))


@functools.lru_cache(maxsize=4)
def _cached_client(settings: tuple):
    import boto3
    from botocore.config import Config

    env = dict(zip(_WHERE_ENV + _CREDENTIAL_ENV, settings))
    explicit = settings[-1]
    # Only a prefixed identity is passed in; otherwise boto3 resolves credentials its usual way
    # (environment, profile, instance role), which keeps IRSA-style set-ups working.
    credentials = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
                   "aws_session_token": env["AWS_SESSION_TOKEN"]} if explicit else {}
    # Path-style addressing: MinIO and moto's server do not serve virtual-hosted buckets on loopback.
    # A session of its own: boto3's default one caches the credentials it first resolved.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"] or None,
        region_name=env["AWS_REGION"] or env["AWS_DEFAULT_REGION"] or "us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
                      connect_timeout=5, read_timeout=30),
        **credentials,
    )


def _split(uri: str) -> tuple[str, str, str]:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return "file", "", parsed.path
    if parsed.scheme == "s3":
        if not parsed.netloc or not parsed.path.strip("/"):
            raise StoreError(f"{uri}: an s3 URI needs a bucket and a key (s3://bucket/key)")
        return "s3", parsed.netloc, parsed.path.lstrip("/")
    raise StoreError(f"{uri}: unsupported scheme {parsed.scheme or '(none)'!r}; use file:// or s3://")


def _describe(uri: str, exc: Exception) -> StoreError:
    # botocore errors carry a code such as NoSuchKey, InvalidAccessKeyId or SignatureDoesNotMatch:
    # surface it, because "wrong credentials" and "missing object" need different fixes.
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    reason = f"{code}: {exc}" if code else f"{type(exc).__name__}: {exc}"
    return StoreError(f"{uri}: {reason}")


def read_bytes(uri: str, env_prefix: str = "") -> bytes:
    """The bytes at `uri`; S3 settings from the environment under `env_prefix` (see client_settings)."""
    scheme, bucket, key = _split(uri)
    try:
        if scheme == "file":
            return Path(key).read_bytes()
        return _s3_client(env_prefix).get_object(Bucket=bucket, Key=key)["Body"].read()
    except StoreError:
        raise
    except Exception as exc:  # every backend failure becomes one error type with the URI in it
        raise _describe(uri, exc) from exc


def write_bytes(uri: str, data: bytes) -> str:
    """Writes atomically (a reader never sees half an artifact) and returns the sha256 of the data."""
    scheme, bucket, key = _split(uri)
    try:
        if scheme == "file":
            path = Path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            # A single PUT is atomic in S3: the object appears whole or not at all.
            _s3_client().put_object(Bucket=bucket, Key=key, Body=data)
    except StoreError:
        raise
    except Exception as exc:
        raise _describe(uri, exc) from exc
    return sha256_hex(data)


def read_verified(uri: str, sha256: str) -> bytes:
    """Reads an artifact and refuses it unless its digest is the expected one."""
    data = read_bytes(uri)
    actual = sha256_hex(data)
    if actual != sha256.lower().removeprefix("sha256:"):
        raise StoreError(f"{uri}: digest mismatch: expected sha256 {sha256}, got {actual}")
    return data


def exists(uri: str) -> bool:
    scheme, bucket, key = _split(uri)
    if scheme == "file":
        return Path(key).exists()
    try:
        _s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _describe(uri, exc) from exc


@dataclass(frozen=True)
class ObjectInfo:
    """One object found below a prefix."""

    uri: str
    key: str  # relative to the listed prefix, "/"-separated
    size: int
    modified: float  # seconds since the epoch
    etag: str | None = None  # S3's; None for file://


def list_objects(prefix: str, env_prefix: str = "") -> list[ObjectInfo]:
    """Every object below `prefix` (recursively), in key order. An S3 prefix with no objects is simply
    empty; a file:// directory that does not exist is an error (FileNotFoundError as the cause)."""
    scheme, bucket, key = _split_prefix(prefix)
    base = prefix if prefix.endswith("/") else prefix + "/"
    try:
        if scheme == "file":
            root = Path(key)
            if not root.is_dir():
                raise FileNotFoundError(2, "no such directory", str(root))
            out = []
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                st = path.stat()
                rel = path.relative_to(root).as_posix()
                out.append(ObjectInfo(base + rel, rel, st.st_size, st.st_mtime))
            return out
        client = _s3_client(env_prefix)
        start = key if not key or key.endswith("/") else key + "/"
        out = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(start):]
                if not rel or rel.endswith("/"):  # "directory" placeholder objects some tools create
                    continue
                out.append(ObjectInfo(base + rel, rel, int(obj["Size"]), obj["LastModified"].timestamp(),
                                      str(obj.get("ETag", "")).strip('"') or None))
        return sorted(out, key=lambda o: o.key)
    except StoreError:
        raise
    except Exception as exc:
        raise _describe(prefix, exc) from exc


def delete_prefix(prefix: str) -> int:
    """Deletes every object below `prefix` (the artifact store's credentials); returns how many."""
    scheme, bucket, key = _split_prefix(prefix)
    if not key.strip("/"):
        raise StoreError(f"{prefix}: refusing to delete a whole bucket or filesystem root")
    if scheme == "file" and not Path(key).is_dir():
        return 0
    objects = list_objects(prefix)
    try:
        if scheme == "file":
            import shutil

            shutil.rmtree(key)
            return len(objects)
        client = _s3_client()
        start = key if key.endswith("/") else key + "/"
        keys = [start + o.key for o in objects]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                         "Quiet": True})
        return len(keys)
    except StoreError:
        raise
    except Exception as exc:
        raise _describe(prefix, exc) from exc


def _split_prefix(prefix: str) -> tuple[str, str, str]:
    # A prefix may name a whole bucket ("s3://bucket/"), which _split refuses for single objects.
    parsed = urlparse(prefix)
    if parsed.scheme == "s3" and parsed.netloc:
        return "s3", parsed.netloc, parsed.path.lstrip("/")
    return _split(prefix)
