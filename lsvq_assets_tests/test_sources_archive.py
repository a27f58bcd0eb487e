"""The folder-archive source against real .tar.gz files on a loopback server; and the three sources' shards."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest

from lsvq_assets.core.errors import UserError
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.net.client import HttpClient
from lsvq_assets.sources.archive import ArchiveClipSource
from lsvq_assets.sources.archive_download import ArchiveStream, StreamFailed
from lsvq_assets.sources.base import ClipResult
from lsvq_assets.sources.gunzip import CorruptArchive, Gunzip
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.loopback import Fault, LoopbackServer
from lsvq_assets_tests.test_pipeline import run_cli

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}


# --------------------------------------------------------------------------- helpers


def make_row(src: str, index: int = 0) -> ManifestRow:
    name = src[: -len(".mp4")] if src.endswith(".mp4") else src
    folder = name.split("/", 1)[0] if "/" in name else ""
    return ManifestRow(index, index + 2, name, src, folder, 50.0, 0.0, 0, None)


def corpus_rows(corpus: Corpus) -> list[ManifestRow]:
    return [make_row(c.src, i) for i, c in enumerate(corpus.clips)]


def folder_archive(tree: Path, folder: str, out: Path, dot_prefix: bool = False) -> Path:
    """``out`` = the gzipped tar of ``tree/folder`` with members ``<folder>/<stem>.mp4``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tree / folder, arcname=("./" if dot_prefix else "") + folder)
    return out


def serve_archives(server: LoopbackServer, corpus: Corpus, **kw) -> dict[str, Path]:
    folders = sorted({c.src.split("/")[0] for c in corpus.clips})
    return {f: folder_archive(corpus.root, f, server.root / "archives" / f"{f}.tar.gz", **kw) for f in folders}


def template(server: LoopbackServer) -> str:
    return server.base_url + "/archives/{folder}.tar.gz"


def run(source: ArchiveClipSource, rows: list[ManifestRow], layout: Layout) -> dict[str, ClipResult]:
    results: dict[str, ClipResult] = {}

    def on_result(res: ClipResult) -> None:
        assert res.src not in results, f"{res.src} reported twice"
        results[res.src] = res

    try:
        source.fetch(rows, layout, on_result)
    finally:
        source.close()
    assert set(results) == {r.src for r in rows}
    return results


def stray_files(clips_dir: Path) -> list[Path]:
    return [p for p in clips_dir.rglob("*") if p.name.startswith(".") or p.name.endswith(".part")]


def tree_snapshot(base: Path, skip: tuple[Path, ...]) -> set[str]:
    out = set()
    for p in base.rglob("*"):
        if any(p == s or s in p.parents for s in skip):
            continue
        out.add(str(p.relative_to(base)))
    return out


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.create(tmp_path / "work")


# --------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("dot_prefix", [False, True])
def test_archive_source_extracts_the_same_bytes_with_one_request_per_archive(
    corpus: Corpus, loopback: LoopbackServer, layout: Layout, dot_prefix: bool
) -> None:
    archives = serve_archives(loopback, corpus, dot_prefix=dot_prefix)
    rows = corpus_rows(corpus)
    results = run(ArchiveClipSource(template(loopback), **FAST), rows, layout)

    for clip in corpus.clips:
        res = results[clip.src]
        if clip.kind == "missing":
            assert (res.ok, res.reason, res.transient) == (False, "missing-from-archive", False)
            assert not layout.clip_path(clip.src).exists()
            continue
        assert res.ok, res
        assert res.sha256 == corpus.sha256(clip) == hashlib.sha256(layout.clip_path(clip.src).read_bytes()).hexdigest()
        assert res.size == (corpus.root / clip.src).stat().st_size
        assert res.http_status == 200
    # One GET per archive, nothing else (no HEAD).
    assert sorted((r.method, r.path) for r in loopback.requests) == [("GET", f"archives/{f}.tar.gz") for f in sorted(archives)]
    assert stray_files(layout.clips_dir) == []
    # Extracted as they arrived: no archive, no .part, no lock file (the directory was never made).
    assert not layout.archives_dir.exists()


