"""lsvq_shard_rows[slice] (a JSONL part per slice) and lsvq_shard (lsvq.jsonl + replay manifest)."""

import json
import time
from pathlib import Path

import dagster as dg

import lsvq_assets
from lsvq_assets.assets.clips import CLIPS_FILE, lsvq_clips
from lsvq_assets.assets.manifest import MANIFEST_FILE, lsvq_manifest
from lsvq_assets.assets.meta import GROUP, OWNERS, md_table
from lsvq_assets.assets.probes import PROBES_FILE, lsvq_probes
from lsvq_assets.checks import SHARD_CHECK_SPECS, accounting_check, attrition_check, schema_check
from lsvq_assets.core.files import atomic_open, sha256_file
from lsvq_assets.core.replay import replay_manifest, run_provenance, write_replay
from lsvq_assets.core.rows import CORPUS, ROW_KEYS, assemble, build_row, row_line
from lsvq_assets.core.store import ClipStore
from lsvq_assets.core.tables import read_table
from lsvq_assets.partitions import slices_partitions
from lsvq_assets.settings import LsvqSettings

ROWS_FILE = "rows.jsonl"

_FROM = {
    "lsvq_manifest": ["src", "mos", "mos_std_dev", "n_ratings"],
    "lsvq_clips": ["src_sha256", "src_size_bytes", "ingested_at_utc"],
    "lsvq_probes": ["width", "height", "framerate", "duration_s", "pix_fmt", "encoder_upstream"],
}
_SOURCE_COLUMN = {"src_sha256": "sha256", "src_size_bytes": "size"}
COLUMN_LINEAGE = dg.TableColumnLineage(
    deps_by_column={
        col: [dg.TableColumnDep(asset_key=dg.AssetKey(asset), column_name=_SOURCE_COLUMN.get(col, col))]
        for asset, cols in _FROM.items()
        for col in cols
    }
)
ROWS_SCHEMA = dg.TableSchema(
    columns=[dg.TableColumn(k, "string" if k in ("src", "src_sha256", "pix_fmt", "encoder_upstream", "corpus", "corpus_version", "ingested_at_utc") else "number") for k in ROW_KEYS]
)


def slice_lines(layout, key: str, corpus_version: str) -> list[str]:
    """The slice's JSONL lines in manifest order: one per clip that was fetched and probed."""
    manifest = read_table(layout.slice_file(key, MANIFEST_FILE))
    clips = {c["src"]: c for c in read_table(layout.slice_file(key, CLIPS_FILE))}
    probes = {p["src"]: p for p in read_table(layout.slice_file(key, PROBES_FILE))}
    return [
        row_line(build_row(m, clips[m["src"]], probes[m["src"]], corpus_version))
        for m in manifest
        if m["src"] in probes and probes[m["src"]]["sha256"] == clips[m["src"]]["sha256"]
    ]


# Local work, like lsvq_probes: follows a run that materialised lsvq_probes without it. Not an
# update of lsvq_manifest alone: a slice run that failed at lsvq_clips has re-written it, and
# rebuilding the rows from the old clips then would hide the failed partition.
# Rows follow their slice's probes only: a run that re-wrote lsvq_manifest and then failed at
# lsvq_clips must not rebuild rows from the old clips (that would hide the failed partition).
ROWS_AUTOMATION = dg.AutomationCondition.eager().replace(
    "any_deps_updated",
    dg.AutomationCondition.any_deps_updated().ignore(dg.AssetSelection.assets("lsvq_manifest", "lsvq_clips")),
)


@dg.asset(
    partitions_def=slices_partitions,
    deps=[lsvq_manifest, lsvq_clips, lsvq_probes],
    group_name=GROUP,
    kinds={"python", "json"},
    owners=OWNERS,
    code_version="1",
    automation_condition=ROWS_AUTOMATION,
)
def lsvq_shard_rows(context: dg.AssetExecutionContext, lsvq: LsvqSettings) -> dg.MaterializeResult:
    """The slice's MOS-corpus rows as a JSONL part file (the shard's bytes, one line per clip)."""
    started = time.monotonic()
    key = context.partition_key
    layout = lsvq.layout()
    lines = slice_lines(layout, key, lsvq.corpus_version)
    path = layout.slice_file(key, ROWS_FILE)
    with atomic_open(path, "w") as fh:
        fh.writelines(line + "\n" for line in lines)
    digest = sha256_file(path)[0]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(lines),
            "dagster/uri": dg.MetadataValue.path(str(path)),
            "dagster/column_schema": ROWS_SCHEMA,
            "dagster/column_lineage": COLUMN_LINEAGE,
            "sha256": digest,
            "preview": dg.MetadataValue.md("```\n" + "\n".join(lines[:5]) + "\n```" if lines else "_no rows_"),
            "compute_s": dg.MetadataValue.float(round(time.monotonic() - started, 3)),
        },
        data_version=dg.DataVersion(digest[:24]),
    )


