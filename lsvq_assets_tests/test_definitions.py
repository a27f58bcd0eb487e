"""The Definitions load, every asset is documented, and lsvq_manifest materialises a slice for real."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from lsvq_assets.assets.manifest import MANIFEST_FILE, lsvq_manifest
from lsvq_assets.core.manifest import read_manifest
from lsvq_assets.core.slicing import fingerprint, slice_rows
from lsvq_assets.core.tables import MANIFEST_SCHEMA, read_manifest_rows
from lsvq_assets.partitions import SLICES_PARTITIONS_NAME, register_slices
from lsvq_assets.settings import LsvqSettings
from lsvq_assets_tests.manifest_fixtures import FOLDERS, write_patchvq_csv

MANIFEST_KEY = dg.AssetKey("lsvq_manifest")


# --- the definitions module --------------------------------------------------------------------


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from lsvq_assets.definitions import defs

    return defs


def test_definitions_load_and_validate(defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    assert {dg.AssetKey("lsvq_manifest_csv"), MANIFEST_KEY} <= keys
    assert repo.asset_graph.get(MANIFEST_KEY).is_materializable
    assert "lsvq" in repo.get_top_level_resources()


def test_every_asset_is_described(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    specs = defs.resolve_all_asset_specs()
    assert specs
    problems = []
    for spec in specs:
        name = spec.key.to_user_string()
        if not (spec.description or "").strip():
            problems.append(f"{name}: no description")
        if not spec.group_name or spec.group_name == "default":
            problems.append(f"{name}: no group")
        if not spec.owners:
            problems.append(f"{name}: no owners")
        if not spec.kinds:
            problems.append(f"{name}: no kinds")
        # An external asset (the label file) is not computed here: it has no code version.
        if graph.get(spec.key).is_executable and not spec.code_version:
            problems.append(f"{name}: no code_version")
    assert problems == []


def test_slice_assets_share_the_slices_partitions(defs: dg.Definitions) -> None:
    manifest_spec = next(s for s in defs.resolve_all_asset_specs() if s.key == MANIFEST_KEY)
    assert isinstance(manifest_spec.partitions_def, dg.DynamicPartitionsDefinition)
    assert manifest_spec.partitions_def.name == SLICES_PARTITIONS_NAME
    for spec in defs.resolve_all_asset_specs():
        if isinstance(spec.partitions_def, dg.DynamicPartitionsDefinition):
            assert spec.partitions_def.name == SLICES_PARTITIONS_NAME, spec.key


# --- a real materialisation -------------------------------------------------------------------


def _settings(tmp_path: Path, csv: Path, **overrides) -> LsvqSettings:
    return LsvqSettings(**{"lsvq_dir": str(tmp_path / "lsvq"), "manifest_csv": str(csv), "min_csv_rows": 1, "max_rows": 0, **overrides})


@pytest.fixture
def manifest_csv(tmp_path: Path) -> Path:
    path = tmp_path / "LSVQ_whole_test.csv"
    write_patchvq_csv(
        path,
        150,
        folders=FOLDERS[:3],
        columns=38,
        extra_rows=[("../escape", 50), (f"{FOLDERS[1]}/bad-mos", "nan"), (f"{FOLDERS[0]}/700", 5), ("x/y", 5)],
    )
    return path


def _materialize(instance: dg.DagsterInstance, key: str, lsvq: LsvqSettings, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([lsvq_manifest], instance=instance, partition_key=key, resources={"lsvq": lsvq}, **kwargs)


def test_materialise_one_slice(tmp_path: Path, manifest_csv: Path) -> None:
    lsvq = _settings(tmp_path, manifest_csv)
    manifest = read_manifest(manifest_csv)
    slices = slice_rows(manifest.rows)
    key = FOLDERS[1]
    expected = slices[key]
    assert len(expected) == 50

    with dg.instance_for_test() as instance:
        assert register_slices(instance, slices) == list(slices)
        result = _materialize(instance, key, lsvq)
        assert result.success

        # the parquet file
        path = lsvq.layout().slice_file(key, MANIFEST_FILE)
        assert path == tmp_path / "lsvq" / "slices" / key / MANIFEST_FILE
        assert pq.read_schema(path).remove_metadata() == MANIFEST_SCHEMA
        assert read_manifest_rows(path) == expected
        assert not list(path.parent.glob("*.part"))  # written atomically, nothing left behind

        # the materialisation as the instance stored it
        event = instance.get_latest_materialization_event(MANIFEST_KEY)
        assert event is not None
        mat = event.asset_materialization
        assert mat.partition == key
        md = {k: v.value for k, v in mat.metadata.items()}
        assert md["dagster/row_count"] == 50
        assert md["dagster/uri"] == str(path)
        assert [c.name for c in md["dagster/column_schema"].columns] == MANIFEST_SCHEMA.names
        assert {c.name: c.type for c in md["dagster/column_schema"].columns}["mos"] == "float"
        assert md["manifest_path"] == str(manifest_csv)
        assert md["manifest_sha256"] == manifest.sha256
        assert md["manifest_format"] == "csv"
        assert md["manifest_rows_kept"] == 151 and md["manifest_rows_dropped"] == 3
        for reason in ("path-traversal", "bad-mos", "duplicate-name"):
            assert f"| {reason} | 1 |" in md["dropped_by_reason"]
        assert "../escape" in md["dropped_rows"]
        assert md["defaulted_columns"] == "mos_std_dev, n_ratings"

        # the data version is the slice's fingerprint, stable across runs
        version = fingerprint(expected)
        assert mat.tags["dagster/data_version"] == version
        assert mat.tags["dagster/code_version"] == "1"
        assert _materialize(instance, key, lsvq).success
        again = instance.get_latest_materialization_event(MANIFEST_KEY).asset_materialization
        assert again.tags["dagster/data_version"] == version

        # one MOS edited in another folder: this slice's version stays, that one's changes
        other = FOLDERS[0]
        before_other = fingerprint(slices[other])
        with manifest_csv.open(newline="") as fh:
            records = list(csv.reader(fh))
        assert records[0][9] == "mos" and records[1][0].startswith(other + "/")
        records[1][9] = "1.25"
        with manifest_csv.open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows(records)
        assert _materialize(instance, key, lsvq).success
        assert instance.get_latest_materialization_event(MANIFEST_KEY).asset_materialization.tags["dagster/data_version"] == version
        assert _materialize(instance, other, lsvq).success
        changed = instance.get_latest_materialization_event(MANIFEST_KEY).asset_materialization
        assert changed.partition == other and changed.tags["dagster/data_version"] != before_other


def test_materialise_flat_chunk_and_capped_slice(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    write_patchvq_csv(path, 0, columns=5, names=[f"clip{i}" for i in range(12)] + [f"{FOLDERS[0]}/{i}" for i in range(5)])
    lsvq = _settings(tmp_path, path, slice_rows=5, max_rows=14)
    slices = lsvq.slices(lsvq.read_manifest())
    assert {k: len(v) for k, v in slices.items()} == {"0000": 5, "0001": 5, "0002": 2, FOLDERS[0]: 2}
    with dg.instance_for_test() as instance:
        register_slices(instance, slices)
        for key in ("0001", FOLDERS[0]):
            assert _materialize(instance, key, lsvq).success
            rows = read_manifest_rows(lsvq.layout().slice_file(key, MANIFEST_FILE))
            assert rows == slices[key]
            mat = instance.get_latest_materialization_event(MANIFEST_KEY).asset_materialization
            assert mat.partition == key and mat.metadata["dagster/row_count"].value == len(slices[key])


def test_key_not_in_the_manifest_fails_clearly(tmp_path: Path, manifest_csv: Path) -> None:
    lsvq = _settings(tmp_path, manifest_csv, max_rows=60)  # the cap leaves FOLDERS[1] with 10 rows, FOLDERS[2] none
    with dg.instance_for_test() as instance:
        register_slices(instance, ["not-a-folder", FOLDERS[2]])
        for key in ("not-a-folder", FOLDERS[2]):
            with pytest.raises(dg.Failure) as info:
                _materialize(instance, key, lsvq)
            message = info.value.description
            assert f"slice {key!r} is not in {manifest_csv}" in message
            assert "max_rows=60" in message and "LSVQ_MAX_ROWS=0" in message
            assert info.value.allow_retries is False
            assert not lsvq.layout().slice_file(key, MANIFEST_FILE).exists()
        assert instance.get_latest_materialization_event(MANIFEST_KEY) is None


@pytest.mark.parametrize("problem", ["missing", "no-mos", "too-few"])
def test_unusable_manifest_fails_with_its_message(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "m.csv"
    if problem == "no-mos":
        path.write_text("name,height\na/x,720\n")
    elif problem == "too-few":
        path.write_text("name,mos\na/x,50\n")
    lsvq = _settings(tmp_path, path, min_csv_rows=2 if problem == "too-few" else 1)
    with dg.instance_for_test() as instance:
        register_slices(instance, ["a"])
        result = _materialize(instance, "a", lsvq, raise_on_error=False)
        assert not result.success
        [failure] = result.get_step_failure_events()
        data = failure.step_failure_data
        assert data.user_failure_data is not None
        description = data.user_failure_data.description
        assert str(path) in description
        assert {"missing": "not found", "no-mos": "no mos column", "too-few": "--min-csv-rows 1"}[problem] in description


def test_rows_round_trip_through_parquet(tmp_path: Path) -> None:
    from lsvq_assets.core.tables import write_manifest_rows

    path = tmp_path / "m.csv"
    path.write_text(
        "name,mos,sd,n,url\n"
        "a/St._Charles,50.5,1.5,30,https://example.org/a.mp4\n"
        "a/x.mp4,1e-3,,,\n"
        "ia-batch19/From_a_purple_vortex...,99.999999999,0,7,\n"
    )
    rows = read_manifest(path).rows
    out = tmp_path / "rows.parquet"
    write_manifest_rows(out, rows)
    back = read_manifest_rows(out)
    assert back == rows
    assert [dataclasses.asdict(r)["url"] for r in back] == ["https://example.org/a.mp4", None, None]
