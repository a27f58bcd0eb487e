"""Where clip bytes come from, and the one driver that turns a slice's rows into clips on disk.

A ``ClipSource`` only moves bytes into place and reports each clip's outcome. Everything else is
shared by every source and lives in ``ingest_clips``: what the clip-state store already knows, what
is skipped, what is retried, what is recorded and how a slice's outcome is summed up.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.store import ClipRecord, ClipStore, utc_now
from lsvq_assets.core.files import sha256_file


@dataclass(frozen=True)
class ClipResult:
    """What a source did for one clip."""

    src: str
    ok: bool
    sha256: str | None = None
    size: int | None = None
    http_status: int | None = None
    reason: str | None = None
    transient: bool = False
    attempts: int = 0


OnResult = Callable[[ClipResult], None]


class ClipSource(ABC):
    """Brings clips into ``layout.clips_dir``: per-clip URLs, folder archives or a local directory."""

    name: str = "source"

    @abstractmethod
    def fetch(self, rows: Sequence[ManifestRow], layout: Layout, on_result: OnResult) -> None:
        """Put each row's clip at ``layout.clip_path(row.src)`` (whole, or not at all) and call
        ``on_result`` once per row, from any thread. Must not raise for a clip's own failure."""

    def after_success(self, rows: Sequence[ManifestRow], layout: Layout) -> None:
        """Called when a slice completed without transient failures (e.g. to delete its archive)."""

    def close(self) -> None:
        """Release sessions and pools."""


# What a clip was in this run, in the clips table.
DOWNLOADED, CACHED, FAILED = "downloaded", "cached", "failed"


@dataclass
class SliceClips:
    """The outcome of one slice: one entry per manifest row, in manifest order."""

    table: list[dict] = field(default_factory=list)
    bytes_fetched: int = 0
    elapsed_s: float = 0.0

    def by_status(self) -> Counter:
        return Counter(r["status"] for r in self.table)

    def failures(self, transient: bool) -> list[dict]:
        return [r for r in self.table if r["status"] == FAILED and bool(r["transient"]) == transient]


class _Recorder:
    """Collects results from the source's threads and writes them to the store in batches."""

    def __init__(self, store: ClipStore, batch: int = 64, interval_s: float = 0.5) -> None:
        self.store, self.batch, self.interval_s = store, batch, interval_s
        self.pending: list[ClipRecord] = []
        self.results: dict[str, ClipResult] = {}
        self.lock = threading.Lock()
        self.last = time.monotonic()

    def __call__(self, res: ClipResult) -> None:
        rec = ClipRecord(
            src=res.src,
            state="done" if res.ok else "failed",
            sha256=res.sha256,
            size=res.size,
            reason=res.reason,
            http_status=res.http_status,
            transient=res.transient,
            attempts=res.attempts,
        )
        with self.lock:
            self.results[res.src] = res
            self.pending.append(rec)
            due = len(self.pending) >= self.batch or time.monotonic() - self.last > self.interval_s
            if due:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self.pending:
            self.store.record_many(self.pending)
            self.pending = []
        self.last = time.monotonic()

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()


def _cached(rec: ClipRecord | None, path: Path, verify: bool) -> ClipRecord | None:
    """The record to keep for a clip already on disk, or None when it must be fetched (again)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if rec is not None and rec.state in ("done", "broken") and rec.sha256 and rec.size == size and not verify:
        return rec
    # Verify, adopt a file left by an interrupted run (renamed into place, not yet recorded),
    # or hash a clip the seed's progress file said was done.
    digest, size = sha256_file(path)
    if rec is not None and rec.state in ("done", "broken") and rec.sha256 and rec.sha256 != digest:
        return None
    if size == 0:
        return None
    state = rec.state if rec is not None and rec.state == "broken" else "done"
    return ClipRecord(src=str(path), state=state, sha256=digest, size=size)


def ingest_clips(
    rows: Sequence[ManifestRow],
    layout: Layout,
    store: ClipStore,
    source: ClipSource,
    *,
    retry_failed: bool = False,
    verify: bool = False,
) -> SliceClips:
    """Bring a slice's clips into place through ``source``, recording every outcome in ``store``."""
    start = time.monotonic()
    known = store.get_many(r.src for r in rows)
    to_fetch: list[ManifestRow] = []
    adopted: list[ClipRecord] = []
    status: dict[str, str] = {}
    for row in rows:
        rec = known.get(row.src)
        if rec is not None and rec.state == "failed" and not rec.transient and not retry_failed:
            status[row.src] = FAILED  # permanent: the seed's non-retry contract
            continue
        cached = _cached(rec, layout.clip_path(row.src), verify)
        if cached is None:
            to_fetch.append(row)
            continue
        status[row.src] = CACHED
        if cached is not rec:
            adopted.append(ClipRecord(src=row.src, state=cached.state, sha256=cached.sha256, size=cached.size))
    if adopted:
        store.record_many(adopted)
    recorder = _Recorder(store)
    if to_fetch:
        source.fetch(to_fetch, layout, recorder)
    recorder.flush()
    for row in to_fetch:
        res = recorder.results.get(row.src)
        if res is None:  # a source must report every clip; never count a silent one as done
            recorder(ClipResult(row.src, ok=False, reason="not-reported-by-source", transient=True))
            res = recorder.results[row.src]
        status[row.src] = DOWNLOADED if res.ok else FAILED
    recorder.flush()
    final = store.get_many(r.src for r in rows)
    out = SliceClips(elapsed_s=time.monotonic() - start)
    out.bytes_fetched = sum(r.size or 0 for r in recorder.results.values() if r.ok)
    for row in rows:
        rec = final[row.src]
        out.table.append(
            {
                "index": row.index,
                "src": row.src,
                "status": status[row.src],
                "sha256": rec.sha256,
                "size": rec.size,
                "reason": rec.reason if status[row.src] == FAILED else None,
                "http_status": rec.http_status,
                "transient": bool(rec.transient) if status[row.src] == FAILED else False,
                "attempts": rec.attempts,
                "ingested_at_utc": rec.ingested_at_utc if status[row.src] != FAILED else None,
            }
        )
    return out


__all__ = ["CACHED", "DOWNLOADED", "FAILED", "ClipResult", "ClipSource", "SliceClips", "ingest_clips", "utc_now"]
