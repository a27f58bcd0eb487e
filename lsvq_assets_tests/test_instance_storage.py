"""The CLI's own instance keeps its SQLite connections open, and writes the very files Dagster's stock
SQLite storage (``dagster dev`` on the same ``DAGSTER_HOME``) reads."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from lsvq_assets import instance_storage
from lsvq_assets.core.layout import Layout
from lsvq_assets.instance_storage import PooledSqliteEventLogStorage, PooledSqliteRunStorage
from lsvq_assets.runs import open_instance

P = dg.DynamicPartitionsDefinition(name="p")


@dg.asset(partitions_def=P)
def upstream() -> None:
    return None


@dg.asset(partitions_def=P, deps=[upstream])
def downstream(context) -> dg.MaterializeResult:  # noqa: ANN001  (dagster reads the annotation at definition)
    context.log.info("partition %s", context.partition_key)
    return dg.MaterializeResult(metadata={"key": context.partition_key})


JOB = dg.Definitions(assets=[upstream, downstream], jobs=[dg.define_asset_job("j", selection=[upstream, downstream])]).resolve_job_def("j")


@pytest.fixture
def cli_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    instance = open_instance(Layout.create(tmp_path / "lsvq"))
    yield instance
    instance.dispose()


def test_cli_instance_uses_the_pooled_storages_on_dagsters_layout(cli_instance: dg.DagsterInstance) -> None:
    assert isinstance(cli_instance.run_storage, PooledSqliteRunStorage)
    assert isinstance(cli_instance.event_log_storage, PooledSqliteEventLogStorage)
    home = Path(cli_instance.root_directory)
    assert (home / "history" / "runs.db").is_file() and (home / "history" / "runs" / "index.db").is_file()
    assert not (home / "dagster.yaml").exists()  # an override of this process, nothing for the UI to load


def test_runs_written_through_pooled_connections_read_back_with_the_stock_storage(
    cli_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instance_storage, "OPEN_SHARDS", 2)  # evict while runs are written
    keys = [f"k{i}" for i in range(5)]
    cli_instance.add_dynamic_partitions("p", keys)
    run_ids = []
    for key in keys:
        result = JOB.execute_in_process(partition_key=key, instance=cli_instance)
        assert result.success
        run_ids.append(result.run_id)
        assert len(cli_instance.event_log_storage._engines) <= 2
    stock = dg.DagsterInstance.from_config(cli_instance.root_directory)  # what `dagster dev` opens
    try:
        assert type(stock.event_log_storage).__name__ == "SqliteEventLogStorage"
        assert {r.run_id for r in stock.get_runs()} == set(run_ids)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in stock.get_runs())
        for key, run_id in zip(keys, run_ids, strict=True):
            logs = stock.all_logs(run_id)
            assert any(e.user_message == f"partition {key}" for e in logs)
        mats = stock.fetch_materializations(dg.AssetKey("downstream"), limit=10).records
        assert sorted(m.partition_key for m in mats) == keys
        # and the pooled instance reads what the stock one writes
        stock.add_dynamic_partitions("p", ["from-stock"])
        assert stock.get_runs()  # the stock storage opened the files the pooled one keeps open
        assert "from-stock" in cli_instance.get_dynamic_partitions("p")
        assert JOB.execute_in_process(partition_key="from-stock", instance=stock).success
        assert cli_instance.get_latest_materialization_event(dg.AssetKey("downstream")).asset_materialization.partition == "from-stock"
    finally:
        stock.dispose()


def test_index_columns_and_data_migrations_found_are_not_asked_about_again(
    cli_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster asks the index which asset-key columns and data migrations it has many times a run:
    the pooled storage asks again only about what it did not find, and answers as the stock storage does."""
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    cli_instance.add_dynamic_partitions("p", ["a", "b"])
    assert JOB.execute_in_process(partition_key="a", instance=cli_instance).success
    asked: list[tuple[str, bool]] = []
    for name in ("_has_asset_key_col_on_connection", "has_secondary_index"):
        stock_method = getattr(SqlEventLogStorage, name)

        def counted(*args, _method=stock_method):  # noqa: ANN002, ANN202
            answer = _method(*args)
            asked.append((args[-1], answer))
            return answer

        monkeypatch.setattr(SqlEventLogStorage, name, counted)
    assert JOB.execute_in_process(partition_key="b", instance=cli_instance).success
    assert [name for name, answer in asked if answer] == []  # what was found is not asked again
    pooled = cli_instance.event_log_storage
    assert pooled._asset_key_cols and pooled._indexes  # found during the first run
    monkeypatch.undo()
    stock = dg.DagsterInstance.from_config(cli_instance.root_directory).event_log_storage
    try:
        for column in pooled._asset_key_cols | {"no_such_column"}:
            assert pooled.has_asset_key_col(column) == stock.has_asset_key_col(column), column
        for index in pooled._indexes | {"no_such_migration"}:
            assert pooled.has_secondary_index(index) == stock.has_secondary_index(index), index
    finally:
        stock.dispose()


