"""The one driver that turns a partition's rows into clips in the storage root, for every source.

What the fetch state and the last outcome table already know, what is skipped, what is retried,
what is uploaded and recorded, and how a partition's outcome is summed up.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lsvq_assets.core import storage
from lsvq_assets.core.files import remove_stale_temps
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.store import ClipRecord, FetchState
from lsvq_assets.sources.base import CACHED, DOWNLOADED, FAILED, ClipResult, ClipSource


@dataclass
class SliceClips:
    """The outcome of one slice: one entry per manifest row, in manifest order."""

    table: list[dict] = field(default_factory=list)
    bytes_fetched: int = 0
    elapsed_s: float = 0.0
    fetch_s: float = 0.0  # wall time of source.fetch (download, hash while streaming, write, fsync)
    store_s: float = 0.0  # time in the clip-state store outside source.fetch (before and after it)
    store_overlapped_s: float = 0.0  # time the download threads spent writing batches (inside fetch_s)

    def by_status(self) -> Counter:
        return Counter(r["status"] for r in self.table)

    def failures(self, transient: bool) -> list[dict]:
        return [r for r in self.table if r["status"] == FAILED and bool(r["transient"]) == transient]


class _Recorder:
    """Collects results from the source's threads and writes them to the store in batches.

    A batch is taken under ``lock`` but written under ``write_lock`` only, so the other download
    threads keep reporting while a batch's transaction commits (and fsyncs). A batch is written when
    ``batch`` results wait and the last write is ``min_gap_s`` old, or when the last write is
    ``interval_s`` old: results that come in a burst (an archive's members, all extracted before any
    is reported) make one write, not one per ``batch`` (each write replaces the whole state and
    fsyncs it: ~9 writes a folder of 550 clips cost ~0.1 s). ``on_ok`` is called
    for every clip that landed, outside both locks (e.g. to probe it while the rest downloads).
    """

    def __init__(
        self,
        store: FetchState,
        batch: int = 64,
        interval_s: float = 0.5,
        min_gap_s: float = 0.1,
        on_ok: Callable[[ClipResult], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.store, self.batch, self.interval_s, self.on_ok, self.on_progress = store, batch, interval_s, on_ok, on_progress
        self.min_gap_s = min_gap_s
        self.pending: list[ClipRecord] = []
        self.results: dict[str, ClipResult] = {}
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.written = threading.Condition(self.lock)  # notified when a batch taken is written
        self.inflight = 0  # batches taken and not yet written
        self.last = time.monotonic()
        self.store_s = 0.0

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
            since = time.monotonic() - self.last
            due = since > self.interval_s or (len(self.pending) >= self.batch and since >= self.min_gap_s)
            if due:
                batch = self._take_locked()
        if due:
            self._write(batch)
        if res.ok and self.on_ok is not None:
            self.on_ok(res)
        if self.on_progress is not None:
            self.on_progress(1, res.size or 0 if res.ok else 0)

    def _take_locked(self) -> list[ClipRecord]:
        batch, self.pending, self.last = self.pending, [], time.monotonic()
        self.inflight += 1
        return batch

    def _write(self, batch: list[ClipRecord]) -> None:
        try:
            if batch:
                with self.write_lock:
                    t = time.monotonic()
                    try:
                        self.store.record_many(batch)
                    finally:
                        self.store_s += time.monotonic() - t
        except BaseException:
            with self.lock:
                self.pending[:0] = batch  # kept for the next flush, as if never taken
            raise
        finally:
            with self.lock:
                self.inflight -= 1
                self.written.notify_all()

    def flush(self) -> None:
        """Write what is pending; returns once every batch taken so far is committed."""
        with self.lock:
            batch = self._take_locked()
        self._write(batch)
        with self.lock:
            while self.inflight:
                self.written.wait()


class StoredClips:
    """The clips in the storage root: sizes by ``stat`` (local root) or from one listing per folder
    (object store); hashing streams; removal removes the stored object."""

    def __init__(self, layout: Layout, srcs: Sequence[str]) -> None:
        self.layout = layout
        self.listing: dict[str, int] | None = None
        if layout.remote:
            self.listing = {}
            for folder in sorted({s.split("/", 1)[0] if "/" in s else "" for s in srcs}):
                base = storage.join(layout.clips_root, folder) if folder else layout.clips_root
                prefix = f"{folder}/" if folder else ""
                self.listing.update({prefix + k: v for k, v in storage.sizes(base).items()})

    def size(self, src: str) -> int | None:
        if self.listing is not None:
            return self.listing.get(src)
        try:
            return self.layout.clip_path(src).stat().st_size
        except FileNotFoundError:
            return None

    def sha256(self, src: str) -> tuple[str, int]:
        return storage.sha256(self.layout.clip_location(src))

    def remove(self, src: str) -> None:
        storage.remove(self.layout.clip_location(src))
        if self.listing is not None:
            self.listing.pop(src, None)


def _cached(rec: ClipRecord | None, src: str, clips: StoredClips, verify: bool) -> ClipRecord | None:
    """The record to keep for a clip already stored, or None when it must be fetched (again).

    A clip whose bytes no longer match its record is removed here, before it is fetched again:
    a failed re-fetch then leaves nothing that a later run could adopt (a known-bad clip is never
    adopted).
    """
    size = clips.size(src)
    if size is None:
        return None
    if rec is not None and rec.state in ("done", "broken") and rec.sha256 and rec.size == size and not verify:
        return rec
    # Verify, adopt a file left by an interrupted run (renamed into place, not yet recorded),
    # or hash a clip the seed's progress file said was done.
    digest, size = clips.sha256(src)
    if rec is not None and rec.state in ("done", "broken") and rec.sha256 and rec.sha256 != digest:
        clips.remove(src)
        return None
    if size == 0:
        return None
    if rec is not None and rec.state in ("done", "broken") and rec.sha256 == digest:
        return rec  # verified: same bytes as recorded
    return ClipRecord(src=src, state="done", sha256=digest, size=size)


def _delivering(
    layout: Layout, recorder: Callable[[ClipResult], None], on_landed: Callable[[ClipResult], None] | None
) -> Callable[[ClipResult], None]:
    """The source's ``on_result``: with an object-store root, a clip that landed in the scratch
    directory is handed to ``on_landed`` (probed) and uploaded (streamed; the object appears whole
    when the upload completes) before it is recorded; a failed upload is a transient failure."""
    if not layout.remote:
        return recorder

    def deliver(res: ClipResult) -> None:
        if res.ok:
            local = layout.clip_path(res.src)
            try:
                if on_landed is not None:
                    on_landed(res)
                storage.put_file(local, layout.clip_location(res.src))
            except Exception as exc:  # noqa: BLE001 - recorded as the clip's failure, retried next run
                res = ClipResult(
                    res.src, ok=False, reason=f"upload-error: {type(exc).__name__}: {exc}"[:300], transient=True, attempts=res.attempts
                )
            finally:
                local.unlink(missing_ok=True)
        recorder(res)

    return deliver


def _from_outcome(row: Mapping) -> ClipRecord | None:
    """A record from the partition's last outcome table: a clip done, or failed permanently."""
    if row.get("status") != FAILED and row.get("sha256"):
        return ClipRecord(src=row["src"], state="done", sha256=row["sha256"], size=row["size"], ingested_at_utc=row["ingested_at_utc"])
    if row.get("status") == FAILED and not row.get("transient"):
        return ClipRecord(src=row["src"], state="failed", reason=row.get("reason"), http_status=row.get("http_status"), transient=False)
    return None


