"""The local-directory source: hard links on the same file system, copies otherwise, no network."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

import lsvq_assets.sources.local as local_mod
from lsvq_assets.core.errors import UserError
from lsvq_assets.core.layout import Layout
from lsvq_assets.resources import ClipSourceResource
from lsvq_assets.sources.base import ClipResult
from lsvq_assets.sources.local import LocalClipSource
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.test_sources_archive import corpus_rows, make_row, stray_files


def run(source: LocalClipSource, rows, layout: Layout) -> dict[str, ClipResult]:
    results: dict[str, ClipResult] = {}

    def on_result(res: ClipResult) -> None:
        assert res.src not in results
        results[res.src] = res

    source.fetch(rows, layout, on_result)
    source.close()
    assert set(results) == {r.src for r in rows}
    return results


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.create(tmp_path / "work")


def check_corpus_results(corpus: Corpus, results: dict[str, ClipResult], layout: Layout) -> None:
    for clip in corpus.clips:
        res = results[clip.src]
        if clip.kind == "missing":
            assert (res.ok, res.reason, res.transient) == (False, "missing-from-local-dir", False)
            continue
        data = (corpus.root / clip.src).read_bytes()
        assert res.ok, res
        assert (res.sha256, res.size) == (hashlib.sha256(data).hexdigest(), len(data))
        assert layout.clip_path(clip.src).read_bytes() == data
    assert stray_files(layout.clips_dir) == []


def test_same_file_system_hard_links(corpus: Corpus, layout: Layout) -> None:
    results = run(LocalClipSource(corpus.root), corpus_rows(corpus), layout)
    check_corpus_results(corpus, results, layout)
    for clip in corpus.by_kind("ok"):
        assert os.stat(layout.clip_path(clip.src)).st_ino == os.stat(corpus.root / clip.src).st_ino

    # Once more (e.g. --verify found a mismatch in the store): already the same inode, still fine.
    results = run(LocalClipSource(corpus.root), corpus_rows(corpus)[:1], layout)
    assert next(iter(results.values())).ok


@pytest.mark.parametrize("how", ["flag", "cross-device"])
def test_copy_when_hard_links_are_off_or_impossible(corpus: Corpus, layout: Layout, monkeypatch, how: str) -> None:
    if how == "flag":
        source = LocalClipSource(corpus.root, hardlink=False)
    else:
        def no_link(src, dst, **kw):  # noqa: ANN001
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(local_mod.os, "link", no_link)
        source = LocalClipSource(corpus.root)
    results = run(source, corpus_rows(corpus), layout)
    check_corpus_results(corpus, results, layout)
    for clip in corpus.by_kind("ok"):
        dest = layout.clip_path(clip.src)
        assert os.stat(dest).st_ino != os.stat(corpus.root / clip.src).st_ino
        assert os.stat(dest).st_mode & 0o777 == 0o644


def test_missing_local_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nowhere.*--local-clips.*LSVQ_LOCAL_CLIPS"):
        LocalClipSource(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        LocalClipSource(tmp_path / "file")
    with pytest.raises(UserError, match="--local-clips"):
        ClipSourceResource(source="local").open(label_files_have_urls=False)
    assert isinstance(ClipSourceResource(source="local", local_clips=str(tmp_path)).open(False), LocalClipSource)


def test_bad_entries_fail_permanently_and_nothing_escapes(tmp_path: Path, layout: Layout) -> None:
    root = tmp_path / "local"
    (root / "f").mkdir(parents=True)
    (root / "f" / "ok.mp4").write_bytes(b"ok bytes")
    (root / "f" / "empty.mp4").write_bytes(b"")
    (root / "f" / "dir.mp4").mkdir()
    os.mkfifo(root / "f" / "fifo.mp4")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"secret")
    (root / "f" / "escape.mp4").symlink_to(outside)
    (root / "f" / "inside.mp4").symlink_to(root / "f" / "ok.mp4")
    (root / "f" / "loop.mp4").symlink_to(root / "f" / "loop.mp4")
    names = ["ok", "empty", "dir", "fifo", "escape", "inside", "loop", "absent"]
    rows = [make_row(f"f/{n}.mp4", i) for i, n in enumerate(names)]
    results = run(LocalClipSource(root), rows, layout)
    got = {n: (results[f"f/{n}.mp4"].ok, results[f"f/{n}.mp4"].reason, results[f"f/{n}.mp4"].transient) for n in names}
    assert got == {
        "ok": (True, None, False),
        "empty": (False, "empty-body", False),
        "dir": (False, "not-a-regular-file", False),
        "fifo": (False, "not-a-regular-file", False),
        "escape": (False, "outside-local-dir", False),
        "inside": (True, None, False),
        "loop": (False, "not-a-regular-file: symlink loop", False),
        "absent": (False, "missing-from-local-dir", False),
    }
    assert sorted(p.name for p in (layout.clips_dir / "f").iterdir()) == ["inside.mp4", "ok.mp4"]
    assert (layout.clips_dir / "f" / "inside.mp4").read_bytes() == b"ok bytes"
    assert not (layout.clips_dir / "f" / "inside.mp4").is_symlink()


def test_rows_outside_the_clips_dir_are_refused(tmp_path: Path, layout: Layout) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "x.mp4").write_bytes(b"x")
    results = run(LocalClipSource(tmp_path / "local"), [make_row("../x.mp4")], layout)
    assert results["../x.mp4"].reason in ("outside-clips-dir", "outside-local-dir")
    assert not layout.lsvq_dir.exists() or not any(layout.lsvq_dir.rglob("x.mp4"))
