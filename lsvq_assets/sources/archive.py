"""Folder archives: one ``<folder>.tar.gz`` per folder, as the Hugging Face mirror serves LSVQ.

``https://huggingface.co/datasets/teowu/LSVQ-videos/resolve/main/<folder>.tar.gz`` extracts to
``<folder>/<stem>.mp4``; there are no per-clip files. For each folder among the rows to fetch:

* **download** to ``<archives_dir>/<folder>.tar.gz`` through ``<folder>.tar.gz.part``, with one GET
  when nothing fails (no HEAD). An interrupted download is resumed with ``Range: bytes=<part size>-``:
  a 206 whose Content-Range starts there is appended; a 200 (Range ignored) starts over from zero;
  a 416 or a Content-Range that does not start there discards the part and asks again without Range
  (a 416 saying the part already is the whole file just completes it). The archive is accepted only
  when its length equals the length declared (Content-Length, or the Content-Range total); otherwise
  the failure is transient and the ``.part`` is kept for the next attempt or run. Transient failures
  are retried with backoff or Retry-After, redirects are re-checked, exactly as in
  :mod:`lsvq_assets.sources.http` whose helpers are reused. When the archive cannot be had, every
  clip of the folder gets that failure (``archive-http-404`` is permanent for each, a timeout
  transient...). An archive already complete on disk (``--keep-archives``, or a run that stopped
  after its download) is used without any request.
* **extract** in one streaming pass (bounded memory whatever the archive or clip size): the gzip
  layer is decompressed here, in bounded steps, and every gzip member's CRC-32 and length trailer is
  checked by zlib; the tar layer is read by :mod:`tarfile` in stream mode. Only members named exactly
  like a wanted ``row.src`` (a leading ``./`` accepted) are written, each to a hidden temp file beside
  its destination, hashed on the way and fsynced. The temp files are renamed into place only once the
  whole stream was read and verified, so a corrupt or truncated archive never leaves a clip behind:
  it fails the folder's clips transiently and is deleted (the next run downloads it again). A gzip
  that checks out around a broken tar is the archive as published: the clips read before the damage
  are kept, the others fail permanently (``bad-archive: ...``).
  Members that are absolute, hold ``..``, are links, devices or fifos, or are larger than
  ``max_member_bytes`` are never written; a wanted clip whose member is refused fails permanently
  (``unsafe-archive-member: <why>``), one absent from the archive with ``missing-from-archive``.
  Nothing is ever written outside ``layout.clips_dir`` (every destination is ``layout.clip_path``).
* ``after_success`` deletes the folder's archive unless ``keep_archives``. A big folder split into
  sub-slices (``<folder>~2``...) therefore downloads its archive once per sub-slice; pass
  ``--keep-archives`` to download it once (and delete ``<lsvq-dir>/archives`` yourself afterwards).

Downloads and extractions of one folder hold an exclusive ``flock`` on ``.<folder>.tar.gz.lock`` in
the archives directory (deleted with the archive), so sub-slices of a folder run by parallel
processes never write the same ``.part`` at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urljoin

import requests

from lsvq_assets.core.errors import UserError
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.urls import check_url
from lsvq_assets.sources.base import ClipResult, ClipSource, OnResult

# The HTTP rules are http.py's: same errors, same classification, same redirect checks.
from lsvq_assets.sources.http import (
    CHUNK_SIZE,
    NETWORK_ERRORS,
    REDIRECT_STATUSES,
    RETRY_AFTER_STATUSES,
    TRANSIENT_4XX,
    FetchFailure,
    HttpFetcher,
    classify_network_error,
    disk_failure,
    fix_location,
    parse_retry_after,
    redirect_reason,
    write_all,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["ArchiveClipSource", "archive_file_name"]

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, checked by zlib
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)\s*-\s*(\d+)\s*/\s*(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*\s*/\s*(\d+)\s*", re.IGNORECASE)


class _Corrupt(Exception):
    """The archive's bytes are not a whole, valid .tar.gz."""


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


def _member_problem(info: tarfile.TarInfo, max_bytes: int) -> str | None:
    """Why a member must not be written, or None."""
    name = info.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute-path"
    if ".." in name.replace("\\", "/").split("/"):
        return "path-traversal"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    if not info.isreg():
        return f"not-a-regular-file (type {info.type!r})"
    if info.size > max_bytes:
        return f"too-large: {info.size} bytes > max_member_bytes {max_bytes}"
    return None


