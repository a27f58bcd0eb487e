"""lsvq_assets.core.partitioning: partition keys, their stability, splits, the row cap and fingerprints."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import dagster as dg
import pytest

from lsvq_assets.core.errors import UserError
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import Manifest, ManifestRow, read_manifest
from lsvq_assets.core.partitioning import SAFE_KEY, Plan, folder_key, parse_splits, partition_rows, row_fingerprint
from lsvq_assets.partitions import PARTITIONS_NAME, register_partitions
from lsvq_assets.resources import LsvqSettings
from lsvq_assets_tests.manifest_fixtures import FOLDERS, labels_pairs, realistic_names, write_alias_csv, write_labels_txt, write_patchvq_csv


def make_rows(names: list[str], mos: float = 50.0, split: str = "train") -> list[ManifestRow]:
    return [
        ManifestRow(i, i + 2, n, n + ".mp4", n.split("/", 1)[0] if "/" in n else "", mos, 0.0, 0, None, split)
        for i, n in enumerate(names)
    ]


def one_split(rows: list[ManifestRow], flat_chunk_rows: int = 500) -> dict[str, list[ManifestRow]]:
    return partition_rows([rows], flat_chunk_rows)


def as_names(parts: dict[str, list[ManifestRow]]) -> dict[str, list[str]]:
    return {k: [r.src for r in v] for k, v in parts.items()}


def sizes(parts: dict[str, list[ManifestRow]]) -> dict[str, int]:
    return {k: len(v) for k, v in parts.items()}


def settings(tmp_path: Path, **kw) -> LsvqSettings:
    return LsvqSettings(**{"lsvq_dir": str(tmp_path / "lsvq"), "min_csv_rows": 1, **kw})


# --- one partition per folder ------------------------------------------------------------------


@pytest.mark.parametrize("columns", [38, 5])
def test_one_partition_per_folder_in_file_order(tmp_path: Path, columns: int) -> None:
    path = tmp_path / "m.csv"
    write_patchvq_csv(path, 2000, columns=columns)
    rows = read_manifest(path).rows
    parts = one_split(rows)
    assert list(parts) == list(FOLDERS)  # 51 folders, first-appearance order
    assert sum(len(v) for v in parts.values()) == 2000
    for key, members in parts.items():
        assert all(r.folder == key for r in members)
        assert [r.index for r in members] == sorted(r.index for r in members)


def test_interleaved_folders_keep_first_appearance_order() -> None:
    parts = one_split(make_rows(["b/1", "a/1", "b/2", "c/1", "a/2", "b/3"]))
    assert list(parts) == ["b", "a", "c"]
    assert [r.name for r in parts["b"]] == ["b/1", "b/2", "b/3"]
    assert [r.name for r in parts["a"]] == ["a/1", "a/2"]


def test_labels_file_partitions_like_the_csv(tmp_path: Path) -> None:
    csv_path, labels_path = tmp_path / "m.csv", tmp_path / "labels.txt"
    write_patchvq_csv(csv_path, 600, columns=5)
    write_labels_txt(labels_path, labels_pairs(600))
    assert sizes(one_split(read_manifest(csv_path).rows)) == sizes(one_split(read_manifest(labels_path).rows))


@pytest.mark.parametrize("n", [1, 1000, 1001, 2500, 12_000])
def test_a_folder_of_any_size_is_one_partition(n: int) -> None:
    rows = make_rows([f"big/{i}" for i in range(n)])
    parts = one_split(rows, flat_chunk_rows=3)  # the flat chunk size does not cut folders
    assert sizes(parts) == {"big": n}
    assert parts["big"] == rows


def test_big_folder_interleaved_with_others_stays_one_partition() -> None:
    names = [f"big/{i}" for i in range(3)] + ["small/0"] + [f"big/{i}" for i in range(3, 5)]
    parts = one_split(make_rows(names), flat_chunk_rows=1)
    assert as_names(parts) == {"big": [f"big/{i}.mp4" for i in range(5)], "small": ["small/0.mp4"]}


# --- flat names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "size", "want"),
    [
        (1, 500, {"0000": 1}),
        (500, 500, {"0000": 500}),
        (501, 500, {"0000": 500, "0001": 1}),
        (1200, 500, {"0000": 500, "0001": 500, "0002": 200}),
        (7, 3, {"0000": 3, "0001": 3, "0002": 1}),
        (3, 1, {"0000": 1, "0001": 1, "0002": 1}),
    ],
)
def test_flat_names_in_chunks(n: int, size: int, want: dict[str, int]) -> None:
    rows = make_rows([f"clip{i}" for i in range(n)])
    parts = one_split(rows, flat_chunk_rows=size)
    assert sizes(parts) == want
    assert [r for v in parts.values() for r in v] == rows


def test_flat_chunk_keys_past_9999() -> None:
    parts = one_split(make_rows([f"c{i}" for i in range(10_002)]), flat_chunk_rows=1)
    assert list(parts)[-3:] == ["9999", "10000", "10001"]


def test_flat_and_folder_names_mixed() -> None:
    parts = one_split(make_rows(["x1", "a/1", "x2", "x3", "b/1", "a/2", "x4"]), flat_chunk_rows=2)
    assert {k: [r.name for r in v] for k, v in parts.items()} == {
        "0000": ["x1", "x2"],
        "a": ["a/1", "a/2"],
        "0001": ["x3", "x4"],
        "b": ["b/1"],
    }


def test_folder_key_is_first_component_only() -> None:
    assert sizes(one_split(make_rows(["a/b/1", "a/c/2", "a/3"]))) == {"a": 3}


@pytest.mark.parametrize("size", [0, -1])
def test_flat_chunk_rows_below_one_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="flat_chunk_rows"):
        partition_rows([make_rows(["a/1"])], size)


# --- several splits share the partitions ------------------------------------------------------


def test_a_folder_holds_its_rows_of_every_split() -> None:
    train = make_rows(["a/1", "b/1", "a/2"], split="train")
    test = make_rows(["b/2", "c/1", "a/3"], split="test")
    parts = partition_rows([train, test])
    assert list(parts) == ["a", "b", "c"]
    assert {k: [(r.split, r.name) for r in v] for k, v in parts.items()} == {
        "a": [("train", "a/1"), ("train", "a/2"), ("test", "a/3")],
        "b": [("train", "b/1"), ("test", "b/2")],
        "c": [("test", "c/1")],
    }


def test_same_src_in_two_splits_lands_in_one_partition() -> None:
    # A folder name and a flat name present in both splits (leakage the shards' check reports).
    train = make_rows(["a/1", "x1", "x2", "x3"], split="train")
    test = make_rows(["y1", "x2", "a/1", "y2"], split="test")
    parts = partition_rows([train, test], flat_chunk_rows=2)
    where: dict[str, set[str]] = {}
    for key, rows in parts.items():
        for r in rows:
            where.setdefault(r.src, set()).add(key)
    assert where["a/1.mp4"] == {"a"} and where["x2.mp4"] == {"0000"}
    assert all(len(keys) == 1 for keys in where.values())
    # flat chunks count distinct names: x1 x2 | x3 y1 | y2
    assert {k: [(r.split, r.name) for r in v] for k, v in parts.items()} == {
        "a": [("train", "a/1"), ("test", "a/1")],
        "0000": [("train", "x1"), ("train", "x2"), ("test", "x2")],
        "0001": [("train", "x3"), ("test", "y1")],
        "0002": [("test", "y2")],
    }
    plan = Plan({"train": _manifest(train), "test": _manifest(test)}, parts, 0)
    assert plan.key_of["x2.mp4"] == "0000" and plan.key_of["a/1.mp4"] == "a"


def test_adding_a_split_moves_no_row_of_the_first(tmp_path: Path) -> None:
    train = make_rows(realistic_names(300, FOLDERS[:4]) + [f"flat{i}" for i in range(7)], split="train")
    test = make_rows(realistic_names(200, FOLDERS[2:7]) + [f"other{i}" for i in range(5)], split="test")
    alone = partition_rows([train], flat_chunk_rows=3)
    both = partition_rows([train, test], flat_chunk_rows=3)
    assert list(both)[: len(alone)] == list(alone)
    for key, rows in alone.items():
        assert [r for r in both[key] if r.split == "train"] == rows


# --- stability ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "labels"])
def test_keys_stable_when_read_again(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.csv"
    if kind == "csv":
        write_patchvq_csv(path, 3000, columns=38)
    else:
        write_labels_txt(path, labels_pairs(3000))
    a, b = one_split(read_manifest(path).rows, 40), one_split(read_manifest(path).rows, 40)
    assert as_names(a) == as_names(b)
    assert {k: row_fingerprint(v) for k, v in a.items()} == {k: row_fingerprint(v) for k, v in b.items()}


@pytest.mark.parametrize("flat_size", [500, 10, 3])
def test_keys_stable_when_rows_are_appended(tmp_path: Path, flat_size: int) -> None:
    base = realistic_names(600, FOLDERS[:5]) + [f"flat{i}" for i in range(23)]
    appended = (
        [f"{FOLDERS[0]}/extra{i}" for i in range(30)]  # more rows for known folders...
        + realistic_names(200, FOLDERS[5:8])  # ...new folders...
        + [f"{FOLDERS[3]}/extra{i}" for i in range(1000)]
        + [f"flat{i}" for i in range(23, 40)]  # ...and more flat names
        + [base[0], "../escape"]  # a duplicate and a bad name: dropped, no effect on the keys
    )
    path = tmp_path / "m.csv"
    write_alias_csv(path, ["name", "mos"], [[n, "50"] for n in base])
    old = one_split(read_manifest(path).rows, flat_size)
    write_alias_csv(path, ["name", "mos"], [[n, "50"] for n in base + appended])
    new_manifest = read_manifest(path)
    assert len(new_manifest.dropped) == 2
    new = one_split(new_manifest.rows, flat_size)

    assert list(new)[: len(old)] == list(old)  # old keys first, in the same order
    assert len(new) > len(old)
    assert len(new[FOLDERS[0]]) == 150 and len(new[FOLDERS[3]]) == 1120  # a folder grows, never splits
    assert not any("~" in k for k in new)
    for key, rows in old.items():
        now = [r.src for r in new[key]]
        assert now[: len(rows)] == [r.src for r in rows]  # existing keys keep their rows
        if len(now) == len(rows):
            assert row_fingerprint(new[key]) == row_fingerprint(rows)  # untouched partitions keep their version
        if re.fullmatch(r"\d{4,}", key) and len(rows) == flat_size:
            assert len(now) == len(rows)  # a full flat chunk never grows


def test_rows_reordered_in_another_folder_do_not_move_keys() -> None:
    assert as_names(one_split(make_rows(["a/1", "b/1", "a/2"]))) == as_names(one_split(make_rows(["b/1", "a/1", "a/2"])))


# --- the row cap: it selects, it never cuts ----------------------------------------------------

NAMES = ["b/1", "a/1", "b/2", "c/1", "a/2", "x"]


def _manifest(rows: list[ManifestRow], path: str = "m.csv") -> Manifest:
    return Manifest(path=Path(path), format="csv", columns=["name", "mos"], data_rows=len(rows), sha256="0" * 64, rows=rows)


def _plan(splits: dict[str, list[ManifestRow]], max_rows: int, flat_chunk_rows: int = 500) -> Plan:
    return Plan({s: _manifest(r) for s, r in splits.items()}, partition_rows(splits.values(), flat_chunk_rows), max_rows)


@pytest.mark.parametrize(
    ("max_rows", "capped", "selected"),
    [
        (0, NAMES, ["b", "a", "c", "0000"]),
        (-1, NAMES, ["b", "a", "c", "0000"]),
        (1, ["b/1"], ["b"]),
        (3, ["b/1", "a/1", "b/2"], ["b", "a"]),
        (4, ["b/1", "a/1", "b/2", "c/1"], ["b", "a", "c"]),
        (6, NAMES, ["b", "a", "c", "0000"]),
        (100, NAMES, ["b", "a", "c", "0000"]),
    ],
)
def test_cap_selects_the_partitions_of_the_first_rows(max_rows: int, capped: list[str], selected: list[str]) -> None:
    plan = _plan({"train": make_rows(NAMES)}, max_rows)
    assert [r.name for r in plan.capped("train")] == capped
    assert plan.selected() == selected == plan.split_partitions("train")
    # the cap cuts no partition: a selected one is run whole
    assert sizes(plan.partitions) == {"b": 2, "a": 2, "c": 1, "0000": 1}


@pytest.mark.parametrize("max_rows", [0, 1, 2, 3, 5, 100])
def test_partition_content_does_not_depend_on_the_cap(tmp_path: Path, max_rows: int) -> None:
    path = tmp_path / "m.csv"
    write_alias_csv(path, ["name", "mos"], [[n, "1"] for n in ["b/1", "a/1", "b/2", "c/1", "a/2"]])
    plan = settings(tmp_path, manifest_csv=str(path), max_rows=max_rows).plan()
    assert as_names(plan.partitions) == {"b": ["b/1.mp4", "b/2.mp4"], "a": ["a/1.mp4", "a/2.mp4"], "c": ["c/1.mp4"]}
    assert {k: plan.fingerprint(k) for k in plan.partitions} == {
        k: plan.fingerprint(k) for k in settings(tmp_path, manifest_csv=str(path), max_rows=0).plan().partitions
    }
    want = {0: ["b", "a", "c"], 1: ["b"], 2: ["b", "a"], 3: ["b", "a"], 5: ["b", "a", "c"], 100: ["b", "a", "c"]}[max_rows]
    assert plan.selected() == want


def test_cap_counts_kept_rows_not_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    write_alias_csv(path, ["name", "mos"], [["a/1", "nan"], ["a/2", "1"], ["a/2", "2"], ["b/1", "3"], ["b/2", "4"]])
    plan = settings(tmp_path, manifest_csv=str(path), max_rows=2).plan()
    assert [r.src for r in plan.capped("train")] == ["a/2.mp4", "b/1.mp4"]
    assert plan.selected() == ["a", "b"]
    assert as_names(plan.partitions) == {"a": ["a/2.mp4"], "b": ["b/1.mp4", "b/2.mp4"]}


def test_cap_applies_per_split_and_selected_is_their_union() -> None:
    train = make_rows(["a/1", "b/1", "a/2", "d/1"], split="train")
    test = make_rows(["c/1", "a/3", "b/2", "e/1"], split="test")
    plan = _plan({"train": train, "test": test}, 2)
    assert [r.name for r in plan.capped("train")] == ["a/1", "b/1"]
    assert [r.name for r in plan.capped("test")] == ["c/1", "a/3"]
    assert plan.split_partitions("train") == ["a", "b"]
    assert plan.split_partitions("test") == ["c", "a"]  # in order of the split's first row
    assert list(plan.partitions) == ["a", "b", "d", "c", "e"]
    assert plan.selected() == ["a", "b", "c"]  # in partition order; d and e hold no capped row
    summary = plan.summary()
    assert summary["rows"] == 4
    assert summary["slices"] == {"a": 3, "b": 2, "c": 1}  # rows of every split in each partition
    assert summary["splits"] == {"train": {"rows": 2, "partitions": 2}, "test": {"rows": 2, "partitions": 2}}


def test_settings_plan_reads_every_split(tmp_path: Path) -> None:
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    write_labels_txt(train, [("a/1.mp4", 10), ("b/1.mp4", 20), ("x.mp4", 30)])
    write_labels_txt(test, [("b/2.mp4", 40), ("a/1.mp4", 50), ("y.mp4", 60)])
    lsvq = settings(tmp_path, splits=f"train={train},test={test}", max_rows=0, flat_chunk_rows=1)
    plan = lsvq.plan()
    assert list(plan.splits) == ["train", "test"]
    assert {k: [(r.split, r.src) for r in v] for k, v in plan.partitions.items()} == {
        "a": [("train", "a/1.mp4"), ("test", "a/1.mp4")],
        "b": [("train", "b/1.mp4"), ("test", "b/2.mp4")],
        "0000": [("train", "x.mp4")],
        "0001": [("test", "y.mp4")],
    }
    assert lsvq.shard_paths("test") == (tmp_path / "lsvq" / "lsvq_test.jsonl", tmp_path / "lsvq" / "lsvq_test.manifest.json")


# --- parse_splits ------------------------------------------------------------------------------


def test_parse_splits_keeps_order_and_accepts_both_forms() -> None:
    want = {"train": "/d/train_labels.txt", "test_1080p": "/d/t=1.txt", "test": "/d/labels_test.txt"}
    assert list(parse_splits("train=/d/train_labels.txt, test_1080p=/d/t=1.txt,test=/d/labels_test.txt,")) == list(want)
    assert parse_splits("train=/d/train_labels.txt, test_1080p=/d/t=1.txt,test=/d/labels_test.txt,") == want
    assert parse_splits([f"{k}={v}" for k, v in want.items()]) == want
    assert parse_splits("") == {} and parse_splits([]) == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("train", "split 'train' is not NAME=PATH"),
        ("train=", "split 'train=' is not NAME=PATH"),
        ("train=/a,=/b", "split name '' (file /b)"),
        ("Train=/a", "split name 'Train' (file /a): use lowercase letters, digits and _ only"),
        ("test-1080p=/a", "split name 'test-1080p'"),
        ("a" * 41 + "=/a", "split name"),
        ("train=/a,train=/b", "split 'train' is named twice (/a and /b)"),
        (["train=/a", "test"], "split 'test' is not NAME=PATH"),
    ],
)
def test_parse_splits_errors_name_the_entry(spec, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_splits(spec)
    assert message in str(info.value)


def test_bad_split_setting_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        settings(tmp_path, splits="train=/a,train=/b").split_files()
    assert "named twice" in str(info.value) and "--split, LSVQ_SPLITS" in str(info.value)


# --- unsafe folder names -----------------------------------------------------------------------

UNSAFE = [
    "a b", "weird:name", "café", ".hidden", "-dash", "_under", "a...b", "x~2", "a" * 81, "a..b", "0000", "0001", "12",
    "%2e%2e", "<>|*?", "a,b", "a...b,c", ",", "..", "...",
]  # fmt: skip


@pytest.mark.parametrize("folder", UNSAFE)
def test_unsafe_folder_names_get_a_sanitised_key(tmp_path: Path, folder: str) -> None:
    key = folder_key(folder)
    assert key != folder
    assert SAFE_KEY.fullmatch(key), key
    assert ".." not in key  # Dagster reads "a...b" as a range of keys
    assert "," not in key  # and "a,b" as two keys
    assert not re.fullmatch(r"\d+", key)  # never one of the flat chunks' keys
    assert folder_key(folder) == key  # stable
    layout = Layout.create(tmp_path)
    assert layout.partition_file(key, "x.parquet").parent.parent == tmp_path / "partitions"


def test_sanitised_keys_are_distinct() -> None:
    folders = UNSAFE + ["a_b", "a-b", "a b ", "a  b", "a\tb"]
    keys = [folder_key(f) for f in folders]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("folder", [*FOLDERS, "St._Charles", "a.b", "A-Z_09", "x" * 80, "v1.0"])
def test_safe_folder_names_are_their_own_key(folder: str) -> None:
    assert folder_key(folder) == folder


def test_digit_folder_does_not_share_a_flat_key() -> None:
    parts = one_split(make_rows(["0000/a", "flat1", "flat2"]))
    assert len(parts) == 2
    assert parts["0000"][0].name == "flat1"
    [folder_part] = [k for k in parts if k != "0000"]
    assert [r.name for r in parts[folder_part]] == ["0000/a"]


def test_unsafe_folder_of_any_size_is_one_partition() -> None:
    parts = one_split(make_rows([f"a b/{i}" for i in range(2001)]), flat_chunk_rows=2)
    assert sizes(parts) == {folder_key("a b"): 2001}


def test_partition_keys_register_as_dagster_partitions() -> None:
    names = [f"{f}/1" for f in UNSAFE if "/" not in f] + ["flat"] + [f"big/{i}" for i in range(3)]
    keys = list(one_split(make_rows(names), flat_chunk_rows=2))
    assert len(keys) == len(UNSAFE) + 2
    with dg.instance_for_test() as instance:
        assert register_partitions(instance, keys) == keys
        assert register_partitions(instance, keys) == []  # idempotent
        assert register_partitions(instance, [*keys[:2], "new", "new"]) == ["new"]
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == [*keys, "new"]


# --- fingerprints ------------------------------------------------------------------------------


def test_fingerprint_changes_only_for_the_changed_partition(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pairs = write_patchvq_csv(path, 400, folders=FOLDERS[:8], columns=38)
    before = {k: row_fingerprint(v) for k, v in one_split(read_manifest(path).rows).items()}
    changed = 137
    name, mos = pairs[changed]
    assert float(mos) != 12.5
    edited = [*pairs[:changed], (name, "12.5"), *pairs[changed + 1 :]]
    # rewritten with other random patch columns: only the one MOS may change a fingerprint
    write_patchvq_csv(path, 0, columns=38, names=[], extra_rows=edited, seed=99)
    rows = read_manifest(path).rows
    assert rows[changed].mos == 12.5
    after = {k: row_fingerprint(v) for k, v in one_split(rows).items()}
    assert after.keys() == before.keys()
    assert [k for k in before if before[k] != after[k]] == [name.split("/")[0]]


def test_fingerprint_one_mos_edit_in_the_file(tmp_path: Path) -> None:
    names = realistic_names(300, FOLDERS[:6])
    path = tmp_path / "m.csv"
    rows = [[n, str(40 + i % 50)] for i, n in enumerate(names)]
    write_alias_csv(path, ["name", "mos"], rows)
    before = {k: row_fingerprint(v) for k, v in one_split(read_manifest(path).rows).items()}
    rows[211][1] = "40.0001"
    write_alias_csv(path, ["name", "mos"], rows)
    after = {k: row_fingerprint(v) for k, v in one_split(read_manifest(path).rows).items()}
    assert [k for k in before if before[k] != after[k]] == [names[211].split("/")[0]]


def test_row_inserted_in_another_folder_changes_no_other_fingerprint(tmp_path: Path) -> None:
    # Every later row's index and line shift by one: position is not part of a partition's version.
    names = realistic_names(120, FOLDERS[:4])
    path = tmp_path / "m.csv"
    write_alias_csv(path, ["name", "mos"], [[n, "50"] for n in names])
    before = one_split(read_manifest(path).rows)
    write_alias_csv(path, ["name", "mos"], [[f"{FOLDERS[3]}/inserted", "50"]] + [[n, "50"] for n in names])
    after = one_split(read_manifest(path).rows)
    assert [r.line for r in after[FOLDERS[0]]] != [r.line for r in before[FOLDERS[0]]]
    changed = [k for k in before if row_fingerprint(before[k]) != row_fingerprint(after[k])]
    assert changed == [FOLDERS[3]]


@pytest.mark.parametrize("field", ["src", "mos", "mos_std_dev", "n_ratings", "url", "split"])
def test_fingerprint_covers_each_field(field: str) -> None:
    rows = make_rows(["a/1", "a/2"])
    other = {"src": "a/9.mp4", "mos": 51.0, "mos_std_dev": 0.5, "n_ratings": 3, "url": "https://h/x", "split": "test"}[field]
    changed = [rows[0], dataclasses.replace(rows[1], **{field: other})]
    assert row_fingerprint(changed) != row_fingerprint(rows)


def test_fingerprint_ignores_position_fields_and_sees_order() -> None:
    rows = make_rows(["a/1", "a/2"])
    moved = [dataclasses.replace(r, index=r.index + 10, line=r.line + 99) for r in rows]
    assert row_fingerprint(moved) == row_fingerprint(rows)  # an edit elsewhere in the file is not a change here
    assert row_fingerprint(rows[::-1]) != row_fingerprint(rows)
    assert row_fingerprint(rows + make_rows(["a/3"])) != row_fingerprint(rows)
    assert re.fullmatch(r"[0-9a-f]{24}", row_fingerprint(rows))


def test_plan_fingerprint_per_split() -> None:
    train = make_rows(["a/1", "a/2"], split="train")
    test = make_rows(["a/3"], split="test")
    plan = _plan({"train": train, "test": test}, 0)
    edited = _plan({"train": train, "test": [dataclasses.replace(test[0], mos=12.5)]}, 0)
    assert plan.fingerprint("a", "train") == edited.fingerprint("a", "train") == row_fingerprint(train)
    assert plan.fingerprint("a", "test") != edited.fingerprint("a", "test")
    assert plan.fingerprint("a") != edited.fingerprint("a")
    assert plan.fingerprint("a") == row_fingerprint(train + test)
    assert plan.fingerprint("nope") == row_fingerprint([])
