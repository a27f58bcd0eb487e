"""Folder archives: one ``<folder>.tar.gz`` per folder, as the Hugging Face mirror serves LSVQ.

``https://huggingface.co/datasets/teowu/LSVQ-videos/resolve/main/<folder>.tar.gz`` extracts to
``<folder>/<stem>.mp4``; there are no per-clip files. For each folder among the rows to fetch:

* **stream** (the default): the archive is extracted as it arrives, through an
  :class:`~lsvq_assets.sources.archive_download.ArchiveStream` over the shared
  :class:`~lsvq_assets.net.client.HttpClient` (redirects re-checked, retries with backoff or
  Retry-After, timeouts, minimum rate): one GET when nothing fails (no HEAD), and the archive never
  written to disk (half the disk writes of download-then-extract, and no archive-sized space). A body
  cut short is resumed within the run with ``Range: bytes=<bytes read>-`` (and ``If-Range``), under
  the extraction, which goes on. A run that stops mid-archive leaves nothing of it: the next run
  starts that archive over.
* **download, then extract**, with ``keep_archives``, or when an archive or a ``.part`` of it is
  already in ``<archives_dir>`` (an earlier run's): to ``<archives_dir>/<folder>.tar.gz`` through
  ``<folder>.tar.gz.part``. An interrupted download is resumed, also by a later run, with
  ``Range: bytes=<part size>-`` (and ``If-Range`` when this process saw the archive's strong ETag): a
  206 whose Content-Range starts there is appended; a 200 (Range ignored) starts over from zero; a
  416 or a Content-Range that does not start there discards the part and asks again without Range
  (a 416 saying the part already is the whole file just completes it). An archive already complete
  on disk is used without any request.
* Either way the archive is accepted only when its length equals the length declared
  (Content-Length, or the Content-Range total); otherwise the failure is transient. When the archive
  cannot be had, every clip of the folder gets that failure (``archive-http-404`` is permanent for
  each, a timeout transient...). A 401 or 403 is not a property of the clips: transient for each,
  with a hint about ``HF_TOKEN``.
* **token**: ``token`` goes as ``Authorization: Bearer`` to the template's host and port only, over
  https (or to a loopback host), never on a redirect elsewhere (the mirror's CDN); never logged.
* **extract** with :func:`lsvq_assets.sources.extract.extract_members` (one streaming pass, bounded
  memory, nothing outside the clips directory, links and devices refused; nothing renamed into place
  before the whole gzip stream checked out). A corrupt archive fails the folder's clips transiently
  (one on disk is deleted): the next run fetches it again.
* ``after_success`` deletes the folder's archive (if on disk) unless ``keep_archives``. A big folder
  split into sub-slices (``<folder>~2``...) therefore fetches its archive once per sub-slice; pass
  ``--keep-archives`` to download it once (and delete ``<lsvq-dir>/archives`` yourself afterwards).

Downloads and extractions of an archive on disk hold an exclusive ``flock`` on
``.<folder>.tar.gz.lock`` in the archives directory (deleted with the archive), so sub-slices of a
folder run by parallel processes never write the same ``.part`` at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import quote

from lsvq_assets.core.errors import UserError
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.urls import check_url
from lsvq_assets.net.auth import Bearer
from lsvq_assets.net.client import Attempt, HttpClient
from lsvq_assets.net.errors import AUTH_STATUSES, disk_failure
from lsvq_assets.sources.archive_download import ArchiveStream, StreamFailed, download, folder_lock, lock_path, part_path, unlink
from lsvq_assets.sources.base import ClipResult, ClipSource, OnResult
from lsvq_assets.sources.extract import CorruptArchive, MemberResult, extract_members

if TYPE_CHECKING:
    from _typeshed import SupportsRead

log = logging.getLogger(__name__)

__all__ = ["ArchiveClipSource", "archive_file_name"]

TEMPLATE_EXAMPLE = "https://huggingface.co/datasets/teowu/LSVQ-videos/resolve/main/{folder}.tar.gz"
AUTH_HINT = "the mirror refused the archive; set HF_TOKEN (or --hf-token-file) and accept the dataset's terms on its page"
AUTH_HINT_WITH_TOKEN = (
    "the mirror refused the archive with the token given; check HF_TOKEN (or --hf-token-file) and accept the dataset's terms on its page"
)


def archive_file_name(folder: str) -> str:
    """``<folder>.tar.gz``; a folder name too long for a file name gets a hashed one."""
    name = f"{folder}.tar.gz"
    if len(name.encode()) + len(".part") + 2 > 255:  # room for ".part" and the lock file's dot
        name = f"{folder[:80]}-{hashlib.sha256(folder.encode()).hexdigest()[:16]}.tar.gz"
    return name


def _folder_problem(folder: str) -> str | None:
    if not folder:
        return "no-folder-for-archive"
    if folder in (".", "..") or "/" in folder or "\\" in folder or "\x00" in folder:
        return "bad-folder-for-archive"
    return None


def _clips_already_there(wanted: dict[str, Path]) -> int:
    """Clips of these rows' folders already on disk that are not wanted now (extracted by an earlier run)."""
    dests = {p.name for p in wanted.values()}
    found = 0
    for directory in {p.parent for p in wanted.values()}:
        try:
            with os.scandir(directory) as entries:
                found += sum(1 for e in entries if not e.name.startswith(".") and e.name not in dests and e.is_file())
        except OSError:
            continue
    return found