def _member_src(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _claimed_src(name: str) -> str:
    """The clip a (possibly hostile) member name points at, to blame a refusal on the right row."""
    parts: list[str] = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


class _Gunzip:
    """The decompressed bytes of a (multi-member) gzip file, read in bounded steps.

    zlib checks each member's header, CRC-32 and length; zero padding after a member is allowed
    (as gzip(1) and Python's gzip do). A stream that ends early or holds anything else raises
    :class:`_Corrupt`. At most ``out_max`` decompressed bytes are held at once (no gzip bomb).
    """

    def __init__(self, raw: BinaryIO, in_chunk: int = CHUNK_SIZE, out_max: int = CHUNK_SIZE) -> None:
        self._raw, self._in, self._out_max = raw, in_chunk, out_max
        self._d = zlib.decompressobj(_GZIP_WBITS)
        self._buf = b""
        self._pos = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise ValueError("_Gunzip.read needs a size")
        while self._pos >= len(self._buf):
            if self._done:
                return b""
            self._buf, self._pos = self._next(), 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        """Read to the end of the gzip stream (verifying every trailer)."""
        while self._next():
            pass
        self._buf, self._pos = b"", 0

    def _next(self) -> bytes:
        try:
            while not self._done:
                d = self._d
                if d.unconsumed_tail:
                    out = d.decompress(d.unconsumed_tail, self._out_max)
                elif d.eof:  # a gzip member ended (trailer verified): padding, another member or the end
                    rest = d.unused_data.lstrip(b"\0")
                    while not rest:
                        data = self._raw.read(self._in)
                        if not data:
                            self._done = True
                            return b""
                        rest = data.lstrip(b"\0")
                    self._d = d = zlib.decompressobj(_GZIP_WBITS)
                    out = d.decompress(rest, self._out_max)
                else:
                    data = self._raw.read(self._in)
                    if not data:
                        raise _Corrupt("truncated gzip stream")
                    out = d.decompress(data, self._out_max)
                if out:
                    return out
            return b""
        except zlib.error as exc:
            raise _Corrupt(f"bad gzip data: {exc}") from None


@dataclass
class _Download:
    ok: bool
    requests: int = 0
    http_status: int | None = None
    failure: FetchFailure | None = None
    retry_after_s: float | None = None


def _unlink(path: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


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
        **fetcher_kwargs,
    ) -> None:
        try:
            probe = url_template.format(folder="folder")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise UserError(
                f"--archive-url-template {url_template!r} (LSVQ_ARCHIVE_URL_TEMPLATE): {exc!r}; "
                f"the only field is {{folder}}, e.g. https://huggingface.co/datasets/teowu/LSVQ-videos/resolve/main/{{folder}}.tar.gz"
            ) from None
        if "{folder}" not in url_template or (bad := check_url(probe)):
            why = "it has no {folder}" if "{folder}" not in url_template else bad
            raise UserError(
                f"--archive-url-template {url_template!r} (LSVQ_ARCHIVE_URL_TEMPLATE): {why}; expected an http(s) URL "
                f"with {{folder}}, e.g. https://huggingface.co/datasets/teowu/LSVQ-videos/resolve/main/{{folder}}.tar.gz"
            )
        self.url_template = url_template
        self.archives_dir = Path(archives_dir) if archives_dir is not None else None
        self.keep_archives = keep_archives
        self.max_member_bytes = int(max_member_bytes)
        fetcher_kwargs.setdefault("concurrency", 2)
        # The fetcher holds the HTTP settings (validated) and the session (keep-alive, identity encoding).
        self.http = HttpFetcher(timeout_s=timeout_s, max_attempts=max_attempts, **fetcher_kwargs)
        self._session: requests.Session = self.http.session
        self._closed = threading.Event()

    # ------------------------------------------------------------------ ClipSource

    def url_for(self, folder: str) -> str:
        return self.url_template.format(folder=quote(folder, safe=""))

    def fetch(self, rows: Sequence[ManifestRow], layout: Layout, on_result: OnResult) -> None:
        by_folder: dict[str, list[ManifestRow]] = {}
        for row in rows:
            by_folder.setdefault(row.folder, []).append(row)
        for folder, folder_rows in by_folder.items():
            reported: set[str] = set()

            def report(res: ClipResult) -> None:
                reported.add(res.src)
                on_result(res)

            try:
                self._fetch_folder(folder, folder_rows, layout, report)
            except Exception as exc:  # a bug or an unforeseen error: fail this folder's clips, visibly
                log.exception("archive source: folder %r failed", folder)
                for row in folder_rows:
                    if row.src not in reported:
                        on_result(ClipResult(row.src, ok=False, reason=f"archive-error: {type(exc).__name__}: {exc}"[:300], transient=True))

    def after_success(self, rows: Sequence[ManifestRow], layout: Layout) -> None:
        if self.keep_archives:
            return
        archives = self._archives_dir(layout)
        for folder in dict.fromkeys(r.folder for r in rows):
            if _folder_problem(folder):
                continue
            archive = archives / archive_file_name(folder)
            if not any(p.exists() for p in (archive, self._part(archive), self._lock_path(archive))):
                continue
            with self._lock(archive):
                _unlink(archive)
                _unlink(self._part(archive))
                _unlink(self._lock_path(archive))

    def close(self) -> None:
        self._closed.set()
        self.http.close()

    # ------------------------------------------------------------------ one folder

    def _archives_dir(self, layout: Layout) -> Path:
        return self.archives_dir if self.archives_dir is not None else layout.archives_dir

    @staticmethod
    def _part(archive: Path) -> Path:
        return archive.with_name(archive.name + ".part")

    @staticmethod
    def _lock_path(archive: Path) -> Path:
        return archive.with_name(f".{archive.name}.lock")

    @contextlib.contextmanager
    def _lock(self, archive: Path) -> Iterator[None]:
        """Hold the folder's lock file; ``after_success`` deletes it while holding it, so a waiter
        that then gets the lock checks it still is the file at that path, else takes the new one."""
        archive.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        path = self._lock_path(archive)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

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
        archive = self._archives_dir(layout) / archive_file_name(folder)
        status, attempts = None, 0
        with self._lock(archive):
            if not archive.is_file():
                dl, attempts = self._download(url, archive)
                status = dl.http_status
                if not dl.ok:
                    assert dl.failure is not None
                    fail_all(f"archive-{dl.failure.reason}", dl.failure.transient, status, attempts)
                    return
                log.info("archive %s: %d bytes in %d request(s)", archive.name, _size(archive), attempts)
            try:
                verdicts = self._extract(archive, rows, layout)
            except _Corrupt as exc:
                log.warning("archive %s is corrupt (%s): deleted, it will be downloaded again", archive, exc)
                _unlink(archive)
                fail_all(f"archive-corrupt: {exc}"[:300], True, status, attempts)
                return
            except OSError as exc:
                fail_all(disk_failure(exc).reason, True, status, attempts)
                return
        for row in rows:
            ok, sha, size, reason = verdicts.get(row.src, (False, None, None, "missing-from-archive"))
            report(ClipResult(row.src, ok, sha, size, status, reason, False, attempts))

    # ------------------------------------------------------------------ download

    def _download(self, url: str, archive: Path) -> tuple[_Download, int]:
        """Bring the whole archive to ``archive`` (resuming its .part); (outcome, requests made)."""
        part = self._part(archive)
        n_requests = 0
        out = _Download(False)
        for i in range(self.http.max_attempts):
            out = self._try_once(url, archive, part)
            n_requests += out.requests
            failure = out.failure
            if out.ok or failure is None or not failure.transient or not failure.retryable:
                break
            if i == self.http.max_attempts - 1:
                break
            if self._closed.wait(self.http.retry_delay(i, out.retry_after_s)):
                break
        return out, n_requests

    def _try_once(self, url: str, archive: Path, part: Path) -> _Download:
        """One attempt: a GET (resuming the .part), its redirect hops, and one restart from zero
        when the server answers a resume with 416 or a Content-Range that does not fit."""
        current, status, n_requests, hops, restarted = url, None, 0, 0, False
        while True:
            offset = _size(part)
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            n_requests += 1
            try:
                resp = self._session.get(
                    current,
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=(self.http.connect_timeout_s, self.http.timeout_s),
                )
            except NETWORK_ERRORS as exc:
                return _Download(False, n_requests, status, classify_network_error(exc, None, None))
            restart = False
            try:
                status = resp.status_code
                if status in REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    HttpFetcher.drain_small_body(resp)
                    hops += 1
                    if not location:
                        return _Download(False, n_requests, status, FetchFailure("redirect-without-location", False, False))
                    if hops > self.http.max_redirects:
                        return _Download(False, n_requests, status, FetchFailure("too-many-redirects", False, False))
                    target = urljoin(current, fix_location(location.strip()))
                    if bad := check_url(target):
                        return _Download(False, n_requests, status, FetchFailure(redirect_reason(bad), False, False))
                    current = target
                    continue
                if status == 416 and offset:
                    m = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                    HttpFetcher.drain_small_body(resp)
                    if m and int(m.group(1)) == offset:  # the .part already is the whole archive
                        return self._finish(part, archive, offset, n_requests, status)
                    restart = True
                elif status == 206:
                    m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                    if m and int(m.group(1)) == offset and int(m.group(2)) >= offset:
                        total = None if m.group(3) == "*" else int(m.group(3))
                        return self._stream(resp, part, archive, offset, total, n_requests)
                    restart = True  # a range we did not ask for
                elif status == 200:
                    # A fresh download, or a server that ignores Range: start over from byte 0.
                    return self._stream(resp, part, archive, 0, None, n_requests)
                else:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in RETRY_AFTER_STATUSES else None
                    HttpFetcher.drain_small_body(resp)
                    transient = status >= 500 or status in TRANSIENT_4XX
                    return _Download(False, n_requests, status, FetchFailure(f"http-{status}", transient, transient), retry_after)
            except NETWORK_ERRORS as exc:
                return _Download(False, n_requests, status, classify_network_error(exc, None, None))
            finally:
                resp.close()
            assert restart
            if restarted or not offset:
                return _Download(False, n_requests, status, FetchFailure(f"bad-range-answer: http-{status}", True, True))
            log.info("archive %s: the server did not resume at byte %d (http %s): starting over", archive.name, offset, status)
            _unlink(part)
            restarted = True

    def _stream(
        self, resp: requests.Response, part: Path, archive: Path, offset: int, total: int | None, n_requests: int
    ) -> _Download:
        """Append the body to ``part`` at ``offset`` (0: truncate first), then check the length."""
        status = resp.status_code
        raw = resp.raw
        clen: int | None = raw.length_remaining  # None: chunked or close-delimited
        if total is None and offset == 0:
            total = clen
        if offset == 0 and clen == 0:
            return _Download(False, n_requests, status, FetchFailure("empty-body", False, False))
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC)
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, flags, 0o644)
        except OSError as exc:
            return _Download(False, n_requests, status, disk_failure(exc))
        written = 0
        min_rate = float(getattr(self.http, "min_rate_bytes_s", 0.0) or 0.0)
        started = time.monotonic()
        try:
            while True:
                try:
                    # read1: whatever has arrived, so a trickle is noticed while it trickles (as http.py)
                    data = raw.read1(CHUNK_SIZE, decode_content=False)
                except NETWORK_ERRORS as exc:  # the .part keeps what arrived: the next attempt resumes
                    return _Download(False, n_requests, status, classify_network_error(exc, written, clen))
                if not data:
                    break
                try:
                    write_all(fd, data)
                except OSError as exc:
                    return _Download(False, n_requests, status, disk_failure(exc))
                written += len(data)
                elapsed = time.monotonic() - started
                if min_rate > 0 and elapsed > self.http.timeout_s and written < min_rate * elapsed:
                    # http.py's rule; the .part is kept, so the next run resumes from here.
                    reason = f"too-slow: {written} bytes in {elapsed:.0f}s, under {min_rate:.0f} B/s"
                    return _Download(False, n_requests, status, FetchFailure(reason, True, False))
        finally:
            os.close(fd)
        size = offset + written
        if clen is not None and written != clen:
            return _Download(False, n_requests, status, FetchFailure(f"short-body: got {written} of {clen} bytes", True, True))
        if total is not None and size != total:
            kind = "short-body" if size < total else "long-body"
            return _Download(False, n_requests, status, FetchFailure(f"{kind}: have {size} of {total} bytes", True, True))
        if size == 0:
            return _Download(False, n_requests, status, FetchFailure("empty-body", False, False))
        return self._finish(part, archive, size, n_requests, status)

    @staticmethod
    def _finish(part: Path, archive: Path, size: int, n_requests: int, status: int | None) -> _Download:
        try:
            fd = os.open(part, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(part, archive)
        except OSError as exc:
            return _Download(False, n_requests, status, disk_failure(exc))
        return _Download(True, n_requests, status)

    # ------------------------------------------------------------------ extraction

    def _extract(
        self, archive: Path, rows: list[ManifestRow], layout: Layout
    ) -> dict[str, tuple[bool, str | None, int | None, str | None]]:
        """src -> (ok, sha256, size, reason) for the wanted members found or refused.

        Raises _Corrupt for an archive whose gzip stream is not whole and valid, OSError for disk
        problems; in both cases nothing has been renamed into the clips directory. A valid gzip
        holding a broken tar keeps what was read before the damage (its bytes are verified).
        """
        wanted = {row.src for row in rows}
        staged: dict[str, tuple[str, Path, str, int]] = {}  # src -> (temp, dest, sha256, size)
        refused: dict[str, str] = {}
        tar_error: str | None = None
        try:
            with open(archive, "rb") as fh:
                gz = _Gunzip(fh)
                try:
                    with tarfile.open(fileobj=gz, mode="r|", bufsize=CHUNK_SIZE) as tar:  # type: ignore[call-overload]
                        for info in tar:
                            if info.isdir():
                                continue
                            problem = _member_problem(info, self.max_member_bytes)
                            if problem is not None:
                                claimed = _claimed_src(info.name)
                                if claimed in wanted:
                                    refused[claimed] = f"unsafe-archive-member: {problem}"
                                log.warning("archive %s: refused member %r: %s", archive.name, info.name, problem)
                                continue
                            src = _member_src(info.name)
                            if src not in wanted:
                                continue
                            try:
                                dest = layout.clip_path(src)
                            except ValueError:
                                refused[src] = "unsafe-archive-member: outside-clips-dir"
                                continue
                            member = tar.extractfile(info)
                            assert member is not None  # a regular file
                            tmp, sha, size = self._write_member(member, dest, info.size)
                            if src in staged:  # the same name twice: the last one wins, as with tar
                                _unlink(staged[src][0])
                            staged[src] = (tmp, dest, sha, size)
                except (tarfile.TarError, EOFError) as exc:
                    # A broken tar inside a gzip that checks out is the archive as published (the
                    # bytes arrived whole): permanent for the clips not found before the damage.
                    # A gzip that does not check out raises _Corrupt from the drain below.
                    tar_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                gz.drain()  # the end of the tar is not the end of the gzip: check its trailer too
            out: dict[str, tuple[bool, str | None, int | None, str | None]] = {}
            if tar_error is not None:
                log.warning("archive %s: the tar inside is broken (%s)", archive.name, tar_error)
                for src in wanted - staged.keys() - refused.keys():
                    out[src] = (False, None, None, f"bad-archive: {tar_error}"[:300])
            for src, reason in refused.items():
                out[src] = (False, None, None, reason)
            for src, (tmp, dest, sha, size) in staged.items():
                if src in refused:
                    continue  # an unsafe member with this name too: write none of them
                if size == 0:
                    out[src] = (False, None, None, "empty-body")
                    continue
                os.replace(tmp, dest)
                out[src] = (True, sha, size, None)
            return out
        finally:
            for tmp, *_ in staged.values():
                _unlink(tmp)

    @staticmethod
    def _write_member(member: BinaryIO, dest: Path, expected: int) -> tuple[str, str, int]:
        """Copy one member into a hidden temp file beside ``dest``, fsynced: (temp path, sha256, size)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        done = False
        try:
            h = hashlib.sha256()
            size = 0
            while data := member.read(CHUNK_SIZE):
                h.update(data)
                write_all(fd, data)
                size += len(data)
            if size != expected:
                raise _Corrupt(f"member {dest.name}: {size} of {expected} bytes")
            os.fchmod(fd, 0o644)
            os.fsync(fd)
            done = True
            return tmp, h.hexdigest(), size
        finally:
            os.close(fd)
            if not done:
                _unlink(tmp)