def test_archives_downloaded_to_disk_stay_until_the_slice_succeeded(corpus: Corpus, loopback: LoopbackServer, layout: Layout) -> None:
    """With --keep-archives (or a .part an earlier run left), the archive is downloaded, then extracted."""
    archives = serve_archives(loopback, corpus)
    rows = corpus_rows(corpus)
    kept = layout.archives_dir
    for folder in archives:  # an earlier run's partial download of every archive: resumed, then extracted
        kept.mkdir(parents=True, exist_ok=True)
        (kept / f"{folder}.tar.gz.part").write_bytes(archives[folder].read_bytes()[:100])
    results = run(ArchiveClipSource(template(loopback), **FAST), rows, layout)
    assert all(results[c.src].ok for c in corpus.clips if c.kind != "missing")
    assert sorted((r.path, r.range) for r in loopback.requests) == [(f"archives/{f}.tar.gz", "bytes=100-") for f in sorted(archives)]
    assert sorted(p.name for p in kept.glob("*.tar.gz")) == sorted(f"{f}.tar.gz" for f in archives)
    for f, path in archives.items():
        assert (kept / f"{f}.tar.gz").read_bytes() == path.read_bytes()
    ArchiveClipSource(template(loopback)).after_success(rows, layout)
    assert list(kept.glob("*.tar.gz*")) == [] and list(kept.iterdir()) == []


def test_keep_archives_keeps_them_and_a_kept_archive_costs_no_request(
    corpus: Corpus, loopback: LoopbackServer, layout: Layout
) -> None:
    serve_archives(loopback, corpus)
    rows = [r for r in corpus_rows(corpus) if r.folder == "yfcc-batch1"]
    src = ArchiveClipSource(template(loopback), keep_archives=True, **FAST)
    assert all(r.ok for r in run(src, rows, layout).values())
    src.after_success(rows, layout)
    assert (layout.archives_dir / "yfcc-batch1.tar.gz").is_file()

    for row in rows:
        layout.clip_path(row.src).unlink()
    loopback.reset_log()
    results = run(ArchiveClipSource(template(loopback), keep_archives=True, **FAST), rows, layout)
    assert all(r.ok and r.attempts == 0 for r in results.values())
    assert loopback.count() == 0


def test_archives_dir_override_and_rows_without_folder(corpus: Corpus, loopback: LoopbackServer, layout: Layout, tmp_path: Path) -> None:
    serve_archives(loopback, corpus)
    rows = [make_row("ia-batch2/alpha.mp4", 0), make_row("flat.mp4", 1)]
    elsewhere = tmp_path / "elsewhere"
    results = run(ArchiveClipSource(template(loopback), archives_dir=elsewhere, keep_archives=True, **FAST), rows, layout)
    assert results["ia-batch2/alpha.mp4"].ok
    assert (results["flat.mp4"].ok, results["flat.mp4"].reason, results["flat.mp4"].transient) == (False, "no-folder-for-archive", False)
    assert (elsewhere / "ia-batch2.tar.gz").is_file() and not layout.archives_dir.exists()
    assert loopback.count() == 1


@pytest.mark.parametrize("bad", ["https://example.org/{name}.tar.gz", "ftp://example.org/{folder}.tar.gz", "http://x/{folder"])
def test_bad_template_is_a_user_error(bad: str) -> None:
    with pytest.raises(UserError, match="archive-url-template"):
        ArchiveClipSource(bad)


# --------------------------------------------------------------------------- resume


def test_interrupted_download_is_resumed_with_a_range_request(corpus: Corpus, loopback: LoopbackServer, layout: Layout) -> None:
    archives = serve_archives(loopback, corpus)
    rel = "archives/yfcc-batch1.tar.gz"
    whole = archives["yfcc-batch1"].read_bytes()
    loopback.set_fault(rel, "truncate:0.4")
    rows = [r for r in corpus_rows(corpus) if r.folder == "yfcc-batch1"]

    # A run with one attempt: the clips fail transiently, the .part keeps what arrived.
    results = run(ArchiveClipSource(template(loopback), max_attempts=1, keep_archives=True, **FAST), rows, layout)
    assert all(not r.ok and r.transient and r.reason.startswith("archive-short-body") for r in results.values())
    part = layout.archives_dir / "yfcc-batch1.tar.gz.part"
    have = int(len(whole) * 0.4)
    assert part.read_bytes() == whole[:have]
    assert not list(layout.clips_dir.rglob("*.mp4"))

    # The next run resumes where it stopped: one more request, with Range.
    results = run(ArchiveClipSource(template(loopback), keep_archives=True, **FAST), rows, layout)
    assert all(r.ok for r in results.values()), results
    recs = loopback.records(rel)
    assert [(r.range, r.status) for r in recs] == [(None, 200), (f"bytes={have}-", 206)]
    assert (layout.archives_dir / "yfcc-batch1.tar.gz").read_bytes() == whole
    assert not part.exists()
    for row in rows:
        assert layout.clip_path(row.src).read_bytes() == (corpus.root / row.src).read_bytes()


