"""lsvq_clips[partition]: the partition's clip files on disk and a per-clip outcome table."""

import hashlib
import logging
import time
from collections import Counter

import dagster as dg
import pyarrow as pa

from lsvq_assets.assets.manifest import MANIFEST_FILE, URLS_META
from lsvq_assets.assets.meta import GROUP, OWNERS, column_schema, counts_md, md_table
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.locks import describe, slice_lock
from lsvq_assets.core.store import FetchState
from lsvq_assets.core.tables import read_manifest_rows, read_meta, read_table, write_table
from lsvq_assets.partitions import folder_partitions
from lsvq_assets.probing.pool import ProbeAhead
from lsvq_assets.progress import partition_progress
from lsvq_assets.resources import ClipSourceResource, LsvqSettings, ProbeResource
from lsvq_assets.sources.base import FAILED
from lsvq_assets.sources.ingest import SliceClips, ingest_clips

CLIPS_FILE = "clips.parquet"
# The concurrency pool of every run that downloads: its limit (deploy/dagster.yaml, or
# `dagster instance concurrency set lsvq_source N`) caps how many partitions fetch from the source at once.
SOURCE_POOL = "lsvq_source"
CLIPS_SCHEMA = pa.schema(
    [
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
    probe_ahead: bool = True  # probe each clip as it lands, for lsvq_probes' cache (overlaps the downloads)


def _failed_metadata(failures: list[dict], total_rows: int, limit: int = 50) -> dict:
    reasons = Counter((f["reason"] or "unknown").split(":")[0] for f in failures)
    return {
        "failed": len(failures),
        "failed_by_reason": counts_md(dict(reasons.most_common())),
        "failed_clips": md_table(failures, FAILED_COLUMNS, limit=limit),
        "rows": total_rows,
    }


def _top_reasons(failures: list[dict]) -> str:
    """``disk-error: No space left on device (3), http-503 (1)``: what the operator reads first."""
    return ", ".join(f"{r} ({n})" for r, n in Counter(f["reason"] or "unknown" for f in failures).most_common(3))


def _probe_ahead(prober: ProbeResource) -> ProbeAhead | None:
    """A background prober for the clips as they land; None when the prober cannot be set up
    (lsvq_probes then reports that in its own step, as without probing ahead)."""
    try:
        return ProbeAhead(prober.prober(), prober.concurrency)
    except Exception:  # noqa: BLE001 - e.g. ProbeSetupError: a missing ffprobe binary
        return None


def previous_outcomes(path) -> dict[str, dict]:
    """The partition's last outcome table (its own output, the truth of what was ingested) by src."""
    try:
        return {r["src"]: r for r in read_table(path)}
    except (FileNotFoundError, OSError, ValueError):
        return {}


def _data_version(result: SliceClips) -> str:
    h = hashlib.sha256()
    for r in result.table:
        h.update(f"{r['src']}\0{r['status'] == FAILED}\0{r['sha256']}\0{r['reason']}\n".encode())
    return h.hexdigest()[:24]


@dg.asset(
    partitions_def=folder_partitions,
    deps=["lsvq_manifest"],
    group_name=GROUP,
    kinds={"python", "parquet", "video"},
    owners=OWNERS,
    code_version="1",
    pool=SOURCE_POOL,
)
def lsvq_clips(
    context: dg.AssetExecutionContext,
    config: ClipsConfig,
    lsvq: LsvqSettings,
    clip_source: ClipSourceResource,
    prober: ProbeResource,
) -> dg.MaterializeResult:
    """The partition's clip files under the clips directory, and what happened to each one (outcome table).

    Every clip any split needs is fetched once. Each clip is also probed as soon as it lands (while
    the rest download), into the private probe cache lsvq_probes may use: the probes overlap the
    downloads instead of following them.
    """
    started = time.monotonic()
    key = context.partition_key
    with lsvq.run_layout(context.run.run_id) as layout:
        return _materialise(context, config, lsvq, clip_source, prober, key, layout, started)


def _materialise(
    context: dg.AssetExecutionContext,
    config: ClipsConfig,
    lsvq: LsvqSettings,
    clip_source: ClipSourceResource,
    prober: ProbeResource,
    key: str,
    layout: Layout,
    started: float,
) -> dg.MaterializeResult:
    manifest_path = layout.partition_file(key, MANIFEST_FILE)
    rows = list({r.src: r for r in reversed(read_manifest_rows(manifest_path))}.values())[::-1]  # one per clip
    outcome_path = layout.partition_file(key, CLIPS_FILE)
    previous = previous_outcomes(outcome_path)
    source = clip_source.open(read_meta(manifest_path).get(URLS_META) == "1")
    try:
        # One writer of a partition's clips at a time (CLI, UI, backfill): a second one waits, then
        # finds the clips done. Other partitions are not held up.
        def waiting(holder: dict) -> None:
            message = f"partition {key} is being materialised by {describe(holder)}: waiting for it to finish"
            context.log.warning(message)
            logging.getLogger("lsvq_assets").info(message)  # the CLI's log

        with slice_lock(layout.lsvq_dir, key, f"lsvq_clips, run {context.run.run_id}", on_wait=waiting):
            ahead = _probe_ahead(prober) if config.probe_ahead else None
            on_fetched = (lambda res: ahead.submit(res.sha256, layout.clip_path(res.src))) if ahead and not layout.remote else None
            on_landed = (lambda res: ahead.probe_now(res.sha256, layout.clip_path(res.src))) if ahead and layout.remote else None
            with FetchState(layout.state_path(key)) as store:
                if layout.progress_path.is_file():  # the seed's .download-progress.json: private fetch state
                    imported = store.import_seed_progress(layout.progress_path, {r.name: r.src for r in rows})
                    if imported:
                        context.log.info(f"imported {imported} clip states from {layout.progress_path}")
                progress = partition_progress(key, len(rows), context.log.info)
                try:
                    result = ingest_clips(
                        rows,
                        layout,
                        store,
                        source,
                        previous=previous,
                        retry_failed=config.retry_failed,
                        verify=config.verify,
                        on_fetched=on_fetched,
                        on_landed=on_landed,
                        on_progress=progress.update,
                    )
                except BaseException:
                    if ahead:
                        ahead.cancel()
                    raise
                finally:
                    progress.close()
                t = time.monotonic()
                probed_ahead = ahead.finish(store) if ahead else 0
                probe_wait_s = time.monotonic() - t
            transient = result.failures(transient=True)
            if not transient:
                source.after_success(rows, layout)
    finally:
        source.close()
    counts = result.by_status()
    rate = result.bytes_fetched / result.elapsed_s / 1e6 if result.elapsed_s else 0.0
    context.log.info(f"partition {key}: {dict(counts)} in {result.elapsed_s:.2f}s via {source.name}")
    if transient:
        meta = _failed_metadata(transient, len(rows))
        meta["retry"] = "Run the same command again, or backfill the failed partitions in the UI."
        full = {**_failed_metadata(transient, len(rows), limit=len(transient)), "retry": meta["retry"]}
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=key, metadata=full))
        raise dg.Failure(
            description=f"{len(transient)} of {len(rows)} clips in partition {key} failed transiently "
            f"({_top_reasons(transient)}); the rest of the partition is recorded. "
            f"The failed_clips table below lists the first 50 (all of them are in this step's "
            f"lsvq_clips observation). Run again or backfill this partition.",
            metadata=meta,
        )
    write_table(outcome_path, result.table, CLIPS_SCHEMA)
    permanent = result.failures(transient=False)
    timings = {
        "elapsed_s": round(result.elapsed_s, 3),
        "fetch_s": round(result.fetch_s, 3),
        "store_s": round(result.store_s, 3),
        "store_during_fetch_s": round(result.store_overlapped_s, 3),
        "probe_ahead_wait_s": round(probe_wait_s, 3),
        "compute_s": round(time.monotonic() - started, 3),
    }
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "downloaded": counts.get("downloaded", 0),
            "cached": counts.get("cached", 0),
            **_failed_metadata(permanent, len(rows)),
            "bytes_fetched": result.bytes_fetched,
            "throughput_mb_s": dg.MetadataValue.float(round(rate, 2)),
            "source": source.name,
            **source.metadata(),
            "outcome_table": dg.MetadataValue.path(str(outcome_path)),
            "dagster/uri": dg.MetadataValue.path(str(layout.clips_root)),
            "dagster/column_schema": column_schema(CLIPS_SCHEMA),
            "probed_ahead": probed_ahead,
            "timings": dg.MetadataValue.json(timings),
        },
        data_version=dg.DataVersion(_data_version(result)),
    )