class _Failed(NamedTuple):
    """A folder whose clips all fail alike."""

    reason: str
    transient: bool
    status: int | None
    requests: int


_Extracted = tuple[dict[str, MemberResult], int | None, int]  # per member; the HTTP status; requests made


class ArchiveClipSource(ClipSource):
    """Clips from one ``.tar.gz`` per folder. See the module docstring."""

    name = "archive"

    def __init__(
        self,
        url_template: str,
        archives_dir: Path | None = None,
        keep_archives: bool = False,
        timeout_s: float = 120.0,
        max_attempts: int = 4,
        max_member_bytes: int = 8 << 30,
        token: str | None = None,
        **client_kwargs,
    ) -> None:
        try:
            probe = url_template.format(folder="folder")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise UserError(
                f"--archive-url-template {url_template!r} (LSVQ_ARCHIVE_URL_TEMPLATE): {exc!r}; "
                f"the only field is {{folder}}, e.g. {TEMPLATE_EXAMPLE}"
            ) from None
        if "{folder}" not in url_template or (bad := check_url(probe)):
            why = "it has no {folder}" if "{folder}" not in url_template else bad
            raise UserError(
                f"--archive-url-template {url_template!r} (LSVQ_ARCHIVE_URL_TEMPLATE): {why}; expected an http(s) URL "
                f"with {{folder}}, e.g. {TEMPLATE_EXAMPLE}"
            )
        self.url_template = url_template
        self.archives_dir = Path(archives_dir) if archives_dir is not None else None
        self.keep_archives = keep_archives
        self.max_member_bytes = int(max_member_bytes)
        self._token = token or None
        bearer = Bearer(probe, token) if token else None
        if bearer is not None and not bearer.usable:
            log.warning("archive source: the archive URL is not https: the Hugging Face token is not sent")
        client_kwargs.setdefault("concurrency", 2)
        # The client holds the HTTP settings (validated) and the session (keep-alive, identity encoding).
        self.http = HttpClient(timeout_s=timeout_s, max_attempts=max_attempts, bearer=bearer, **client_kwargs)
        self._validators: dict[Path, str] = {}  # archive -> strong ETag seen in this process (If-Range)

    # ------------------------------------------------------------------ ClipSource

    def url_for(self, folder: str) -> str:
        return self.url_template.format(folder=quote(folder, safe=""))

    def fetch(self, rows: Sequence[ManifestRow], layout: Layout, on_result: OnResult) -> None:
        by_folder: dict[str, list[ManifestRow]] = {}
        for row in rows:
            by_folder.setdefault(row.folder, []).append(row)
        for folder, folder_rows in by_folder.items():
            reported: set[str] = set()

            def report(res: ClipResult, reported: set[str] = reported) -> None:
                reported.add(res.src)
                on_result(res)

            try:
                self._fetch_folder(folder, folder_rows, layout, report)
            except Exception as exc:  # a bug or an unforeseen error: fail this folder's clips, visibly
                log.exception("archive source: folder %r failed", folder)
                reason = self._scrub(f"archive-error: {type(exc).__name__}: {exc}")[:300]
                for row in folder_rows:
                    if row.src not in reported:
                        on_result(ClipResult(row.src, ok=False, reason=reason, transient=True))

    def after_success(self, rows: Sequence[ManifestRow], layout: Layout) -> None:
        if self.keep_archives:
            return
        archives = self._archives_dir(layout)
        for folder in dict.fromkeys(r.folder for r in rows):
            if _folder_problem(folder):
                continue
            archive = archives / archive_file_name(folder)
            if not any(p.exists() for p in (archive, part_path(archive), lock_path(archive))):
                continue
            with folder_lock(archive):
                unlink(archive)
                unlink(part_path(archive))
                unlink(lock_path(archive))

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ one folder

    def _archives_dir(self, layout: Layout) -> Path:
        return self.archives_dir if self.archives_dir is not None else layout.archives_dir

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text

    def _fetch_folder(self, folder: str, rows: list[ManifestRow], layout: Layout, report: OnResult) -> None:
        def fail_all(reason: str, transient: bool, status: int | None = None, attempts: int = 0) -> None:
            for row in rows:
                report(ClipResult(row.src, ok=False, http_status=status, reason=reason, transient=transient, attempts=attempts))

        if problem := _folder_problem(folder):
            fail_all(problem, False)
            return
        url = self.url_for(folder)
        if bad := check_url(url):
            fail_all(bad, False)
            return
        wanted: dict[str, Path] = {}
        for row in rows:
            try:
                wanted[row.src] = layout.clip_path(row.src)
            except ValueError:
                wanted[row.src] = layout.clips_dir / row.src  # refused by extract_members if in the archive
        archive = self._archives_dir(layout) / archive_file_name(folder)
        if self.keep_archives or archive.exists() or part_path(archive).exists():
            got = self._from_disk(url, archive, wanted, layout)
        else:
            got = self._streamed(url, archive.name, wanted, layout)
        if isinstance(got, _Failed):
            fail_all(got.reason, got.transient, got.status, got.requests)
            return
        results, status, attempts = got
        for row in rows:
            res = results[row.src]
            report(ClipResult(row.src, res.ok, res.sha256, res.size, status, res.reason, False, attempts))

    def _streamed(self, url: str, name: str, wanted: dict[str, Path], layout: Layout) -> _Extracted | _Failed:
        """Extract while downloading: the archive never touches the disk."""
        self._log_fetched_again(name, wanted)
        stream = ArchiveStream(self.http, url)
        try:
            results = self._extract(stream, wanted, layout, name)
        except StreamFailed as exc:
            return self._download_failed(name, exc.attempt)
        except CorruptArchive as exc:
            log.warning("archive %s is corrupt (%s): its clips are fetched again in the next run", name, exc)
            return _Failed(f"archive-corrupt: {exc}"[:300], True, stream.http_status, stream.requests)
        except OSError as exc:
            return _Failed(disk_failure(exc).reason, True, stream.http_status, stream.requests)
        finally:
            stream.close()
        log.info("archive %s: %d bytes extracted as they arrived, in %d request(s)", name, stream.offset, stream.requests)
        return results, stream.http_status, stream.requests

    def _from_disk(self, url: str, archive: Path, wanted: dict[str, Path], layout: Layout) -> _Extracted | _Failed:
        """Download the archive to disk (resumable in a later run), then extract it; a kept or partial archive is used."""
        status, attempts = None, 0
        with folder_lock(archive):
            if not archive.is_file():
                self._log_fetched_again(archive.name, wanted)
                dl, attempts = download(self.http, url, archive, self._validators)
                status = dl.http_status
                if not dl.ok:
                    return self._download_failed(archive.name, dl)
                log.info("archive %s: %d bytes in %d request(s)", archive.name, archive.stat().st_size, attempts)
            try:
                with open(archive, "rb") as fh:
                    results = self._extract(fh, wanted, layout, archive.name)
            except CorruptArchive as exc:
                log.warning("archive %s is corrupt (%s): deleted, it will be downloaded again", archive, exc)
                unlink(archive)
                return _Failed(f"archive-corrupt: {exc}"[:300], True, status, attempts)
            except OSError as exc:
                return _Failed(disk_failure(exc).reason, True, status, attempts)
        return results, status, attempts

    def _extract(self, fh: SupportsRead[bytes], wanted: dict[str, Path], layout: Layout, name: str) -> dict[str, MemberResult]:
        return extract_members(fh, wanted, layout.clips_dir, max_member_bytes=self.max_member_bytes, label=name)

    def _download_failed(self, name: str, attempt: Attempt) -> _Failed:
        assert attempt.failure is not None
        reason, status = f"archive-{attempt.failure.reason}", attempt.http_status
        if status in AUTH_STATUSES and attempt.failure.reason == f"http-{status}":
            reason = f"{reason}: {AUTH_HINT_WITH_TOKEN if self._token else AUTH_HINT}"
            log.warning("archive %s: http %d: %s", name, status, reason.split(": ", 1)[1])
        return _Failed(reason, attempt.failure.transient, status, attempt.requests)

    @staticmethod
    def _log_fetched_again(name: str, wanted: dict[str, Path]) -> None:
        if earlier := _clips_already_there(wanted):
            log.info(
                "archive %s is fetched again because %d new member(s) are needed "
                "(%d clip(s) of the folder came from it before; --keep-archives keeps archives)",
                name,
                len(wanted),
                earlier,
            )