# Re-assemble by itself once the slices settle: after any slice's rows changed, and only when no
# slice run is queued or running, so a batch of slice runs gives one assembly, not one per slice.
# A missing or failed slice does not hold it back (the CLI assembles around it too).
SHARD_AUTOMATION = (
    dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("slices updated and settled")


def _dagster_provenance(context: dg.AssetExecutionContext, keys: list[str]) -> dict:
    """This run's id and, per slice, the run that wrote its rows."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("lsvq_shard_rows"), asset_partitions=keys), limit=max(1, 4 * len(keys))
    ).records
    slice_runs: dict[str, str] = {}
    for rec in records:
        slice_runs.setdefault(rec.partition_key, rec.run_id)
    return {
        "run_id": context.run.run_id,
        "job_name": context.run.job_name,
        "partition_keys": keys,
        "slice_runs": {k: slice_runs.get(k) for k in keys},
        "code_version": context.assets_def.code_versions_by_key.get(context.asset_key),
        "dagster_version": dg.__version__,
    }


@dg.asset(
    deps=[dg.AssetDep("lsvq_shard_rows")],
    group_name=GROUP,
    kinds={"python", "json"},
    owners=OWNERS,
    code_version="1",
    check_specs=SHARD_CHECK_SPECS,
    automation_condition=SHARD_AUTOMATION,
)
def lsvq_shard(context: dg.AssetExecutionContext, lsvq: LsvqSettings) -> dg.MaterializeResult:
    """lsvq.jsonl: every slice's rows in manifest order, deduplicated by sha256, plus its replay manifest."""
    started = time.monotonic()
    layout = lsvq.layout()
    manifest = lsvq.read_manifest()
    slices = lsvq.slices(manifest)
    rows = [r for rows in slices.values() for r in rows]
    index = {r.src: r.index for r in rows}
    pairs, missing_slices = [], []
    for key in slices:
        part = layout.slice_file(key, ROWS_FILE)
        if not part.exists():
            missing_slices.append(key)
            continue
        for line in part.read_text().splitlines():
            row = json.loads(line)  # parsed once: assemble() takes the parsed row along
            if row["src"] in index:
                pairs.append((index[row["src"]], line, row))
    out = assemble(pairs)
    with ClipStore(layout.store_path) as store:
        states = store.get_many(index)
    failed = [s for s in index if s in states and states[s].state == "failed"]
    broken = [s for s in index if s in states and states[s].state == "broken"]
    written = set(out.srcs)
    accounted = written | {d for d, _ in out.duplicates} | set(failed) | set(broken)
    unaccounted = [s for s in index if s not in accounted]
    stats = {
        "written": len(out.lines),
        "skipped_download": len(failed),
        "skipped_broken": len(broken),
        "dedups": out.dedups,
        "attrition_pct": round(100.0 * len(failed) / len(rows), 4) if rows else 0.0,
    }
    with atomic_open(layout.output, "w") as fh:
        fh.writelines(line + "\n" for line in out.lines)
    digest = sha256_file(layout.output)[0]
    tags = context.run.tags
    entry = Path(lsvq_assets.__file__).parent / ("cli.py" if "lsvq/argv" in tags else "definitions.py")
    config = {
        "lsvq_dir": str(layout.lsvq_dir),
        "manifest_csv": str(layout.manifest_csv),
        "clips_subdir": lsvq.clips_subdir,
        "clip_suffix": lsvq.clip_suffix,
        "min_csv_rows": lsvq.min_csv_rows,
        "max_rows": lsvq.max_rows,
        "full": lsvq.max_rows <= 0,
        "corpus_version": lsvq.corpus_version,
        "attrition_warn_threshold": lsvq.attrition_warn_threshold,
        "defaulted_columns": manifest.defaulted,
        "slice_rows": lsvq.slice_rows,
        "max_slice_rows": lsvq.max_slice_rows,
    }
    provenance = run_provenance(
        entry,
        json.loads(tags.get("lsvq/argv", "[]")),
        config,
        inputs=[layout.manifest_csv, layout.progress_path],
        outputs=[layout.output],
    )
    replay = replay_manifest(CORPUS, stats, config, provenance, _dagster_provenance(context, list(slices)))
    write_replay(layout.manifest_out, replay)
    summary = (
        f"wrote {stats['written']} rows, skipped {stats['skipped_download']} (download-failed), "
        f"{stats['skipped_broken']} (broken-clip), {stats['dedups']} dedups -> {layout.output}"
    )
    context.log.info(summary)
    if stats["attrition_pct"] / 100 > lsvq.attrition_warn_threshold:
        context.log.warning(
            f"attrition {stats['attrition_pct']:.2f}% of {len(rows)} rows failed to download, above "
            f"{lsvq.attrition_warn_threshold:.0%}; see {layout.store_path} and the lsvq_clips failure tables"
        )
    check_results = [
        attrition_check(stats, lsvq.attrition_warn_threshold),
        schema_check(out.lines),
        accounting_check(stats, len(rows), unaccounted),
    ]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(out.lines),
            "dagster/uri": dg.MetadataValue.path(str(layout.output)),
            "replay_manifest_path": dg.MetadataValue.path(str(layout.manifest_out)),
            "sha256": digest,
            "summary": summary,
            **{k: dg.MetadataValue.float(v) if isinstance(v, float) else v for k, v in stats.items()},
            "manifest_rows": len(rows),
            "slices": len(slices),
            "slices_without_rows": md_table([{"slice": k} for k in missing_slices], ["slice"]),
            "duplicates": md_table([{"dropped": d, "kept": k} for d, k in out.duplicates], ["dropped", "kept"]),
            "preview": dg.MetadataValue.md("```\n" + "\n".join(out.lines[:5]) + "\n```" if out.lines else "_no rows_"),
            "replay_manifest": dg.MetadataValue.json(replay),
            "compute_s": dg.MetadataValue.float(round(time.monotonic() - started, 3)),
        },
        data_version=dg.DataVersion(digest),
        check_results=check_results,
    )
