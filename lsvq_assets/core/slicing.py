"""Slices: the bounded sets of manifest rows that are Dagster's partitions.

A folder is a slice (key = folder name); a folder over ``max_slice_rows`` continues in
``<folder>~2``, ``<folder>~3``...; flat names fall into chunks of ``slice_rows`` keyed
``0000``, ``0001``... Keys depend only on the rows before them in the same folder (or among
the flat rows), so reading the same file again, or the file with rows appended, keeps them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from lsvq_assets.core.manifest import ManifestRow

SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def cap_rows(rows: Sequence[ManifestRow], max_rows: int) -> list[ManifestRow]:
    """The first ``max_rows`` rows in manifest order (all of them when ``max_rows`` <= 0)."""
    return list(rows[:max_rows] if max_rows > 0 else rows)


def folder_key(folder: str) -> str:
    """The slice key of a folder: the name itself when it is a safe key, else a sanitised name + hash."""
    # All-digit names are the flat chunks' keys (0000, 0001...): a folder must not share one.
    if SAFE_KEY.fullmatch(folder) and ".." not in folder and not folder.isdigit():
        return folder
    # No ".." in a key: Dagster reads "a...b" as a range of partition keys.
    clean = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", folder)).strip("._-")[:60] or "folder"
    return f"{clean}-{hashlib.sha256(folder.encode()).hexdigest()[:8]}"


def slice_rows(rows: Sequence[ManifestRow], slice_rows: int = 500, max_slice_rows: int = 1000) -> dict[str, list[ManifestRow]]:
    """Group rows into slices, keys in order of each slice's first row."""
    if slice_rows < 1 or max_slice_rows < 1:
        raise ValueError("slice_rows and max_slice_rows must be at least 1")
    slices: dict[str, list[ManifestRow]] = {}
    per_folder: dict[str, int] = {}
    flat = 0
    for row in rows:
        if row.folder:
            i = per_folder.get(row.folder, 0)
            per_folder[row.folder] = i + 1
            part = i // max_slice_rows
            key = folder_key(row.folder) + (f"~{part + 1}" if part else "")
        else:
            key = f"{flat // slice_rows:04d}"
            flat += 1
        slices.setdefault(key, []).append(row)
    return slices


def fingerprint(rows: Sequence[ManifestRow]) -> str:
    """A short, stable hash of what a slice holds (names, MOS, sd, n, URLs): its data version."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.src, r.mos, r.mos_std_dev, r.n_ratings, r.url]).encode())
        h.update(b"\n")
    return h.hexdigest()[:24]