def test_dagster_home_on_default_storage_is_pooled_and_a_configured_storage_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = Layout.create(tmp_path / "lsvq")
    plain, configured = tmp_path / "plain", tmp_path / "configured"
    plain.mkdir()
    (plain / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    configured.mkdir()
    (configured / "dagster.yaml").write_text(
        "event_log_storage:\n  module: dagster._core.storage.event_log\n  class: ConsolidatedSqliteEventLogStorage\n"
        f"  config:\n    base_dir: {configured}/history\n"
    )
    for home, expected in (
        (plain, PooledSqliteEventLogStorage),
        (configured, dg._core.storage.event_log.ConsolidatedSqliteEventLogStorage),
    ):
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        instance = open_instance(layout)
        try:
            assert type(instance.event_log_storage) is expected
            assert instance.root_directory == str(home)
        finally:
            instance.dispose()
    assert not layout.dagster_home.exists()  # DAGSTER_HOME set: nothing under the working directory


def test_a_dagster_home_without_dagster_yaml_is_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Dagster's warning for a DAGSTER_HOME without ``dagster.yaml`` is printed once a run, not twice; the instance is pooled."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with caplog.at_level(logging.WARNING, logger="dagster"):
        instance = open_instance(Layout.create(tmp_path / "lsvq"))
    try:
        assert type(instance.event_log_storage) is PooledSqliteEventLogStorage
    finally:
        instance.dispose()
    warned = [r for r in caplog.records if "No dagster instance configuration file" in r.getMessage()]
    assert len(warned) == 1 and str(home) in warned[0].getMessage()


def _schema(db: Path) -> tuple[list, list, str]:
    conn = sqlite3.connect(db)
    try:
        objects = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
        revisions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        return objects, revisions, conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_a_runs_event_log_database_is_created_as_dagsters_own(tmp_path: Path) -> None:
    """The pooled storage creates a run's database without Dagster's alembic walk: same tables, mode, revision."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    made = {}
    for cls in (SqliteEventLogStorage, PooledSqliteEventLogStorage):
        storage = cls(str(tmp_path / cls.__name__))
        for run in ("run1", "run2"):  # the pooled storage copies the database it made once for this process
            storage._initdb(create_engine(storage.conn_string_for_shard(run), poolclass=NullPool))
            made[cls, run] = _schema(Path(storage.path_for_shard(run)))
        storage.dispose()
        assert sorted(os.listdir(tmp_path / cls.__name__)) == ["index.db", "run1.db", "run2.db"]  # no temp file left
    assert instance_storage._new_run_shard_bytes().startswith(b"SQLite format 3\x00")  # copied, not made each time
    stock = made[SqliteEventLogStorage, "run1"]
    assert made[SqliteEventLogStorage, "run2"] == stock
    for run in ("run1", "run2"):
        pooled = made[PooledSqliteEventLogStorage, run]
        assert pooled == stock and pooled[2] == "wal" and len(pooled[1]) == 1 and len(pooled[0]) > 10

    # A database whose tables exist without a stamped revision (an older Dagster's): Dagster's own path stamps it.
    storage = PooledSqliteEventLogStorage(str(tmp_path / "legacy"))
    conn = sqlite3.connect(storage.path_for_shard("old"))
    conn.execute("CREATE TABLE event_logs (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    storage._initdb(create_engine(storage.conn_string_for_shard("old"), poolclass=NullPool))
    assert _schema(Path(storage.path_for_shard("old")))[1] == stock[1]
    storage.dispose()


def _contents(db: Path) -> tuple:
    """A database's schema, revision and mode, and the data migrations marked done."""
    conn = sqlite3.connect(db)
    try:
        marked = conn.execute("SELECT name FROM secondary_indexes WHERE migration_completed IS NOT NULL ORDER BY name").fetchall()
    finally:
        conn.close()
    return _schema(db), marked


def test_a_new_instance_made_on_alembic_scripts_loaded_once_is_dagsters_own(tmp_path: Path) -> None:
    """``load_alembic_scripts_once``: one loaded script directory for Dagster's databases, and the
    three databases of a new instance made on it are those a process without it makes."""
    from alembic.script import ScriptDirectory
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage
    from dagster._core.storage.sql import get_alembic_config

    stock, ours = tmp_path / "stock", tmp_path / "ours"
    stock.mkdir()
    ours.mkdir()
    make = (
        "import sys, dagster as dg; from dagster._core.instance.ref import InstanceRef; "
        "dg.DagsterInstance.from_ref(InstanceRef.from_dir(sys.argv[1])).dispose()"
    )
    subprocess.run([sys.executable, "-c", make, str(stock)], check=True, capture_output=True)  # nothing replaced there

    instance_storage.load_alembic_scripts_once()
    instance_storage.load_alembic_scripts_once()  # a second call changes nothing
    runs, schedules = (ScriptDirectory.from_config(get_alembic_config(m.__file__)) for m in (sqlite_run_storage, sqlite_schedule_storage))
    assert runs is schedules is instance_storage._alembic_head()[0]
    assert ScriptDirectory.from_config(get_alembic_config(sqlite_run_storage.__file__, script_location=str(tmp_path))) is not runs

    dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(ours))).dispose()
    for db in ("history/runs.db", "history/runs/index.db", "schedules/schedules.db"):
        made, theirs = _contents(ours / db), _contents(stock / db)
        assert made == theirs and made[1], db