@pytest.mark.parametrize("keep_archives", [False, True])
def test_a_short_body_is_resumed_within_the_same_run(corpus: Corpus, loopback: LoopbackServer, layout: Layout, keep_archives: bool) -> None:
    serve_archives(loopback, corpus)
    rel = "archives/ia-batch2.tar.gz"
    size = (loopback.root / rel).stat().st_size
    loopback.set_fault(rel, "truncate:0.5")
    rows = [r for r in corpus_rows(corpus) if r.folder == "ia-batch2"]
    results = run(ArchiveClipSource(template(loopback), keep_archives=keep_archives, **FAST), rows, layout)
    for row in rows:  # streamed: the extraction went on under the resumed body
        res = results[row.src]
        assert (res.attempts, res.http_status) == (2, 206)
        if (corpus.root / row.src).exists():
            assert res.ok and layout.clip_path(row.src).read_bytes() == (corpus.root / row.src).read_bytes()
        else:
            assert res.reason == "missing-from-archive"
    recs = loopback.records(rel)
    assert [(r.range, r.status) for r in recs] == [(None, 200), (f"bytes={size // 2}-", 206)]
    assert not (layout.archives_dir / "ia-batch2.tar.gz.part").exists()
    assert layout.archives_dir.exists() == keep_archives
    assert stray_files(layout.clips_dir) == []


def _stream_all(stream: ArchiveStream, step: int = 1000) -> bytes:
    out = bytearray()
    while chunk := stream.read(step):
        out += chunk
    return bytes(out)


def test_a_streamed_archive_resumes_at_the_byte_reached_or_reads_past_a_200(loopback: LoopbackServer) -> None:
    whole = os.urandom(300_000)
    loopback.put("archives/a.tar.gz", whole)
    url = loopback.base_url + "/archives/a.tar.gz"
    with HttpClient(max_attempts=3, **FAST) as client:
        # Cut at 30 %; the resume answered with the whole body (a fault answers 200) and cut at 60 %; then a 206.
        loopback.set_fault("archives/a.tar.gz", "truncate:0.3", "truncate:0.6")
        stream = ArchiveStream(client, url)
        assert _stream_all(stream) == whole and (stream.requests, stream.http_status, stream.offset) == (3, 206, len(whole))
        recs = loopback.records()
        assert [(r.range, r.status) for r in recs] == [(None, 200), ("bytes=90000-", 200), ("bytes=180000-", 206)]
        assert recs[0].header("If-Range") is None
        assert recs[1].header("If-Range") == recs[2].header("If-Range") and (recs[1].header("If-Range") or "").startswith('"')

        # A 200 to the resume cut while its bytes already had are skipped, then a 206: nothing lost twice.
        loopback.reset_log()
        loopback.set_fault("archives/a.tar.gz", "truncate:0.3", "truncate:0.2")
        assert _stream_all(ArchiveStream(client, url)) == whole
        got = [(r.range, r.status) for r in loopback.records()]
        assert got == [(None, 200), ("bytes=90000-", 200), ("bytes=90000-", 206)]

        loopback.reset_log()
        loopback.honor_range = False  # Range ignored: the 200's first 90,000 bytes are skipped
        loopback.set_fault("archives/a.tar.gz", "truncate:0.3")
        assert _stream_all(ArchiveStream(client, url)) == whole
        assert [(r.range, r.status) for r in loopback.records()] == [(None, 200), ("bytes=90000-", 200)]


def test_a_streamed_archive_that_keeps_coming_is_not_given_up_after_max_attempts_cuts(loopback: LoopbackServer) -> None:
    """Nothing of a streamed archive survives the run: a failure after enough progress is the first in a row again."""
    step = ArchiveStream.PROGRESS_RESETS + 1000
    whole = os.urandom(6 * step)
    loopback.put("archives/a.tar.gz", whole)
    cuts = [f"truncate:{k * step / len(whole)!r}" for k in range(1, 6)]  # five cuts, each 1 MiB and more past the one before
    loopback.set_fault("archives/a.tar.gz", *cuts)
    with HttpClient(max_attempts=2, **FAST) as client:
        stream = ArchiveStream(client, loopback.base_url + "/archives/a.tar.gz")
        assert _stream_all(stream, step=1 << 20) == whole and stream.requests == 6
        loopback.put("archives/a.tar.gz", whole[:100_000])
        loopback.set_fault("archives/a.tar.gz", "truncate:0.3", "truncate:0.3")  # cut twice at the same byte
        with pytest.raises(StreamFailed, match="short-body"):
            _stream_all(ArchiveStream(client, loopback.base_url + "/archives/a.tar.gz"))


