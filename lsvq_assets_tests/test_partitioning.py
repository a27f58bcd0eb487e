"""lsvq_assets.core.slicing: slice keys, their stability, the row cap and fingerprints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow, read_manifest
from lsvq_assets.core.slicing import SAFE_KEY, cap_rows, fingerprint, folder_key, slice_rows
from lsvq_assets.settings import LsvqSettings
from lsvq_assets_tests.manifest_fixtures import FOLDERS, labels_pairs, realistic_names, write_alias_csv, write_labels_txt, write_patchvq_csv


def make_rows(names: list[str], mos: float = 50.0) -> list[ManifestRow]:
    return [
        ManifestRow(i, i + 2, n, n + ".mp4", n.split("/", 1)[0] if "/" in n else "", mos, 0.0, 0, None)
        for i, n in enumerate(names)
    ]


def keys_of(slices: dict[str, list[ManifestRow]]) -> list[str]:
    return list(slices)


# --- one slice per folder ---------------------------------------------------------------------


@pytest.mark.parametrize("columns", [38, 5])
def test_one_slice_per_folder_in_file_order(tmp_path: Path, columns: int) -> None:
    path = tmp_path / "m.csv"
    write_patchvq_csv(path, 2000, columns=columns)
    rows = read_manifest(path).rows
    slices = slice_rows(rows)
    assert keys_of(slices) == list(FOLDERS)  # 51 folders, first-appearance order
    assert sum(len(v) for v in slices.values()) == 2000
    for key, members in slices.items():
        assert all(r.folder == key for r in members)
        assert [r.index for r in members] == sorted(r.index for r in members)


def test_interleaved_folders_keep_first_appearance_order() -> None:
    names = ["b/1", "a/1", "b/2", "c/1", "a/2", "b/3"]
    slices = slice_rows(make_rows(names))
    assert keys_of(slices) == ["b", "a", "c"]
    assert [r.name for r in slices["b"]] == ["b/1", "b/2", "b/3"]
    assert [r.name for r in slices["a"]] == ["a/1", "a/2"]


def test_labels_file_slices_like_the_csv(tmp_path: Path) -> None:
    csv_path, labels_path = tmp_path / "m.csv", tmp_path / "labels.txt"
    write_patchvq_csv(csv_path, 600, columns=5)
    write_labels_txt(labels_path, labels_pairs(600))
    a = slice_rows(read_manifest(csv_path).rows)
    b = slice_rows(read_manifest(labels_path).rows)
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in b.items()}


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
    slices = slice_rows(rows, slice_rows=size)
    assert {k: len(v) for k, v in slices.items()} == want
    assert [r for v in slices.values() for r in v] == rows


def test_flat_chunk_keys_past_9999() -> None:
    slices = slice_rows(make_rows([f"c{i}" for i in range(10_002)]), slice_rows=1)
    assert keys_of(slices)[-3:] == ["9999", "10000", "10001"]


def test_flat_and_folder_names_mixed() -> None:
    names = ["x1", "a/1", "x2", "x3", "b/1", "a/2", "x4"]
    slices = slice_rows(make_rows(names), slice_rows=2)
    assert {k: [r.name for r in v] for k, v in slices.items()} == {
        "0000": ["x1", "x2"],
        "a": ["a/1", "a/2"],
        "0001": ["x3", "x4"],
        "b": ["b/1"],
    }


def test_folder_key_is_first_component_only() -> None:
    slices = slice_rows(make_rows(["a/b/1", "a/c/2", "a/3"]))
    assert {k: len(v) for k, v in slices.items()} == {"a": 3}


# --- big folders -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "max_rows", "want"),
    [
        (1000, 1000, {"big": 1000}),
        (1001, 1000, {"big": 1000, "big~2": 1}),
        (2500, 1000, {"big": 1000, "big~2": 1000, "big~3": 500}),
        (10, 3, {"big": 3, "big~2": 3, "big~3": 3, "big~4": 1}),
    ],
)
def test_folder_over_max_slice_rows_continues(n: int, max_rows: int, want: dict[str, int]) -> None:
    rows = make_rows([f"big/{i}" for i in range(n)])
    slices = slice_rows(rows, max_slice_rows=max_rows)
    assert {k: len(v) for k, v in slices.items()} == want
    assert [r for v in slices.values() for r in v] == rows


def test_big_folder_interleaved_with_others() -> None:
    names = [f"big/{i}" for i in range(3)] + ["small/0"] + [f"big/{i}" for i in range(3, 5)]
    slices = slice_rows(make_rows(names), max_slice_rows=2)
    assert {k: [r.name for r in v] for k, v in slices.items()} == {
        "big": ["big/0", "big/1"],
        "big~2": ["big/2", "big/3"],
        "small": ["small/0"],
        "big~3": ["big/4"],
    }
    assert keys_of(slices) == ["big", "big~2", "small", "big~3"]


def test_bad_sizes() -> None:
    with pytest.raises(ValueError):
        slice_rows(make_rows(["a/1"]), slice_rows=0)
    with pytest.raises(ValueError):
        slice_rows(make_rows(["a/1"]), max_slice_rows=0)


# --- stability -------------------------------------------------------------------------------


def as_names(slices: dict[str, list[ManifestRow]]) -> dict[str, list[str]]:
    return {k: [r.src for r in v] for k, v in slices.items()}


@pytest.mark.parametrize("kind", ["csv", "labels"])
def test_keys_stable_when_read_again(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.csv"
    if kind == "csv":
        write_patchvq_csv(path, 3000, columns=38)
    else:
        write_labels_txt(path, labels_pairs(3000))
    first, second = read_manifest(path), read_manifest(path)
    a, b = slice_rows(first.rows, 500, 40), slice_rows(second.rows, 500, 40)
    assert as_names(a) == as_names(b)
    assert {k: fingerprint(v) for k, v in a.items()} == {k: fingerprint(v) for k, v in b.items()}


@pytest.mark.parametrize(("max_slice", "flat_size"), [(1000, 500), (25, 10), (7, 3)])
def test_keys_stable_when_rows_are_appended(tmp_path: Path, max_slice: int, flat_size: int) -> None:
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
    old = slice_rows(read_manifest(path).rows, flat_size, max_slice)
    write_alias_csv(path, ["name", "mos"], [[n, "50"] for n in base + appended])
    new_manifest = read_manifest(path)
    assert len(new_manifest.dropped) == 2
    new = slice_rows(new_manifest.rows, flat_size, max_slice)

    assert keys_of(new)[: len(old)] == keys_of(old)  # old keys first, in the same order
    assert len(new) > len(old)
    assert sum(len(v) for k, v in new.items() if k.split("~")[0] == FOLDERS[0]) == 150
    for key, rows in old.items():
        now = [r.src for r in new[key]]
        assert now[: len(rows)] == [r.src for r in rows]  # existing keys keep their rows
        if len(now) == len(rows):
            assert fingerprint(new[key]) == fingerprint(rows)  # untouched slices keep their version
        full = len(rows) == (flat_size if re.fullmatch(r"\d{4,}", key) else max_slice)
        if full:
            assert len(now) == len(rows)  # a full slice never grows


def test_rows_reordered_in_another_folder_do_not_move_keys() -> None:
    a = slice_rows(make_rows(["a/1", "b/1", "a/2"]))
    b = slice_rows(make_rows(["b/1", "a/1", "a/2"]))
    assert as_names(a) == as_names(b)


# --- the row cap ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_rows", "want"),
    [
        (0, ["b/1", "a/1", "b/2", "c/1", "a/2", "x"]),
        (-1, ["b/1", "a/1", "b/2", "c/1", "a/2", "x"]),
        (1, ["b/1"]),
        (3, ["b/1", "a/1", "b/2"]),
        (6, ["b/1", "a/1", "b/2", "c/1", "a/2", "x"]),
        (100, ["b/1", "a/1", "b/2", "c/1", "a/2", "x"]),
    ],
)
def test_cap_rows_in_manifest_order(max_rows: int, want: list[str]) -> None:
    rows = make_rows(["b/1", "a/1", "b/2", "c/1", "a/2", "x"])
    assert [r.name for r in cap_rows(rows, max_rows)] == want


@pytest.mark.parametrize(("max_rows", "want"), [(3, {"b": 2, "a": 1}), (4, {"b": 2, "a": 1, "c": 1}), (0, {"b": 2, "a": 2, "c": 1})])
def test_settings_cap_before_slicing(tmp_path: Path, max_rows: int, want: dict[str, int]) -> None:
    path = tmp_path / "m.csv"
    write_alias_csv(path, ["name", "mos"], [[n, "1"] for n in ["b/1", "a/1", "b/2", "c/1", "a/2"]])
    lsvq = LsvqSettings(lsvq_dir=str(tmp_path), manifest_csv=str(path), min_csv_rows=1, max_rows=max_rows)
    slices = lsvq.slices(lsvq.read_manifest())
    assert {k: len(v) for k, v in slices.items()} == want


def test_cap_counts_kept_rows_not_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    write_alias_csv(path, ["name", "mos"], [["a/1", "nan"], ["a/2", "1"], ["a/2", "2"], ["b/1", "3"], ["b/2", "4"]])
    lsvq = LsvqSettings(lsvq_dir=str(tmp_path), manifest_csv=str(path), min_csv_rows=1, max_rows=2)
    assert as_names(lsvq.slices(lsvq.read_manifest())) == {"a": ["a/2.mp4"], "b": ["b/1.mp4"]}


# --- unsafe folder names ---------------------------------------------------------------------

UNSAFE = ["a b", "weird:name", "café", ".hidden", "-dash", "_under", "a...b", "x~2", "a" * 81, "a..b", "0000", "0001", "12", "%2e%2e", "<>|*?"]


@pytest.mark.parametrize("folder", UNSAFE)
def test_unsafe_folder_names_get_a_sanitised_key(tmp_path: Path, folder: str) -> None:
    key = folder_key(folder)
    assert key != folder
    assert SAFE_KEY.fullmatch(key), key
    assert ".." not in key  # Dagster reads "a...b" as a range of keys
    assert not re.fullmatch(r"\d+", key)  # never one of the flat chunks' keys
    assert "~" not in key  # never a continuation key
    assert folder_key(folder) == key  # stable
    layout = Layout.create(tmp_path)
    assert layout.slice_file(key, "x.parquet").parent.parent == tmp_path / "slices"


def test_sanitised_keys_are_distinct() -> None:
    folders = UNSAFE + ["a_b", "a-b", "a b ", "a  b", "a\tb"]
    keys = [folder_key(f) for f in folders]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("folder", [*FOLDERS, "St._Charles", "a.b", "A-Z_09", "x" * 80, "v1.0"])
def test_safe_folder_names_are_their_own_key(folder: str) -> None:
    assert folder_key(folder) == folder


def test_digit_folder_does_not_share_a_flat_key() -> None:
    slices = slice_rows(make_rows(["0000/a", "flat1", "flat2"]), slice_rows=500)
    assert len(slices) == 2
    assert slices["0000"][0].name == "flat1"
    [folder_slice] = [k for k in slices if k != "0000"]
    assert [r.name for r in slices[folder_slice]] == ["0000/a"]


def test_unsafe_folder_continuation_keys() -> None:
    slices = slice_rows(make_rows([f"a b/{i}" for i in range(5)]), max_slice_rows=2)
    base = folder_key("a b")
    assert keys_of(slices) == [base, f"{base}~2", f"{base}~3"]


def test_slice_keys_register_as_dagster_partitions() -> None:
    import dagster as dg

    from lsvq_assets.partitions import SLICES_PARTITIONS_NAME, register_slices

    names = [f"{f}/1" for f in UNSAFE if "/" not in f] + ["flat"] + [f"big/{i}" for i in range(3)]
    keys = list(slice_rows(make_rows(names), max_slice_rows=2))
    with dg.instance_for_test() as instance:
        assert register_slices(instance, keys) == keys
        assert register_slices(instance, keys) == []  # idempotent
        assert instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME) == keys


# --- fingerprints ----------------------------------------------------------------------------


def test_fingerprint_changes_only_for_the_changed_slice(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    pairs = write_patchvq_csv(path, 400, folders=FOLDERS[:8], columns=38)
    before = {k: fingerprint(v) for k, v in slice_rows(read_manifest(path).rows).items()}
    changed = 137
    name, mos = pairs[changed]
    assert float(mos) != 12.5
    edited = [*pairs[:changed], (name, "12.5"), *pairs[changed + 1 :]]
    # rewritten with other random patch columns: only the one MOS may change a fingerprint
    write_patchvq_csv(path, 0, columns=38, names=[], extra_rows=edited, seed=99)
    rows = read_manifest(path).rows
    assert rows[changed].mos == 12.5
    after = {k: fingerprint(v) for k, v in slice_rows(rows).items()}
    folder = name.split("/")[0]
    assert after.keys() == before.keys()
    assert [k for k in before if before[k] != after[k]] == [folder]


def test_fingerprint_one_mos_edit_in_the_file(tmp_path: Path) -> None:
    names = realistic_names(300, FOLDERS[:6])
    path = tmp_path / "m.csv"
    rows = [[n, str(40 + i % 50)] for i, n in enumerate(names)]
    write_alias_csv(path, ["name", "mos"], rows)
    before = {k: fingerprint(v) for k, v in slice_rows(read_manifest(path).rows).items()}
    rows[211][1] = "40.0001"
    write_alias_csv(path, ["name", "mos"], rows)
    after = {k: fingerprint(v) for k, v in slice_rows(read_manifest(path).rows).items()}
    changed = [k for k in before if before[k] != after[k]]
    assert changed == [names[211].split("/")[0]]


@pytest.mark.parametrize("field", ["src", "mos", "mos_std_dev", "n_ratings", "url"])
def test_fingerprint_covers_each_field(field: str) -> None:
    import dataclasses

    rows = make_rows(["a/1", "a/2"])
    other = {"src": "a/9.mp4", "mos": 51.0, "mos_std_dev": 0.5, "n_ratings": 3, "url": "https://h/x"}[field]
    changed = [rows[0], dataclasses.replace(rows[1], **{field: other})]
    assert fingerprint(changed) != fingerprint(rows)


def test_fingerprint_ignores_position_fields_and_sees_order() -> None:
    import dataclasses

    rows = make_rows(["a/1", "a/2"])
    moved = [dataclasses.replace(r, index=r.index + 10, line=r.line + 99) for r in rows]
    assert fingerprint(moved) == fingerprint(rows)  # an edit elsewhere in the file is not a change here
    assert fingerprint(rows[::-1]) != fingerprint(rows)
    assert fingerprint(rows + make_rows(["a/3"])) != fingerprint(rows)
    assert re.fullmatch(r"[0-9a-f]{24}", fingerprint(rows))
