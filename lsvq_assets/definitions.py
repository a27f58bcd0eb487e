"""The one Definitions object: assets, checks, resources, jobs, sensor and schedule."""

from __future__ import annotations

import dagster as dg

from lsvq_assets.assets.manifest import lsvq_manifest, lsvq_manifest_csv
from lsvq_assets.partitions import slices_partitions
from lsvq_assets.settings import LsvqSettings, env_config

SLICE_ASSETS = [lsvq_manifest]

lsvq_slice_job = dg.define_asset_job(
    "lsvq_slice_job",
    selection=dg.AssetSelection.assets(*SLICE_ASSETS),
    partitions_def=slices_partitions,
    executor_def=dg.in_process_executor,
    description="One slice end to end: manifest rows, clips, probes, JSONL rows.",
)


def build_defs(lsvq: LsvqSettings | None = None) -> dg.Definitions:
    """The project's Definitions; resources default to the ``LSVQ_*`` variables that are set."""
    return dg.Definitions(
        assets=[lsvq_manifest_csv, *SLICE_ASSETS],
        jobs=[lsvq_slice_job],
        resources={"lsvq": lsvq or LsvqSettings(**env_config("lsvq", LsvqSettings))},
    )


defs = build_defs()
