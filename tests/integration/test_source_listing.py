"""The operator's source checks against a real S3 API (moto's server on loopback) and a real directory:
a listing notices a new or rewritten file without reading any, ignores files that are not data, and
says why when the source is gone."""

from __future__ import annotations

import boto3
import pytest

from kiln_operator import sources
from s3_server import moto_server


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    with moto_server() as url:
        monkeypatch_module.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch_module.setenv("AWS_SECRET_ACCESS_KEY", "test")
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket="data")
        yield url, client


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_an_s3_prefix_listing_changes_with_a_new_or_rewritten_file_only(s3):
    url, client = s3
    client.put_object(Bucket="data", Key="loans/2026-11-01.csv", Body=b"a,b\n1,2\n")
    client.put_object(Bucket="data", Key="loans/README.txt", Body=b"not data")
    first = sources.list_source("s3://data/loans/", url)
    assert (first.files, first.bytes) == (1, 8)
    client.put_object(Bucket="data", Key="loans/notes.md", Body=b"still not data")
    assert sources.list_source("s3://data/loans/", url) == first
    client.put_object(Bucket="data", Key="loans/labelled/part-1.parquet", Body=b"PAR1....")
    grown = sources.list_source("s3://data/loans/", url)
    assert grown.files == 2 and grown.fingerprint != first.fingerprint
    client.put_object(Bucket="data", Key="loans/2026-11-01.csv", Body=b"a,b\n1,3\n")  # same size, new ETag
    assert sources.list_source("s3://data/loans/", url).fingerprint != grown.fingerprint


def test_a_vanished_prefix_or_bucket_is_unavailable_with_the_reason(s3):
    url, _ = s3
    with pytest.raises(sources.SourceUnavailable, match="no .csv or .parquet file found"):
        sources.list_source("s3://data/nothing-here/", url)
    with pytest.raises(sources.SourceUnavailable, match="cannot list s3://missing-bucket/x/"):
        sources.list_source("s3://missing-bucket/x/", url)
    with pytest.raises(sources.SourceUnavailable, match="cannot list s3://data/loans/gone.csv"):
        sources.list_source("s3://data/loans/gone.csv", url)


def test_a_directory_listing_sees_files_below_it(tmp_path):
    (tmp_path / "day1.csv").write_text("a\n1\n")
    (tmp_path / "sub").mkdir()
    first = sources.list_source(f"file://{tmp_path}/")
    (tmp_path / "sub" / "day2.parquet").write_bytes(b"PAR1")
    second = sources.list_source(f"file://{tmp_path}/")
    assert (first.files, second.files) == (1, 2) and first.fingerprint != second.fingerprint
