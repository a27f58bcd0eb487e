"""Properties of read_manifest and partitioning over generated rows (Hypothesis).

Every data row is either kept or dropped with a reason; kept rows are safe paths under the
clips directory, in file order; parsing raises nothing but ManifestError.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestError, name_problem, read_manifest
from lsvq_assets.core.partitioning import SAFE_KEY, folder_key, partition_rows
from lsvq_assets.core.urls import check_url

HEADER = ["name", "mos", "sd", "n", "url"]
SUFFIX = ".mp4"

# Names like the real ones: folders and stems of [A-Za-z0-9._-], with runs of dots and slashes.
_part = st.text(alphabet="abcXYZ019._-", min_size=0, max_size=12)
realistic_name = st.one_of(
    st.builds(lambda f, s: f"{f}/{s}", st.sampled_from(["yfcc-batch1", "ia-batch19", "backup", "x"]), _part),
    st.lists(st.one_of(_part, st.sampled_from(["..", ".", "...", ""])), min_size=1, max_size=4).map("/".join),
    st.sampled_from(["ia-batch19/From_a_purple_vortex...", "x/Presents..._Mary_Poppins", "a/St._Charles", "a/x.mp4", "../x", "/etc/passwd", "a/../../x", "C:\\x", "a/b/"]),
)
junk_name = st.text(max_size=40)  # any code point but surrogates: spaces, controls, NUL, commas, quotes, newlines
long_name = st.integers(240, 300).map(lambda k: "a/" + "x" * k)
names = st.one_of(realistic_name, realistic_name, junk_name, long_name)

mos = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 100).map(str),
    st.sampled_from(["nan", "inf", "-inf", "", " ", "abc", "1e999", "50 ", " 7", "1_0", "0x1"]),
    st.text(max_size=8),
)
optional = st.one_of(st.just(""), st.floats(allow_nan=True).map(repr), st.text(max_size=6))
url = st.one_of(
    st.just(""),
    st.sampled_from(["https://example.org/x.mp4", "http://h/x", "ftp://h/x", "file:///etc/passwd", "javascript:alert(1)", "http://", "//h/x", "http://[::1"]),
    st.text(max_size=12),
)
row = st.tuples(names, mos, optional, optional, url)
rows_st = st.lists(row, max_size=25)

CLIPS = Layout.create(Path(tempfile.gettempdir()) / "lsvq-prop" / ".." / "lsvq-prop")  # a base holding ".."


REASONS = {"no-name", "name-too-long", "absolute-name", "bad-name", "path-traversal", "bad-mos", "duplicate-name", "bad-url", "bad-url-scheme"}


def _bad(name: str) -> bool:
    return bool(name_problem(name) or name_problem(name + SUFFIX))


def _write(path: Path, rows: list[tuple[str, ...]], crlf: bool, bom: bool) -> bytes:
    buf = io.StringIO(newline="")
    # Python 3.11's writer leaves a lone "\r" unquoted when the line ends in "\n" (a reader then sees
    # a line break): quote every field in that case so the file holds the rows as generated.
    quoting = csv.QUOTE_ALL if not crlf and any("\r" in f for r in rows for f in r) else csv.QUOTE_MINIMAL
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n", quoting=quoting)
    writer.writerow(HEADER)
    writer.writerows(rows)
    raw = ("\ufeff" if bom else "").encode() + buf.getvalue().encode("utf-8")
    path.write_bytes(raw)
    return raw


def _parse(raw_rows: list[tuple[str, ...]], crlf: bool, bom: bool):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        raw = _write(path, raw_rows, crlf, bom)
        try:
            return raw, read_manifest(path, clip_suffix=SUFFIX)
        except ManifestError as exc:  # anything else fails the test
            return raw, exc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows_st, st.booleans(), st.booleans())
@example([("a/x", "50", "", "", ""), ("a/x", "50", "", "", "")], False, False)
@example([("ia-batch19/From_a_purple_vortex...", "64.6", "nan", "1e30", "ftp://h/x")], True, True)
def test_every_row_is_kept_or_dropped(raw_rows: list[tuple[str, ...]], crlf: bool, bom: bool) -> None:
    raw, result = _parse(raw_rows, crlf, bom)
    if isinstance(result, ManifestError):
        # the only file-level failure these files can cause: a NUL byte makes it "not a text file"
        assert b"\x00" in raw and "not a text file" in str(result), str(result)
        return
    m = result
    assert m.format == "csv" and m.columns == HEADER
    data = [r for r in raw_rows if any(f.strip() for f in r)]  # blank rows are not rows
    assert m.data_rows == len(data)
    assert len(m.rows) + len(m.dropped) == m.data_rows

    # kept and dropped rows together are the data rows, in file order
    merged = sorted([(r.line, r.name) for r in m.rows] + [(d.line, d.name) for d in m.dropped])
    lines = [line for line, _ in merged]
    assert lines == sorted(set(lines)) and all(line >= 2 for line in lines)
    names_in_file = [r[0].strip() for r in data]
    assert [n for _, n in merged] == [n[:200] if _bad(n) else n for n in names_in_file]
    assert all(d.reason for d in m.dropped)
    assert {d.reason.split(":")[0] for d in m.dropped} <= REASONS

    seen: set[str] = set()
    for kept in m.rows:
        assert kept.src == kept.name + SUFFIX and kept.src not in seen
        seen.add(kept.src)
        parts = kept.src.split("/")
        assert not os.path.isabs(kept.src) and ".." not in parts and "." not in parts and "" not in parts
        assert all(len(p.encode()) <= 255 for p in parts)
        path = CLIPS.clip_path(kept.src)  # raises ValueError outside the clips dir
        assert os.path.commonpath([path, os.path.normpath(CLIPS.clips_dir)]) == os.path.normpath(CLIPS.clips_dir)
        assert math.isfinite(kept.mos) and math.isfinite(kept.mos_std_dev)
        assert isinstance(kept.n_ratings, int) and abs(kept.n_ratings) < 2**63
        assert kept.url is None or check_url(kept.url) is None
        assert kept.folder == (kept.name.split("/")[0] if "/" in kept.name else "")
    assert [r.index for r in m.rows] == list(range(len(m.rows)))
    assert [r.line for r in m.rows] == sorted(r.line for r in m.rows)

    # and every partition key is a safe Dagster partition key, holding all the kept rows once
    parts = partition_rows([m.rows], flat_chunk_rows=3)
    assert sorted(r.index for v in parts.values() for r in v) == list(range(len(m.rows)))
    for key, members in parts.items():
        assert SAFE_KEY.fullmatch(key) and ".." not in key and "," not in key, key
        assert len({r.folder for r in members}) == 1  # one folder per partition (or flat names)
        if members[0].folder:
            assert key == folder_key(members[0].folder)
        else:
            assert key.isdigit() and len(members) <= 3
    assert len({folder_key(f) for f in {r.folder for r in m.rows if r.folder}}) == len({r.folder for r in m.rows if r.folder})

    # the same rows as two splits (each clip in both): every clip lands in one partition
    test = [dataclasses.replace(r, split="test") for r in reversed(m.rows)]
    both = partition_rows([m.rows, test], flat_chunk_rows=3)
    assert list(both) == list(parts)
    for key, members in both.items():
        assert sorted(r.src for r in members if r.split == "train") == sorted(r.src for r in members if r.split == "test")
        assert [r for r in members if r.split == "train"] == parts[key]


@settings(max_examples=300, deadline=None)
@given(st.one_of(junk_name, _part, st.text(alphabet=".,~0123456789 a", max_size=12)))
@example("a...b,c")
@example("0000")
@example("..")
def test_every_folder_gets_a_safe_partition_key(folder: str) -> None:
    key = folder_key(folder)
    assert SAFE_KEY.fullmatch(key), key
    assert ".." not in key and "," not in key  # Dagster reads "a...b" as a range, "a,b" as two keys
    assert not key.isdigit()  # never a flat chunk's key
    assert folder_key(folder) == key


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(realistic_name, st.floats(0, 100)), max_size=30))
def test_realistic_rows_round_trip(pairs: list[tuple[str, float]]) -> None:
    raw, m = _parse([(n, repr(v), "", "", "") for n, v in pairs], False, False)
    assert not isinstance(m, ManifestError)
    expected, seen = [], set()
    for n, v in pairs:
        if not _bad(n) and n not in seen:
            seen.add(n)
            expected.append((n, n + SUFFIX, v))
    assert [(r.name, r.src, r.mos) for r in m.rows] == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.csv"
        path.write_bytes(data)
        try:
            m = read_manifest(path)
        except ManifestError as exc:
            assert str(path) in str(exc)
            return
        assert len(m.rows) + len(m.dropped) == m.data_rows
        for r in m.rows:
            CLIPS.clip_path(r.src)
