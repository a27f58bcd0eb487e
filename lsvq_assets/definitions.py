"""The one Definitions object: assets, checks, resources, jobs, sensor and schedule."""

import dagster as dg

from lsvq_assets.assets.clips import lsvq_clips
from lsvq_assets.assets.manifest import lsvq_manifest, lsvq_manifest_csv
from lsvq_assets.assets.probes import lsvq_probes
from lsvq_assets.assets.shard import lsvq_shard, lsvq_shard_rows
from lsvq_assets.automation import automation_settings, lsvq_automation_sensor
from lsvq_assets.resources import ClipSourceResource, ProbeResource
from lsvq_assets.schedules import lsvq_refresh_schedule
from lsvq_assets.sensors import lsvq_manifest_sensor
from lsvq_assets.settings import LsvqSettings, env_config

SLICE_ASSETS = [lsvq_manifest, lsvq_clips, lsvq_probes, lsvq_shard_rows]

lsvq_slice_job = dg.define_asset_job(
    "lsvq_slice_job",
    selection=dg.AssetSelection.assets(*SLICE_ASSETS),
    executor_def=dg.in_process_executor,
    description="One slice end to end: manifest rows, clips, probes, JSONL rows.",
)
lsvq_shard_job = dg.define_asset_job(
    "lsvq_shard_job",
    selection=dg.AssetSelection.assets(lsvq_shard),
    executor_def=dg.in_process_executor,
    description="Assemble lsvq.jsonl and its replay manifest from every slice's rows.",
)


def build_resources(config: dict | None = None) -> dict:
    """The resources, from explicit constructor arguments per key, else the LSVQ_* variables that are set."""
    config = config or {}
    kinds = {"lsvq": LsvqSettings, "clip_source": ClipSourceResource, "prober": ProbeResource}
    resources = {key: cls(**config.get(key, env_config(key, cls))) for key, cls in kinds.items()}
    resources["lsvq_automation"] = automation_settings(**config.get("lsvq_automation", {}))
    return resources


def build_defs(config: dict | None = None) -> dg.Definitions:
    """The project's Definitions (the CLI passes its flags as ``config``)."""
    return dg.Definitions(
        assets=[lsvq_manifest_csv, *SLICE_ASSETS, lsvq_shard],
        jobs=[lsvq_slice_job, lsvq_shard_job],
        sensors=[lsvq_manifest_sensor, lsvq_automation_sensor],
        schedules=[lsvq_refresh_schedule],
        resources=build_resources(config),
        # Runs the UI, a backfill or the automation launch on the asset selection itself (not a
        # named job) run in one process too, like lsvq_slice_job (DESIGN §2).
        executor=dg.in_process_executor,
    )


defs = build_defs()
