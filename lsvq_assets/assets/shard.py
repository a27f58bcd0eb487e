"""lsvq_shard_<split>: one split's JSONL shard and replay manifest, assembled from its partitions' rows."""

import hashlib
import json
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg

import lsvq_assets
from lsvq_assets.assets.manifest import labels_key
from lsvq_assets.assets.meta import GROUP, OWNERS, md_table
from lsvq_assets.assets.rows import BROKEN, DOWNLOAD_FAILED, WRITTEN, rows_file, rows_key
from lsvq_assets.checks import (
    LEAKAGE_CHECK,
    MOS_SCALE,
    accounting_check,
    attrition_check,
    leakage_check,
    leaked,
    mos_scale_check,
    schema_check,
    schema_problems,
    shard_check_specs,
    shard_sha256s,
)
from lsvq_assets.core import storage
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.replay import replay_manifest, run_provenance, write_replay
from lsvq_assets.core.rows import CORPUS, assemble
from lsvq_assets.core.tables import read_table
from lsvq_assets.resources import LsvqSettings


def shard_key(split: str) -> dg.AssetKey:
    return dg.AssetKey(f"lsvq_shard_{split}")


# Re-assemble by itself once the partitions settle: after any of its rows changed, and only when
# no partition run is queued or running, so a batch of runs gives one assembly, not one per run.
SHARD_AUTOMATION = (
    dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated()).since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("partitions updated and settled")


class SpilledLines:
    """The written rows' lines, in a temporary file while the shard is assembled: memory holds
    only where each line is (the shard's lines were ~13 MB of the CLI's peak at corpus scale)."""

    def __init__(self) -> None:
        self._fh = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close(); unlinked from the start (in $TMPDIR)
        self._offsets = array("q")
        self._end = 0

    def add(self, line: str) -> int:
        """Keep a line; returns its number."""
        data = line.encode("utf-8")
        self._fh.write(data)
        self._offsets.append(self._end)
        self._end += len(data)
        return len(self._offsets) - 1

    def get(self, number: int) -> str:
        start = self._offsets[number]
        end = self._offsets[number + 1] if number + 1 < len(self._offsets) else self._end
        self._fh.seek(start)  # a buffered file flushes what was written before it seeks
        return self._fh.read(end - start).decode("utf-8")

    def close(self) -> None:
        self._fh.close()


def collect(lsvq: LsvqSettings, split: str, lines: SpilledLines) -> dict:
    """The split's capped rows, looked up in their partitions' rows tables (the partitions' outputs).

    A row whose partition was not materialised, or was materialised for other label values, is
    pending: its partition must run (again). A written row's line goes to ``lines``; ``pairs``
    holds its number there.
    """
    plan = lsvq.plan()
    layout = lsvq.layout()
    capped = plan.capped(split)
    by_key: dict[str, list[tuple[int, ManifestRow]]] = {}
    for i, row in enumerate(capped):
        by_key.setdefault(plan.key_of[row.src], []).append((i, row))
    # One partition's table at a time, and of each written row only what dedup needs (its line
    # goes to the spill file): memory stays near one partition's rows.
    pairs: list[tuple[int, int, dict]] = []
    failed: list[tuple[int, dict]] = []
    broken: list[tuple[int, dict]] = []
    pending: dict[str, int] = {}
    for key, items in by_key.items():
        path = layout.partition_file(key, rows_file(split))
        table = {r["src"]: r for r in read_table(path)} if storage.exists(path) else {}
        for i, row in items:
            got = table.get(row.src)
            if got is None or (got["mos"], got["mos_std_dev"], got["n_ratings"]) != (row.mos, row.mos_std_dev, row.n_ratings):
                pending[key] = pending.get(key, 0) + 1
            elif got["outcome"] == WRITTEN:
                pairs.append((i, lines.add(got["line"]), {"src": row.src, "src_sha256": got["src_sha256"], "mos": got["mos"]}))
            elif got["outcome"] == DOWNLOAD_FAILED:
                failed.append((i, {"src": row.src, "reason": got["reason"]}))
            elif got["outcome"] == BROKEN:
                broken.append((i, {"src": row.src, "reason": got["reason"]}))
        del table
    in_order = lambda found: [r for _, r in sorted(found, key=lambda x: x[0])]  # noqa: E731
    pending = {k: pending[k] for k in by_key if k in pending}
    return {"plan": plan, "capped": capped, "pairs": pairs, "failed": in_order(failed), "broken": in_order(broken), "pending": pending}


