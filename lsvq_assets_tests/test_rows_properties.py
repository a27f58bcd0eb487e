"""Properties of the row builder (core/rows.py) over generated inputs (Hypothesis).

* any valid manifest row, clip outcome and probe give a line ``line_problems`` accepts, which is
  ``json.dumps(row, sort_keys=True)`` exactly and gives every value back;
* any change that breaks the schema (a key missing or extra, a wrong type, a non-finite number,
  other bytes for the same row) is caught by ``line_problems``;
* ``assemble`` orders by manifest index whatever the input order, keeps the first line of each
  sha256, counts and names the dropped duplicates, never alters a line, and is idempotent.
"""

from __future__ import annotations

import json
import math
import random
from datetime import timezone

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lsvq_assets.core.rows import CORPUS, ROW_KEYS, ROW_TYPES, assemble, build_row, line_problems, row_line

finite = st.floats(allow_nan=False, allow_infinity=False)
int64 = st.integers(-(2**63), 2**63 - 1)
sha = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
timestamp = st.datetimes(timezones=st.just(timezone.utc)).map(
    lambda d: d.replace(microsecond=0).isoformat()
)

manifest_rows = st.fixed_dictionaries(
    {"src": st.text(min_size=1), "mos": finite, "mos_std_dev": finite, "n_ratings": int64}
)
clips = st.fixed_dictionaries({"sha256": sha, "size": st.integers(0, 2**63 - 1), "ingested_at_utc": timestamp})
probes = st.fixed_dictionaries(
    {
        "width": st.integers(1, 2**31),
        "height": st.integers(1, 2**31),
        "framerate": st.floats(0, 1e6),
        "duration_s": st.floats(0, 1e9),
        "pix_fmt": st.text(),
        "encoder_upstream": st.text(),
    }
)


def _strict(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


@settings(max_examples=300, deadline=None)
@given(manifest_rows, clips, probes, st.text())
def test_built_rows_are_valid_sorted_key_lines(m: dict, clip: dict, probe: dict, version: str) -> None:
    row = build_row(m, clip, probe, version)
    line = row_line(row)
    assert line_problems(line) == []
    assert line == json.dumps(json.loads(line), sort_keys=True)  # the seed's bytes
    assert "\n" not in line  # one line per row
    back = json.loads(line, parse_constant=_strict)  # strict JSON: no NaN / Infinity
    assert list(back) == list(ROW_KEYS) and len(back) == 15
    assert back == {
        "src": m["src"], "src_sha256": clip["sha256"], "src_size_bytes": clip["size"],
        "width": probe["width"], "height": probe["height"], "framerate": probe["framerate"],
        "duration_s": probe["duration_s"], "pix_fmt": probe["pix_fmt"], "encoder_upstream": probe["encoder_upstream"],
        "mos": m["mos"], "mos_std_dev": m["mos_std_dev"], "n_ratings": m["n_ratings"],
        "corpus": CORPUS, "corpus_version": version, "ingested_at_utc": clip["ingested_at_utc"],
    }
    for key, types in ROW_TYPES.items():
        assert isinstance(back[key], types) and not isinstance(back[key], bool)


def _wrong_value(key: str, draw) -> object:
    types = ROW_TYPES[key]
    choices = [None, True, [], {}]
    if str not in types:
        choices.append(draw(st.text(max_size=3)))
    if float not in types:
        choices.append(draw(finite.filter(lambda f: not f.is_integer())))
    if int not in types and float not in types:
        choices.append(draw(st.integers()))
    return draw(st.sampled_from(choices))


@st.composite
def broken_lines(draw) -> str:
    row = build_row(draw(manifest_rows), draw(clips), draw(probes), draw(st.text(max_size=8)))
    kind = draw(st.sampled_from(["drop", "extra", "type", "non-finite", "bytes"]))
    key = draw(st.sampled_from(ROW_KEYS))
    if kind == "drop":
        del row[key]
    elif kind == "extra":
        row[draw(st.text(min_size=1).filter(lambda k: k not in ROW_TYPES))] = draw(st.integers())
    elif kind == "type":
        row[key] = _wrong_value(key, draw)
    elif kind == "non-finite":
        row[draw(st.sampled_from([k for k, t in ROW_TYPES.items() if float in t]))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    else:  # the same row, other bytes: unsorted keys, other separators, ASCII escapes off
        variant = draw(st.sampled_from(["unsorted", "compact", "indent", "utf8"]))
        if variant == "unsorted":
            keys = list(row)
            draw(st.randoms()).shuffle(keys)
            assume(keys != sorted(keys))
            return json.dumps({k: row[k] for k in keys})
        if variant == "compact":
            return json.dumps(row, sort_keys=True, separators=(",", ":"))
        if variant == "indent":
            return json.dumps(row, sort_keys=True, indent=1)
        assume(any(ord(c) > 127 for v in row.values() if isinstance(v, str) for c in v))
        return json.dumps(row, sort_keys=True, ensure_ascii=False)
    return json.dumps(row, sort_keys=True)


@settings(max_examples=400, deadline=None)
@given(broken_lines())
def test_line_problems_catch_every_broken_line(line: str) -> None:
    assert line_problems(line) != []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from([*ROW_KEYS, "x"]), inner, max_size=16),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.builds(json.dumps, json_values), st.builds(lambda v: json.dumps(v, sort_keys=True), json_values)))
