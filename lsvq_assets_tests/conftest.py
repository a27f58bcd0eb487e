"""Shared fixtures: generated clips, a loopback HTTP server with faults, a generated corpus."""

from __future__ import annotations

import pytest

from lsvq_assets_tests.clipgen import broken_factory, clip_factory  # noqa: F401  (fixtures)
from lsvq_assets_tests.corpus import Corpus, build_corpus
from lsvq_assets_tests.loopback import LoopbackServer, loopback  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, clip_factory, broken_factory) -> Corpus:  # noqa: F811
    """The default generated corpus (ok clips of four codecs, a broken one, a 404, a duplicate)."""
    return build_corpus(tmp_path_factory.mktemp("corpus"), clip_factory, broken_factory)


@pytest.fixture
def served(corpus: Corpus):
    """A loopback server over the corpus, fresh per test (faults and request log start empty)."""
    with LoopbackServer(corpus.root) as server:
        yield server
