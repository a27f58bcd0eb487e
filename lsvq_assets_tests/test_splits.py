"""Several splits from one deployment: shared folder partitions, one archive request per folder,
one shard per split, leakage across splits, and outputs that are the truth (DESIGN §1, §2, §6)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import dagster as dg
import pytest

from lsvq_assets.cli import main
from lsvq_assets.core.rows import ROW_KEYS
from lsvq_assets.core.tables import ROWS_SCHEMA, read_table, write_table
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.loopback import LoopbackServer

TRAIN = ["yfcc-batch1/725", "yfcc-batch1/St._Charles_Bridge", "ia-batch2/alpha", "ia-batch2/gone", "ia-batch2/broken"]
TEST = ["yfcc-batch1/From_a_purple_vortex...", "ia-batch2/copy_of_725"]  # copy_of_725: the same bytes as train's 725
EXTRA = ["yfcc-batch1/clip.mp4"]


def labels(path: Path, corpus: Corpus, names: list[str]) -> Path:
    """A FAST-VQA/DOVER labels file (``<folder>/<stem>.mp4, -1, -1, <mos>``) for these corpus clips."""
    mos = {c.name: c.mos for c in corpus.clips}
    path.write_text("".join(f"{n}.mp4, -1, -1, {mos[n]}\n" for n in names))
    return path


@pytest.fixture
def mirror(corpus: Corpus, tmp_path: Path):
    """A loopback mirror serving one ``<folder>.tar.gz`` per corpus folder (every member, as the real one)."""
    root = tmp_path / "mirror"
    for folder in sorted({c.src.split("/")[0] for c in corpus.clips}):
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / f"{folder}.tar.gz", "w:gz") as tar:
            tar.add(corpus.root / folder, arcname=folder)
    with LoopbackServer(root) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in [v for v in os.environ if v.startswith("LSVQ_") or v in ("DAGSTER_HOME", "HF_TOKEN")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def cli(work: Path, *args: str) -> int:
    return main(["--lsvq-dir", str(work), "--min-csv-rows", "1", "--log-level", "WARNING", *args])


def srcs(path: Path) -> list[str]:
    return [json.loads(line)["src"] for line in path.read_text().splitlines()]


def test_three_splits_share_partitions_one_request_per_archive_and_leakage_is_named(
    corpus: Corpus, mirror: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    train = labels(tmp_path / "train_labels.txt", corpus, TRAIN)
    test = labels(tmp_path / "labels_test.txt", corpus, TEST)
    args = ["--split", f"train={train}", "--split", f"test={test}", "--output-dir", str(out), "--full",
            "--source", "archive", "--archive-url-template", mirror.base_url + "/{folder}.tar.gz"]
    assert cli(work, *args) == 0
    stdout, stderr = capsys.readouterr()

    # One request per folder archive for both splits, every member either needs extracted in that pass.
    assert sorted(r.path for r in mirror.requests) == ["ia-batch2.tar.gz", "yfcc-batch1.tar.gz"]
    assert srcs(out / "lsvq_train.jsonl") == ["yfcc-batch1/725.mp4", "yfcc-batch1/St._Charles_Bridge.mp4", "ia-batch2/alpha.mp4"]
    assert srcs(out / "lsvq_test.jsonl") == ["yfcc-batch1/From_a_purple_vortex....mp4", "ia-batch2/copy_of_725.mp4"]
    assert f"wrote 3 rows, skipped 1 (download-failed), 1 (broken-clip), 0 dedups -> {out / 'lsvq_train.jsonl'}" in stdout
    assert f"wrote 2 rows, skipped 0 (download-failed), 0 (broken-clip), 0 dedups -> {out / 'lsvq_test.jsonl'}" in stdout
    for split in ("train", "test"):
        replay = json.loads((out / f"lsvq_{split}.manifest.json").read_text())
        assert replay["split"] == split and replay["mos_scale"] == "0-100"
    # The planted clip is named in both splits, after the summary lines.
    leak = [line for line in stderr.splitlines() if line.startswith("leakage:")]
    assert leak and all("train: yfcc-batch1/725.mp4" in line and "test: ia-batch2/copy_of_725.mp4" in line for line in leak)
    instance = dg.DagsterInstance.from_config(str(work / ".dagster"))
    for split in ("train", "test"):
        record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(dg.AssetKey(f"lsvq_shard_{split}"), "no_clip_in_two_splits"))
        assert record is not None and record.event.asset_check_evaluation.passed is False
        assert record.event.asset_check_evaluation.severity == dg.AssetCheckSeverity.ERROR

    # A third split added later: only the partition whose content changed runs, and only its new
    # member is fetched (the archive was deleted after success, so it is requested again); the
    # train shard keeps its bytes.
    before = (out / "lsvq_train.jsonl").read_bytes()
    extra = labels(tmp_path / "labels_1080p.txt", corpus, EXTRA)
    mirror.reset_log()
    assert cli(work, *args, "--split", f"test_1080p={extra}", "--log-level", "INFO") == 0
    _, stderr = capsys.readouterr()
    assert [r.path for r in mirror.requests] == ["yfcc-batch1.tar.gz"]
    assert "1 of 2 partitions are current" in stderr
    assert srcs(out / "lsvq_test_1080p.jsonl") == ["yfcc-batch1/clip.mp4.mp4"]
    assert (out / "lsvq_train.jsonl").read_bytes() == before


def test_the_cap_selects_partitions_and_never_changes_what_they_hold(corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = labels(tmp_path / "train_labels.txt", corpus, TRAIN)
    test = labels(tmp_path / "labels_test.txt", corpus, TEST)
    base = ["--split", f"train={train}", "--split", f"test={test}", "--dry-run"]
    assert cli(tmp_path / "w", *base, "--max-rows", "1") == 0
    capped = json.loads(capsys.readouterr().out)
    assert cli(tmp_path / "w", *base, "--full") == 0
    full = json.loads(capsys.readouterr().out)
    assert capped["splits"] == {"train": {"rows": 1, "partitions": 1}, "test": {"rows": 1, "partitions": 1}}
    assert capped["slices"] == {"yfcc-batch1": 3}  # both splits' first rows live there; it holds all 3 of its rows
    assert all(full["slices"][k] == n for k, n in capped["slices"].items())
    assert full["slices"] == {"yfcc-batch1": 3, "ia-batch2": 4}


def test_split_errors_are_one_line_naming_the_split_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(tmp_path / "w", "--split", "Train=x.txt", "--dry-run") == 2
    assert "split name 'Train'" in capsys.readouterr().err
    missing = tmp_path / "nope.txt"
    assert cli(tmp_path / "w", "--split", f"test={missing}", "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: split test:") and str(missing) in err and "\n" not in err
    good = tmp_path / "a.txt"
    good.write_text("f/a.mp4, -1, -1, 50\n")
    assert cli(tmp_path / "w", "--split", f"train={good}", "--split", f"test={good}", "--output", str(tmp_path / "o.jsonl"), "--dry-run") == 2
    assert "--output-dir" in capsys.readouterr().err


def test_deleting_the_fetch_store_changes_no_byte_of_any_shard(corpus: Corpus, served, tmp_path: Path) -> None:
    work = tmp_path / "work"
    args = ["--manifest-csv", str(corpus.csv), "--full", "--clip-url-template", served.base_url + "/{name}{suffix}"]
    assert cli(work, *args) == 0
    shard, replay = (work / "lsvq.jsonl").read_bytes(), json.loads((work / "lsvq.manifest.json").read_text())
    states = list(work.glob("partitions/*/fetch-state.json"))
    assert len(states) == 2
    for state in states:
        state.unlink()
    served.reset_log()
    # --verify runs every partition again (re-hashing what is on disk) with no store at all.
    assert cli(work, *args, "--verify") == 0
    assert served.count() == 0  # the outcome tables say what is done and what failed permanently
    assert (work / "lsvq.jsonl").read_bytes() == shard
    assert json.loads((work / "lsvq.manifest.json").read_text())["stats"] == replay["stats"]


def test_a_clip_known_to_be_bad_is_never_adopted(corpus: Corpus, served, tmp_path: Path) -> None:
    """--verify finds changed bytes, the re-fetch fails (503): the bad file is gone, never in a shard."""
    work = tmp_path / "work"
    args = ["--manifest-csv", str(corpus.csv), "--full", "--clip-url-template", served.base_url + "/{name}{suffix}", "--max-attempts", "1"]
    assert cli(work, *args) == 0
    good = json.loads((work / "lsvq.jsonl").read_text().splitlines()[0])
    clip = work / "clips" / good["src"]
    bad = b"\0" * clip.stat().st_size  # same size, other bytes
    clip.write_bytes(bad)
    bad_sha = hashlib.sha256(bad).hexdigest()
    served.set_fault(good["src"], "503", forever=True)
    assert cli(work, *args, "--verify") == 1
    assert not clip.exists()
    shas = lambda: {json.loads(line)["src_sha256"] for line in (work / "lsvq.jsonl").read_text().splitlines()}  # noqa: E731
    assert bad_sha not in shas()  # the shard never holds the corrupt bytes
    assert cli(work, *args) == 1  # still 503: nothing on disk to adopt
    assert not clip.exists() and bad_sha not in shas()
    served.set_fault(good["src"])
    assert cli(work, *args) == 0
    again = json.loads((work / "lsvq.jsonl").read_text().splitlines()[0])
    assert again["src"] == good["src"] and again["src_sha256"] == good["src_sha256"]


def test_a_corrupt_partition_output_is_never_published(corpus: Corpus, served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    args = ["--manifest-csv", str(corpus.csv), "--full", "--clip-url-template", served.base_url + "/{name}{suffix}"]
    assert cli(work, *args) == 0
    shard, replay = (work / "lsvq.jsonl").read_bytes(), (work / "lsvq.manifest.json").read_bytes()
    part = work / "partitions" / "yfcc-batch1" / "rows_train.parquet"
    rows = read_table(part)
    row = json.loads(rows[0]["line"])
    del row["width"]
    rows[0]["line"] = json.dumps(row, sort_keys=True)
    write_table(part, rows, ROWS_SCHEMA)
    capsys.readouterr()
    assert cli(work, *args) == 1
    err = capsys.readouterr().err
    assert "break the schema" in err and "nothing was published" in err and "Traceback" not in err
    assert (work / "lsvq.jsonl").read_bytes() == shard
    assert (work / "lsvq.manifest.json").read_bytes() == replay
    assert len(ROW_KEYS) == 15


def test_old_working_directory_keeps_its_clips(corpus: Corpus, served, tmp_path: Path) -> None:
    """A directory from before (clips under clips/, a slices/ tree, an old SQLite store) fetches
    nothing already on disk: the clips are verified by hashing; only the permanent failure, which
    the old store knew, is asked once more."""
    work = tmp_path / "work"
    args = ["--manifest-csv", str(corpus.csv), "--full", "--clip-url-template", served.base_url + "/{name}{suffix}"]
    assert cli(work, *args) == 0
    shard = (work / "lsvq.jsonl").read_text().splitlines()
    shutil.rmtree(work / "partitions")  # only the clips remain, as in a directory of the previous version
    (work / "slices" / "yfcc-batch1~2").mkdir(parents=True)
    (work / "clip-state.sqlite3").write_bytes(b"SQLite format 3\0")
    served.reset_log()
    assert cli(work, *args) == 0
    assert [r.path for r in served.requests] == ["ia-batch2/gone.mp4"]
    again = (work / "lsvq.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "ingested_at_utc"} for x in lines]  # noqa: E731
    assert strip(again) == strip(shard)


def test_two_clis_on_different_partitions_at_once_then_a_third_assembles(corpus: Corpus, served, tmp_path: Path) -> None:
    """Hosts split the work by hand: each CLI runs its --partition keys (no directory lock between
    them), the shards are assembled from every partition materialised so far; no clip twice."""
    import subprocess
    import sys

    from lsvq_assets_tests.harness import cli_args, cli_env

    work = tmp_path / "work"
    (work / ".dagster").mkdir(parents=True)
    dg.DagsterInstance.from_config(str(work / ".dagster")).dispose()  # the shared instance exists before the hosts start
    base = cli_args(work, corpus.csv, served.base_url)
    procs = [
        subprocess.Popen([sys.executable, "-m", "lsvq_assets", *base, "--partition", key], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key in ("yfcc-batch1", "ia-batch2")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    counts = {}
    for r in served.requests:
        counts[r.path] = counts.get(r.path, 0) + 1
    assert counts and max(counts.values()) == 1  # every clip requested once
    served.reset_log()
    assert cli(work, "--manifest-csv", str(corpus.csv), "--full", "--clip-url-template", served.base_url + "/{name}{suffix}") == 0
    assert served.count() == 0
    assert srcs(work / "lsvq.jsonl") == [c.src for c in corpus.by_kind("ok")]
