"""Credentials and refusals: the Hugging Face token reaches the mirror only; 401/403 are transient.

Real loopback servers only: the "mirror" on 127.0.0.1 requires the token and redirects to a "CDN"
on another host name (127.0.0.2, localhost) or another port, which must never see the token.
"""

from __future__ import annotations

import gzip
import io
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.store import FetchState
from lsvq_assets.net import Bearer, HttpClient
from lsvq_assets.sources.archive import ArchiveClipSource
from lsvq_assets.sources.base import ClipResult
from lsvq_assets.sources.ingest import ingest_clips
from lsvq_assets.sources.url import UrlClipSource
from lsvq_assets_tests.loopback import LoopbackServer

TOKEN = "hf_loopbackTESTtoken0123456789"
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}
MEMBERS = {"f/a.mp4": b"a" * 3000, "f/b.mp4": b"b" * 2000, "f/c.mp4": b"c" * 1000}


@pytest.fixture(autouse=True)
def _no_env_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")


def make_row(src: str, index: int = 0) -> ManifestRow:
    name = src[: -len(".mp4")]
    return ManifestRow(index, index + 2, name, src, name.split("/", 1)[0], 50.0, 0.0, 0, None)


def archive_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in MEMBERS.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0) + b"\0" * 5000  # padding: a body worth cutting


def run(source: ArchiveClipSource | UrlClipSource, rows: list[ManifestRow], layout: Layout) -> dict[str, ClipResult]:
    results: dict[str, ClipResult] = {}
    try:
        source.fetch(rows, layout, lambda res: results.__setitem__(res.src, res))
    finally:
        source.close()
    assert set(results) == {r.src for r in rows}
    return results


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.create(tmp_path / "work")


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[LoopbackServer]:
    root = tmp_path / "mirror"
    root.mkdir()
    with LoopbackServer(root) as server:
        server.required_authorization = f"Bearer {TOKEN}"
        server.put("archives/f.tar.gz", archive_bytes())
        yield server


def mirror_template(mirror: LoopbackServer) -> str:
    return mirror.base_url + "/archives/{folder}.tar.gz"