def test_a_streamed_archive_that_changes_or_fails_for_good_gives_up(loopback: LoopbackServer) -> None:
    loopback.put("archives/a.tar.gz", os.urandom(300_000))
    url = loopback.base_url + "/archives/a.tar.gz"
    with HttpClient(max_attempts=3, **FAST) as client:
        loopback.set_fault("archives/a.tar.gz", "truncate:0.3")
        stream = ArchiveStream(client, url)
        assert len(stream.read(1000)) == 1000  # the headers and the first 30 % are on their way
        loopback.put("archives/a.tar.gz", os.urandom(300_001))  # another ETag: If-Range gets the new whole
        with pytest.raises(StreamFailed, match="changed-while-downloading"):
            _stream_all(stream)
        assert [r.status for r in loopback.records()] == [200, 200]

        loopback.set_fault("archives/a.tar.gz", "truncate:0.3", "truncate:0.3", "truncate:0.3", "truncate:0.3")
        stream = ArchiveStream(client, url)
        with pytest.raises(StreamFailed) as failed:
            _stream_all(stream)
        attempt = failed.value.attempt
        assert attempt.failure is not None and attempt.failure.transient and attempt.requests == 3
        assert stream.offset < 300_001


def test_a_416_to_a_streamed_resume_is_an_archive_that_changed(tmp_path: Path) -> None:
    """A server that answers the resume with 416 (the archive shrank) fails the folder transiently, never permanently."""
    import http.server
    import threading

    whole = os.urandom(200_000)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("Range"):
                self.send_response(416)
                self.send_header("Content-Range", "bytes */50000")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            self.wfile.write(whole[:100_000])  # then the connection closes: cut short
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with HttpClient(max_attempts=3, **FAST) as client:
            stream = ArchiveStream(client, f"http://127.0.0.1:{server.server_address[1]}/a.tar.gz")
            with pytest.raises(StreamFailed) as failed:
                _stream_all(stream)
    finally:
        server.shutdown()
        server.server_close()
    failure = failed.value.attempt.failure
    assert failure is not None and failure.reason == "changed-while-downloading: http-416" and failure.transient
    assert (stream.offset, stream.requests) == (100_000, 2)


def test_a_streamed_archive_cut_short_for_good_writes_nothing_and_the_next_run_starts_over(
    corpus: Corpus, loopback: LoopbackServer, layout: Layout
) -> None:
    archives = serve_archives(loopback, corpus)
    rel = "archives/yfcc-batch1.tar.gz"
    loopback.set_fault(rel, "truncate:0.6")
    rows = [r for r in corpus_rows(corpus) if r.folder == "yfcc-batch1"]
    results = run(ArchiveClipSource(template(loopback), max_attempts=1, **FAST), rows, layout)
    assert all(not r.ok and r.transient and r.reason.startswith("archive-short-body") and r.attempts == 1 for r in results.values())
    assert not layout.archives_dir.exists()
    assert not layout.clips_dir.exists() or not any(p.is_file() for p in layout.clips_dir.rglob("*"))
    loopback.reset_log()
    results = run(ArchiveClipSource(template(loopback), **FAST), rows, layout)
    assert all(r.ok for r in results.values())
    assert [(r.range, r.status) for r in loopback.records(rel)] == [(None, 200)]
    assert archives  # served


def test_server_ignoring_range_restarts_from_zero(corpus: Corpus, loopback: LoopbackServer, layout: Layout) -> None:
    archives = serve_archives(loopback, corpus)
    loopback.honor_range = False
    part = layout.archives_dir / "yfcc-batch1.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from something else" * 10)
    rows = [r for r in corpus_rows(corpus) if r.folder == "yfcc-batch1"]
    results = run(ArchiveClipSource(template(loopback), keep_archives=True, **FAST), rows, layout)
    assert all(r.ok for r in results.values())
    recs = loopback.records("archives/yfcc-batch1.tar.gz")
    assert [(r.range, r.status) for r in recs] == [("bytes=310-", 200)]
    assert (layout.archives_dir / "yfcc-batch1.tar.gz").read_bytes() == archives["yfcc-batch1"].read_bytes()


