"""Private per-partition fetch state: what fetching knows between runs, beside the partition's outputs.

One JSON file per partition (``partitions/<key>/fetch-state.json``): a record per clip, keyed by
``src`` (the clip path relative to the clips root, e.g. ``"yfcc-batch1/725.mp4"``), the probe
cache keyed by ``(sha256, backend)``, and the seed progress files already imported.

It is an optimisation, never the truth: the partition's outcome table (``clips.parquet``) says what
was ingested. The state lets a run resume after a crash (clips fetched before the table was
written), honour the non-retry contract of permanent failures, and skip probes already done.
Deleting it changes no byte of any shard (the outcome table and the files on disk are enough).

Why a file per partition and not one database: partitions are the unit of work and may run on
different hosts that share only the storage root, where a SQLite file must not be shared (its
locking is unsafe on network file systems) and an object store cannot lock at all. Exactly one
writer per partition is guaranteed by the run queue (one run per ``dagster/partition`` value, see
``deploy/``) and, for CLI runs on one machine, by the partition lock. Every write replaces the whole
file atomically (temp file, fsync, rename), so ``kill -9`` at any moment leaves the previous or the
new state, never a torn one; writes are batched by the callers (one per 64 clips, at most one per
0.1 s, or one per 0.5 s).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lsvq_assets.core import storage
from lsvq_assets.core.storage import Location

__all__ = ["CLIP_STATES", "STATE_VERSION", "ClipRecord", "FetchState", "utc_now"]

CLIP_STATES = ("done", "failed", "broken")
STATE_VERSION = 1
STATE_FILE = "fetch-state.json"


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


_JSON_SCALARS = (str, int, float, bool, type(None))
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode  # json.dumps with these arguments, minus an encoder a call


def _members(values: Mapping[str, Any], encoded: dict[str, str], as_json: Callable[[Any], object]) -> str:
    """The JSON members ``"key":value`` of ``values`` in key order, each encoded once: ``encoded`` keeps them
    (whoever changes a value drops its entry)."""
    for key, value in values.items():
        if key not in encoded:
            encoded[key] = f"{_dumps(key)}:{_dumps(as_json(value))}"
    return ",".join(encoded[key] for key in sorted(values))


def _merge(old: ClipRecord | None, new: ClipRecord, now: str) -> ClipRecord:
    """The row to store when ``new`` is recorded over ``old`` (None: no row yet)."""
    sha256, size, ingested_at = new.sha256, new.size, new.ingested_at_utc
    if new.state == "done":
        if old is not None and old.state in ("done", "broken") and old.sha256 == new.sha256 and old.ingested_at_utc is not None:
            # Same bytes as before: re-verification never moves the timestamp.
            ingested_at = old.ingested_at_utc
        else:
            ingested_at = new.ingested_at_utc or now
    elif new.state == "broken":
        if old is not None and old.state in ("done", "broken") and (new.sha256 is None or new.sha256 == old.sha256):
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
        first_seen_utc=(old.first_seen_utc if old is not None and old.first_seen_utc else new.first_seen_utc or now),
        updated_at_utc=now,
    )


class FetchState:
    """A partition's private fetch state (see the module docstring). Thread-safe; one writer process."""

    def __init__(self, path: Location) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._clips: dict[str, ClipRecord] = {}
        self._encoded: dict[str, str] = {}  # src -> '"src":{record}' as JSON: a save re-encodes only what changed
        self._probes: dict[str, dict] = {}
        self._probes_encoded: dict[str, str] = {}  # key -> '"key":{probe}' as JSON, as for clips
        self._seeds: set[str] = set()
        try:
            data = json.loads(storage.read_bytes(self.path))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            return  # unreadable or torn by hand: start over; the outcome table is the truth
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return
        fields = set(ClipRecord.__dataclass_fields__)
        for src, rec in (data.get("clips") or {}).items():
            try:
                self._clips[src] = ClipRecord(**{k: v for k, v in rec.items() if k in fields})
            except (TypeError, ValueError):
                continue
        self._probes = dict(data.get("probes") or {})
        self._seeds = set(data.get("seed_imports") or ())

    def __enter__(self) -> FetchState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every write is already on disk."""

    def _save_locked(self) -> None:
        """Write the whole state (the JSON of ``{"version", "clips", "probes", "seed_imports"}``).

        Saved once per batch of clips, so a partition's state is written many times: each record's
        and each probe's JSON is kept and re-encoded only when it changes (encoding every record at
        every save made the state the largest cost of a partition of 1,000 clips).
        """
        clips = _members(self._clips, self._encoded, lambda rec: rec.__dict__)  # flat: what asdict gives, without its deep copy
        probes = _members(self._probes, self._probes_encoded, lambda probe: probe)
        doc = f'{{"version":{STATE_VERSION},"clips":{{{clips}}},"probes":{{{probes}}},"seed_imports":{_dumps(sorted(self._seeds))}}}'
        storage.write_bytes(self.path, doc.encode())

    def _set_locked(self, rec: ClipRecord) -> None:
        self._clips[rec.src] = rec
        self._encoded.pop(rec.src, None)

    # -- clips -------------------------------------------------------------

    def get(self, src: str) -> ClipRecord | None:
        with self._lock:
            return self._clips.get(src)

    def get_many(self, srcs: Iterable[str]) -> dict[str, ClipRecord]:
        """Records for the given srcs (absent srcs are simply not in the result)."""
        with self._lock:
            return {s: self._clips[s] for s in dict.fromkeys(srcs) if s in self._clips}

    def all_records(self, state: str | None = None) -> list[ClipRecord]:
        if state is not None and state not in CLIP_STATES:
            raise ValueError(f"unknown state {state!r}")
        with self._lock:
            return [r for _, r in sorted(self._clips.items()) if state is None or r.state == state]

    def record_many(self, records: Iterable[ClipRecord]) -> None:
        """Merge many records (see ``_merge``) and write the state once. Records for the same src apply in order."""
        batch = list(records)
        for rec in batch:
            if not isinstance(rec, ClipRecord):
                raise TypeError(f"expected ClipRecord, got {type(rec).__name__}")
        if not batch:
            return
        now = utc_now()
        with self._lock:
            before = dict(self._clips)
            for rec in batch:
                self._set_locked(_merge(self._clips.get(rec.src), rec, now))
            try:
                self._save_locked()
            except BaseException:
                self._clips = before  # not on disk: not known
                for rec in batch:
                    self._encoded.pop(rec.src, None)
                raise

    def record(self, rec: ClipRecord) -> None:
        self.record_many([rec])

    def counts(self, srcs: Iterable[str] | None = None) -> dict[str, int]:
        out = dict.fromkeys(CLIP_STATES, 0)
        with self._lock:
            recs = self._clips.values() if srcs is None else [self._clips[s] for s in dict.fromkeys(srcs) if s in self._clips]
            for r in recs:
                out[r.state] += 1
        return out

    # -- probe cache -------------------------------------------------------

    def get_probes(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Cached probe results for ``(sha256, backend)`` keys; absent keys are omitted."""
        with self._lock:
            return {k: self._probes[f"{k[0]}:{k[1]}"] for k in keys if f"{k[0]}:{k[1]}" in self._probes}

    def put_probes(self, items: Mapping[tuple[str, str], dict]) -> None:
        """Store (replace) probe results, written once."""
        new: dict[str, tuple[dict, str]] = {}
        for key, value in items.items():
            sha256, backend = key
            if not isinstance(sha256, str) or not isinstance(backend, str) or not sha256 or not backend:
                raise ValueError(f"probe key must be (sha256, backend) strings, got {key!r}")
            if not isinstance(value, dict):
                raise TypeError(f"probe result for {key!r} must be a dict, got {type(value).__name__}")
            # What JSON cannot hold (NaN, objects) fails here, before anything changes; the JSON is
            # kept for the save. A flat dict of JSON's own types is what reading the JSON back gives.
            encoded = _dumps(value)
            plain = all(type(k) is str and type(v) in _JSON_SCALARS for k, v in value.items())
            name = f"{sha256}:{backend}"
            new[name] = (dict(value) if plain else json.loads(encoded), f"{_dumps(name)}:{encoded}")
        if not new:
            return
        with self._lock:
            before = dict(self._probes)
            for name, (value, member) in new.items():
                self._probes[name] = value
                self._probes_encoded[name] = member
            try:
                self._save_locked()
            except BaseException:
                self._probes = before
                for name in new:
                    self._probes_encoded.pop(name, None)
                raise

    # -- seed progress -----------------------------------------------------

    def import_seed_progress(self, progress_path: Path, name_to_src: Mapping[str, str]) -> int:
        """Import the old script's ``.download-progress.json`` once (per partition).

        Only srcs with no record yet are added ("done" -> done with unknown sha256/size, i.e.
        "verify the file before trusting it"; "failed" -> permanent failure, reason prefixed
        ``"seed: "``). A file whose content (sha256) was already imported is a no-op. A missing,
        unreadable, corrupt or non-object file counts as empty: returns 0, never raises for it.
        Returns the number of records added.
        """
        try:
            raw = Path(progress_path).read_bytes()
            data = json.loads(raw)
        except (OSError, ValueError, RecursionError):
            return 0
        if not isinstance(data, dict):
            return 0
        digest = hashlib.sha256(raw).hexdigest()
        now = utc_now()
        with self._lock:
            if digest in self._seeds:
                return 0
            added = 0
            for name, entry in data.items():
                src = name_to_src.get(name)
                if src is None or not isinstance(entry, dict) or src in self._clips:
                    continue
                state = entry.get("state")
                if state == "done":
                    rec = ClipRecord(src=src, state="done", first_seen_utc=now, updated_at_utc=now)
                elif state == "failed":
                    reason = entry.get("reason")
                    reason = "unknown" if reason is None or reason == "" else str(reason)
                    rec = ClipRecord(
                        src=src, state="failed", reason="seed: " + reason, transient=False, first_seen_utc=now, updated_at_utc=now
                    )
                else:
                    continue
                self._set_locked(rec)
                added += 1
            self._seeds.add(digest)
            self._save_locked()
            return added