def _remove_stale_temps(rows: Sequence[ManifestRow], layout: Layout) -> None:
    """Remove ``.<clip>.XXXXXXXX.part`` files of these rows that a killed run left (once per slice)."""
    now = time.time()
    by_dir: dict[Path, set[str]] = {}
    for row in rows:
        path = layout.clip_path(row.src)
        by_dir.setdefault(path.parent, set()).add(path.name)
    for directory, names in by_dir.items():
        remove_stale_temps(directory, names, older_than=now)


def ingest_clips(
    rows: Sequence[ManifestRow],
    layout: Layout,
    store: FetchState,
    source: ClipSource,
    *,
    previous: Mapping[str, Mapping] | None = None,
    retry_failed: bool = False,
    verify: bool = False,
    on_fetched: Callable[[ClipResult], None] | None = None,
    on_landed: Callable[[ClipResult], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SliceClips:
    """Bring a partition's clips into place through ``source``, recording every outcome in ``store``.

    ``previous`` is the partition's last outcome table by src (its own output: what was ingested,
    when, and which clips failed permanently); ``store`` is private fetch state, newer when it
    knows a clip (a run that was interrupted before writing its table), and may be deleted.

    ``on_fetched`` is called (from the source's threads) for every clip that landed, while the
    rest of the partition is still downloading; ``on_progress(clips, bytes)`` for every clip
    settled (those already done count at once). With an object-store root, ``on_landed`` is
    called in the download thread while the clip's local file is still in place, before the upload.

    The caller is the slice's only writer (``lsvq_clips`` holds the slice lock): temp files of the
    slice's clips left by a killed run are removed first.
    """
    start = time.monotonic()
    _remove_stale_temps(rows, layout)
    t = time.monotonic()
    known = store.get_many(r.src for r in rows)
    store_s = time.monotonic() - t
    to_fetch: list[ManifestRow] = []
    adopted: list[ClipRecord] = []
    status: dict[str, str] = {}
    clips = StoredClips(layout, [r.src for r in rows])
    for row in rows:
        rec = known.get(row.src)
        if rec is None and previous and row.src in previous:
            rec = _from_outcome(previous[row.src])
            if rec is not None:
                adopted.append(rec)  # the store learns it again: the outcome table is the truth
        if rec is not None and rec.state == "failed" and not rec.transient and not retry_failed:
            status[row.src] = FAILED  # permanent: the seed's non-retry contract
            continue
        cached = _cached(rec, row.src, clips, verify)
        if cached is None:
            to_fetch.append(row)
            continue
        status[row.src] = CACHED
        if cached is not rec:
            adopted.append(ClipRecord(src=row.src, state=cached.state, sha256=cached.sha256, size=cached.size))
    # A clip taken from the outcome table that must be fetched again is not adopted as it was.
    fetch = {r.src for r in to_fetch}
    adopted = [a for a in adopted if a.src not in fetch or a.state == "failed"]
    t = time.monotonic()
    if adopted:
        store.record_many(adopted)
    store_s += time.monotonic() - t
    if on_progress is not None and len(rows) > len(to_fetch):
        on_progress(len(rows) - len(to_fetch), 0)
    recorder = _Recorder(store, on_ok=on_fetched, on_progress=on_progress)
    fetch_started = time.monotonic()
    if to_fetch:
        try:
            source.fetch(to_fetch, layout, _delivering(layout, recorder, on_landed))
        except BaseException:
            recorder.flush()  # interrupted: keep what finished (its files are in place) with its timestamps
            raise
    fetch_s = time.monotonic() - fetch_started
    store_overlapped_s = recorder.store_s
    t = time.monotonic()
    recorder.flush()
    store_s += time.monotonic() - t
    for row in to_fetch:
        res = recorder.results.get(row.src)
        if res is None:  # a source must report every clip; never count a silent one as done
            recorder(ClipResult(row.src, ok=False, reason="not-reported-by-source", transient=True))
            res = recorder.results[row.src]
        status[row.src] = DOWNLOADED if res.ok else FAILED
    t = time.monotonic()
    recorder.flush()
    final = store.get_many(r.src for r in rows)
    store_s += time.monotonic() - t
    out = SliceClips(elapsed_s=time.monotonic() - start, fetch_s=fetch_s, store_s=store_s, store_overlapped_s=store_overlapped_s)
    out.bytes_fetched = sum(r.size or 0 for r in recorder.results.values() if r.ok)
    for row in rows:
        rec = final[row.src]
        out.table.append(
            {
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
