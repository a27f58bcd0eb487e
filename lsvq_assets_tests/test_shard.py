"""lsvq_rows_<split> and lsvq_shard_<split> through real materialisations; the shard's checks pass,
warn and fail; a failed shard publishes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from lsvq_assets.assets.clips import lsvq_clips
from lsvq_assets.assets.manifest import manifest_asset
from lsvq_assets.assets.probes import lsvq_probes
from lsvq_assets.assets.rows import BROKEN, DOWNLOAD_FAILED, WRITTEN, rows_asset
from lsvq_assets.assets.shard import shard_asset
from lsvq_assets.checks import (
    ACCOUNTING_CHECK,
    ATTRITION_CHECK,
    MOS_SCALE_CHECK,
    SCHEMA_CHECK,
    accounting_check,
    leaked,
    mos_scale_check,
    schema_check,
    schema_problems,
)
from lsvq_assets.core.rows import assemble, build_row, line_problems, row_line
from lsvq_assets.core.tables import ROWS_SCHEMA, read_table, write_table
from lsvq_assets.partitions import register_partitions
from lsvq_assets.resources import build_resources
from lsvq_assets_tests.corpus import Corpus

MANIFEST_ROW = {"src": "f/a.mp4", "mos": 76.84375, "mos_std_dev": 0.0, "n_ratings": 0}
CLIP = {"sha256": "ab" * 32, "size": 1234, "ingested_at_utc": "2026-11-21T07:00:00+00:00"}
PROBE = {"width": 1920, "height": 1080, "framerate": 29.97002997002997, "duration_s": 8.0, "pix_fmt": "yuv420p", "encoder_upstream": "h264"}

PARTITION_ASSETS = [manifest_asset(["train"]), lsvq_clips, lsvq_probes, rows_asset(["train"])]
SHARD = shard_asset("train")
SHARD_KEY = dg.AssetKey("lsvq_shard_train")


# --- rows, lines and the checks as functions -------------------------------------------------


def test_row_bytes_are_the_seeds() -> None:
    row = build_row(MANIFEST_ROW, CLIP, PROBE, "lsvq-2021")
    line = row_line(row)
    assert line == json.dumps(row, sort_keys=True)
    assert len(row) == 15 and line_problems(line) == []
    assert row["mos"] == 76.84375 and row["corpus"] == "lsvq" and row["src"] == "f/a.mp4"


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda r: r.pop("mos"), "keys"),
        (lambda r: r.update(extra=1), "keys"),
        (lambda r: r.update(width="1920"), "width"),
        (lambda r: r.update(n_ratings=True), "n_ratings"),
        (lambda r: r.update(mos=float("nan")), "mos is not finite"),
    ],
)
def test_line_problems_find_schema_errors(mutate, problem: str) -> None:
    row = build_row(MANIFEST_ROW, CLIP, PROBE, "lsvq-2021")
    mutate(row)
    assert any(problem in p for p in line_problems(json.dumps(row, sort_keys=True)))


def test_unsorted_keys_fail_the_schema_check() -> None:
    row = build_row(MANIFEST_ROW, CLIP, PROBE, "lsvq-2021")
    assert "bytes differ" in line_problems(json.dumps(row))[0]
    bad = schema_problems([row_line(row), json.dumps(row), "not json"])
    assert [b["line"] for b in bad] == [2, 3]
    check = schema_check(3, bad)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["invalid_lines"].value == 2


def test_assemble_orders_by_manifest_and_keeps_the_first_duplicate() -> None:
    a = row_line(build_row({**MANIFEST_ROW, "src": "a.mp4"}, CLIP, PROBE, "v"))
    b = row_line(build_row({**MANIFEST_ROW, "src": "b.mp4"}, {**CLIP, "sha256": "cd" * 32}, PROBE, "v"))
    dup = row_line(build_row({**MANIFEST_ROW, "src": "c.mp4"}, CLIP, PROBE, "v"))
    out = assemble([(2, dup), (1, b), (0, a)])
    assert out.lines == [a, b] and out.dedups == 1 and out.duplicates == [("c.mp4", "a.mp4")]
    assert schema_problems(out.lines) == []
    assert [p["problems"] for p in schema_problems([a, a])] == [f"duplicate src_sha256 {'ab' * 32}"]


def test_accounting_check() -> None:
    stats = {"written": 5, "skipped_download": 1, "skipped_broken": 1, "dedups": 1}
    ok = accounting_check(stats, 8, {})
    assert ok.passed
    waiting = accounting_check(stats, 11, {"ia-batch2": 2, "0003": 1})
    assert not waiting.passed and waiting.severity == dg.AssetCheckSeverity.WARN
    assert "3 in 2 partitions not materialised yet" in waiting.description
    assert "| ia-batch2 | 2 |" in waiting.metadata["pending_partitions"].value
    wrong = accounting_check(stats, 9, {})
    assert not wrong.passed and wrong.severity == dg.AssetCheckSeverity.ERROR
    assert not accounting_check(stats, 10, {"x": 1}).passed  # counts that do not add up stay an ERROR
    assert accounting_check(stats, 10, {"x": 1}).severity == dg.AssetCheckSeverity.ERROR


@pytest.mark.parametrize(
    ("low", "high", "passed"), [(0.0, 100.0, True), (12.25, 76.8, True), (None, None, True), (-0.5, 50.0, False), (1.0, 100.5, False)]
)
def test_mos_scale_check(low, high, passed: bool) -> None:
    check = mos_scale_check({"min": low, "max": high})
    assert check.passed is passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["mos_scale"].value == "0-100"


def test_leaked_names_each_clip_in_every_split() -> None:
    shards = {"train": {"s1": "a/1.mp4", "s2": "a/2.mp4"}, "test": {"s2": "b/2.mp4", "s3": "b/3.mp4"}, "test_1080p": {"s2": "c/2.mp4"}}
    assert leaked("train", shards) == [{"src_sha256": "s2", "train": "a/2.mp4", "test": "b/2.mp4", "test_1080p": "c/2.mp4"}]
    assert leaked("test", {"train": shards["train"], "test": {"s3": "b/3.mp4"}}) == []


# --- real materialisations --------------------------------------------------------------------


@pytest.fixture
def labels(tmp_path: Path, corpus: Corpus) -> Path:
    """A copy of the corpus' CSV the test may edit (the corpus is shared by the session)."""
    path = tmp_path / "LSVQ_whole_train.csv"
    shutil.copyfile(corpus.csv, path)
    return path


