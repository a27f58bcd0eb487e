"""Durable per-clip state store (SQLite, WAL mode).

One row per clip, keyed by ``src`` (the clip path relative to the clips dir,
e.g. ``"yfcc-batch1/725.mp4"``), plus a probe-result cache keyed by
``(sha256, backend)`` and a record of imported seed progress files.

Durability and concurrency choices
----------------------------------
* ``journal_mode=WAL``: readers never block the writer and vice versa; a
  process killed with SIGKILL at any moment leaves either the previous or the
  new state of every transaction (the WAL is replayed / ignored past the last
  commit frame on the next open).
* ``synchronous=FULL`` (default): the WAL is fsync'ed at every commit.
  ``NORMAL`` would already be enough for crash safety against ``kill -9``
  (the OS still holds the written pages); FULL additionally makes every
  *committed* transaction survive an OS crash / power loss.  Writes are
  batched (one transaction per ``record_many``), so the cost is one fsync per
  batch, i.e. negligible next to downloading clips.  We want that durability
  because ``ingested_at_utc`` lands in the shard: a "done" row that silently
  vanished after a power cut would be re-verified with a new timestamp.
* Writers use short ``BEGIN IMMEDIATE`` transactions (the write lock is taken
  up front, so a read-then-write never fails with SQLITE_BUSY half way) and a
  ``busy_timeout`` (60 s default) so concurrent runs in other processes wait
  instead of failing with "database is locked".  ``record_many`` reads the
  existing rows and writes the merged rows inside that one transaction, so
  concurrent upserts of the same src are serialised: no lost updates.
* Threads: one connection per thread (created lazily, all closed by
  ``close()``).  A forked child never reuses its parent's connections.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping

__all__ = [
    "CLIP_STATES",
    "SCHEMA_VERSION",
    "ClipRecord",
    "ClipStore",
    "utc_now",
]

CLIP_STATES = ("done", "failed", "broken")

#: Stored in ``PRAGMA user_version``.
SCHEMA_VERSION = 1

#: Host parameters per ``IN (...)`` query.  SQLite >= 3.32 allows 32766;
#: 900 stays under the historical 999 limit and is already in the
#: "milliseconds per thousand" regime.
_CHUNK = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    src             TEXT    PRIMARY KEY NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('done', 'failed', 'broken')),
    sha256          TEXT,
    size            INTEGER,
    reason          TEXT,
    http_status     INTEGER,
    transient       INTEGER NOT NULL DEFAULT 0 CHECK (transient IN (0, 1)),
    attempts        INTEGER NOT NULL DEFAULT 0,
    ingested_at_utc TEXT,
    first_seen_utc  TEXT    NOT NULL,
    updated_at_utc  TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clips_by_state ON clips (state);
CREATE TABLE IF NOT EXISTS probes (
    sha256         TEXT NOT NULL,
    backend        TEXT NOT NULL,
    result         TEXT NOT NULL,
    updated_at_utc TEXT NOT NULL,
    PRIMARY KEY (sha256, backend)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seed_imports (
    sha256          TEXT    PRIMARY KEY NOT NULL,
    path            TEXT    NOT NULL,
    rows            INTEGER NOT NULL,
    imported_at_utc TEXT    NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS = (
    "src",
    "state",
    "sha256",
    "size",
    "reason",
    "http_status",
    "transient",
    "attempts",
    "ingested_at_utc",
    "first_seen_utc",
    "updated_at_utc",
)
_SELECT = "SELECT " + ", ".join(_COLUMNS) + " FROM clips"
_UPSERT = (
    "INSERT INTO clips (" + ", ".join(_COLUMNS) + ") VALUES ("
    + ", ".join("?" * len(_COLUMNS)) + ") ON CONFLICT (src) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[1:])
)


def utc_now() -> str:
    """Current UTC time, ISO-8601 at second precision, e.g. ``2024-05-01T12:00:00+00:00``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class ClipRecord:
    src: str  # clip path relative to the clips dir; the primary key
    state: str  # "done" | "failed" | "broken"
    sha256: str | None = None
    size: int | None = None
    reason: str | None = None  # "http-404", "empty-body", "timeout", "probe-failed: ..."
    http_status: int | None = None
    transient: bool = False  # failed: True = retry next run, False = permanent
    attempts: int = 0  # attempts in the recording run; the store keeps the running total
    ingested_at_utc: str | None = None  # when the clip first became done
    first_seen_utc: str | None = None
    updated_at_utc: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.src, str) or not self.src:
            raise ValueError(f"ClipRecord.src must be a non-empty str, got {self.src!r}")
        if self.state not in CLIP_STATES:
            raise ValueError(f"ClipRecord.state must be one of {CLIP_STATES}, got {self.state!r}")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 0:
            raise ValueError(f"ClipRecord.attempts must be an int >= 0, got {self.attempts!r}")

    @classmethod
    def _from_row(cls, row: tuple) -> "ClipRecord":
        (src, state, sha256, size, reason, http_status, transient, attempts,
         ingested_at, first_seen, updated_at) = row
        return cls(
            src=src,
            state=state,
            sha256=sha256,
            size=size,
            reason=reason,
            http_status=http_status,
            transient=bool(transient),
            attempts=attempts,
            ingested_at_utc=ingested_at,
            first_seen_utc=first_seen,
            updated_at_utc=updated_at,
        )

    def _to_row(self) -> tuple:
        return (
            self.src,
            self.state,
            self.sha256,
            self.size,
            self.reason,
            self.http_status,
            1 if self.transient else 0,
            self.attempts,
            self.ingested_at_utc,
            self.first_seen_utc,
            self.updated_at_utc,
        )


