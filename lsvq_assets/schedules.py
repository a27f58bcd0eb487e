"""lsvq_refresh_schedule: materialise the selected partitions that are missing, failed or stale, once a day."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from lsvq_assets.automation import MANIFEST_KEY, PARTITION_JOB, LabelState, observe, read_state
from lsvq_assets.core.errors import UserError
from lsvq_assets.partitions import folder_partitions, register_partitions
from lsvq_assets.resources import AutomationSettings, LsvqSettings


def latest_data_version(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> str | None:
    """The data version of the partition's latest materialisation (None when there is none)."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    mat = records[0].asset_materialization if records else None
    return (mat.tags or {}).get("dagster/data_version") if mat is not None else None


def needed_assets(asset_keys: Sequence[dg.AssetKey], splits: Sequence[str]) -> list[dg.AssetKey]:
    """The partition assets a partition holding rows of ``splits`` must have materialised: a split's
    rows asset only where the split has rows (a split added later does not make others missing)."""
    return [a for a in asset_keys if not a.path[-1].startswith("lsvq_rows_") or a.path[-1].removeprefix("lsvq_rows_") in splits]


def refresh_plan(
    instance: dg.DagsterInstance,
    state: LabelState,
    asset_keys: Sequence[dg.AssetKey],
    keys: Sequence[str] | None = None,
    skip_in_progress: bool = True,
) -> dict[str, str]:
    """Partition -> why it needs a run, in partition order, among ``keys`` (default: the selected ones).

    ``missing``: one of its assets was never materialised; ``failed``: the latest run planned for one
    of them failed; ``stale``: its rows' version differs from the data version of its latest
    ``lsvq_manifest`` materialisation. Partitions with a run queued or in progress are left alone.
    """
    keys = list(state.selected if keys is None else keys)
    status = {a: instance.get_status_by_partition(a, keys, folder_partitions) or {} for a in asset_keys}
    plan: dict[str, str] = {}
    for key in keys:
        found = [status[a].get(key) for a in needed_assets(asset_keys, state.splits_in.get(key, []))]
        if dg.AssetPartitionStatus.IN_PROGRESS in found:
            if skip_in_progress:
                continue
            plan[key] = "in-progress"
            continue
        if None in found:
            plan[key] = "missing"
        elif dg.AssetPartitionStatus.FAILED in found:
            plan[key] = "failed"
        elif latest_data_version(instance, MANIFEST_KEY, key) != state.versions[key]:
            plan[key] = "stale"
    return plan


def refresh_schedule(partition_asset_keys: Sequence[dg.AssetKey]) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="lsvq_refresh_schedule",
        cron_schedule="0 3 * * *",
        execution_timezone="UTC",
        job_name=PARTITION_JOB,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Daily: registers every partition of the label files and runs lsvq_partition_job for each "
        "selected partition that is missing, failed or stale (its rows changed), a bounded number per tick; "
        "lsvq_automation_sensor then re-assembles the shards.",
    )
    def lsvq_refresh_schedule(
        context: dg.ScheduleEvaluationContext, lsvq: LsvqSettings, lsvq_automation: AutomationSettings
    ) -> list[dg.RunRequest] | dg.SkipReason:
        """One tick: register partitions first (a key must exist before a run can target it), then request runs."""
        try:
            state = read_state(lsvq)
        except UserError as exc:
            return dg.SkipReason(f"label files not usable, nothing requested: {exc}")
        instance = context.instance
        register_partitions(instance, state.versions)
        plan = refresh_plan(instance, state, partition_asset_keys)
        if not plan:
            return dg.SkipReason(f"all {len(state.selected)} selected partitions are materialised and current")
        launch = list(plan)[: max(1, lsvq_automation.max_scheduled_runs)]
        observe(instance, state, launch)
        if len(plan) > len(launch):
            context.log.info(f"{len(launch)} of {len(plan)} partition runs requested (max_scheduled_runs); the rest next tick")
        return [
            dg.RunRequest(
                partition_key=key,
                run_key=f"{key}:{state.versions[key]}",
                tags={"lsvq/reason": plan[key], "lsvq/partition_version": state.versions[key]},
            )
            for key in launch
        ]

    return lsvq_refresh_schedule
