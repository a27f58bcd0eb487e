"""The Definitions load (one split and several), every asset is documented, and lsvq_manifest
materialises a partition of every split's rows for real."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from lsvq_assets.assets.manifest import MANIFEST_FILE, manifest_asset, partition_version
from lsvq_assets.checks import ACCOUNTING_CHECK, ATTRITION_CHECK, LEAKAGE_CHECK, MOS_SCALE_CHECK, SCHEMA_CHECK
from lsvq_assets.core.manifest import read_manifest
from lsvq_assets.core.partitioning import partition_rows, row_fingerprint
from lsvq_assets.core.tables import MANIFEST_SCHEMA, read_manifest_rows
from lsvq_assets.definitions import build_defs
from lsvq_assets.partitions import PARTITIONS_NAME, register_partitions
from lsvq_assets.resources import LsvqSettings
from lsvq_assets_tests.manifest_fixtures import FOLDERS, write_labels_txt, write_patchvq_csv

MANIFEST_KEY = dg.AssetKey("lsvq_manifest")
SHARD_CHECKS = {SCHEMA_CHECK, ACCOUNTING_CHECK, ATTRITION_CHECK, MOS_SCALE_CHECK}
lsvq_manifest = manifest_asset(["train"])


# --- the definitions module --------------------------------------------------------------------


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from lsvq_assets.definitions import defs

    return defs


@pytest.fixture(scope="module")
def split_defs() -> dg.Definitions:
    # Label files need not exist to load the definitions: only their names shape the graph.
    return build_defs({"lsvq": {"splits": "train=/nowhere/train_labels.txt,test=/nowhere/labels_test.txt,test_1080p=/nowhere/labels_1080p.txt"}})


def _checks_by_asset(defs: dg.Definitions) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key in defs.resolve_asset_graph().asset_check_keys:
        out.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    return out


def test_definitions_load_and_validate(defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    assert keys == {dg.AssetKey(k) for k in ("lsvq_labels_train", "lsvq_manifest", "lsvq_clips", "lsvq_probes", "lsvq_rows_train", "lsvq_shard_train")}
    graph = repo.asset_graph
    assert graph.get(MANIFEST_KEY).is_materializable
    assert not graph.get(dg.AssetKey("lsvq_labels_train")).is_materializable  # external: the label file
    assert "lsvq" in repo.get_top_level_resources()
    assert _checks_by_asset(defs) == {"lsvq_shard_train": SHARD_CHECKS}  # no leakage check with one split
    assert {"lsvq_partition_job", "lsvq_shards_job", "lsvq_register_partitions"} <= {j.name for j in repo.get_all_jobs()}


def test_definitions_with_several_splits(split_defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(split_defs)
    splits = ("train", "test", "test_1080p")
    keys = {spec.key.to_user_string() for spec in split_defs.resolve_all_asset_specs()}
    assert keys == {
        "lsvq_manifest", "lsvq_clips", "lsvq_probes",
        *(f"lsvq_{kind}_{s}" for kind in ("labels", "rows", "shard") for s in splits),
    }  # fmt: skip
    assert _checks_by_asset(split_defs) == {f"lsvq_shard_{s}": SHARD_CHECKS | {LEAKAGE_CHECK} for s in splits}
    graph = split_defs.resolve_asset_graph()
    # lineage: every split's labels feed the one manifest; each shard reads its own split's rows
    assert {dg.AssetKey(f"lsvq_labels_{s}") for s in splits} <= graph.get(MANIFEST_KEY).parent_keys
    for s in splits:
        assert graph.get(dg.AssetKey(f"lsvq_shard_{s}")).parent_keys == {dg.AssetKey(f"lsvq_rows_{s}"), dg.AssetKey(f"lsvq_labels_{s}")}
    job = split_defs.resolve_job_def("lsvq_shards_job")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} >= {f"lsvq_shard_{s}" for s in splits}


@pytest.mark.parametrize("which", ["defs", "split_defs"])
def test_every_asset_is_described(which: str, request: pytest.FixtureRequest) -> None:
    defs = request.getfixturevalue(which)
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


@pytest.mark.parametrize("which", ["defs", "split_defs"])
def test_partition_assets_share_the_folder_partitions(which: str, request: pytest.FixtureRequest) -> None:
    defs = request.getfixturevalue(which)
    specs = defs.resolve_all_asset_specs()
    partitioned = {s.key.to_user_string() for s in specs if s.partitions_def is not None}
    assert partitioned == {s.key.to_user_string() for s in specs if not s.key.to_user_string().startswith("lsvq_shard_")}
    for spec in specs:
        if spec.partitions_def is not None:
            assert isinstance(spec.partitions_def, dg.DynamicPartitionsDefinition), spec.key
            assert spec.partitions_def.name == PARTITIONS_NAME, spec.key


# --- a real materialisation -------------------------------------------------------------------


def _settings(tmp_path: Path, csv: Path | None = None, **overrides) -> LsvqSettings:
    base = {"lsvq_dir": str(tmp_path / "lsvq"), "min_csv_rows": 1, "max_rows": 0}
    if csv is not None:
        base["manifest_csv"] = str(csv)
    return LsvqSettings(**{**base, **overrides})


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


def _materialize(instance: dg.DagsterInstance, key: str, lsvq: LsvqSettings, asset=lsvq_manifest, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([asset], instance=instance, partition_key=key, resources={"lsvq": lsvq}, **kwargs)


def _latest(instance: dg.DagsterInstance) -> dg.AssetMaterialization:
    event = instance.get_latest_materialization_event(MANIFEST_KEY)
    assert event is not None
    return event.asset_materialization


def test_materialise_one_partition(tmp_path: Path, manifest_csv: Path) -> None:
    lsvq = _settings(tmp_path, manifest_csv)
    manifest = read_manifest(manifest_csv)
    parts = partition_rows([manifest.rows])
    key = FOLDERS[1]
    expected = parts[key]
    assert len(expected) == 50

    with dg.instance_for_test() as instance:
        assert register_partitions(instance, parts) == list(parts)
        assert _materialize(instance, key, lsvq).success

        # the parquet file
        path = lsvq.layout().partition_file(key, MANIFEST_FILE)
        assert path == tmp_path / "lsvq" / "partitions" / key / MANIFEST_FILE
        assert pq.read_schema(path).remove_metadata() == MANIFEST_SCHEMA
        assert read_manifest_rows(path) == expected
        assert {r.split for r in read_manifest_rows(path)} == {"train"}
        assert not list(path.parent.glob("*.part")) and not list(path.parent.glob(".*"))  # written atomically

        # the materialisation as the instance stored it
        mat = _latest(instance)
        assert mat.partition == key
        md = {k: v.value for k, v in mat.metadata.items()}
        assert md["dagster/row_count"] == 50
        assert md["dagster/uri"] == str(path)
        assert [c.name for c in md["dagster/column_schema"].columns] == MANIFEST_SCHEMA.names
        assert {c.name: c.type for c in md["dagster/column_schema"].columns}["mos"] == "float"
        assert "| train | 50 |" in md["rows_by_split"]
        assert f"| train | {manifest_csv} | csv | {manifest.sha256[:16]} | 151 | 3 |" in md["label_files"]
        for reason in ("path-traversal", "bad-mos", "duplicate-name"):
            assert f"| {reason} | 1 |" in md["dropped_by_reason"]
        assert "../escape" in md["dropped_rows"]
        assert md["defaulted_columns"] == "mos_std_dev, n_ratings"

        # the data version is the partition's fingerprint (+ corpus version), stable across runs
        version = partition_version(row_fingerprint(expected), lsvq.corpus_version)
        assert mat.tags["dagster/data_version"] == version
        assert mat.tags["dagster/code_version"] == "2"
        assert _materialize(instance, key, lsvq).success
        assert _latest(instance).tags["dagster/data_version"] == version

        # one MOS edited in another folder: this partition's version stays, that one's changes
        other = FOLDERS[0]
        before_other = partition_version(row_fingerprint(parts[other]), lsvq.corpus_version)
        with manifest_csv.open(newline="") as fh:
            records = list(csv.reader(fh))
        assert records[0][9] == "mos" and records[1][0].startswith(other + "/")
        records[1][9] = "1.25"
        with manifest_csv.open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows(records)
        assert _materialize(instance, key, lsvq).success
        assert _latest(instance).tags["dagster/data_version"] == version
        assert _materialize(instance, other, lsvq).success
        changed = _latest(instance)
        assert changed.partition == other and changed.tags["dagster/data_version"] != before_other
        assert [r.mos for r in read_manifest_rows(lsvq.layout().partition_file(other, MANIFEST_FILE))][0] == 1.25


def test_materialise_flat_chunk_and_a_folder_whole_under_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    write_patchvq_csv(path, 0, columns=5, names=[f"clip{i}" for i in range(12)] + [f"{FOLDERS[0]}/{i}" for i in range(5)])
    lsvq = _settings(tmp_path, path, flat_chunk_rows=5, max_rows=14)
    plan = lsvq.plan()
    # the cap covers 2 of the folder's 5 rows: the partition still holds all 5
    assert {k: len(v) for k, v in plan.partitions.items()} == {"0000": 5, "0001": 5, "0002": 2, FOLDERS[0]: 5}
    assert plan.selected() == ["0000", "0001", "0002", FOLDERS[0]]
    with dg.instance_for_test() as instance:
        register_partitions(instance, plan.partitions)
        for key in ("0001", FOLDERS[0]):
            assert _materialize(instance, key, lsvq).success
            assert read_manifest_rows(lsvq.layout().partition_file(key, MANIFEST_FILE)) == plan.partitions[key]
            mat = _latest(instance)
            assert mat.partition == key and mat.metadata["dagster/row_count"].value == len(plan.partitions[key])


def test_partition_outside_the_cap_materialises_whole(tmp_path: Path, manifest_csv: Path) -> None:
    lsvq = _settings(tmp_path, manifest_csv, max_rows=60)  # the first 60 rows: FOLDERS[0] and 10 of FOLDERS[1]
    assert lsvq.plan().selected() == [FOLDERS[0], FOLDERS[1]]
    capless = _settings(tmp_path, manifest_csv, max_rows=0)
    with dg.instance_for_test() as instance:
        register_partitions(instance, [FOLDERS[1], FOLDERS[2]])
        for key in (FOLDERS[1], FOLDERS[2]):
            assert _materialize(instance, key, lsvq).success
            assert len(read_manifest_rows(lsvq.layout().partition_file(key, MANIFEST_FILE))) == 50
            # same rows, same version as without the cap: the cap is not part of what a partition holds
            assert _latest(instance).tags["dagster/data_version"] == partition_version(capless.plan().fingerprint(key), lsvq.corpus_version)


def test_key_not_in_the_label_files_fails_clearly(tmp_path: Path, manifest_csv: Path) -> None:
    lsvq = _settings(tmp_path, manifest_csv)
    with dg.instance_for_test() as instance:
        register_partitions(instance, ["not-a-folder"])
        with pytest.raises(dg.Failure) as info:
            _materialize(instance, "not-a-folder", lsvq)
        message = info.value.description
        assert "partition 'not-a-folder' holds no row of the label files" in message
        assert f"train: {manifest_csv}" in message and "they have 4 partitions" in message
        assert info.value.allow_retries is False
        assert not lsvq.layout().partition_file("not-a-folder", MANIFEST_FILE).exists()
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
        register_partitions(instance, ["a"])
        result = _materialize(instance, "a", lsvq, raise_on_error=False)
        assert not result.success
        [failure] = result.get_step_failure_events()
        data = failure.step_failure_data
        assert data.user_failure_data is not None
        description = data.user_failure_data.description
        assert str(path) in description
        assert {"missing": "not found", "no-mos": "no mos column", "too-few": "--min-csv-rows 1"}[problem] in description


def test_one_partition_holds_every_splits_rows(tmp_path: Path) -> None:
    train, test = tmp_path / "train_labels.txt", tmp_path / "labels_test.txt"
    write_labels_txt(train, [("a/1.mp4", 10), ("b/1.mp4", 20), ("a/2.mp4", 30)])
    write_labels_txt(test, [("b/2.mp4", 40), ("a/3.mp4", 50), ("a/1.mp4", 60)])
    splits = f"train={train},test={test}"
    lsvq = _settings(tmp_path, splits=splits)
    asset = manifest_asset(["train", "test"])
    with dg.instance_for_test() as instance:
        register_partitions(instance, lsvq.plan().partitions)
        assert _materialize(instance, "a", lsvq, asset).success
        rows = read_manifest_rows(lsvq.layout().partition_file("a", MANIFEST_FILE))
        assert [(r.split, r.src, r.mos) for r in rows] == [("train", "a/1.mp4", 10.0), ("train", "a/2.mp4", 30.0), ("test", "a/3.mp4", 50.0), ("test", "a/1.mp4", 60.0)]
        mat = _latest(instance)
        assert "| train | 2 |" in mat.metadata["rows_by_split"].value and "| test | 2 |" in mat.metadata["rows_by_split"].value
        version = mat.tags["dagster/data_version"]

        # an edit of the test split's row in this folder changes this partition's version, not b's
        assert _materialize(instance, "b", lsvq, asset).success
        b_version = _latest(instance).tags["dagster/data_version"]
        write_labels_txt(test, [("b/2.mp4", 40), ("a/3.mp4", 55), ("a/1.mp4", 60)])
        assert _materialize(instance, "a", lsvq, asset).success
        assert _latest(instance).tags["dagster/data_version"] != version
        assert _materialize(instance, "b", lsvq, asset).success
        assert _latest(instance).tags["dagster/data_version"] == b_version


def test_rows_round_trip_through_parquet(tmp_path: Path) -> None:
    from lsvq_assets.core.tables import write_manifest_rows

    path = tmp_path / "m.csv"
    path.write_text(
        "name,mos,sd,n,url\n"
        "a/St._Charles,50.5,1.5,30,https://example.org/a.mp4\n"
        "a/x.mp4,1e-3,,,\n"
        "ia-batch19/From_a_purple_vortex...,99.999999999,0,7,\n"
    )
    rows = read_manifest(path, split="test_1080p").rows
    out = tmp_path / "rows.parquet"
    write_manifest_rows(out, rows)
    back = read_manifest_rows(out)
    assert back == rows
    assert [dataclasses.asdict(r)["url"] for r in back] == ["https://example.org/a.mp4", None, None]
    assert {r.split for r in back} == {"test_1080p"}