def _merge(old: ClipRecord | None, new: ClipRecord, now: str) -> ClipRecord:
    """The row to store when ``new`` is recorded over ``old`` (None: no row yet)."""
    sha256, size, ingested_at = new.sha256, new.size, new.ingested_at_utc
    if new.state == "done":
        if (
            old is not None
            and old.state in ("done", "broken")
            and old.sha256 == new.sha256
            and old.ingested_at_utc is not None
        ):
            # Same bytes as before: re-verification never moves the timestamp.
            ingested_at = old.ingested_at_utc
        else:
            ingested_at = new.ingested_at_utc or now
    elif new.state == "broken":
        if (
            old is not None
            and old.state in ("done", "broken")
            and (new.sha256 is None or new.sha256 == old.sha256)
        ):
            # Same file as the row it replaces: inherit what was not given.
            sha256 = old.sha256
            size = new.size if new.size is not None else old.size
            ingested_at = new.ingested_at_utc or old.ingested_at_utc
    return ClipRecord(
        src=new.src,
        state=new.state,
        sha256=sha256,
        size=size,
        reason=new.reason,
        http_status=new.http_status,
        transient=bool(new.transient),
        attempts=(old.attempts if old is not None else 0) + new.attempts,
        ingested_at_utc=ingested_at,
        first_seen_utc=(
            old.first_seen_utc if old is not None and old.first_seen_utc
            else new.first_seen_utc or now
        ),
        updated_at_utc=now,
    )