def test_416_restarts_and_a_complete_part_is_just_renamed(corpus: Corpus, loopback: LoopbackServer, layout: Layout) -> None:
    archives = serve_archives(loopback, corpus)
    rel = "archives/yfcc-batch1.tar.gz"
    whole = archives["yfcc-batch1"].read_bytes()
    rows = [r for r in corpus_rows(corpus) if r.folder == "yfcc-batch1"]
    part = layout.archives_dir / "yfcc-batch1.tar.gz.part"
    part.parent.mkdir(parents=True)

    part.write_bytes(b"x" * (len(whole) + 10))  # longer than the archive: 416, then from zero
    assert all(r.ok for r in run(ArchiveClipSource(template(loopback), **FAST), rows, layout).values())
    assert [(r.range, r.status) for r in loopback.records(rel)] == [(f"bytes={len(whole) + 10}-", 416), (None, 200)]

    for row in rows:
        layout.clip_path(row.src).unlink()
    (layout.archives_dir / "yfcc-batch1.tar.gz").unlink()
    loopback.reset_log()
    part.write_bytes(whole)  # a run stopped between the last byte and the rename
    assert all(r.ok for r in run(ArchiveClipSource(template(loopback), **FAST), rows, layout).values())
    assert [(r.range, r.status) for r in loopback.records(rel)] == [(f"bytes={len(whole)}-", 416)]


def test_redirects_are_followed_and_rechecked_and_retry_after_is_honoured(
    corpus: Corpus, loopback: LoopbackServer, layout: Layout
) -> None:
    archives = serve_archives(loopback, corpus)
    # The mirror answers /resolve/ with a redirect to its CDN: two requests, the second one resumable.
    cdn = loopback.root / "cdn" / "yfcc-batch1.tar.gz"
    cdn.parent.mkdir()
    shutil.copyfile(archives["yfcc-batch1"], cdn)
    loopback.set_fault("archives/yfcc-batch1.tar.gz", "redirect:/cdn/yfcc-batch1.tar.gz", forever=True)
    loopback.set_fault("archives/ia-batch2.tar.gz", "redirect:ftp://127.0.0.1/x.tar.gz")
    loopback.set_fault("cdn/yfcc-batch1.tar.gz", "truncate:0.5", "429:0")
    rows = corpus_rows(corpus)
    results = run(ArchiveClipSource(template(loopback), **FAST), rows, layout)
    for row in rows:
        res = results[row.src]
        if row.folder == "ia-batch2":
            assert (res.ok, res.reason, res.transient) == (False, "archive-redirect-to-bad-scheme: ftp", False)
        else:
            assert res.ok and res.attempts == 6  # 3 x (redirect + GET): cut short, 429, resumed
    cdn_recs = loopback.records("cdn/yfcc-batch1.tar.gz")
    size = cdn.stat().st_size
    assert [(r.range, r.status) for r in cdn_recs] == [(None, 200), (f"bytes={size // 2}-", 429), (f"bytes={size // 2}-", 206)]


def test_a_trickling_archive_is_abandoned_and_its_part_kept(corpus: Corpus, loopback: LoopbackServer, layout: Layout) -> None:
    serve_archives(loopback, corpus)
    loopback.set_fault("archives/yfcc-batch1.tar.gz", Fault.slow(delay_s=0.05, chunk_size=1024))
    rows = [r for r in corpus_rows(corpus) if r.folder == "yfcc-batch1"]
    fast = {**FAST, "timeout_s": 0.3, "min_rate_bytes_s": 1 << 20}
    results = run(ArchiveClipSource(template(loopback), keep_archives=True, **fast), rows, layout)
    assert all(not r.ok and r.transient and r.reason.startswith("archive-too-slow") for r in results.values()), results
    assert loopback.count() == 1
    have = (layout.archives_dir / "yfcc-batch1.tar.gz.part").stat().st_size
    assert have > 0
    # The next run resumes from the .part.
    results = run(ArchiveClipSource(template(loopback), **FAST), rows, layout)
    assert all(r.ok for r in results.values())
    assert [(r.range, r.status) for r in loopback.records()[1:]] == [(f"bytes={have}-", 206)]


# --------------------------------------------------------------------------- failures


