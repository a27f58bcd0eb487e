"""lsvq_clips[slice]: the slice's clip files on disk and a per-clip outcome table."""

import hashlib
from collections import Counter

import dagster as dg
import pyarrow as pa

from lsvq_assets.assets.manifest import MANIFEST_FILE, lsvq_manifest
from lsvq_assets.assets.meta import GROUP, OWNERS, column_schema, counts_md, md_table
from lsvq_assets.core.store import ClipStore
from lsvq_assets.core.tables import read_manifest_rows, write_table
from lsvq_assets.resources import ClipSourceResource
from lsvq_assets.settings import LsvqSettings
from lsvq_assets.sources.base import FAILED, SliceClips, ingest_clips
from lsvq_assets.partitions import slices_partitions

CLIPS_FILE = "clips.parquet"
CLIPS_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("src", pa.string()),
        ("status", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("reason", pa.string()),
        ("http_status", pa.int64()),
        ("transient", pa.bool_()),
        ("attempts", pa.int64()),
        ("ingested_at_utc", pa.string()),
    ]
)
FAILED_COLUMNS = ["src", "reason", "http_status", "attempts"]


class ClipsConfig(dg.Config):
    retry_failed: bool = False  # also retry clips that failed permanently (404, 410, empty body...)
    verify: bool = False  # re-hash clips already on disk instead of trusting their recorded size


def _failed_metadata(failures: list[dict], total_rows: int) -> dict:
    reasons = Counter((f["reason"] or "unknown").split(":")[0] for f in failures)
    return {
        "failed": len(failures),
        "failed_by_reason": counts_md(dict(reasons.most_common())),
        "failed_clips": md_table(failures, FAILED_COLUMNS, limit=50),
        "rows": total_rows,
    }


def _data_version(result: SliceClips) -> str:
    h = hashlib.sha256()
    for r in result.table:
        h.update(f"{r['src']}\0{r['status'] == FAILED}\0{r['sha256']}\0{r['reason']}\n".encode())
    return h.hexdigest()[:24]


@dg.asset(
    partitions_def=slices_partitions,
    deps=[lsvq_manifest],
    group_name=GROUP,
    kinds={"python", "parquet", "video"},
    owners=OWNERS,
    code_version="1",
)
def lsvq_clips(
    context: dg.AssetExecutionContext, config: ClipsConfig, lsvq: LsvqSettings, clip_source: ClipSourceResource
) -> dg.MaterializeResult:
    """The slice's clip files under the clips directory, and what happened to each one."""
    key = context.partition_key
    layout = lsvq.layout()
    rows = read_manifest_rows(layout.slice_file(key, MANIFEST_FILE))
    source = clip_source.open(manifest_has_urls=any(r.url for r in rows))
    try:
        with ClipStore(layout.store_path) as store:
            result = ingest_clips(rows, layout, store, source, retry_failed=config.retry_failed, verify=config.verify)
        transient = result.failures(transient=True)
        if not transient:
            source.after_success(rows, layout)
    finally:
        source.close()
    counts = result.by_status()
    rate = result.bytes_fetched / result.elapsed_s / 1e6 if result.elapsed_s else 0.0
    context.log.info(f"slice {key}: {dict(counts)} in {result.elapsed_s:.2f}s via {source.name}")
    if transient:
        meta = _failed_metadata(transient, len(rows))
        meta["retry"] = "Run the same command again, or backfill the failed partitions in the UI."
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=key, metadata=meta))
        raise dg.Failure(
            description=f"{len(transient)} of {len(rows)} clips in slice {key} failed transiently "
            f"(timeouts, 5xx, 429, resets, disk errors); the rest of the slice is recorded. "
            f"Run again or backfill this partition.",
            metadata=meta,
        )
    write_table(layout.slice_file(key, CLIPS_FILE), result.table, CLIPS_SCHEMA)
    permanent = result.failures(transient=False)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "dagster/uri": dg.MetadataValue.path(str(layout.clips_dir)),
            "dagster/column_schema": column_schema(CLIPS_SCHEMA),
            "source": source.name,
            "downloaded": counts.get("downloaded", 0),
            "cached": counts.get("cached", 0),
            "bytes_fetched": result.bytes_fetched,
            "elapsed_s": dg.MetadataValue.float(round(result.elapsed_s, 3)),
            "throughput_mb_s": dg.MetadataValue.float(round(rate, 2)),
            "clips_per_s": dg.MetadataValue.float(round(counts.get("downloaded", 0) / result.elapsed_s, 1) if result.elapsed_s else 0.0),
            "outcome_table": dg.MetadataValue.path(str(layout.slice_file(key, CLIPS_FILE))),
            **_failed_metadata(permanent, len(rows)),
        },
        data_version=dg.DataVersion(_data_version(result)),
    )
