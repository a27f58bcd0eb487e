"""SQLite storage for the CLI's own Dagster instance that keeps its connections open.

Dagster's SQLite run and event-log storages open a new SQLAlchemy engine and SQLite connection for
every call and close it after (``NullPool``); closing the last connection of a WAL database
checkpoints it, and every commit is fsynced. A partition run makes ~120 commits (its ~30 events,
their index rows, run status), so a run of four trivial assets cost ~1.1 s on this project's
SQLite instance against ~0.2 s in memory. These subclasses keep one engine per database open (the
event log: the index and the few most recent runs' files) and commit with ``synchronous=NORMAL``
(see ``SYNCHRONOUS``): ~0.4 s. The files, their schema and their WAL mode are exactly Dagster's, so
``dagster dev`` on the same ``DAGSTER_HOME`` reads them with the stock storage, and other processes
read them while the CLI writes.

Only the CLI process uses them (:func:`lsvq_assets.runs.open_instance`, as overrides: nothing is
written to ``dagster.yaml``), and only on Dagster's default SQLite storage: an instance whose
``dagster.yaml`` chooses a storage (PostgreSQL, a consolidated event log…) is opened as configured.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SQLITE_BUSY_TIMEOUT_SECONDS, SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.sql import get_alembic_config
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import Connection, Engine

from lsvq_assets.core.files import temp_beside

MODULE = __name__
OPEN_SHARDS = 4  # the index shard and the most recent runs' files
# WAL with synchronous=NORMAL: a commit is not fsynced (a checkpoint is). The database stays
# consistent whatever happens; a power cut may lose the last events, never a partition's outputs
# (fsynced, and the truth: a partition whose last events were lost is found current or re-run).
SYNCHRONOUS = "NORMAL"
CACHE_KIB = 512  # page cache per open connection (SQLite's default: 2 MiB): they stay open now
STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")  # dagster.yaml keys that choose a storage


def instance_overrides(dagster_home: str, capture_logs: bool = False) -> dict[str, Any]:
    """``DagsterInstance`` overrides that put these storages on Dagster's default SQLite layout.

    Unless ``capture_logs`` (the instance's ``dagster.yaml`` configures ``compute_logs``), the CLI's
    runs do not capture their steps' stdout and stderr into files: they print to the terminal the
    operator is watching, and every structured event is in the event log as before. Dagster's
    local capture starts two processes per step (``tail -F`` and a Python watcher): ~20 MB of the
    memory of two partition runs at once, and their start-up time on every step. Runs the UI
    launches on the same instance read its ``dagster.yaml`` and capture as usual.
    """
    history = os.path.join(dagster_home, "history", "")
    no_capture = (
        {}
        if capture_logs
        else {"compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}}
    )
    return no_capture | {
        "run_storage": {"module": MODULE, "class": "PooledSqliteRunStorage", "config": {"base_dir": history}},
        "event_log_storage": {
            "module": MODULE,
            "class": "PooledSqliteEventLogStorage",
            "config": {"base_dir": os.path.join(history, "runs", "")},
        },
    }


def _engine(conn_string: str) -> Engine:
    engine = create_engine(conn_string, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
    event.listen(engine, "connect", _synchronous)
    return engine


def _synchronous(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
    cursor.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    cursor.close()


_DAGSTER_SCRIPTS = get_alembic_config(sqlite_event_log.__file__)  # runs, event logs and schedules share them
_scripts_lock = threading.Lock()
_load_scripts: Any = None  # alembic's own ScriptDirectory.from_config, once load_alembic_scripts_once replaced it


@functools.cache
def _alembic_head() -> tuple[Any, Any]:
    """Dagster's alembic scripts and their head revision, loaded once a process (~50 ms each time)."""
    from alembic.script import ScriptDirectory

    script = (_load_scripts or ScriptDirectory.from_config)(_DAGSTER_SCRIPTS)
    return script, script.as_revision_number("head")


def load_alembic_scripts_once() -> None:
    """From now on in this process, Dagster's alembic scripts are loaded once, not for every database.

    Dagster loads its ~90 migration scripts afresh each time it checks or stamps a database's
    revision: three times to open an instance (runs, event-log index, schedules), seven to make a
    new one (~0.2 s of its ~0.45 s). ``ScriptDirectory.from_config`` now answers Dagster's script
    location with the directory loaded once; any other location loads as before. The scripts are
    Dagster's installed files: they do not change while a process runs.
    """
    global _load_scripts
    from alembic.script import ScriptDirectory

    with _scripts_lock:
        if _load_scripts is not None:
            return
        load: Any = ScriptDirectory.from_config
        _load_scripts = load
        location = _DAGSTER_SCRIPTS.get_main_option("script_location")

        def from_config(cls: type, config: Any) -> Any:
            if cls is ScriptDirectory and config.get_main_option("script_location") == location:
                return _alembic_head()[0]
            return load.__func__(cls, config)

        ScriptDirectory.from_config = classmethod(from_config)  # type: ignore[method-assign,assignment]


def _init_run_shard(engine: Engine) -> None:
    """Create a run's event-log database as Dagster's ``_initdb`` does, on alembic scripts loaded once.

    The same tables, WAL mode and stamped revision; Dagster loads its ~90 migration scripts twice
    for every new run's database (~150 ms a run). A new file is a copy of the one made once a
    process (:func:`_new_run_shard_bytes`, ~2 ms against ~40 ms to make each); one already there
    is checked and completed as before.
    """
    path = engine.url.database
    if not (path and path != ":memory:" and _place_new_run_shard(path)):
        _make_run_shard(engine)


def _make_run_shard(engine: Engine) -> None:
    """:func:`_init_run_shard`'s work on the database itself: tables, WAL mode, revision, unless it has one."""
    from alembic.runtime.migration import MigrationContext

    script, head = _alembic_head()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        if context.get_current_revision() is not None:
            return
        SqlEventLogStorageMetadata.create_all(conn, checkfirst=False)  # a new file: no table to look for
        conn.execute(text("PRAGMA journal_mode=WAL;"))
        context.stamp(script, head)
        conn.commit()


@functools.cache
def _new_run_shard_bytes() -> bytes:
    """The bytes of a new run's event-log database, made once a process by :func:`_init_run_shard`."""
    with tempfile.TemporaryDirectory(prefix="lsvq-run-db-") as tmp:
        path = os.path.join(tmp, "run.db")
        engine = _engine(f"sqlite:///{path}")
        try:
            _make_run_shard(engine)
        finally:
            engine.dispose()  # its last connection closed: the WAL checkpointed into the file and removed
        if os.path.exists(f"{path}-wal"):
            return b""  # not whole without its WAL: no copies then, each database is made
        return Path(path).read_bytes()


def _place_new_run_shard(path: str) -> bool:
    """Put a new run's database at ``path`` whole (a temp file beside it, linked into place); False when a
    file is already there (an earlier run of this id, or another process that made it first)."""
    if os.path.exists(path):  # the index and every database opened again: no bytes to make for them
        return False
    data = _new_run_shard_bytes()
    if not data:
        return False
    fd, tmp = temp_beside(Path(path))
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)  # never over a file another process made meanwhile
        except OSError:  # there already, or a file system without hard links: made as before
            return False
        return True
    finally:
        os.unlink(tmp)


