"""Shared fixtures: generated clips, a loopback HTTP server with faults, a generated corpus, a PostgreSQL server,
an S3-compatible server (moto, in a subprocess on loopback)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest

from lsvq_assets_tests.clipgen import broken_factory, clip_factory  # noqa: F401  (fixtures)
from lsvq_assets_tests.corpus import Corpus, build_corpus
from lsvq_assets_tests.loopback import LoopbackServer, loopback  # noqa: F401  (fixture)
from lsvq_assets_tests.pg import REQUIRE_ENV, PgServer, pg_unavailable, start_server
from lsvq_assets_tests.s3 import REQUIRE_ENV as S3_REQUIRE_ENV
from lsvq_assets_tests.s3 import S3Server, s3_unavailable, start_s3


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, clip_factory, broken_factory) -> Corpus:  # noqa: F811
    """The default generated corpus (ok clips of four codecs, a broken one, a 404, a duplicate)."""
    return build_corpus(tmp_path_factory.mktemp("corpus"), clip_factory, broken_factory)


@pytest.fixture
def served(corpus: Corpus):
    """A loopback server over the corpus, fresh per test (faults and request log start empty)."""
    with LoopbackServer(corpus.root) as server:
        yield server


def _skip_unless_required(reason: str | None, require_env: str) -> None:
    """A server that cannot run here (``reason``): skip with the reason, or fail when ``require_env`` is 1 (CI)."""
    if reason is not None:
        if os.environ.get(require_env) == "1":
            pytest.fail(f"{require_env}=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL server for the session (lsvq_assets_tests/pg.py), stopped and removed at the end.

    Skips with the reason when it cannot run here, or fails instead when LSVQ_REQUIRE_POSTGRES=1 (CI).
    """
    _skip_unless_required(pg_unavailable(), REQUIRE_ENV)
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(pg_server: PgServer, request: pytest.FixtureRequest) -> dict[str, str]:
    """A fresh database on the session's server for one test: its connection fields."""
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + "_" + secrets.token_hex(3)
    return pg_server.create_database(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An S3-compatible server for the session: moto's server mode in a subprocess on 127.0.0.1 (lsvq_assets_tests/s3.py).

    Yields the ``S3Server`` (``endpoint_url``, dummy credentials, ``env()`` with the ``AWS_*`` variables,
    ``create_bucket(name)``); stopped at the end. Skips with the reason when moto is not installed, or
    fails instead when LSVQ_REQUIRE_S3=1 (CI).
    """
    _skip_unless_required(s3_unavailable(), S3_REQUIRE_ENV)
    server = start_s3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the session's S3 server for one test: its name."""
    name = ("t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-") + "-" + secrets.token_hex(3))
    s3_server.create_bucket(name)
    return name
