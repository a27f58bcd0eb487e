"""lsvq_shard_rows and lsvq_shard through real materialisations; the shard's checks pass and fail."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from lsvq_assets.checks import ACCOUNTING_CHECK, ATTRITION_CHECK, SCHEMA_CHECK, accounting_check, schema_check
from lsvq_assets.core.rows import assemble, build_row, line_problems, row_line
from lsvq_assets.definitions import SLICE_ASSETS, build_resources, lsvq_shard
from lsvq_assets.partitions import register_slices
from lsvq_assets_tests.corpus import Corpus

MANIFEST_ROW = {"src": "f/a.mp4", "mos": 76.84375, "mos_std_dev": 0.0, "n_ratings": 0}
CLIP = {"sha256": "ab" * 32, "size": 1234, "ingested_at_utc": "2026-11-21T07:00:00+00:00"}
PROBE = {"width": 1920, "height": 1080, "framerate": 29.97002997002997, "duration_s": 8.0, "pix_fmt": "yuv420p", "encoder_upstream": "h264"}


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
    assert not schema_check([json.dumps(row)]).passed


def test_assemble_orders_by_manifest_and_keeps_the_first_duplicate() -> None:
    a = row_line(build_row({**MANIFEST_ROW, "src": "a.mp4"}, CLIP, PROBE, "v"))
    b = row_line(build_row({**MANIFEST_ROW, "src": "b.mp4"}, {**CLIP, "sha256": "cd" * 32}, PROBE, "v"))
    dup = row_line(build_row({**MANIFEST_ROW, "src": "c.mp4"}, CLIP, PROBE, "v"))
    out = assemble([(2, dup), (1, b), (0, a)])
    assert out.lines == [a, b] and out.dedups == 1 and out.duplicates == [("c.mp4", "a.mp4")]
    assert schema_check(out.lines).passed
    assert not schema_check([a, a]).passed  # duplicate sha256


def test_accounting_check() -> None:
    stats = {"written": 5, "skipped_download": 1, "skipped_broken": 1, "dedups": 1}
    assert accounting_check(stats, 8, []).passed
    assert not accounting_check(stats, 9, ["x.mp4"]).passed


def _resources(work: Path, corpus: Corpus, server) -> dict:
    return build_resources(
        {
            "lsvq": {"lsvq_dir": str(work), "manifest_csv": str(corpus.csv), "min_csv_rows": 1, "max_rows": 0},
            "clip_source": {"clip_url_template": server.base_url + "/{name}{suffix}", "concurrency": 4},
            "prober": {},
        }
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_shard_on_a_temporary_instance(tmp_path: Path, corpus: Corpus, served) -> None:
    work = tmp_path / "work"
    resources = _resources(work, corpus, served)
    with dg.instance_for_test() as instance:
        register_slices(instance, ["yfcc-batch1", "ia-batch2"])
        first = dg.materialize(SLICE_ASSETS, instance=instance, partition_key="yfcc-batch1", resources=resources)
        assert first.success

        # Only one slice in: the shard is written, but four manifest rows are not accounted for.
        partial = dg.materialize([lsvq_shard], instance=instance, resources=resources)
        checks = _checks(partial)
        assert checks[SCHEMA_CHECK].passed and not checks[ACCOUNTING_CHECK].passed
        assert len((work / "lsvq.jsonl").read_text().splitlines()) == 4

        assert dg.materialize(SLICE_ASSETS, instance=instance, partition_key="ia-batch2", resources=resources).success
        whole = dg.materialize([lsvq_shard], instance=instance, resources=resources)
        checks = _checks(whole)
        assert checks[SCHEMA_CHECK].passed and checks[ACCOUNTING_CHECK].passed
        assert not checks[ATTRITION_CHECK].passed  # 1 of 8 failed to download: 12.5 % > 10 %
        assert checks[ATTRITION_CHECK].severity == dg.AssetCheckSeverity.WARN
        shard = (work / "lsvq.jsonl").read_bytes()
        mat = instance.get_latest_materialization_event(dg.AssetKey("lsvq_shard")).asset_materialization
        assert mat.metadata["dagster/row_count"].value == 5
        assert mat.metadata["replay_manifest"].value["stats"]["dedups"] == 1
        assert mat.metadata["dagster/uri"].value == str(work / "lsvq.jsonl")

        # A slice again: nothing fetched, nothing probed again (same sha256 -> cached probe).
        rerun = dg.materialize(SLICE_ASSETS, instance=instance, partition_key="yfcc-batch1", resources=resources)
        meta = {e.materialization.asset_key.path[-1]: e.materialization.metadata for e in rerun.get_asset_materialization_events()}
        assert (meta["lsvq_clips"]["downloaded"].value, meta["lsvq_clips"]["cached"].value) == (0, 4)
        assert (meta["lsvq_probes"]["probed"].value, meta["lsvq_probes"]["cached"].value) == (0, 4)

        # Assembling again without new work: byte-identical, same data version.
        again = dg.materialize([lsvq_shard], instance=instance, resources=resources)
        assert (work / "lsvq.jsonl").read_bytes() == shard
        version = lambda r: r.asset_materializations_for_node("lsvq_shard")[0].tags["dagster/data_version"]  # noqa: E731
        assert version(again) == version(whole)

        # A corrupted part file fails the blocking schema check.
        part = work / "slices" / "ia-batch2" / "rows.jsonl"
        lines = part.read_text().splitlines()
        part.write_text("\n".join([lines[0].replace('"width": ', '"width": "x", "w": ')] + lines[1:]) + "\n")
        bad = dg.materialize([lsvq_shard], instance=instance, resources=resources, raise_on_error=False)
        assert not _checks(bad)[SCHEMA_CHECK].passed
        assert _checks(bad)[SCHEMA_CHECK].severity == dg.AssetCheckSeverity.ERROR
