"""The per-partition tables (parquet) the partition assets pass along, read and written in one place.

A table lives at a storage location (``core/storage.py``): a local path or an object-store URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lsvq_assets.core import storage
from lsvq_assets.core.files import atomic_path
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.storage import Location

# The partitions' tables are small and many: Arrow's default pool (jemalloc/mimalloc) keeps what
# they freed, and a whole-corpus run grew by ~1 MB a partition for it. The system allocator gives
# it back (measured at corpus scale: peak 356 -> 296 MB, no change in time).
pa.set_memory_pool(pa.system_memory_pool())

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
        ("split", pa.string()),
    ]
)
# One split's rows of one partition (lsvq_rows_<split>): every row of the split's label file in
# the partition and what became of it; ``line`` is the shard's bytes for a written row.
ROWS_SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("mos", pa.float64()),
        ("mos_std_dev", pa.float64()),
        ("n_ratings", pa.int64()),
        ("outcome", pa.string()),  # written | download-failed | broken
        ("reason", pa.string()),
        ("src_sha256", pa.string()),
        ("line", pa.string()),
    ]
)


def write_table(path: Location, records: Sequence[dict], schema: pa.Schema, meta: dict[str, str] | None = None) -> None:
    """Write ``records`` as parquet, whole or not at all; ``meta`` goes in the schema's metadata."""
    table = pa.Table.from_pylist(list(records), schema=schema.with_metadata(meta) if meta else schema)
    if storage.is_remote(path):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.write_bytes(path, sink.getvalue().to_pybytes())
        return
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp)


def _source(path: Location) -> object:
    return pa.BufferReader(storage.read_bytes(path)) if storage.is_remote(path) else path


def read_table(path: Location) -> list[dict]:
    # One file, read as one: ``pq.read_table`` goes through the datasets API, whose import alone
    # costs every process ~0.1 s of CPU (measured at corpus scale and in the laptop case).
    with pq.ParquetFile(_source(path)) as file:
        return file.read().to_pylist()


def read_meta(path: Location) -> dict[str, str]:
    """The schema metadata ``write_table`` stored (without parquet's own keys)."""
    meta = pq.read_schema(_source(path)).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW:")}


def write_manifest_rows(path: Location, rows: Sequence[ManifestRow], meta: dict[str, str] | None = None) -> None:
    write_table(path, [vars(r) for r in rows], MANIFEST_SCHEMA, meta)  # flat rows: asdict's deep copy is not needed


def read_manifest_rows(path: Location) -> list[ManifestRow]:
    return [ManifestRow(**r) for r in read_table(path)]
