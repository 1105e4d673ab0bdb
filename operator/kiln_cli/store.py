"""Reads a run's per-trial records from the artifact store, where kiln-train writes them
(`<output>/trials/<i>/result.json`, `stopped.json`, `error.json`): the pipeline's status only counts trials.

S3 settings are the user's own, as for the AWS CLI (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION),
with the endpoint from --s3-endpoint, else KILN_S3_ENDPOINT (the operator's name for it), else
AWS_ENDPOINT_URL; `file://` outputs are read from this machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

from .errors import CliError

RECORDS = ("result.json", "stopped.json", "error.json")


def endpoint(flag: str | None) -> str | None:
    return flag or os.environ.get("KILN_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None


class Store:
    def __init__(self, s3_endpoint: str | None = None):
        self.endpoint = endpoint(s3_endpoint)
        self._client = None

    def _s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Path-style: MinIO and moto do not serve virtual-hosted buckets; few retries and short
            # timeouts, so an unreachable store is reported in seconds, not minutes.
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint,
                region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"},
                              connect_timeout=5, read_timeout=20))
        return self._client

    def trial_records(self, output: str) -> dict[int, dict[str, dict]]:
        """{trial index: {record file name: its JSON}} for every trial that left a record under `output`."""
        prefix = output.rstrip("/") + "/trials/"
        found: dict[int, dict[str, dict]] = {}
        for key in self._list(prefix):
            index, _, name = key.partition("/")
            if index.isdigit() and name in RECORDS:
                found.setdefault(int(index), {})[name] = json.loads(self._read(prefix + key))
        return found

    def _list(self, prefix: str) -> list[str]:
        """Keys below `prefix`, relative to it."""
        parsed = urlparse(prefix)
        if parsed.scheme == "file":
            root = Path(parsed.path)
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) \
                if root.is_dir() else []
        if parsed.scheme != "s3":
            raise CliError(f"{prefix}: the CLI reads s3:// and file:// stores only")
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        keys = []
        try:
            for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                keys += [o["Key"][len(key):] for o in page.get("Contents") or []]
        except Exception as exc:  # noqa: BLE001 - botocore's errors share no useful base
            raise store_error(prefix, self.endpoint, exc) from None
        return keys

    def _read(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return Path(parsed.path).read_bytes()
        try:
            return self._s3().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise store_error(uri, self.endpoint, exc) from None


def store_error(uri: str, where: str | None, exc: BaseException) -> CliError:
    """What went wrong reaching the store, and which setting fixes it."""
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
    kind = type(exc).__name__
    at = f" at {where}" if where else " (AWS S3: no endpoint set)"
    if kind in ("NoCredentialsError", "PartialCredentialsError"):
        return CliError(f"cannot read {uri}: no credentials for the artifact store; set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return CliError(f"cannot read {uri}: the artifact store{at} refused the credentials ({code}); check "
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if code in ("NoSuchBucket", "NoSuchKey", "404"):
        return CliError(f"cannot read {uri}: not found in the artifact store{at} ({code})")
    if code is None:
        return CliError(f"cannot reach the artifact store{at} to read {uri}: {kind}: {exc}; set --s3-endpoint "
                        "or KILN_S3_ENDPOINT to an address this machine reaches")
    return CliError(f"cannot read {uri} from the artifact store{at}: {code}: {exc}")
