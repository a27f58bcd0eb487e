"""lsvq_manifest_csv (the external label file) and lsvq_manifest[slice] (its validated rows)."""


import dagster as dg

from lsvq_assets.assets.meta import GROUP, OWNERS, column_schema, counts_md, md_table
from lsvq_assets.core.errors import UserError
from lsvq_assets.core.slicing import fingerprint
from lsvq_assets.core.store import ClipStore
from lsvq_assets.core.tables import MANIFEST_SCHEMA, write_manifest_rows
from lsvq_assets.partitions import slices_partitions
from lsvq_assets.settings import LsvqSettings

MANIFEST_FILE = "manifest.parquet"

# Partitioned like the slices so that editing one row makes only its slice stale: the manifest
# sensor records one observation per changed slice (data version = the slice's fingerprint, the
# file's sha256 in metadata) and one for the whole file (data version = its sha256).
lsvq_manifest_csv = dg.AssetSpec(
    "lsvq_manifest_csv",
    description="The LSVQ split CSV or FAST-VQA/DOVER labels file, maintained outside Dagster "
    "(observed by lsvq_manifest_sensor: per slice, data version = the slice's fingerprint).",
    group_name=GROUP,
    kinds={"csv"},
    owners=OWNERS,
    partitions_def=slices_partitions,
)


@dg.asset(
    partitions_def=slices_partitions,
    deps=[lsvq_manifest_csv],
    group_name=GROUP,
    kinds={"python", "parquet"},
    owners=OWNERS,
    code_version="1",
)
def lsvq_manifest(context: dg.AssetExecutionContext, lsvq: LsvqSettings) -> dg.MaterializeResult:
    """Validated, normalised manifest rows of one slice (parquet)."""
    key = context.partition_key
    try:
        manifest = lsvq.read_manifest()
    except UserError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    slices = lsvq.slices(manifest)
    if key not in slices:
        raise dg.Failure(
            description=f"slice {key!r} is not in {manifest.path}"
            + (f" under max_rows={lsvq.max_rows} (set LSVQ_MAX_ROWS=0 for all rows)" if lsvq.max_rows > 0 else "")
            + f"; it has {len(slices)} slices. Was the key added by hand, or did the manifest change? "
            f"The slices to run are the ones lsvq_manifest_sensor or the CLI registers.",
            allow_retries=False,
        )
    rows = slices[key]
    layout = lsvq.layout()
    imported = 0
    if layout.progress_path.is_file():  # the seed's .download-progress.json: keep an operator's progress
        with ClipStore(layout.store_path) as store:
            imported = store.import_seed_progress(layout.progress_path, {r.name: r.src for r in manifest.rows})
        if imported:
            context.log.info(f"imported {imported} clip states from {layout.progress_path}")
    path = layout.slice_file(key, MANIFEST_FILE)
    write_manifest_rows(path, rows)
    dropped = manifest.dropped
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "dagster/uri": dg.MetadataValue.path(str(path)),
            "dagster/column_schema": column_schema(MANIFEST_SCHEMA),
            "manifest_path": dg.MetadataValue.path(str(manifest.path)),
            "manifest_sha256": manifest.sha256,
            "manifest_format": manifest.format,
            "manifest_rows_kept": len(manifest.rows),
            "manifest_rows_dropped": len(dropped),
            "dropped_by_reason": counts_md(manifest.dropped_counts()),
            "dropped_rows": md_table([d.__dict__ for d in dropped], ["line", "name", "reason"]),
            "seed_progress_imported": imported,
            "defaulted_columns": ", ".join(manifest.defaulted) or "none",
            "preview": md_table([r.__dict__ for r in rows], ["line", "src", "mos", "mos_std_dev", "n_ratings"], limit=10),
        },
        data_version=dg.DataVersion(fingerprint(rows)),
    )