def test_archive_404_fails_each_clip_permanently_and_503_transiently(corpus: Corpus, loopback: LoopbackServer, layout: Layout) -> None:
    serve_archives(loopback, corpus)
    (loopback.root / "archives" / "yfcc-batch1.tar.gz").unlink()
    loopback.set_fault("archives/ia-batch2.tar.gz", "503", forever=True)
    rows = corpus_rows(corpus)
    results = run(ArchiveClipSource(template(loopback), max_attempts=2, **FAST), rows, layout)
    for row in rows:
        res = results[row.src]
        if row.folder == "yfcc-batch1":
            assert (res.ok, res.reason, res.transient, res.http_status, res.attempts) == (False, "archive-http-404", False, 404, 1)
        else:
            assert (res.ok, res.reason, res.transient, res.http_status, res.attempts) == (False, "archive-http-503", True, 503, 2)
    assert loopback.count("archives/yfcc-batch1.tar.gz") == 1
    assert not layout.clips_dir.exists() or not list(layout.clips_dir.rglob("*"))


def test_member_missing_from_archive(corpus: Corpus, loopback: LoopbackServer, layout: Layout) -> None:
    serve_archives(loopback, corpus)
    rows = [make_row("yfcc-batch1/725.mp4", 0), make_row("yfcc-batch1/not-there.mp4", 1), make_row("yfcc-batch1/725", 2)]
    results = run(ArchiveClipSource(template(loopback), **FAST), rows, layout)
    assert results["yfcc-batch1/725.mp4"].ok
    for src in ("yfcc-batch1/not-there.mp4", "yfcc-batch1/725"):
        assert (results[src].ok, results[src].reason, results[src].transient) == (False, "missing-from-archive", False)


def _gz(tar_bytes: bytes) -> bytes:
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, data: bytes | None = b"clip bytes", type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o644
    return info, data if type_ in (tarfile.REGTYPE,) else None


def test_hostile_archive_members_are_refused_and_nothing_lands_outside_the_clips_dir(tmp_path: Path, loopback: LoopbackServer) -> None:
    base = tmp_path / "a" / "b"
    layout = Layout.create(base / "work")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"do not touch")
    layout.lsvq_dir.mkdir(parents=True)
    members = [
        _member("hostile/ok.mp4", b"fine bytes"),
        _member("./hostile/dot.mp4", b"dot bytes"),
        _member("/hostile/abs.mp4"),
        _member(str(base / "abs-escape.mp4")),
        _member("../escape.mp4"),
        _member("hostile/../../escape2.mp4"),
        _member("hostile/../hostile/trav.mp4"),
        _member("hostile/sym.mp4", type_=tarfile.SYMTYPE, linkname=str(victim)),
        _member("hostile/relsym.mp4", type_=tarfile.SYMTYPE, linkname="../../../../victim.txt"),
        _member("hostile/hard.mp4", type_=tarfile.LNKTYPE, linkname="hostile/ok.mp4"),
        _member("hostile/chr.mp4", type_=tarfile.CHRTYPE),
        _member("hostile/blk.mp4", type_=tarfile.BLKTYPE),
        _member("hostile/fifo.mp4", type_=tarfile.FIFOTYPE),
        _member("hostile/big.mp4", b"\x01" * 5000),
        _member("hostile/empty.mp4", b""),
        # after a refused member with the same name, a regular one: still refused, nothing written
        _member("hostile/sym2.mp4", type_=tarfile.SYMTYPE, linkname=str(victim)),
        _member("hostile/sym2.mp4", b"innocent"),
    ]
    loopback.put("archives/hostile.tar.gz", _gz(_tar(members)))
    wanted = ["ok", "dot", "abs", "trav", "sym", "relsym", "hard", "chr", "blk", "fifo", "big", "empty", "sym2", "absent"]
    rows = [make_row(f"hostile/{w}.mp4", i) for i, w in enumerate(wanted)]
    before = tree_snapshot(tmp_path, skip=(layout.clips_dir, layout.archives_dir, loopback.root))

    results = run(ArchiveClipSource(template(loopback), max_member_bytes=4096, **FAST), rows, layout)

    got = {w: (results[f"hostile/{w}.mp4"].ok, results[f"hostile/{w}.mp4"].reason) for w in wanted}
    assert got == {
        "ok": (True, None),
        "dot": (True, None),
        "abs": (False, "unsafe-archive-member: absolute-path"),
        "trav": (False, "unsafe-archive-member: path-traversal"),
        "sym": (False, "unsafe-archive-member: symlink"),
        "relsym": (False, "unsafe-archive-member: symlink"),
        "hard": (False, "unsafe-archive-member: hardlink"),
        "chr": (False, "unsafe-archive-member: device"),
        "blk": (False, "unsafe-archive-member: device"),
        "fifo": (False, "unsafe-archive-member: fifo"),
        "big": (False, "unsafe-archive-member: too-large: 5000 bytes > max_member_bytes 4096"),
        "empty": (False, "empty-body"),
        "sym2": (False, "unsafe-archive-member: symlink"),
        "absent": (False, "missing-from-archive"),
    }
    assert not any(r.transient for r in results.values())
    # Only the two good clips were written, as regular files; nothing else anywhere.
    written = sorted(str(p.relative_to(layout.clips_dir)) for p in layout.clips_dir.rglob("*"))
    assert written == ["hostile", "hostile/dot.mp4", "hostile/ok.mp4"]
    assert all(not p.is_symlink() for p in layout.clips_dir.rglob("*"))
    assert (layout.clips_dir / "hostile/ok.mp4").read_bytes() == b"fine bytes"
    assert tree_snapshot(tmp_path, skip=(layout.clips_dir, layout.archives_dir, loopback.root)) == before
    assert victim.read_bytes() == b"do not touch"
    for p in (base / "escape.mp4", base / "work" / "escape.mp4", base / "escape2.mp4", base / "abs-escape.mp4", Path("/hostile")):
        assert not p.exists()


