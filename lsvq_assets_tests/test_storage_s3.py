"""The storage root on a real S3-compatible server on loopback (moto's server mode, a subprocess)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lsvq_assets.cli import main
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.s3 import S3Server

pytestmark = pytest.mark.s3


@pytest.fixture
def bucket(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's S3 server (moto, a subprocess on loopback) in the standard AWS_* variables, and a fresh bucket."""
    for var in [v for v in os.environ if v.startswith("LSVQ_") or v == "DAGSTER_HOME"]:
        monkeypatch.delenv(var)
    for key, value in {**s3_server.env(), "NO_PROXY": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(key, value)
    return s3_bucket


@pytest.fixture
def s3_endpoint(s3_server: S3Server) -> str:
    return s3_server.endpoint_url


def _client(endpoint: str):  # noqa: ANN202
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


def _objects(endpoint: str, bucket: str, prefix: str) -> dict[str, int]:
    client = _client(endpoint)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def _rows(text: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "ingested_at_utc"} for line in text.splitlines()]


def test_clips_and_outputs_on_an_object_store_give_the_local_shard(corpus: Corpus, served, bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    common = ["--manifest-csv", str(corpus.csv), "--min-csv-rows", "1", "--full", "--clip-url-template", served.base_url + "/{name}{suffix}", "--log-level", "WARNING"]
    assert main(["--lsvq-dir", str(tmp_path / "local"), *common]) == 0
    oracle = (tmp_path / "local" / "lsvq.jsonl").read_text()
    served.reset_log()

    work = tmp_path / "host"
    storage = f"s3://{bucket}/lsvq"
    assert main(["--lsvq-dir", str(work), "--storage", storage, "--output-dir", f"s3://{bucket}/out", *common]) == 0
    objects = _objects(s3_endpoint, bucket, "")
    shard = _client(s3_endpoint).get_object(Bucket=bucket, Key="out/lsvq.jsonl")["Body"].read().decode()
    assert _rows(shard) == _rows(oracle)  # src stays relative to the clips root
    assert "out/lsvq.manifest.json" in objects
    for clip in corpus.by_kind("ok"):
        assert objects[f"lsvq/clips/{clip.src}"] == (corpus.root / clip.src).stat().st_size
    assert any(k.startswith("lsvq/partitions/yfcc-batch1/") and k.endswith("clips.parquet") for k in objects)
    assert any(k.endswith("fetch-state.json") for k in objects)
    # Nothing of the clips stays on the host: the scratch directories are gone.
    assert not [p for p in work.rglob("*") if p.is_file() and p.suffix in (".mp4", ".part")]
    assert not (work / "scratch").exists() or not any((work / "scratch").iterdir())

    # A second host with its own empty working directory: nothing to fetch, the same shard.
    served.reset_log()
    other = tmp_path / "other-host"
    assert main(["--lsvq-dir", str(other), "--storage", storage, "--output-dir", f"s3://{bucket}/out", "--verify", *common]) == 0
    assert served.count() == 0
    again = _client(s3_endpoint).get_object(Bucket=bucket, Key="out/lsvq.jsonl")["Body"].read().decode()
    assert again == shard