class PooledSqliteRunStorage(SqliteRunStorage):
    """``SqliteRunStorage`` with one engine (and its connection pool) for the life of the storage."""

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledSqliteRunStorage:
        return cls.from_local(inst_data=inst_data, **config_value)

    def __init__(self, conn_string: str, inst_data: Any = None) -> None:
        super().__init__(conn_string, inst_data)
        self._pooled = _engine(conn_string)  # connects lazily

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        with self._pooled.connect() as conn, conn.begin():
            yield conn

    def close_connections(self) -> None:
        """Close the open connections (reopened when next used): before a ``fork()``, which none may cross."""
        self._pooled.dispose()

    def dispose(self) -> None:
        self.close_connections()
        super().dispose()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` keeping the engines of the last ``OPEN_SHARDS`` databases open."""

    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # used and evicted under _db_lock only
        self._tables: set[str] = set()  # tables found in the index database
        self._asset_key_cols: set[str] = set()  # columns found in its asset keys table
        self._indexes: set[str] = set()  # its data migrations found done
        super().__init__(base_dir, inst_data)  # may index a new instance (through _connect)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engines.pop(shard, None) or _engine(self.conn_string_for_shard(shard))
            self._engines[shard] = engine  # the most recently used last
            while len(self._engines) > OPEN_SHARDS:
                self._engines.popitem(last=False)[1].dispose()
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """A run's database (and the index, already made, when first opened) through ``_init_run_shard``.

        A new instance's index is made by Dagster's own path (``for_index_shard``), once.
        """
        if not for_index_shard:
            try:
                return _init_run_shard(engine)
            except (exc.DatabaseError, sqlite3.DatabaseError):
                pass  # another process creating it at the same time: Dagster's retries below
        super()._initdb(engine, for_index_shard)

    def has_table(self, table_name: str) -> bool:
        """Whether the index database has ``table_name``; a table found is not asked about again.

        Dagster's asks on a new engine and connection every time: twice for each output a run
        stores (the dynamic-partitions table, checked before the key is looked up) and for each
        event with tags, ~2 ms each. A table found stays: migrations add tables, wiping empties them.
        (Not on the pooled connections: it is also asked while one of them is held.)
        """
        if table_name not in self._tables and super().has_table(table_name):
            self._tables.add(table_name)
        return table_name in self._tables

    def has_asset_key_col(self, column_name: str) -> bool:
        return column_name in self._asset_key_cols or super().has_asset_key_col(column_name)

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        """Whether the asset keys table has ``column_name``; a column found is not asked about again.

        Dagster reads the table's columns (``PRAGMA table_info``) ~20 times a run: for each asset
        event it stores and each asset record it reads. Migrations add columns, never drop them.
        """
        if column_name not in self._asset_key_cols and super()._has_asset_key_col_on_connection(conn, column_name):
            self._asset_key_cols.add(column_name)
        return column_name in self._asset_key_cols

    def has_secondary_index(self, name: str) -> bool:
        """Whether Dagster's data migration ``name`` is done; one done is not asked about again (~10 times a run)."""
        if name not in self._indexes and super().has_secondary_index(name):
            self._indexes.add(name)
        return name in self._indexes

    def close_connections(self) -> None:
        """Close the open connections (reopened when next used): before a ``fork()``, which none may cross."""
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def dispose(self) -> None:
        self.close_connections()
        super().dispose()