def _chunks(seq: list, size: int = _CHUNK) -> Iterator[list]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class ClipStore:
    """Clip state + probe cache in one SQLite file.  See the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_s: float = 60.0,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = float(busy_timeout_s)
        self._synchronous = synchronous.upper()
        self._lock = threading.Lock()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._pid = os.getpid()
        self._closed = False
        self._init_schema()

    # -- connections -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path),
            timeout=self._busy_timeout_s,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # only so close() may close it from any thread
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            # Switching to WAL needs an exclusive lock that the busy handler
            # does not always cover (first open racing other processes): retry.
            deadline = time.monotonic() + self._busy_timeout_s
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"could not enable WAL on {self.path} (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        thread = threading.current_thread()
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("ClipStore is closed")
            if os.getpid() != self._pid:
                # Forked child: never touch (or close) the parent's connections.
                self._conns = {}
                self._pid = os.getpid()
            conn = self._conns.get(thread)
            if conn is not None:
                return conn
            # Drop connections of threads that have ended.
            stale = [self._conns.pop(t) for t in list(self._conns) if not t.is_alive()]
        for old in stale:
            old.close()
        conn = self._connect()  # outside the lock: may wait on other processes
        with self._lock:
            if self._closed:
                conn.close()
                raise sqlite3.ProgrammingError("ClipStore is closed")
            self._conns[thread] = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction, write lock taken up front."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # Also reached when COMMIT itself fails (disk full, I/O error):
            # never leave the connection inside a dangling transaction.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one consistent snapshot."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: schema version {version} is newer than this code ({SCHEMA_VERSION})"
                )
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, {}
            if os.getpid() != self._pid:
                return
        for conn in conns.values():
            conn.close()

    def __enter__(self) -> "ClipStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # -- clips -------------------------------------------------------------

    def get(self, src: str) -> ClipRecord | None:
        row = self._conn().execute(_SELECT + " WHERE src = ?", (src,)).fetchone()
        return ClipRecord._from_row(row) if row is not None else None

    @staticmethod
    def _fetch(conn: sqlite3.Connection, srcs: list[str]) -> dict[str, ClipRecord]:
        out: dict[str, ClipRecord] = {}
        for chunk in _chunks(srcs):
            sql = _SELECT + " WHERE src IN (" + ",".join("?" * len(chunk)) + ")"
            for row in conn.execute(sql, chunk):
                out[row[0]] = ClipRecord._from_row(row)
        return out

    def get_many(self, srcs: Iterable[str]) -> dict[str, ClipRecord]:
        """Records for the given srcs (absent srcs are simply not in the result).

        Read in one read transaction, so the result is a consistent snapshot.
        """
        wanted = _unique(srcs)
        if not wanted:
            return {}
        with self._read() as conn:
            return self._fetch(conn, wanted)

    def all_records(self, state: str | None = None) -> list[ClipRecord]:
        """Every record (optionally only one state), ordered by src."""
        conn = self._conn()
        if state is None:
            rows = conn.execute(_SELECT + " ORDER BY src").fetchall()
        else:
            if state not in CLIP_STATES:
                raise ValueError(f"unknown state {state!r}")
            rows = conn.execute(_SELECT + " WHERE state = ? ORDER BY src", (state,)).fetchall()
        return [ClipRecord._from_row(r) for r in rows]

    def record_many(self, records: Iterable[ClipRecord]) -> None:
        """Upsert many records in ONE transaction (see ``_merge`` for the rules).

        Several records for the same src in one batch are applied in order.
        """
        batch = list(records)
        for rec in batch:
            if not isinstance(rec, ClipRecord):
                raise TypeError(f"expected ClipRecord, got {type(rec).__name__}")
        if not batch:
            return
        now = utc_now()
        with self._write() as conn:
            current: dict[str, ClipRecord | None] = dict(
                self._fetch(conn, _unique(r.src for r in batch))
            )
            for rec in batch:
                current[rec.src] = _merge(current.get(rec.src), rec, now)
            conn.executemany(_UPSERT, [r._to_row() for r in current.values() if r is not None])

    def record(self, rec: ClipRecord) -> None:
        self.record_many([rec])

    def counts(self, srcs: Iterable[str] | None = None) -> dict[str, int]:
        """Rows per state (every state present, 0 if none); restricted to ``srcs`` if given."""
        out = dict.fromkeys(CLIP_STATES, 0)
        if srcs is None:
            for state, n in self._conn().execute("SELECT state, COUNT(*) FROM clips GROUP BY state"):
                out[state] = n
            return out
        wanted = _unique(srcs)
        with self._read() as conn:
            for chunk in _chunks(wanted):
                sql = ("SELECT state, COUNT(*) FROM clips WHERE src IN ("
                       + ",".join("?" * len(chunk)) + ") GROUP BY state")
                for state, n in conn.execute(sql, chunk):
                    out[state] += n
        return out

    # -- probe cache -------------------------------------------------------

    def get_probes(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Cached probe results for ``(sha256, backend)`` keys; absent keys are omitted."""
        wanted = set()
        for sha256, backend in keys:
            wanted.add((sha256, backend))
        if not wanted:
            return {}
        shas = _unique(k[0] for k in wanted)
        out: dict[tuple[str, str], dict] = {}
        with self._read() as conn:
            for chunk in _chunks(shas):
                sql = ("SELECT sha256, backend, result FROM probes WHERE sha256 IN ("
                       + ",".join("?" * len(chunk)) + ")")
                for sha256, backend, result in conn.execute(sql, chunk):
                    if (sha256, backend) in wanted:
                        out[(sha256, backend)] = json.loads(result)
        return out

    def put_probes(self, items: Mapping[tuple[str, str], dict]) -> None:
        """Store (replace) probe results in one transaction."""
        rows = []
        now = utc_now()
        for key, value in items.items():
            sha256, backend = key
            if not isinstance(sha256, str) or not isinstance(backend, str) or not sha256 or not backend:
                raise ValueError(f"probe key must be (sha256, backend) strings, got {key!r}")
            if not isinstance(value, dict):
                raise TypeError(f"probe result for {key!r} must be a dict, got {type(value).__name__}")
            rows.append((sha256, backend, json.dumps(value, sort_keys=True, allow_nan=False), now))
        if not rows:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO probes (sha256, backend, result, updated_at_utc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256, backend) DO UPDATE SET "
                "result = excluded.result, updated_at_utc = excluded.updated_at_utc",
                rows,
            )

    # -- seed progress -----------------------------------------------------

    def import_seed_progress(self, progress_path: Path, name_to_src: Mapping[str, str]) -> int:
        """Import the old script's ``.download-progress.json`` once.

        Only srcs with no row yet are inserted ("done" -> done with unknown
        sha256/size, i.e. "verify the file before trusting it"; "failed" ->
        permanent failure, reason prefixed ``"seed: "``).  A file whose
        content (sha256) was already imported is a no-op.  A missing,
        unreadable, corrupt or non-object file counts as empty: returns 0,
        never raises for it.  Returns the number of rows inserted.
        """
        progress_path = Path(progress_path)
        try:
            raw = progress_path.read_bytes()
        except OSError:
            return 0
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError
            return 0
        if not isinstance(data, dict):
            return 0
        digest = hashlib.sha256(raw).hexdigest()
        now = utc_now()
        rows = []
        for name, entry in data.items():
            src = name_to_src.get(name)
            if src is None or not isinstance(entry, dict):
                continue
            state = entry.get("state")
            if state == "done":
                rec = ClipRecord(src=src, state="done", first_seen_utc=now, updated_at_utc=now)
            elif state == "failed":
                reason = entry.get("reason")
                reason = "unknown" if reason is None or reason == "" else str(reason)
                rec = ClipRecord(
                    src=src, state="failed", reason="seed: " + reason, transient=False,
                    first_seen_utc=now, updated_at_utc=now,
                )
            else:
                continue
            rows.append(rec._to_row())
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM seed_imports WHERE sha256 = ?", (digest,)).fetchone():
                return 0
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO clips (" + ", ".join(_COLUMNS) + ") VALUES ("
                + ", ".join("?" * len(_COLUMNS)) + ") ON CONFLICT (src) DO NOTHING",
                rows,
            )
            imported = conn.total_changes - before
            conn.execute(
                "INSERT INTO seed_imports (sha256, path, rows, imported_at_utc) VALUES (?, ?, ?, ?)",
                (digest, str(progress_path.absolute()), imported, now),
            )
        return imported
