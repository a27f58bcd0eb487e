"""lsvq_refresh_schedule: materialise the slices that are missing, failed or stale, once a day."""

from __future__ import annotations

import dagster as dg

from lsvq_assets.automation import (
    MANIFEST_KEY,
    SHARD_KEY,
    SHARD_ROWS_KEY,
    SLICE_KEYS,
    SLICE_JOB,
    AutomationSettings,
    ManifestState,
    manifest_observations,
    read_state,
)
from lsvq_assets.core.errors import UserError
from lsvq_assets.partitions import register_slices, slices_partitions
from lsvq_assets.settings import LsvqSettings


def latest_data_version(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> str | None:
    """The data version of the partition's latest materialisation (None when there is none)."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    return records[0].asset_materialization.tags.get("dagster/data_version") if records else None


def refresh_plan(instance: dg.DagsterInstance, state: ManifestState) -> dict[str, str]:
    """Slice -> why it needs a run, in manifest order.

    ``missing``: its ``lsvq_shard_rows`` partition was never materialised; ``failed``: the latest run
    planned for one of its assets failed (a slice run, or a backfill of ``lsvq_clips`` alone);
    ``stale``: its rows' fingerprint differs from the data version of its latest ``lsvq_manifest``
    materialisation. Slices with a run queued or in progress are left alone.
    """
    keys = list(state.fingerprints)
    status = {key: instance.get_status_by_partition(key, keys, slices_partitions) or {} for key in SLICE_KEYS}
    plan: dict[str, str] = {}
    for key in keys:
        found = {status[asset].get(key) for asset in SLICE_KEYS}
        if dg.AssetPartitionStatus.IN_PROGRESS in found:
            continue
        if status[SHARD_ROWS_KEY].get(key) is None:
            plan[key] = "missing"
        elif dg.AssetPartitionStatus.FAILED in found:
            plan[key] = "failed"
        elif latest_data_version(instance, MANIFEST_KEY, key) != state.fingerprints[key]:
            plan[key] = "stale"
    return plan


def _shard_behind(instance: dg.DagsterInstance) -> bool:
    """True when some slice's rows were materialised after the shard was last assembled."""

    def latest(key: dg.AssetKey) -> int | None:
        records = instance.fetch_materializations(key, limit=1).records
        return records[0].storage_id if records else None

    rows, shard = latest(SHARD_ROWS_KEY), latest(SHARD_KEY)
    return rows is not None and (shard is None or shard < rows)


@dg.schedule(
    name="lsvq_refresh_schedule",
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    job_name=SLICE_JOB,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Daily: registers the manifest's slices and runs lsvq_slice_job for each slice that is "
    "missing, failed or stale (its rows changed), a bounded number per tick; lsvq_automation_sensor "
    "then re-assembles the shard.",
)
def lsvq_refresh_schedule(
    context: dg.ScheduleEvaluationContext, lsvq: LsvqSettings, lsvq_automation: AutomationSettings
) -> list[dg.RunRequest] | dg.SkipReason:
    """One tick: register slices first (a key must exist before a run can target it), then request runs."""
    try:
        state = read_state(lsvq)
    except UserError as exc:
        return dg.SkipReason(f"manifest not usable, nothing requested: {exc}")
    instance = context.instance
    register_slices(instance, state.fingerprints)
    plan = refresh_plan(instance, state)
    if not plan:
        shard = " (lsvq_shard is older than the newest slice rows: lsvq_automation_sensor re-assembles it, or run lsvq_shard_job)" if _shard_behind(instance) else ""
        return dg.SkipReason(f"all {len(state.fingerprints)} slices of {state.path} are materialised and current{shard}")
    launch = list(plan)[: max(1, lsvq_automation.max_scheduled_runs)]
    # Record what the runs will read, so their lineage points at this version of the file.
    for event in manifest_observations(state, launch, whole_file=True):
        instance.report_runless_asset_event(event)
    if len(plan) > len(launch):
        context.log.info(f"{len(launch)} of {len(plan)} slice runs requested (max_scheduled_runs); the rest next tick")
    return [
        dg.RunRequest(
            partition_key=key,
            run_key=f"{key}:{state.fingerprints[key]}",
            tags={"lsvq/reason": plan[key], "lsvq/slice_fingerprint": state.fingerprints[key]},
        )
        for key in launch
    ]
