"""Partitions: the unit of download, shared by every split (DESIGN §2).

A folder is one partition (key = the folder's name), holding that folder's rows of *every*
split; names without a folder fall into chunks of ``flat_chunk_rows`` keyed ``0000``, ``0001``...
What a partition holds depends only on the label files, never on the row cap: the cap only
chooses which partitions run (those holding any of a split's first N rows) and which rows each
split's shard covers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lsvq_assets.core.manifest import Manifest, ManifestRow

SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
SPLIT_NAME = re.compile(r"[a-z0-9_]{1,40}")


def folder_key(folder: str) -> str:
    """The partition key of a folder: the name itself when it is a safe key, else a sanitised name + hash."""
    # All-digit names are the flat chunks' keys (0000, 0001...): a folder must not share one.
    if SAFE_KEY.fullmatch(folder) and ".." not in folder and not folder.isdigit():
        return folder
    # No ".." in a key: Dagster reads "a...b" as a range of partition keys; no "," either.
    clean = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "_", folder)).strip("._-")[:60] or "folder"
    return f"{clean}-{hashlib.sha256(folder.encode()).hexdigest()[:8]}"


def partition_rows(splits: Iterable[Sequence[ManifestRow]], flat_chunk_rows: int = 500) -> dict[str, list[ManifestRow]]:
    """Group every split's rows into partitions, keys in order of each partition's first row.

    Splits are taken in the order given; a flat name (no folder) keeps the chunk of its first
    appearance, so the same clip in two splits lands in one partition.
    """
    if flat_chunk_rows < 1:
        raise ValueError("flat_chunk_rows must be at least 1")
    parts: dict[str, list[ManifestRow]] = {}
    flat: dict[str, str] = {}
    for rows in splits:
        for row in rows:
            if row.folder:
                key = folder_key(row.folder)
            else:
                key = flat.get(row.src) or flat.setdefault(row.src, f"{len(flat) // flat_chunk_rows:04d}")
            parts.setdefault(key, []).append(row)
    return parts


def row_fingerprint(rows: Iterable[ManifestRow]) -> str:
    """A short, stable hash of rows (split, name, MOS, sd, n, URL): a partition's data version.

    The row's position in its file is left out: a row inserted in another folder changes no
    other partition.
    """
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.split, r.src, r.mos, r.mos_std_dev, r.n_ratings, r.url]).encode())
        h.update(b"\n")
    return h.hexdigest()[:24]


@dataclass
class Plan:
    """Every split's rows, their partitions and what the row cap selects."""

    splits: dict[str, Manifest]
    partitions: dict[str, list[ManifestRow]]
    max_rows: int
    key_of: dict[str, str] = field(default_factory=dict)  # src -> partition key
    _fingerprints: dict[tuple[str, str | None], str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.key_of:  # given by a plan of the same partitions under another cap
            self.key_of = {r.src: key for key, rows in self.partitions.items() for r in rows}

    def capped(self, split: str) -> list[ManifestRow]:
        """The split's first ``max_rows`` rows in file order (all when ``max_rows`` <= 0)."""
        rows = self.splits[split].rows
        return list(rows[: self.max_rows] if self.max_rows > 0 else rows)

    def split_partitions(self, split: str) -> list[str]:
        """The partitions holding any of the split's capped rows, in order of first row."""
        return list(dict.fromkeys(self.key_of[r.src] for r in self.capped(split)))

    def selected(self) -> list[str]:
        """The partitions to run: those holding any capped row of any split, in partition order."""
        wanted = {k for s in self.splits for k in self.split_partitions(s)}
        return [k for k in self.partitions if k in wanted]

    def fingerprint(self, key: str, split: str | None = None) -> str:
        """The data version of a partition's rows (of one split, or of every split)."""
        rows = self.partitions.get(key, [])
        if split is not None and all(r.split == split for r in rows):
            split = None  # the same rows: computed once (a refresh asks for both of every partition)
        cached = self._fingerprints.get((key, split))
        if cached is None:
            cached = self._fingerprints[(key, split)] = row_fingerprint(r for r in rows if split is None or r.split == split)
        return cached

    def dropped(self) -> dict[str, int]:
        """Dropped rows by reason, over every split."""
        counts: dict[str, int] = {}
        for manifest in self.splits.values():
            for reason, n in manifest.dropped_counts().items():
                counts[reason] = counts.get(reason, 0) + n
        return counts

    def summary(self) -> dict:
        """What ``--dry-run`` prints."""
        keys = self.selected()
        return {
            "rows": sum(len(self.capped(s)) for s in self.splits),
            "dropped": self.dropped(),
            "slices": {k: len(self.partitions[k]) for k in keys},
            "splits": {s: {"rows": len(self.capped(s)), "partitions": len(self.split_partitions(s))} for s in self.splits},
        }


def parse_splits(spec: str | Sequence[str]) -> dict[str, str]:
    """``"train=/p/a.txt,test=/p/b.txt"`` (or a list of ``NAME=PATH``) -> {name: path}, in order.

    Raises ValueError naming the entry that is not ``NAME=PATH`` with a valid, unique name.
    """
    items = [s for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.strip().partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not path:
            raise ValueError(f"split {item.strip()!r} is not NAME=PATH (e.g. train=/data/train_labels.txt)")
        if not SPLIT_NAME.fullmatch(name):
            raise ValueError(f"split name {name!r} (file {path}): use lowercase letters, digits and _ only")
        if name in out:
            raise ValueError(f"split {name!r} is named twice ({out[name]} and {path})")
        out[name] = path
    return out


def rows_by_split(rows: Sequence[ManifestRow]) -> Mapping[str, list[ManifestRow]]:
    out: dict[str, list[ManifestRow]] = {}
    for r in rows:
        out.setdefault(r.split, []).append(r)
    return out