def shard_inputs(lsvq: LsvqSettings, split: str) -> str:
    """What the split's shard is assembled from: its label file, the settings that shape it and the
    version of each of its partitions' rows files. Equal inputs give the same bytes, so the CLI does
    not assemble it again (a no-op refresh costs nothing); a rows file replaced in any way counts."""
    plan = lsvq.plan()
    layout = lsvq.layout()
    files = storage.listing(storage.join(layout.root, "partitions"))
    out, replay = lsvq.shard_paths(split)
    rows = {k: files.get(f"{k}/{rows_file(split)}") for k in plan.split_partitions(split)}
    doc = [plan.splits[split].sha256, lsvq.max_rows, lsvq.corpus_version, lsvq.flat_chunk_rows, str(out), str(replay), rows]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def _dagster_provenance(context: dg.AssetExecutionContext, split: str, keys: list[str]) -> dict:
    """This run's id and, per partition, the run that wrote its rows."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=rows_key(split), asset_partitions=keys), limit=max(1, 4 * len(keys))
    ).records
    runs: dict[str, str] = {}
    for rec in records:
        if rec.partition_key is not None:
            runs.setdefault(rec.partition_key, rec.run_id)
    return {
        "run_id": context.run.run_id,
        "job_name": context.run.job_name,
        "partition_keys": keys,
        "partition_runs": {k: runs.get(k) for k in keys},
        "code_version": context.assets_def.code_versions_by_key.get(context.asset_key),
        "dagster_version": dg.__version__,
    }


def shard_asset(split: str) -> dg.AssetsDefinition:
    key = shard_key(split)

    @dg.asset(
        key=key,
        deps=[dg.AssetDep(rows_key(split)), dg.AssetDep(labels_key(split))],
        group_name=GROUP,
        kinds={"python", "json"},
        owners=OWNERS,
        code_version="2",
        check_specs=shard_check_specs(key),
        automation_condition=SHARD_AUTOMATION,
        description=f"The {split} split's MOS-corpus JSONL shard: its first max_rows rows in file order, "
        "deduplicated by sha256, checked, then published atomically with its replay manifest.",
    )
    def _shard(context: dg.AssetExecutionContext, lsvq: LsvqSettings) -> dg.MaterializeResult:
        started = time.monotonic()
        spilled = SpilledLines()
        try:
            return _assemble(context, lsvq, split, spilled, started)
        finally:
            spilled.close()

    def _assemble(
        context: dg.AssetExecutionContext, lsvq: LsvqSettings, split: str, spilled: SpilledLines, started: float
    ) -> dg.MaterializeResult:
        out_path, replay_path = lsvq.shard_paths(split)
        got = collect(lsvq, split, spilled)
        plan, capped, pending = got["plan"], got["capped"], got["pending"]
        out = assemble(got["pairs"])  # out.lines: the kept lines' numbers in the spill file
        stats = {
            "written": len(out.lines),
            "skipped_download": len(got["failed"]),
            "skipped_broken": len(got["broken"]),
            "dedups": out.dedups,
            "attrition_pct": round(100.0 * len(got["failed"]) / len(capped), 4) if capped else 0.0,
        }
        mos = [row["mos"] for _, _, row in got["pairs"]]
        mos_range = {"min": min(mos), "max": max(mos)} if mos else {"min": None, "max": None}
        manifest = plan.splits[split]
        config = {
            "split": split,
            "label_file": str(manifest.path),
            "splits": {s: str(m.path) for s, m in plan.splits.items()},
            "lsvq_dir": str(lsvq.layout().lsvq_dir),
            "clips_subdir": lsvq.clips_subdir,
            "clip_suffix": lsvq.clip_suffix,
            "min_csv_rows": lsvq.min_csv_rows,
            "max_rows": lsvq.max_rows,
            "full": lsvq.max_rows <= 0,
            "corpus_version": lsvq.corpus_version,
            "attrition_warn_threshold": lsvq.attrition_warn_threshold,
            "defaulted_columns": manifest.defaulted,
            "flat_chunk_rows": lsvq.flat_chunk_rows,
        }
        keys = plan.split_partitions(split)
        with storage.publish(out_path, lsvq.layout().lsvq_dir / "scratch") as staged:
            with open(staged, "w", encoding="utf-8") as fh:
                fh.writelines(spilled.get(number) + "\n" for number in out.lines)
            # The blocking check reads the staged file: what would be published, byte for byte.
            checked = 0

            def staged_lines() -> Iterator[str]:
                nonlocal checked
                with open(staged, encoding="utf-8") as fh:
                    for line in fh:
                        checked += 1
                        yield line[:-1] if line.endswith("\n") else line

            bad = schema_problems(staged_lines())
            if bad:
                raise dg.Failure(
                    description=f"{len(bad)} of {checked} lines of the {split} shard break the schema "
                    f"(first: line {bad[0]['line']}: {bad[0]['problems']}); nothing was published: "
                    f"{out_path} and its replay manifest are the previous ones. Run the partitions again.",
                    metadata={"invalid": md_table(bad, ["line", "problems"]), "invalid_lines": len(bad)},
                    allow_retries=False,
                )
        digest = storage.sha256(out_path)[0]
        tags = context.run.tags
        entry = Path(lsvq_assets.__file__).parent / ("cli.py" if "lsvq/argv" in tags else "definitions.py")
        provenance = run_provenance(
            entry, json.loads(tags.get("lsvq/argv", "[]")), config, inputs=[manifest.path, lsvq.layout().progress_path], outputs=[out_path]
        )
        replay = replay_manifest(CORPUS, stats, config, provenance, _dagster_provenance(context, split, keys))
        replay.update(split=split, mos_scale=f"{MOS_SCALE[0]:g}-{MOS_SCALE[1]:g}", mos_range=mos_range)
        write_replay(replay_path, replay)
        summary = (
            f"wrote {stats['written']} rows, skipped {stats['skipped_download']} (download-failed), "
            f"{stats['skipped_broken']} (broken-clip), {stats['dedups']} dedups -> {out_path}"
        )
        context.log.info(summary)
        if pending:
            context.log.warning(
                f"{sum(pending.values())} rows of {split} wait for {len(pending)} partitions: {', '.join(list(pending)[:10])}"
            )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(out.lines),
                "summary": summary,
                "inputs": shard_inputs(lsvq, split),
                **{k: dg.MetadataValue.float(v) if isinstance(v, float) else v for k, v in stats.items()},
                "rows": len(capped),
                "pending_rows": sum(pending.values()),
                "failed_clips": md_table(got["failed"], ["src", "reason"], limit=50),
                "broken_clips": md_table(got["broken"], ["src", "reason"], limit=50),
                "duplicates": md_table([{"dropped": d, "kept": k} for d, k in out.duplicates], ["dropped", "kept"]),
                "dagster/uri": dg.MetadataValue.path(str(out_path)),
                "replay_manifest_path": dg.MetadataValue.path(str(replay_path)),
                "sha256": digest,
                "partitions": len(keys),
                "mos_range": dg.MetadataValue.json(mos_range),
                "preview": dg.MetadataValue.md(
                    "```\n" + "\n".join(map(spilled.get, out.lines[:5])) + "\n```" if out.lines else "_no rows_"
                ),
                "replay_manifest": dg.MetadataValue.json(replay),
                "timings": dg.MetadataValue.json({"compute_s": round(time.monotonic() - started, 3)}),
            },
            data_version=dg.DataVersion(digest),
            check_results=[
                schema_check(checked, bad),
                accounting_check(stats, len(capped), pending),
                attrition_check(stats, lsvq.attrition_warn_threshold),
                mos_scale_check(mos_range),
            ],
        )

    return _shard


def leakage_asset_check(split: str, splits: Sequence[str]) -> dg.AssetChecksDefinition:
    """ERROR when a clip of this split's shard (by sha256) is also in another split's shard."""
    others = [s for s in splits if s != split]

    @dg.asset_check(
        asset=shard_key(split),
        name=LEAKAGE_CHECK,
        additional_deps=[shard_key(s) for s in others],
        description=f"No clip of {split} (by sha256) in {', '.join(others)}: the same video under two names, or a label-file mistake.",
    )
    def _leakage(lsvq: LsvqSettings) -> dg.AssetCheckResult:
        shards = {s: shard_sha256s(lsvq.shard_paths(s)[0]) for s in splits}
        return leakage_check(split, leaked(split, shards), splits)

    return _leakage
