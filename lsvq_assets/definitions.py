"""The one Definitions object: assets per split, checks, resources, jobs, sensors and schedule."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from lsvq_assets.assets.clips import lsvq_clips
from lsvq_assets.assets.manifest import labels_spec, manifest_asset
from lsvq_assets.assets.probes import lsvq_probes
from lsvq_assets.assets.rows import rows_asset, rows_key
from lsvq_assets.assets.shard import leakage_asset_check, shard_asset, shard_key
from lsvq_assets.automation import PARTITION_JOB, SHARDS_JOB, lsvq_automation_sensor, lsvq_register_partitions
from lsvq_assets.resources import LsvqSettings, build_resources
from lsvq_assets.schedules import refresh_schedule
from lsvq_assets.sensors import lsvq_manifest_sensor
from lsvq_assets.settings import env_values


def split_names(config: Mapping | None = None) -> list[str]:
    """The splits the assets are built for: the CLI's config, else the variables (UserError when bad)."""
    values = {**env_values().get("lsvq", {}), **(config or {}).get("lsvq", {})}
    return LsvqSettings(**values).split_names()


def build_defs(config: Mapping | None = None) -> dg.Definitions:
    """The project's Definitions (the CLI passes its resolved settings as ``config``)."""
    splits = split_names(config)
    partition_assets = [manifest_asset(splits), lsvq_clips, lsvq_probes, rows_asset(splits)]
    partition_keys = [dg.AssetKey("lsvq_manifest"), dg.AssetKey("lsvq_clips"), dg.AssetKey("lsvq_probes"), *map(rows_key, splits)]
    shards = [shard_asset(s) for s in splits]
    checks = [leakage_asset_check(s, splits) for s in splits] if len(splits) > 1 else []
    partition_job = dg.define_asset_job(
        PARTITION_JOB,
        selection=dg.AssetSelection.assets(*partition_assets),
        executor_def=dg.in_process_executor,
        description="One partition end to end: its rows of every split, clips, probes and each split's rows.",
    )
    shards_job = dg.define_asset_job(
        SHARDS_JOB,
        selection=dg.AssetSelection.assets(*map(shard_key, splits)),
        executor_def=dg.in_process_executor,
        description="Assemble each split's shard and replay manifest from its partitions' rows, with the checks.",
    )
    return dg.Definitions(
        assets=[*(labels_spec(s) for s in splits), *partition_assets, *shards],
        asset_checks=checks,
        jobs=[partition_job, shards_job, lsvq_register_partitions],
        sensors=[lsvq_manifest_sensor, lsvq_automation_sensor],
        schedules=[refresh_schedule(partition_keys)],
        resources=build_resources(config),
        # Runs the UI, a backfill or the automation launch on the asset selection itself (not a
        # named job) run in one process too, like lsvq_partition_job (DESIGN §2).
        executor=dg.in_process_executor,
    )


defs = build_defs()
