"""The S3-compatible server fixture (s3.py): moto in a subprocess on loopback, reached by boto3 and s3fs."""

from __future__ import annotations

import pytest

from lsvq_assets_tests.s3 import HOST, S3Server

pytestmark = pytest.mark.s3


def test_moto_server_answers_on_loopback_with_a_bucket(s3_server: S3Server, s3_bucket: str) -> None:
    assert s3_server.endpoint_url.startswith(f"http://{HOST}:")
    assert s3_server.alive()
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"hello"
    assert s3_server.list_keys(s3_bucket, "a/") == ["a/b.txt"]


def test_s3fs_reaches_it_through_the_standard_variables(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s3fs = pytest.importorskip("s3fs")
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # endpoint and credentials from AWS_* only
    with fs.open(f"{s3_bucket}/x/y.bin", "wb") as f:
        f.write(b"\x00\x01")
    assert fs.cat(f"{s3_bucket}/x/y.bin") == b"\x00\x01"
    assert s3_server.list_keys(s3_bucket) == ["x/y.bin"]
