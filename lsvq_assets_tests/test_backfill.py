"""A partition that fails transiently, then its backfill through the GraphQL API the UI uses.

The code location is loaded as the webserver and the daemon load it (``defs = build_defs()``,
settings from ``LSVQ_*`` variables only); the backfill daemon's iteration runs in-process and its
runs execute synchronously. With the fault still on, the backfill fails; cleared, "re-execute from
failure" of that backfill completes and every partition is materialised.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.test.utils import execute_dagster_graphql

from lsvq_assets.definitions import build_defs
from lsvq_assets.partitions import folder_partitions, register_partitions
from lsvq_assets_tests.corpus import Corpus

FAILING_CLIP = "yfcc-batch1/725.mp4"
KEYS = ["yfcc-batch1", "ia-batch2"]
PARTITION_KEYS = [dg.AssetKey(k) for k in ("lsvq_manifest", "lsvq_clips", "lsvq_probes", "lsvq_rows_train")]

# What the UI's launch dialog sends ("only failed and missing" partitions of the selected assets).
LAUNCH = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
  }
}
"""
# A finished backfill's "Re-execute > From failure".
REEXECUTE = """
mutation ReexecuteBackfill($reexecutionParams: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $reexecutionParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
  }
}
"""


@pytest.fixture
def env(tmp_path: Path, corpus: Corpus, served, monkeypatch) -> Path:
    """The LSVQ_* variables an operator sets for the webserver and the daemon."""
    work = tmp_path / "work"
    monkeypatch.setenv("LSVQ_DIR", str(work))
    monkeypatch.setenv("LSVQ_MANIFEST_CSV", str(corpus.csv))
    monkeypatch.setenv("LSVQ_CLIP_URL_TEMPLATE", served.base_url + "/{name}{suffix}")
    monkeypatch.setenv("LSVQ_MIN_CSV_ROWS", "1")
    monkeypatch.setenv("LSVQ_MAX_ROWS", "0")
    return work


@pytest.fixture
def instance():
    overrides = {
        "run_launcher": {"module": "dagster._core.launcher.sync_in_memory_run_launcher", "class": "SyncInMemoryRunLauncher"},
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance


@pytest.fixture
def workspace(tmp_path: Path, env: Path, instance: dg.DagsterInstance):
    """The code location as the webserver loads it: a module whose ``defs`` read only LSVQ_* variables."""
    module = tmp_path / "location.py"
    module.write_text("from lsvq_assets.definitions import build_defs\n\ndefs = build_defs()\n")
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(module), attribute="defs", working_directory=str(tmp_path)), location_name="lsvq_assets"
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        yield context


def statuses(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, str | None]:
    """Per-partition status as the UI's partition bar reads it."""
    found = instance.get_status_by_partition(key, KEYS, folder_partitions) or {}
    return {k: (s.value if s else None) for k, s in found.items()}


def run_backfill(workspace: WorkspaceProcessContext, backfill_id: str) -> BulkActionStatus:
    """Iterate the backfill daemon until the backfill ends (its runs execute synchronously)."""
    logger = logging.getLogger("backfill-test")
    for _ in range(20):
        list(execute_backfill_iteration(workspace, logger))
        backfill = workspace.instance.get_backfill(backfill_id)
        if backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            return backfill.status
    raise AssertionError(f"backfill {backfill_id} still {backfill.status}")


def schedule_tick(instance: dg.DagsterInstance, defs: dg.Definitions) -> dict[str, str]:
    """The refresh schedule's requests (partition -> reason), its resources bound to LSVQ_* as deployed."""
    context = dg.build_schedule_context(
        instance=instance, instance_ref=instance.get_ref(), repository_def=defs.get_repository_def(), resources=defs.resources
    )
    data = defs.get_repository_def().get_schedule_def("lsvq_refresh_schedule").evaluate_tick(context)
    return {r.partition_key: r.tags["lsvq/reason"] for r in data.run_requests}


def graphql(workspace: WorkspaceProcessContext, query: str, variables: dict) -> dict:
    result = execute_dagster_graphql(workspace.create_request_context(), query, variables=variables)
    assert not result.errors, result.errors
    payload = next(iter(result.data.values()))
    assert payload["__typename"] == "LaunchBackfillSuccess", payload
    return payload


def test_failed_partition_then_backfill_of_failed_partitions(env: Path, corpus: Corpus, served, instance, workspace) -> None:
    served.set_fault(FAILING_CLIP, "503", forever=True)
    defs = build_defs()  # the same settings, from the environment
    register_partitions(instance, KEYS)
    job = defs.resolve_job_def("lsvq_partition_job")
    results = {k: job.execute_in_process(partition_key=k, instance=instance, raise_on_error=False) for k in KEYS}
    assert not results["yfcc-batch1"].success and results["ia-batch2"].success

    for key in PARTITION_KEYS[1:]:  # lsvq_manifest[yfcc-batch1] was written before lsvq_clips failed
        assert statuses(instance, key) == {"yfcc-batch1": "FAILED", "ia-batch2": "MATERIALIZED"}, key
    assert schedule_tick(instance, defs) == {"yfcc-batch1": "failed"}  # what the daily schedule would run

    # "Only failed and missing" in the launch dialog: the failed partition, all four partition assets.
    failed = [k for k, s in statuses(instance, dg.AssetKey("lsvq_rows_train")).items() if s in ("FAILED", None)]
    assert failed == ["yfcc-batch1"]
    params = {"partitionNames": failed, "assetSelection": [{"path": k.path} for k in PARTITION_KEYS]}
    first = graphql(workspace, LAUNCH, {"backfillParams": params})["backfillId"]
    assert run_backfill(workspace, first) == BulkActionStatus.COMPLETED_FAILED  # the source still answers 503
    assert statuses(instance, dg.AssetKey("lsvq_clips"))["yfcc-batch1"] == "FAILED"

    # The source recovers: the failed backfill's "re-execute from failure" finishes the partition.
    served.clear_faults()
    served.reset_log()
    retry = graphql(workspace, REEXECUTE, {"reexecutionParams": {"parentRunId": first, "strategy": "FROM_FAILURE"}})["backfillId"]
    assert run_backfill(workspace, retry) == BulkActionStatus.COMPLETED_SUCCESS
    for key in PARTITION_KEYS:
        assert statuses(instance, key) == {"yfcc-batch1": "MATERIALIZED", "ia-batch2": "MATERIALIZED"}, key
    assert {r.path for r in served.requests} == {FAILING_CLIP}  # only the clip that had failed is fetched again
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": retry}))
    assert len(runs) == 1 and runs[0].tags["dagster/partition"] == "yfcc-batch1"
    assert schedule_tick(instance, defs) == {}
