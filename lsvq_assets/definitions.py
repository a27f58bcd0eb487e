"""The one Definitions object: assets, checks, resources, jobs, sensor and schedule."""

import dagster as dg

from lsvq_assets.assets.clips import lsvq_clips
from lsvq_assets.assets.manifest import lsvq_manifest, lsvq_manifest_csv
from lsvq_assets.assets.probes import lsvq_probes
from lsvq_assets.assets.shard import lsvq_shard, lsvq_shard_rows
from lsvq_assets.resources import ClipSourceResource, ProbeResource
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
    return {key: cls(**config.get(key, env_config(key, cls))) for key, cls in kinds.items()}


def build_defs(config: dict | None = None) -> dg.Definitions:
    """The project's Definitions (the CLI passes its flags as ``config``)."""
    return dg.Definitions(
        assets=[lsvq_manifest_csv, *SLICE_ASSETS, lsvq_shard],
        jobs=[lsvq_slice_job, lsvq_shard_job],
        resources=build_resources(config),
    )


defs = build_defs()
