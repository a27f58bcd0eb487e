"""lsvq_rows_<split>[partition]: each split's MOS-corpus rows of one partition, from its manifest, clips and probes."""

import hashlib
import time
from collections import Counter
from collections.abc import Sequence

import dagster as dg

from lsvq_assets.assets.clips import CLIPS_FILE
from lsvq_assets.assets.manifest import MANIFEST_FILE
from lsvq_assets.assets.meta import GROUP, OWNERS, column_schema, counts_md, md_table
from lsvq_assets.assets.probes import PROBES_FILE
from lsvq_assets.core.rows import build_row, row_line
from lsvq_assets.core.tables import ROWS_SCHEMA, read_table, write_table
from lsvq_assets.partitions import folder_partitions
from lsvq_assets.resources import LsvqSettings
from lsvq_assets.sources.base import FAILED

WRITTEN, DOWNLOAD_FAILED, BROKEN = "written", "download-failed", "broken"


def rows_key(split: str) -> dg.AssetKey:
    return dg.AssetKey(f"lsvq_rows_{split}")


def rows_file(split: str) -> str:
    return f"rows_{split}.parquet"


def partition_rows_table(
    manifest: Sequence[dict], clips: Sequence[dict], probes: Sequence[dict], corpus_version: str
) -> dict[str, list[dict]]:
    """Split -> its rows of the partition in file order, each with its outcome and (when written) its line.

    Raises ValueError when the tables disagree (a probe of other bytes than the clip's): the
    partition's outputs are then not from one run, and the rows must not be built from them.
    """
    by_clip = {c["src"]: c for c in clips}
    by_probe = {p["src"]: p for p in probes}
    out: dict[str, list[dict]] = {}
    for m in manifest:
        clip, probe = by_clip.get(m["src"]), by_probe.get(m["src"])
        row = {
            "src": m["src"],
            "mos": m["mos"],
            "mos_std_dev": m["mos_std_dev"],
            "n_ratings": m["n_ratings"],
            "reason": None,
            "src_sha256": None,
            "line": None,
        }
        if clip is None:
            raise ValueError(f"{m['src']} is in the partition's manifest but not in its outcome table")
        if clip["status"] == FAILED:
            row.update(outcome=DOWNLOAD_FAILED, reason=clip["reason"])
        elif probe is None or probe["sha256"] != clip["sha256"]:
            raise ValueError(f"{m['src']}: the probe table is not of the clip's bytes (sha256 {clip['sha256']})")
        elif probe.get("broken"):
            row.update(outcome=BROKEN, reason=probe["broken"], src_sha256=clip["sha256"])
        else:
            row.update(outcome=WRITTEN, src_sha256=clip["sha256"], line=row_line(build_row(m, clip, probe, corpus_version)))
        out.setdefault(m["split"], []).append(row)
    return out


def _version(rows: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r['src']}\0{r['outcome']}\0{r['reason']}\0{r['line']}\n".encode())
    return h.hexdigest()[:24]


# Rows follow their partition's probes only: a run that re-wrote lsvq_manifest and then failed at
# lsvq_clips must not rebuild rows from the old clips (that would hide the failed partition).
ROWS_AUTOMATION = dg.AutomationCondition.eager().replace(
    "any_deps_updated",
    dg.AutomationCondition.any_deps_updated().ignore(dg.AssetSelection.assets("lsvq_manifest", "lsvq_clips")),
)


def rows_asset(splits: Sequence[str]) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            rows_key(s),
            deps=["lsvq_manifest", "lsvq_clips", "lsvq_probes"],
            partitions_def=folder_partitions,
            group_name=GROUP,
            kinds={"python", "parquet"},
            owners=OWNERS,
            code_version="2",
            automation_condition=ROWS_AUTOMATION,
            description=f"The {s} split's MOS-corpus rows of one partition: each row's outcome and its shard line.",
        )
        for s in splits
    ]

    @dg.multi_asset(name="lsvq_rows", specs=specs, partitions_def=folder_partitions, can_subset=False)
    def lsvq_rows(context: dg.AssetExecutionContext, lsvq: LsvqSettings):
        """Each split's rows of the partition: written (with the shard's bytes), download-failed or broken."""
        started = time.monotonic()
        key = context.partition_key
        layout = lsvq.layout()
        manifest = read_table(layout.partition_file(key, MANIFEST_FILE))
        clips = read_table(layout.partition_file(key, CLIPS_FILE))
        probes = read_table(layout.partition_file(key, PROBES_FILE))
        try:
            tables = partition_rows_table(manifest, clips, probes, lsvq.corpus_version)
        except ValueError as exc:
            raise dg.Failure(description=f"partition {key}: {exc}; run the whole partition again.", allow_retries=False) from None
        for split in splits:
            rows = tables.get(split, [])
            path = layout.partition_file(key, rows_file(split))
            write_table(path, rows, ROWS_SCHEMA)
            outcomes = Counter(r["outcome"] for r in rows)
            lines = [r["line"] for r in rows if r["line"]]
            yield dg.MaterializeResult(
                asset_key=rows_key(split),
                metadata={
                    "dagster/row_count": len(rows),
                    "outcomes": counts_md({o: outcomes.get(o, 0) for o in (WRITTEN, DOWNLOAD_FAILED, BROKEN)}),
                    "not_written": md_table([r for r in rows if r["outcome"] != WRITTEN], ["src", "outcome", "reason"], limit=50),
                    "preview": dg.MetadataValue.md("```\n" + "\n".join(lines[:5]) + "\n```" if lines else "_no rows_"),
                    "dagster/uri": dg.MetadataValue.path(str(path)),
                    "dagster/column_schema": column_schema(ROWS_SCHEMA),
                    "timings": dg.MetadataValue.json({"compute_s": round(time.monotonic() - started, 3)}),
                },
                data_version=dg.DataVersion(_version(rows)),
            )

    return lsvq_rows