def _resources(work: Path, labels: Path, server) -> dict:
    return build_resources(
        {
            "lsvq": {"lsvq_dir": str(work), "manifest_csv": str(labels), "min_csv_rows": 1, "max_rows": 0},
            "clip_source": {"clip_url_template": server.base_url + "/{name}{suffix}", "concurrency": 4},
            "prober": {},
        },
        environ={},
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _partition(instance: dg.DagsterInstance, key: str, resources: dict) -> dg.ExecuteInProcessResult:
    result = dg.materialize(PARTITION_ASSETS, instance=instance, partition_key=key, resources=resources)
    assert result.success
    return result


def _shard(instance: dg.DagsterInstance, resources: dict, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([SHARD], instance=instance, resources=resources, **kwargs)


def _latest_shard(instance: dg.DagsterInstance) -> dg.EventLogEntry:
    event = instance.get_latest_materialization_event(SHARD_KEY)
    assert event is not None
    return event


def test_shard_on_a_temporary_instance(tmp_path: Path, corpus: Corpus, labels: Path, served) -> None:
    work = tmp_path / "work"
    resources = _resources(work, labels, served)
    out, replay_path = work / "lsvq.jsonl", work / "lsvq.manifest.json"
    with dg.instance_for_test() as instance:
        register_partitions(instance, ["yfcc-batch1", "ia-batch2"])
        _partition(instance, "yfcc-batch1", resources)
        rows = read_table(work / "partitions" / "yfcc-batch1" / "rows_train.parquet")
        assert [(r["src"], r["outcome"]) for r in rows] == [(c.src, WRITTEN) for c in corpus.clips[:4]]

        # One partition in: the shard is written, the other partition's rows are pending (a WARN naming it).
        partial = _shard(instance, resources)
        checks = _checks(partial)
        assert checks[SCHEMA_CHECK].passed
        accounting = checks[ACCOUNTING_CHECK]
        assert not accounting.passed and accounting.severity == dg.AssetCheckSeverity.WARN
        assert "4 in 1 partitions not materialised yet" in accounting.description
        assert "| ia-batch2 | 4 |" in accounting.metadata["pending_partitions"].value
        assert len(out.read_text().splitlines()) == 4
        assert _latest_shard(instance).asset_materialization.metadata["pending_rows"].value == 4

        _partition(instance, "ia-batch2", resources)
        rows = read_table(work / "partitions" / "ia-batch2" / "rows_train.parquet")
        assert [r["outcome"] for r in rows] == [WRITTEN, BROKEN, DOWNLOAD_FAILED, WRITTEN]  # alpha, broken, gone, copy_of_725
        whole = _shard(instance, resources)
        checks = _checks(whole)
        assert checks[SCHEMA_CHECK].passed and checks[ACCOUNTING_CHECK].passed and checks[MOS_SCALE_CHECK].passed
        assert not checks[ATTRITION_CHECK].passed  # 1 of 8 failed to download: 12.5 % > 10 %
        assert checks[ATTRITION_CHECK].severity == dg.AssetCheckSeverity.WARN
        shard, replay_bytes = out.read_bytes(), replay_path.read_bytes()
        mat = _latest_shard(instance).asset_materialization
        assert mat.metadata["dagster/row_count"].value == 5
        assert mat.metadata["dagster/uri"].value == str(out)
        assert [json.loads(line)["src"] for line in shard.decode().splitlines()] == [c.src for c in corpus.by_kind("ok")]

        # The replay manifest: the split, LSVQ's MOS scale and the range observed, as published.
        replay = json.loads(replay_bytes)
        assert replay_bytes == (json.dumps(replay, sort_keys=True, indent=2) + "\n").encode()
        assert replay == mat.metadata["replay_manifest"].value
        assert replay["schema"] == "lsvq-corpus-jsonl-manifest-v1" and replay["corpus"] == "lsvq"
        assert replay["split"] == "train" and replay["config"]["split"] == "train"
        assert replay["mos_scale"] == "0-100"
        ok_mos = [c.mos for c in corpus.by_kind("ok")]
        assert replay["mos_range"] == {"min": min(ok_mos), "max": max(ok_mos)} == {"min": 12.25, "max": 76.84375}
        assert replay["stats"] == {"written": 5, "skipped_download": 1, "skipped_broken": 1, "dedups": 1, "attrition_pct": 12.5}
        assert replay["dagster"]["partition_keys"] == ["yfcc-batch1", "ia-batch2"]
        assert replay["dagster"]["run_id"] == whole.run_id

        # A partition again: nothing fetched, nothing probed again (same sha256 -> cached probe).
        rerun = _partition(instance, "yfcc-batch1", resources)
        meta = {e.materialization.asset_key.path[-1]: e.materialization.metadata for e in rerun.get_asset_materialization_events()}
        assert (meta["lsvq_clips"]["downloaded"].value, meta["lsvq_clips"]["cached"].value) == (0, 4)
        assert (meta["lsvq_probes"]["probed"].value, meta["lsvq_probes"]["cached"].value) == (0, 4)

        # Assembling again without new work: byte-identical, same data version.
        again = _shard(instance, resources)
        assert out.read_bytes() == shard
        version = lambda r: r.asset_materializations_for_node("lsvq_shard_train")[0].tags["dagster/data_version"]  # noqa: E731
        assert version(again) == version(whole)

        # A label edited after its partition ran: that row is pending until the partition runs again.
        text = labels.read_text()
        assert "ia-batch2/alpha,48,64,12.25," in text
        labels.write_text(text.replace("ia-batch2/alpha,48,64,12.25,", "ia-batch2/alpha,48,64,13.5,"))
        stale = _shard(instance, resources)
        accounting = _checks(stale)[ACCOUNTING_CHECK]
        assert not accounting.passed and accounting.severity == dg.AssetCheckSeverity.WARN
        assert "| ia-batch2 | 1 |" in accounting.metadata["pending_partitions"].value
        assert "ia-batch2/alpha.mp4" not in out.read_text()
        _partition(instance, "ia-batch2", resources)
        fixed = _shard(instance, resources)
        assert _checks(fixed)[ACCOUNTING_CHECK].passed
        assert json.loads(out.read_text().splitlines()[4])["mos"] == 13.5


def _corrupt(path: Path, how: str) -> None:
    """Rewrite one written row of a partition's rows table so that its shard line breaks the schema."""
    rows = read_table(path)
    i = next(i for i, r in enumerate(rows) if r["outcome"] == WRITTEN)
    row = json.loads(rows[i]["line"])
    if how == "bad-type":
        row["width"] = "x"
        rows[i]["line"] = json.dumps(row, sort_keys=True)
    elif how == "extra-key":
        row["w"] = 1
        rows[i]["line"] = json.dumps(row, sort_keys=True)
    elif how == "unsorted":
        rows[i]["line"] = json.dumps(dict(reversed(list(row.items()))))
    elif how == "not-json":
        rows[i]["line"] = rows[i]["line"][:-1]
    write_table(path, rows, ROWS_SCHEMA)


@pytest.mark.parametrize("how", ["bad-type", "extra-key", "unsorted", "not-json"])
def test_corrupted_partition_output_fails_the_shard_and_publishes_nothing(tmp_path: Path, labels: Path, served, how: str) -> None:
    work = tmp_path / "work"
    resources = _resources(work, labels, served)
    out, replay_path = work / "lsvq.jsonl", work / "lsvq.manifest.json"
    with dg.instance_for_test() as instance:
        register_partitions(instance, ["yfcc-batch1", "ia-batch2"])
        _partition(instance, "yfcc-batch1", resources)
        _partition(instance, "ia-batch2", resources)
        good = _shard(instance, resources)
        assert good.success
        before = (out.read_bytes(), replay_path.read_bytes())
        published = _latest_shard(instance)

        _corrupt(work / "partitions" / "ia-batch2" / "rows_train.parquet", how)
        bad = _shard(instance, resources, raise_on_error=False)
        assert not bad.success

        # The previous shard and replay manifest stay, byte for byte, and no staged file is left.
        assert (out.read_bytes(), replay_path.read_bytes()) == before
        assert sorted(p.name for p in work.iterdir() if p.name.startswith(".lsvq")) == []
        assert _latest_shard(instance).run_id == published.run_id == good.run_id

        # And the operator reads why, and what to do (not a traceback).
        [failure] = bad.get_step_failure_events()
        user = failure.step_failure_data.user_failure_data
        assert user is not None, failure.step_failure_data.error.message
        assert "1 of 5 lines of the train shard break the schema" in user.description
        if how == "not-json":
            assert "not JSON" in user.description
        assert "nothing was published" in user.description
