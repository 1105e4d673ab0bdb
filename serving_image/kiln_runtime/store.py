"""The artifact store: bytes at `file://` and `s3://` URIs.

S3 settings come from the standard AWS environment (`AWS_ENDPOINT_URL` for MinIO-style servers,
`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), which is also what a Kubernetes Secret
mounted with `envFrom` provides. Nothing here logs credentials.
"""

from __future__ import annotations

import functools
import hashlib
import os
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