def test_a_header_claiming_a_huge_member_is_refused(loopback: LoopbackServer, layout: Layout) -> None:
    raw = bytearray(_tar([_member("huge/a.mp4", b"a" * 700), _member("huge/b.mp4", b"b" * 10)]))
    # Forge the first header: size 8 GiB - 1 (octal field at 124), fix the checksum (at 148).
    raw[124:136] = b"77777777777\0"
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    loopback.put("archives/huge.tar.gz", _gz(bytes(raw)))
    rows = [make_row("huge/a.mp4", 0), make_row("huge/b.mp4", 1)]
    results = run(ArchiveClipSource(template(loopback), max_member_bytes=1 << 20, **FAST), rows, layout)
    assert results["huge/a.mp4"].reason == f"unsafe-archive-member: too-large: {8**11 - 1} bytes > max_member_bytes {1 << 20}"
    # b is swallowed by the forged size: the tar ends inside "a" (its gzip is fine): permanent.
    assert results["huge/b.mp4"].reason == "bad-archive: ReadError: unexpected end of data"
    assert not any(r.transient or r.ok for r in results.values())
    assert not layout.clips_dir.exists() or not any(p.is_file() for p in layout.clips_dir.rglob("*"))


def test_a_broken_tar_in_a_valid_gzip_keeps_what_came_before_and_fails_the_rest_permanently(
    loopback: LoopbackServer, layout: Layout
) -> None:
    whole = _tar([_member("cut/a.mp4", b"a" * 1000), _member("cut/b.mp4", b"b" * 5000), _member("cut/c.mp4", b"c" * 10)])
    loopback.put("archives/cut.tar.gz", _gz(whole[: 512 + 1024 + 512 + 2048]))  # ends inside b
    loopback.put("archives/junk.tar.gz", _gz(b"\x01" * 4096))  # no tar at all
    rows = [make_row(f"cut/{x}.mp4", i) for i, x in enumerate("abc")] + [make_row("junk/x.mp4", 3)]
    results = run(ArchiveClipSource(template(loopback), **FAST), rows, layout)
    assert results["cut/a.mp4"].ok and layout.clip_path("cut/a.mp4").read_bytes() == b"a" * 1000
    assert results["cut/b.mp4"].reason == results["cut/c.mp4"].reason == "bad-archive: ReadError: unexpected end of data"
    assert results["junk/x.mp4"].reason.startswith("bad-archive: ReadError")
    assert not any(r.transient for r in results.values())
    assert stray_files(layout.clips_dir) == []