def test_line_problems_never_raise(text: str) -> None:
    assert isinstance(line_problems(text), list)


# --------------------------------------------------------------------------- assemble


@st.composite
def part_lines(draw) -> list[tuple[int, str]]:
    """(manifest index, line) pairs: unique indices, sha256s from a small pool (many duplicates)."""
    n = draw(st.integers(0, 40))
    indices = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    pool = draw(st.lists(sha, min_size=1, max_size=6, unique=True))
    out = []
    for i in indices:
        row = build_row(
            {"src": f"f/{i}.mp4", "mos": draw(finite), "mos_std_dev": 0.0, "n_ratings": 0},
            {"sha256": draw(st.sampled_from(pool)), "size": 1, "ingested_at_utc": "2024-01-01T00:00:00+00:00"},
            {"width": 1, "height": 1, "framerate": 25.0, "duration_s": 1.0, "pix_fmt": "yuv420p", "encoder_upstream": "h264"},
            "lsvq-2021",
        )
        out.append((i, row_line(row)))
    return out


@settings(max_examples=300, deadline=None)
@given(part_lines(), st.randoms(use_true_random=False))
def test_assemble_keeps_the_first_of_each_sha256_in_index_order(pairs: list[tuple[int, str]], rnd: random.Random) -> None:
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    out = assemble(shuffled)
    by_index = sorted(pairs)
    first: dict[str, tuple[int, str]] = {}
    for index, line in by_index:
        first.setdefault(json.loads(line)["src_sha256"], (index, line))
    assert out.lines == [line for _, line in sorted(first.values())]  # first of each sha, index order, bytes unchanged
    assert out.dedups == len(pairs) - len(first) == len(out.duplicates)
    kept_src = {sha_: json.loads(line)["src"] for sha_, (_, line) in first.items()}
    expected_dups = [
        (json.loads(line)["src"], kept_src[json.loads(line)["src_sha256"]])
        for index, line in by_index
        if first[json.loads(line)["src_sha256"]][0] != index
    ]
    assert out.duplicates == expected_dups
    assert len({json.loads(line)["src_sha256"] for line in out.lines}) == len(out.lines)
    assert assemble(pairs).lines == out.lines  # the input order does not matter
    if hasattr(out, "srcs"):
        assert out.srcs == [json.loads(line)["src"] for line in out.lines]
    parsed = assemble([(i, line, json.loads(line)) for i, line in shuffled])  # lines parsed by the caller
    assert (parsed.lines, parsed.dedups, parsed.duplicates) == (out.lines, out.dedups, out.duplicates)
    again = assemble(list(enumerate(out.lines)))
    assert again.lines == out.lines and again.dedups == 0  # idempotent
