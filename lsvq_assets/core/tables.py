"""The per-slice tables (parquet) the slice assets pass along, read and written in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lsvq_assets.core.files import atomic_path
from lsvq_assets.core.manifest import ManifestRow

MANIFEST_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("line", pa.int64()),
        ("name", pa.string()),
        ("src", pa.string()),
        ("folder", pa.string()),
        ("mos", pa.float64()),
        ("mos_std_dev", pa.float64()),
        ("n_ratings", pa.int64()),
        ("url", pa.string()),
    ]
)


def write_table(path: Path, records: Sequence[dict], schema: pa.Schema) -> None:
    """Write ``records`` as parquet atomically (temp file + rename)."""
    table = pa.Table.from_pylist(list(records), schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def write_manifest_rows(path: Path, rows: Sequence[ManifestRow]) -> None:
    write_table(path, [dataclasses.asdict(r) for r in rows], MANIFEST_SCHEMA)


def read_manifest_rows(path: Path) -> list[ManifestRow]:
    return [ManifestRow(**r) for r in read_table(path)]