@pytest.mark.parametrize("cdn_host", ["127.0.0.2", "localhost", "127.0.0.1 (another port)"])
def test_the_token_goes_to_the_mirror_and_never_to_the_cdn_it_redirects_to(
    mirror: LoopbackServer, layout: Layout, tmp_path: Path, cdn_host: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3's and ours: the token must appear in none
    (tmp_path / "cdn").mkdir()
    bind = "127.0.0.2" if cdn_host == "127.0.0.2" else "127.0.0.1"
    with LoopbackServer(tmp_path / "cdn", host=bind) as cdn:
        port = cdn.base_url.rsplit(":", 1)[1]
        cdn_base = f"http://{'localhost' if cdn_host == 'localhost' else bind}:{port}"
        cdn.put("lfs/f.tar.gz", archive_bytes())
        mirror.set_fault("archives/f.tar.gz", f"redirect:{cdn_base}/lfs/f.tar.gz", forever=True)
        cdn.set_fault("lfs/f.tar.gz", "truncate:0.5")  # the second attempt resumes with Range, still without the token
        rows = [make_row(src, i) for i, src in enumerate(MEMBERS)]
        source = ArchiveClipSource(mirror_template(mirror), token=TOKEN, **FAST)
        assert TOKEN not in repr(source.http._bearer)
        results = run(source, rows, layout)

        assert all(r.ok for r in results.values()), results
        assert layout.clip_path("f/b.mp4").read_bytes() == MEMBERS["f/b.mp4"]
        assert [r.status for r in mirror.records()] == [302, 302]
        assert all(r.header("Authorization") == f"Bearer {TOKEN}" for r in mirror.records())
        cdn_recs = cdn.records()
        assert [(r.status, r.range is not None) for r in cdn_recs] == [(200, False), (206, True)]
        assert all(r.header("Authorization") is None for r in cdn_recs)
        assert all(TOKEN not in str(r.headers) for r in cdn_recs)
    assert TOKEN not in caplog.text
    assert caplog.records, "the DEBUG capture saw nothing: the check above proves nothing"


def test_a_netrc_entry_for_the_mirror_does_not_replace_the_token(
    mirror: LoopbackServer, layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert run(ArchiveClipSource(mirror_template(mirror), token=TOKEN, **FAST), [make_row("f/a.mp4")], layout)["f/a.mp4"].ok
    assert [r.header("Authorization") for r in mirror.records()] == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_archive_fails_its_clips_transiently_with_a_hint_and_the_next_run_retries_them(
    mirror: LoopbackServer, layout: Layout, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    if status == 403:
        mirror.required_authorization = None
        mirror.set_fault("archives/f.tar.gz", "403")
    rows = [make_row(src, i) for i, src in enumerate(MEMBERS)]
    with FetchState(layout.state_path("f")) as store:
        first = ingest_clips(rows, layout, store, ArchiveClipSource(mirror_template(mirror), max_attempts=4, **FAST))
        failed = first.failures(transient=True)
        assert [f["src"] for f in failed] == list(MEMBERS) and not first.failures(transient=False)
        for f in failed:
            assert f["reason"] == (
                f"archive-http-{status}: the mirror refused the archive; set HF_TOKEN (or --hf-token-file) "
                "and accept the dataset's terms on its page"
            )
            assert (f["http_status"], f["attempts"]) == (status, 1)  # not retried within the run
        assert all(not rec.state == "failed" or rec.transient for rec in store.get_many(MEMBERS).values())
        assert "refused the archive" in caplog.text

        # The next run (token set, terms accepted) fetches them: nothing was recorded as a bad clip.
        second = ingest_clips(rows, layout, store, ArchiveClipSource(mirror_template(mirror), token=TOKEN, **FAST))
        assert [r["status"] for r in second.table] == ["downloaded"] * len(MEMBERS)


def test_a_wrong_token_says_so_and_is_never_shown(mirror: LoopbackServer, layout: Layout, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "hf_wrongTOKENxyz"
    results = run(ArchiveClipSource(mirror_template(mirror), token=wrong, **FAST), [make_row("f/a.mp4")], layout)
    res = results["f/a.mp4"]
    assert (res.ok, res.transient, res.http_status) == (False, True, 401)
    assert res.reason is not None and res.reason.startswith("archive-http-401: the mirror refused the archive with the token given")
    assert wrong not in res.reason and wrong not in caplog.text
    assert mirror.records()[0].header("Authorization") == f"Bearer {wrong}"


def test_429_stays_transient_with_retry_after_and_no_hint(mirror: LoopbackServer, layout: Layout) -> None:
    mirror.set_fault("archives/f.tar.gz", "429:0", "429:0")
    results = run(ArchiveClipSource(mirror_template(mirror), token=TOKEN, max_attempts=2, **FAST), [make_row("f/a.mp4")], layout)
    res = results["f/a.mp4"]
    assert (res.ok, res.reason, res.transient, res.attempts) == (False, "archive-http-429", True, 2)


def test_an_archive_deleted_after_success_is_fetched_again_with_one_info_line(
    mirror: LoopbackServer, layout: Layout, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lsvq_assets")
    first = [make_row("f/a.mp4", 0)]
    source = ArchiveClipSource(mirror_template(mirror), token=TOKEN, **FAST)
    assert run(source, first, layout)["f/a.mp4"].ok
    source.after_success(first, layout)
    assert not (layout.archives_dir / "f.tar.gz").exists()
    assert "fetched again" not in caplog.text

    later = [make_row("f/b.mp4", 1), make_row("f/c.mp4", 2)]
    assert all(r.ok for r in run(ArchiveClipSource(mirror_template(mirror), token=TOKEN, **FAST), later, layout).values())
    lines = [r for r in caplog.records if "fetched again" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].name.startswith("lsvq_assets")
    assert lines[0].getMessage().startswith("archive f.tar.gz is fetched again because 2 new member(s) are needed")


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_clip_url_is_transient_with_a_hint(loopback: LoopbackServer, layout: Layout, status: int) -> None:
    loopback.put("f/a.mp4", b"clip")
    loopback.set_fault("f/a.mp4", str(status), forever=True)
    source = UrlClipSource(loopback.base_url + "/{name}{suffix}", concurrency=1, max_attempts=4, **FAST)
    res = run(source, [make_row("f/a.mp4")], layout)["f/a.mp4"]
    assert (res.ok, res.transient, res.http_status, res.attempts) == (False, True, status, 1)
    assert res.reason is not None and res.reason.startswith(f"http-{status}: the server refused the clip")


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("https://huggingface.co/datasets/x/resolve/main/f.tar.gz", True),
        ("https://HuggingFace.co:443/other/path", True),
        ("https://cdn-lfs.huggingface.co/f.tar.gz", False),  # the CDN the mirror redirects to
        ("https://huggingface.co:8443/f.tar.gz", False),  # another port
        ("http://huggingface.co/f.tar.gz", False),  # plain http off loopback
        ("https://huggingface.co.evil.example/f.tar.gz", False),
    ],
)
def test_bearer_goes_to_its_origin_only(url: str, sent: bool) -> None:
    bearer = Bearer("https://huggingface.co/datasets/teowu/LSVQ-videos/resolve/main/folder.tar.gz", TOKEN)
    assert bearer.applies_to(url) is sent
    with HttpClient(bearer=bearer) as client:
        auth = client._auth_for(url)
        assert (auth is not None) is sent
        if auth is not None:
            assert TOKEN not in repr(auth)
        assert "Authorization" not in client.session.headers  # never session-wide


@pytest.mark.parametrize(
    ("template", "usable"),
    [
        ("http://127.0.0.1:8000/{folder}.tar.gz", True),
        ("http://127.9.9.9/{folder}.tar.gz", True),
        ("http://[::1]:8000/{folder}.tar.gz", True),
        ("http://localhost/{folder}.tar.gz", True),
        ("http://mirror.example/{folder}.tar.gz", False),
    ],
)
def test_plain_http_carries_the_token_to_loopback_only(template: str, usable: bool, caplog: pytest.LogCaptureFixture) -> None:
    source = ArchiveClipSource(template, token=TOKEN)
    source.close()
    assert source.http._bearer is not None and source.http._bearer.usable is usable
    assert ("token is not sent" in caplog.text) is not usable
    assert TOKEN not in caplog.text
