"""The project on a PostgreSQL Dagster instance: ``deploy/dagster-postgres.yaml`` as deployed.

A throwaway server (``pg.py``, one per session, a fresh database per test: a copy of one where
Dagster created its tables) stands in for the shared database. Each test's ``DAGSTER_HOME`` holds the deploy file itself, its ``DAGSTER_PG_*`` variables
pointing at that database, so what is tested is what an operator copies. On it: the operator CLI
end to end (in-process, ``lsvq_assets.cli.main``), the manifest sensor registering partitions, a
partition failing on a 503 then run again, and a backfill of the failed partition through the run
queue, whose one-run-per-partition limit is the deploy file's.

Without PostgreSQL binaries these tests skip (with the reason) unless LSVQ_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import gc
import os
import re
import secrets
import logging
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster_graphql.test.utils import execute_dagster_graphql

from lsvq_assets import cli
from lsvq_assets.definitions import build_defs
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.harness import REPO_ROOT, assert_exact_shard, cli_args
from lsvq_assets_tests.pg import PgServer

pytestmark = pytest.mark.postgres

# --- names the package defines (one place to follow a rename) -------------------------------------
PARTITIONS_DEF = "lsvq_folders"
LABELS_ASSET = "lsvq_labels_train"  # the sensor observes it per partition
CLIPS_ASSET = "lsvq_clips"
PARTITION_ASSETS = ["lsvq_manifest", CLIPS_ASSET, "lsvq_probes", "lsvq_rows_train"]
SHARD_ASSET = "lsvq_shard_train"
PARTITION_JOB = "lsvq_partition_job"
SENSOR = "lsvq_manifest_sensor"
PARTITION_DIR = "partitions"  # per-partition outputs under <lsvq_dir>/<PARTITION_DIR>/<key>/
SHARD_FILE, REPLAY_FILE = "lsvq.jsonl", "lsvq.manifest.json"  # the CLI's default outputs in --lsvq-dir

DEPLOY_YAML = REPO_ROOT / "deploy" / "dagster-postgres.yaml"
PG_VARS = {  # connection field -> the variable the deploy file reads it from
    "username": "DAGSTER_PG_USERNAME",
    "password": "DAGSTER_PG_PASSWORD",
    "hostname": "DAGSTER_PG_HOST",
    "db_name": "DAGSTER_PG_DB",
    "port": "DAGSTER_PG_PORT",
}
KEYS = ["yfcc-batch1", "ia-batch2"]  # the generated corpus's partitions, in manifest order
FAILING_CLIP = "yfcc-batch1/725.mp4"
SYNC_LAUNCHER = "run_launcher:\n  module: dagster._core.launcher.sync_in_memory_run_launcher\n  class: SyncInMemoryRunLauncher\n"

LAUNCH = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}
"""


# --- fixtures and helpers -------------------------------------------------------------------------


