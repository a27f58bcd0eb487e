"""MOS-corpus rows: the 15 keys, their exact bytes, dedup and shard assembly."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

CORPUS = "lsvq"
# key -> the JSON types a value may have
ROW_TYPES: dict[str, tuple[type, ...]] = {
    "src": (str,),
    "src_sha256": (str,),
    "src_size_bytes": (int,),
    "width": (int,),
    "height": (int,),
    "framerate": (float, int),
    "duration_s": (float, int),
    "pix_fmt": (str,),
    "encoder_upstream": (str,),
    "mos": (float, int),
    "mos_std_dev": (float, int),
    "n_ratings": (int,),
    "corpus": (str,),
    "corpus_version": (str,),
    "ingested_at_utc": (str,),
}
ROW_KEYS = tuple(sorted(ROW_TYPES))


def build_row(manifest_row: Mapping, clip: Mapping, probe: Mapping, corpus_version: str) -> dict:
    """One MOS-corpus row from a manifest row, its clip outcome and its probe."""
    return {
        "src": manifest_row["src"],
        "src_sha256": clip["sha256"],
        "src_size_bytes": int(clip["size"]),
        "width": int(probe["width"]),
        "height": int(probe["height"]),
        "framerate": float(probe["framerate"]),
        "duration_s": float(probe["duration_s"]),
        "pix_fmt": probe["pix_fmt"],
        "encoder_upstream": probe["encoder_upstream"],
        "mos": float(manifest_row["mos"]),
        "mos_std_dev": float(manifest_row["mos_std_dev"]),
        "n_ratings": int(manifest_row["n_ratings"]),
        "corpus": CORPUS,
        "corpus_version": corpus_version,
        "ingested_at_utc": clip["ingested_at_utc"],
    }


_ROW_ENCODE = json.JSONEncoder(sort_keys=True).encode  # what json.dumps(row, sort_keys=True) makes a call


def row_line(row: Mapping) -> str:
    """The row's bytes in the shard (without newline): the seed's ``json.dumps(row, sort_keys=True)``."""
    return _ROW_ENCODE(row)


def line_problems(line: str) -> list[str]:
    """What is wrong with one shard line against the schema (empty when it is valid)."""
    return parse_line(line)[1]


def parse_line(line: str) -> tuple[dict | None, list[str]]:
    """One shard line's row (None when it is not a JSON object) and what is wrong with it against the schema."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        return None, [f"not JSON: {exc}"]
    if not isinstance(row, dict):
        return None, ["not an object"]
    problems = []
    if set(row) != set(ROW_KEYS):
        missing, extra = set(ROW_KEYS) - set(row), set(row) - set(ROW_KEYS)
        problems.append(f"keys: missing {sorted(missing)}, extra {sorted(extra)}")
    for key, types in ROW_TYPES.items():
        if key in row and (not isinstance(row[key], types) or isinstance(row[key], bool)):
            problems.append(f"{key}: {type(row[key]).__name__} is not {'/'.join(t.__name__ for t in types)}")
    for key in ROW_KEYS:  # NaN / Infinity: json.dumps writes them, strict JSON readers refuse them
        value = row.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key} is not finite")
    if not problems and row_line(row) != line:
        problems.append("bytes differ from json.dumps(row, sort_keys=True)")
    return row, problems


L = TypeVar("L")  # a line, or where the caller keeps it (the shard: its number in a spill file)


@dataclass
class Assembled(Generic[L]):
    lines: list[L]
    dedups: int
    duplicates: list[tuple[str, str]]  # (src dropped, src kept)
    srcs: list[str] = field(default_factory=list)  # the src of each kept line


@overload
def assemble(rows: Iterable[tuple[int, str]]) -> Assembled[str]: ...
@overload
def assemble(rows: Iterable[tuple[int, L, Mapping]]) -> Assembled[L]: ...
def assemble(rows: Iterable[tuple[int, Any] | tuple[int, Any, Mapping]]) -> Assembled[Any]:
    """Order (manifest index, line) pairs by index and drop later lines whose sha256 was seen.

    A pair may carry its line already parsed as a third item, ``(index, line, row)``: the line is
    then not parsed again (the shard's 39k lines are read once), and need not be the line itself
    (the shard passes where it keeps it).
    """
    kept: dict[str, str] = {}
    out: Assembled[Any] = Assembled([], 0, [])
    for item in sorted(rows, key=lambda pair: pair[0]):
        line = item[1]
        row = item[2] if len(item) > 2 else json.loads(line)
        first = kept.get(row["src_sha256"])
        if first is not None:
            out.dedups += 1
            out.duplicates.append((row["src"], first))
            continue
        kept[row["src_sha256"]] = row["src"]
        out.lines.append(line)
        out.srcs.append(row["src"])
    return out