@pytest.mark.parametrize("keep_archives", [False, True])
@pytest.mark.parametrize("damage", ["truncated", "bad-crc", "not-gzip"])
def test_corrupt_archive_fails_transiently_writes_nothing_and_is_deleted(
    corpus: Corpus, loopback: LoopbackServer, layout: Layout, damage: str, keep_archives: bool
) -> None:
    archives = serve_archives(loopback, corpus)
    path = archives["yfcc-batch1"]
    data = bytearray(path.read_bytes())
    if damage == "truncated":  # served whole (its Content-Length is the short size), so the download succeeds
        data = data[: len(data) * 3 // 4]
    elif damage == "bad-crc":
        data[-8] ^= 0xFF  # CRC-32 in the trailer: only seen once every member was read
    else:
        data = bytearray(b"<html>not an archive</html>" * 20)
    path.write_bytes(bytes(data))
    rows = [r for r in corpus_rows(corpus) if r.folder == "yfcc-batch1"]
    results = run(ArchiveClipSource(template(loopback), keep_archives=keep_archives, **FAST), rows, layout)
    assert all(not r.ok and r.transient and r.reason.startswith("archive-corrupt") for r in results.values()), results
    assert not (layout.archives_dir / "yfcc-batch1.tar.gz").exists()
    assert layout.archives_dir.exists() == keep_archives  # downloaded, then deleted; or never on disk
    assert not layout.clips_dir.exists() or not any(p.is_file() for p in layout.clips_dir.rglob("*"))


def test_gunzip_reads_concatenated_members_and_zero_padding_and_bounds_memory(tmp_path: Path) -> None:
    data = gzip.compress(b"abc" * 1000) + gzip.compress(b"def") + b"\0" * 1000
    gz = Gunzip(io.BytesIO(data), in_chunk=7, out_max=64)
    out = b""
    while chunk := gz.read(100):
        assert len(chunk) <= 64
        out += chunk
    assert out == b"abc" * 1000 + b"def"
    with pytest.raises(CorruptArchive):
        g = Gunzip(io.BytesIO(gzip.compress(b"x" * 100) + b"junk"))
        while g.read(1000):
            pass


def test_memory_does_not_grow_with_member_size(loopback: LoopbackServer, layout: Layout) -> None:
    size = 48 << 20  # 48 MiB of zeros: a ~50 KiB archive that inflates 1000x
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    info = tarfile.TarInfo("bomb/zeros.mp4")
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    chunk = b"\0" * (1 << 20)
    parts = [comp.compress(header)]
    for _ in range(size // len(chunk)):
        parts.append(comp.compress(chunk))
    parts.append(comp.compress(b"\0" * 1024))  # end-of-archive blocks
    parts.append(comp.flush())
    loopback.put("archives/bomb.tar.gz", b"".join(parts))
    tracemalloc.start()
    try:
        results = run(ArchiveClipSource(template(loopback), **FAST), [make_row("bomb/zeros.mp4")], layout)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    res = results["bomb/zeros.mp4"]
    assert res.ok and res.size == size
    assert res.sha256 == hashlib.sha256(b"\0" * size).hexdigest()
    print(f"peak {peak / 2**20:.2f} MiB")
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- the three sources, end to end


def test_url_archive_and_local_sources_write_the_same_shard(tmp_path: Path, corpus: Corpus) -> None:
    root = tmp_path / "served"
    shutil.copytree(corpus.root, root)
    local_dir = tmp_path / "extracted"
    shutil.copytree(corpus.root, local_dir)
    with LoopbackServer(root) as server:
        for folder in sorted({c.src.split("/")[0] for c in corpus.clips}):
            folder_archive(corpus.root, folder, root / "archives" / f"{folder}.tar.gz")
        runs = {
            "url": (),
            "archive": ("--source", "archive", "--archive-url-template", template(server)),
            "local": ("--source", "local", "--local-clips", str(local_dir)),
        }
        shards, stats = {}, {}
        for kind, extra in runs.items():
            work = tmp_path / f"work-{kind}"
            server.reset_log()
            proc = run_cli(work, corpus, server, "--full", *extra)
            assert proc.returncode == 0, f"{kind}: {proc.stderr}"
            assert "Traceback" not in proc.stderr
            requested = sorted({r.path for r in server.requests})
            if kind == "url":
                assert requested and not any(p.startswith("archives/") for p in requested)
            elif kind == "archive":
                assert requested == ["archives/ia-batch2.tar.gz", "archives/yfcc-batch1.tar.gz"]
                assert server.count() == 2
                assert not list((work / "archives").glob("*.tar.gz*"))  # deleted after success
            else:
                assert server.count() == 0
            rows = [json.loads(line) for line in (work / "lsvq.jsonl").read_text().splitlines()]
            for row in rows:
                assert row.pop("ingested_at_utc")
            shards[kind] = rows
            stats[kind] = json.loads((work / "lsvq.manifest.json").read_text())["stats"]
    assert len(shards["url"]) == len(corpus.by_kind("ok"))
    assert shards["archive"] == shards["url"]
    assert shards["local"] == shards["url"]
    assert stats["archive"] == stats["local"] == stats["url"]
    # The local run hard-linked (same file system): no bytes copied.
    clip = corpus.by_kind("ok")[0]
    assert os.path.samefile(tmp_path / "work-local" / "clips" / clip.src, local_dir / clip.src)