def make_home(home: Path, db: dict[str, str], monkeypatch: pytest.MonkeyPatch, extra_yaml: str = "") -> Path:
    """DAGSTER_HOME with the deploy file (plus ``extra_yaml``), DAGSTER_PG_* set to ``db``; no LSVQ_*, no proxy."""
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(DEPLOY_YAML.read_text() + extra_yaml)
    for name in list(os.environ):
        if name.startswith("LSVQ_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for field, var in PG_VARS.items():
        monkeypatch.setenv(var, db[field])
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def dagster_template(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding Dagster's tables, created once by opening the deployed instance on it."""
    name = "dagster_template"
    db = pg_server.create_database(name)
    with pytest.MonkeyPatch.context() as mp:
        make_home(tmp_path_factory.mktemp("template") / "dagster-home", db, mp)
        with dg.DagsterInstance.get():
            pass
    return name


@pytest.fixture
def dagster_db(pg_server: PgServer, dagster_template: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """A fresh database for one test, a copy of the template (much faster than Dagster creating its tables)."""
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[5:35] + "_" + secrets.token_hex(3)
    return pg_server.create_database(name, template=dagster_template)


@pytest.fixture
def pg_home(tmp_path: Path, dagster_db: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_home(tmp_path / "dagster-home", dagster_db, monkeypatch)


@pytest.fixture
def pg_instance(pg_home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance every process with this DAGSTER_HOME opens."""
    with dg.DagsterInstance.get() as instance:
        yield instance


def query(db: dict[str, str], sql: str, *args: object) -> list[tuple]:
    """Rows straight from the PostgreSQL database (not through Dagster)."""
    import psycopg2  # with dagster-postgres (the fixtures skip without it)

    conn = psycopg2.connect(host=db["hostname"], port=db["port"], user=db["username"], password=db["password"], dbname=db["db_name"])
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def runs_in_db(db: dict[str, str]) -> list[tuple[str, str | None]]:
    """(status, partition) of every run in the runs table, oldest first."""
    return query(db, "SELECT status, partition FROM runs ORDER BY id")


def cli_runs_in_db(db: dict[str, str]) -> list[tuple[str, str | None]]:
    """(status, partition) of a CLI's runs: its partition runs in key order (they run two at once), then its other runs."""
    runs = runs_in_db(db)
    return sorted((r for r in runs if r[1]), key=lambda r: KEYS.index(r[1])) + [r for r in runs if not r[1]]


def cli_main(argv: list[str]) -> int:
    """``lsvq-to-corpus-jsonl`` in this process; leaves the logger and the collector as it found them."""
    logger = logging.getLogger("lsvq_assets")
    handlers, level = list(logger.handlers), logger.level
    try:
        return cli.main(argv)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        gc.unfreeze()  # main() freezes what it imported (a process that ends right after)


def partition_statuses(instance: dg.DagsterInstance, asset: str) -> dict[str, str | None]:
    """Per-partition status as the UI's partition bar reads it."""
    found = instance.get_status_by_partition(dg.AssetKey(asset), KEYS, dg.DynamicPartitionsDefinition(name=PARTITIONS_DEF)) or {}
    return {k: (s.value if s else None) for k, s in found.items()}


# --- the deploy file ------------------------------------------------------------------------------


def test_deploy_file_is_a_valid_postgres_instance(tmp_path: Path, pg_database: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster accepts the file's schema and creates its tables in an empty database; storage is
    PostgreSQL through psycopg2; the queue's limits are set."""
    pg_home = make_home(tmp_path / "dagster-home", pg_database, monkeypatch)
    assert query(pg_database, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    config = yaml.safe_load(DEPLOY_YAML.read_text())
    assert config["storage"]["postgres"]["postgres_db"] == {
        "scheme": "postgresql+psycopg2",
        **{field: {"env": var} for field, var in PG_VARS.items()},
    }
    base = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"] == base["concurrency"]["pools"]
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == base["concurrency"]["runs"]["max_concurrent_runs"]
    with dg.DagsterInstance.get() as instance:
        assert [type(s).__name__ for s in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)] == [
            "PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"
        ]
        assert str(instance.run_storage._engine.url).startswith("postgresql+psycopg2://")  # noqa: SLF001
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.tag_concurrency_limits == [{"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
        assert instance.run_monitoring_enabled
    # Dagster created its tables in the database the variables name, and nothing in SQLite.
    assert ("runs",) in query(pg_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert not list(pg_home.rglob("*.db")) and not (pg_home / "history").exists()


# --- (a) the operator CLI end to end --------------------------------------------------------------


def test_cli_end_to_end_records_its_runs_in_postgres(tmp_path: Path, corpus: Corpus, served, pg_home: Path, dagster_db: dict[str, str]) -> None:
    work = tmp_path / "work"
    args = cli_args(work, corpus.csv, served.base_url, "--concurrency", "4")
    assert cli_main(args) == 0
    assert_exact_shard(work, corpus)
    assert (work / REPLAY_FILE).is_file()
    assert all((work / PARTITION_DIR / key).is_dir() for key in KEYS)
    assert not (work / ".dagster").exists()  # DAGSTER_HOME's instance, not one under the working directory
    assert not list(pg_home.rglob("*.db"))

    # One run per partition, then the shard's, all in the runs table; the partition tag the queue limits on.
    assert cli_runs_in_db(dagster_db) == [("SUCCESS", KEYS[0]), ("SUCCESS", KEYS[1]), ("SUCCESS", None)]
    tagged = query(dagster_db, "SELECT value FROM run_tags WHERE key = 'dagster/partition' ORDER BY id")
    assert sorted(v for (v,) in tagged) == sorted(KEYS)
    with dg.DagsterInstance.get() as instance:  # another process opening the same instance sees it all
        assert instance.get_dynamic_partitions(PARTITIONS_DEF) == KEYS
        event = instance.get_latest_materialization_event(dg.AssetKey(SHARD_ASSET))
        assert event is not None and event.asset_materialization.metadata["dagster/row_count"].value == len(corpus.by_kind("ok"))
        for asset in PARTITION_ASSETS:
            assert partition_statuses(instance, asset) == dict.fromkeys(KEYS, "MATERIALIZED"), asset

    # Again: nothing fetched, the same bytes, no run at all (every partition and shard is current).
    first = (work / SHARD_FILE).read_bytes()
    served.reset_log()
    assert cli_main([*args, "--log-level", "DEBUG"]) == 0
    assert served.count() == 0 and (work / SHARD_FILE).read_bytes() == first
    assert [s for s, _ in runs_in_db(dagster_db)] == ["SUCCESS"] * 3, runs_in_db(dagster_db)


# --- (b) the sensor -------------------------------------------------------------------------------


def test_sensor_registers_partitions_in_postgres(tmp_path: Path, corpus: Corpus, pg_instance: dg.DagsterInstance, dagster_db: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """As the daemon evaluates it, with the resources bound to LSVQ_* as deployed; registrations land in PostgreSQL."""
    for var, value in {"LSVQ_DIR": tmp_path / "lsvq", "LSVQ_MANIFEST_CSV": corpus.csv, "LSVQ_MIN_CSV_ROWS": 1, "LSVQ_MAX_ROWS": 0}.items():
        monkeypatch.setenv(var, str(value))
    defs = build_defs()
    sensor = defs.get_repository_def().get_sensor_def(SENSOR)

    def tick(cursor: str | None):
        with dg.build_sensor_context(
            instance=pg_instance, instance_ref=pg_instance.get_ref(), cursor=cursor, definitions=defs, resources=defs.resources
        ) as context:
            data = sensor.evaluate_tick(context)
        for event in data.asset_events:  # what the daemon does with the tick's result
            pg_instance.report_runless_asset_event(event)
        for request in data.dynamic_partitions_requests or []:
            pg_instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        return data

    assert query(dagster_db, "SELECT count(*) FROM dynamic_partitions") == [(0,)]
    first = tick(None)
    assert [r.partition_key for r in first.run_requests] == KEYS
    rows = query(dagster_db, "SELECT partitions_def_name, partition FROM dynamic_partitions ORDER BY id")
    assert rows == [(PARTITIONS_DEF, k) for k in KEYS]
    observed = pg_instance.fetch_observations(dg.AssetKey(LABELS_ASSET), limit=100).records
    assert {r.partition_key for r in observed} >= set(KEYS)

    again = tick(first.cursor)  # the cursor round-trips; nothing changed, nothing requested
    assert not again.run_requests and again.skip_message
    assert len(query(dagster_db, "SELECT partition FROM dynamic_partitions")) == len(KEYS)


# --- (c) a failed partition, then its re-run ------------------------------------------------------


def test_failed_partition_is_recorded_then_the_cli_run_again_fetches_only_what_was_missing(
    tmp_path: Path, corpus: Corpus, served, pg_home: Path, dagster_db: dict[str, str]
) -> None:
    work = tmp_path / "work"
    args = cli_args(work, corpus.csv, served.base_url, "--concurrency", "4")
    served.set_fault(FAILING_CLIP, "503", forever=True)
    assert cli_main(args) == 1  # transient: run again
    assert cli_runs_in_db(dagster_db) == [("FAILURE", KEYS[0]), ("SUCCESS", KEYS[1]), ("SUCCESS", None)]
    with dg.DagsterInstance.get() as instance:
        assert partition_statuses(instance, CLIPS_ASSET) == {KEYS[0]: "FAILED", KEYS[1]: "MATERIALIZED"}

    served.clear_faults()
    served.reset_log()
    assert cli_main(args) == 0
    assert {r.path for r in served.requests} == {FAILING_CLIP}  # only what was missing
    assert_exact_shard(work, corpus)
    # Only the failed partition runs again (the other is current), then the shard.
    assert runs_in_db(dagster_db)[3:] == [("SUCCESS", KEYS[0]), ("SUCCESS", None)]
    with dg.DagsterInstance.get() as instance:
        for asset in PARTITION_ASSETS:
            assert partition_statuses(instance, asset) == dict.fromkeys(KEYS, "MATERIALIZED"), asset


@pytest.fixture
def queue_home(tmp_path: Path, dagster_db: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The deploy file with one change: runs the queue launches execute in this process, synchronously.

    The queued run coordinator, its limits and the pools stay as deployed.
    """
    assert "run_launcher" not in yaml.safe_load(DEPLOY_YAML.read_text())
    return make_home(tmp_path / "dagster-home", dagster_db, monkeypatch, extra_yaml=SYNC_LAUNCHER)


def test_backfill_of_the_failed_partition_through_the_run_queue(
    tmp_path: Path, corpus: Corpus, served, queue_home: Path, dagster_db: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's "failed and missing" backfill on the PostgreSQL instance, as the daemon runs it:
    the backfill submits runs to the queue, the queue launches them, one per partition key at a time."""
    env = {"LSVQ_DIR": tmp_path / "work", "LSVQ_MANIFEST_CSV": corpus.csv, "LSVQ_MIN_CSV_ROWS": 1, "LSVQ_MAX_ROWS": 0,
           "LSVQ_CLIP_URL_TEMPLATE": served.base_url + "/{name}{suffix}"}
    for var, value in env.items():
        monkeypatch.setenv(var, str(value))
    module = tmp_path / "location.py"  # the code location as the webserver and the daemon load it
    module.write_text("from lsvq_assets.definitions import build_defs\n\ndefs = build_defs()\n")
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(module), attribute="defs", working_directory=str(tmp_path)), location_name="lsvq_assets"
    )
    logger = logging.getLogger("test_postgres")
    with dg.DagsterInstance.get() as instance, WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        # A partition fails on a 503 (a run the UI launched, say).
        served.set_fault(FAILING_CLIP, "503", forever=True)
        instance.add_dynamic_partitions(PARTITIONS_DEF, KEYS)
        job = build_defs().resolve_job_def(PARTITION_JOB)
        for key in KEYS:
            job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        assert runs_in_db(dagster_db) == [("FAILURE", KEYS[0]), ("SUCCESS", KEYS[1])]
        failed = [k for k, s in partition_statuses(instance, PARTITION_ASSETS[-1]).items() if s in ("FAILED", None)]
        assert failed == [KEYS[0]]

        # The source recovers. Two backfills of the failed partition (two operators, or a double click).
        served.clear_faults()
        served.reset_log()
        params = {"partitionNames": failed, "assetSelection": [{"path": [a]} for a in PARTITION_ASSETS]}
        backfills = []
        for _ in range(2):
            result = execute_dagster_graphql(workspace.create_request_context(), LAUNCH, variables={"backfillParams": params})
            assert not result.errors, result.errors
            payload = result.data["launchPartitionBackfill"]
            assert payload["__typename"] == "LaunchBackfillSuccess", payload
            backfills.append(payload["backfillId"])
        for _ in range(5):
            list(execute_backfill_iteration(workspace, logger))
            if len(instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))) == 2:
                break
        queued = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
        assert sorted(r.tags["dagster/backfill"] for r in queued) == sorted(backfills)
        assert {r.tags["dagster/partition"] for r in queued} == {KEYS[0]}

        # One pass of the run queue: one run of that partition at a time; the other stays queued.
        queue = QueuedRunCoordinatorDaemon(interval_seconds=1)
        list(queue.run_iteration(workspace))
        statuses = sorted(r.status.value for r in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": KEYS[0]})))
        assert statuses == ["FAILURE", "QUEUED", "SUCCESS"]
        assert {r.path for r in served.requests} == {FAILING_CLIP}  # only the clip that had failed
        list(queue.run_iteration(workspace))  # the second goes once the first has ended: nothing left to fetch
        assert served.count() == 1

        for _ in range(10):
            list(execute_backfill_iteration(workspace, logger))
            if all(instance.get_backfill(b).status in BULK_ACTION_TERMINAL_STATUSES for b in backfills):
                break
        assert [instance.get_backfill(b).status for b in backfills] == [BulkActionStatus.COMPLETED_SUCCESS] * 2
        for asset in PARTITION_ASSETS:
            assert partition_statuses(instance, asset) == dict.fromkeys(KEYS, "MATERIALIZED"), asset
    assert [s for s, _ in runs_in_db(dagster_db)] == ["FAILURE", "SUCCESS", "SUCCESS", "SUCCESS"]
