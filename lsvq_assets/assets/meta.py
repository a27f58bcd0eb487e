"""Metadata a person can read in the UI: markdown tables, column schemas, counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import pyarrow as pa

OWNERS = ["team:ml-data"]
GROUP = "lsvq"


def md_table(records: Sequence[Mapping[str, Any]], columns: Sequence[str], limit: int = 20, total: int | None = None) -> dg.MetadataValue:
    """A markdown table of the first ``limit`` records, saying how many there are in all."""
    total = len(records) if total is None else total
    if not total:
        return dg.MetadataValue.md("_none_")
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(r.get(c, "")) for c in columns) + " |" for r in records[:limit]]
    if total > limit:
        lines.append(f"\n_first {limit} of {total}_")
    return dg.MetadataValue.md("\n".join(lines))


def counts_md(counts: Mapping[str, int]) -> dg.MetadataValue:
    return md_table([{"value": k, "count": v} for k, v in counts.items()], ["value", "count"], limit=50)


_ARROW_TYPES = {"int64": "int", "double": "float", "string": "string", "large_string": "string", "bool": "bool"}


def column_schema(schema: pa.Schema, descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    """``dagster/column_schema`` for an Arrow schema."""
    descriptions = descriptions or {}
    return dg.TableSchema(
        columns=[dg.TableColumn(f.name, _ARROW_TYPES.get(str(f.type), str(f.type)), description=descriptions.get(f.name)) for f in schema]
    )
