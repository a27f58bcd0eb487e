"""lsvq_labels_<split> (each split's label file, external) and lsvq_manifest[partition] (its rows of every split)."""

from collections import Counter
from collections.abc import Sequence

import dagster as dg

from lsvq_assets.assets.meta import GROUP, OWNERS, column_schema, counts_md, md_table
from lsvq_assets.core.errors import UserError
from lsvq_assets.core.tables import MANIFEST_SCHEMA, write_manifest_rows
from lsvq_assets.partitions import folder_partitions
from lsvq_assets.resources import LsvqSettings

MANIFEST_FILE = "manifest.parquet"
URLS_META = "label_files_have_urls"  # decided once from the whole label files: the run's source


def labels_key(split: str) -> dg.AssetKey:
    return dg.AssetKey(f"lsvq_labels_{split}")


def labels_spec(split: str) -> dg.AssetSpec:
    """A split's label file, maintained outside Dagster. Partitioned like the rows, so that editing
    one row makes only its partition stale: observed per partition (data version = the fingerprint
    of the split's rows in it) by lsvq_manifest_sensor, the schedule and the CLI."""
    return dg.AssetSpec(
        labels_key(split),
        description=f"The {split} split's label file (split CSV or FAST-VQA/DOVER labels), maintained "
        "outside Dagster; observed per partition (data version = the fingerprint of its rows there).",
        group_name=GROUP,
        kinds={"csv"},
        owners=OWNERS,
        partitions_def=folder_partitions,
    )


def partition_version(fingerprint: str, corpus_version: str) -> str:
    """lsvq_manifest's data version: what the partition's rows hold and the settings that shape its outputs."""
    return f"{fingerprint}-{corpus_version}"


def manifest_asset(splits: Sequence[str]) -> dg.AssetsDefinition:
    @dg.asset(
        name="lsvq_manifest",
        partitions_def=folder_partitions,
        deps=[labels_key(s) for s in splits],
        group_name=GROUP,
        kinds={"python", "parquet"},
        owners=OWNERS,
        code_version="2",
    )
    def lsvq_manifest(context: dg.AssetExecutionContext, lsvq: LsvqSettings) -> dg.MaterializeResult:
        """The partition's validated rows of every split, with a split column (parquet)."""
        key = context.partition_key
        try:
            plan = lsvq.plan()
        except UserError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        rows = plan.partitions.get(key)
        files = ", ".join(f"{s}: {m.path}" for s, m in plan.splits.items())
        if rows is None:
            raise dg.Failure(
                description=f"partition {key!r} holds no row of the label files ({files}); "
                f"they have {len(plan.partitions)} partitions. Was the key added by hand, or did a label file change? "
                "Old keys are harmless: nothing reads them.",
                allow_retries=False,
            )
        path = lsvq.layout().partition_file(key, MANIFEST_FILE)
        has_urls = any(m.has_urls for m in plan.splits.values())
        write_manifest_rows(path, rows, {URLS_META: "1" if has_urls else "0"})
        per_split = Counter(r.split for r in rows)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(rows),
                "dagster/uri": dg.MetadataValue.path(str(path)),
                "dagster/column_schema": column_schema(MANIFEST_SCHEMA),
                "rows_by_split": counts_md({s: per_split.get(s, 0) for s in plan.splits}),
                "label_files": md_table(
                    [
                        {
                            "split": s,
                            "path": str(m.path),
                            "format": m.format,
                            "sha256": m.sha256[:16],
                            "rows": len(m.rows),
                            "dropped": len(m.dropped),
                        }
                        for s, m in plan.splits.items()
                    ],
                    ["split", "path", "format", "sha256", "rows", "dropped"],
                ),
                "dropped_by_reason": counts_md(plan.dropped()),
                "dropped_rows": md_table(
                    [{"split": s, **d.__dict__} for s, m in plan.splits.items() for d in m.dropped], ["split", "line", "name", "reason"]
                ),
                "defaulted_columns": ", ".join(sorted({c for m in plan.splits.values() for c in m.defaulted})) or "none",
                "preview": md_table([r.__dict__ for r in rows], ["split", "line", "src", "mos", "mos_std_dev", "n_ratings"], limit=10),
            },
            data_version=dg.DataVersion(partition_version(plan.fingerprint(key), lsvq.corpus_version)),
        )

    return lsvq_manifest
