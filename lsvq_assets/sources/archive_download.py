"""Bringing one folder archive, resumably, through the shared HTTP client: as a stream, or to disk.

* :class:`ArchiveStream` is the archive's body as it arrives, for extracting while downloading (no
  copy of the archive on disk): a body cut short is resumed within the run with
  ``Range: bytes=<bytes read>-`` (and ``If-Range``), under the reader that goes on unaware.
* :func:`download` makes the archive whole at ``<archive>`` through ``<archive>.part``: a fresh GET,
  or ``Range: bytes=<part size>-`` (plus ``If-Range`` with the strong ETag this process saw) to
  resume, also in a later run. :func:`folder_lock` is the per-archive ``flock`` that keeps parallel
  processes off the same ``.part``.

The client does the redirects, the retries (backoff, Retry-After), the timeouts and the rate rule;
this module only interprets 200/206/416 and the lengths.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import NoReturn

from lsvq_assets.net.client import Attempt, HttpClient, Response
from lsvq_assets.net.errors import NETWORK_ERRORS, FetchFailure, classify_network_error, disk_failure, status_failure
from lsvq_assets.net.stream import CHUNK_SIZE, append_to_file

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("lsvq_assets.sources.archive")

__all__ = ["ArchiveStream", "StreamFailed", "download", "folder_lock", "lock_path", "part_path", "unlink"]

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)\s*-\s*(\d+)\s*/\s*(\d+|\*)\s*", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"\s*bytes\s+\*\s*/\s*(\d+)\s*", re.IGNORECASE)


def unlink(path: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def part_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".part")


def lock_path(archive: Path) -> Path:
    return archive.with_name(f".{archive.name}.lock")


@contextlib.contextmanager
def folder_lock(archive: Path) -> Iterator[None]:
    """Hold the archive's lock file; ``after_success`` deletes it while holding it, so a waiter
    that then gets the lock checks it still is the file at that path, else takes the new one."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = lock_path(archive)
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


def download(client: HttpClient, url: str, archive: Path, validators: MutableMapping[Path, str]) -> tuple[Attempt, int]:
    """Bring the whole archive to ``archive`` (resuming its .part); (last attempt, requests made).

    ``validators`` remembers each archive's strong ETag (sent as ``If-Range`` on a resume).
    """
    return client.retrying(lambda: _try_once(client, url, archive, validators))


def _try_once(client: HttpClient, url: str, archive: Path, validators: MutableMapping[Path, str]) -> Attempt:
    """One attempt: a GET (resuming the .part), its redirect hops, and one restart from zero
    when the server answers a resume with 416 or a Content-Range that does not fit."""
    part = part_path(archive)
    current, n_requests, restarted = url, 0, False
    while True:
        offset = _size(part)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        if offset and archive in validators:
            headers["If-Range"] = validators[archive]
        opened = client.open(current, headers, accept=(200, 206, 416))
        n_requests += opened.requests
        resp, status, current = opened.response, opened.http_status, opened.url
        if resp is None:
            return Attempt(False, n_requests, status, opened.failure, opened.retry_after_s)
        try:
            if status == 416 and offset:
                m = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                client.drain_small_body(resp)
                if m and int(m.group(1)) == offset:  # the .part already is the whole archive
                    return _finish(part, archive, offset, n_requests, status)
            elif status == 206:
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                if m and int(m.group(1)) == offset and int(m.group(2)) >= offset:
                    total = None if m.group(3) == "*" else int(m.group(3))
                    return _stream(client, resp, part, archive, offset, total, n_requests)
                # else: a range we did not ask for
            elif status == 200:
                # A fresh download, or a server that ignores Range: start over from byte 0.
                etag = resp.headers.get("ETag", "").strip()
                if etag.startswith('"'):  # strong validators only (If-Range refuses weak ones)
                    validators[archive] = etag
                return _stream(client, resp, part, archive, 0, None, n_requests)
            else:  # a 416 to a request without Range
                failure, retry_after = status_failure(status or 0, resp.headers)
                client.drain_small_body(resp)
                return Attempt(False, n_requests, status, failure, retry_after)
        except NETWORK_ERRORS as exc:
            return Attempt(False, n_requests, status, classify_network_error(exc, None, None))
        finally:
            resp.close()
        if restarted or not offset:
            return Attempt(False, n_requests, status, FetchFailure(f"bad-range-answer: http-{status}", True, True))
        log.info("archive %s: the server did not resume at byte %d (http %s): starting over", archive.name, offset, status)
        unlink(part)
        validators.pop(archive, None)
        restarted = True


def _stream(client: HttpClient, resp: Response, part: Path, archive: Path, offset: int, total: int | None, n_requests: int) -> Attempt:
    """Append the body to ``part`` at ``offset`` (0: truncate first), then check the length."""
    status = resp.status_code
    clen: int | None = resp.raw.length_remaining  # None: chunked or close-delimited
    if total is None and offset == 0:
        total = clen
    if offset == 0 and clen == 0:
        return Attempt(False, n_requests, status, FetchFailure("empty-body", False, False))
    written, failure = append_to_file(client, resp, part, truncate=offset == 0)
    if failure is not None:
        return Attempt(False, n_requests, status, failure)
    size = offset + written
    if total is not None and size != total:
        kind = "short-body" if size < total else "long-body"
        return Attempt(False, n_requests, status, FetchFailure(f"{kind}: have {size} of {total} bytes", True, True))
    if size == 0:
        return Attempt(False, n_requests, status, FetchFailure("empty-body", False, False))
    return _finish(part, archive, size, n_requests, status)


def _finish(part: Path, archive: Path, size: int, n_requests: int, status: int | None) -> Attempt:
    try:
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, archive)
    except OSError as exc:
        return Attempt(False, n_requests, status, disk_failure(exc))
    return Attempt(True, n_requests, status, size=size)


# --------------------------------------------------------------------------- as a stream


class StreamFailed(Exception):
    """:class:`ArchiveStream` gave up: ``attempt`` is the failure that ended it (with every request made)."""

    def __init__(self, attempt: Attempt) -> None:
        assert attempt.failure is not None
        super().__init__(attempt.failure.reason)
        self.attempt = attempt


def _strong_etag(resp: Response) -> str | None:
    etag = resp.headers.get("ETag", "").strip()
    return etag if etag.startswith('"') else None  # If-Range refuses weak validators


class ArchiveStream:
    """An archive's body as it arrives: a read-only file object for the extraction to pull from.

    One GET with no ``Range``. A failure after some bytes (a reset, a body cut short, a read timeout)
    or before any is retried as a download is (backoff or Retry-After, ``max_attempts`` failures in
    a row; :data:`PROGRESS_RESETS` bytes read since the last failure start the count again, since
    nothing of a streamed archive survives the run): the next request asks
    ``Range: bytes=<bytes read>-`` with ``If-Range`` (the first answer's strong ETag) and the reader
    above (gunzip, tar, the member being written) goes on where it was. A 200 to such a request
    (Range not supported) is read past the bytes already had; an archive that changed (another ETag
    or length, or a 416 that does not say the bytes read were all of it) cannot go on. Reading ends,
    with ``b""``, only at the declared length: a body that ends short of it, or goes past it, is a
    failure. When it cannot go on, :meth:`read` raises :class:`StreamFailed` (the response closed);
    :meth:`close` closes the response the reader left open.
    """

    #: Bytes read since the last failure that make the next one the first in a row again.
    PROGRESS_RESETS = 4 * CHUNK_SIZE

    def __init__(self, client: HttpClient, url: str) -> None:
        self._client, self._url = client, url
        self.offset = 0  # archive bytes handed to the reader
        self.total: int | None = None  # the archive's length, once declared
        self.requests = 0
        self.http_status: int | None = None  # the last answer's status
        self._etag: str | None = None
        self._resp: Response | None = None
        self._failures = 0  # in a row (see PROGRESS_RESETS)
        self._failed_at = 0  # the offset of the last failure
        self._skip = 0  # bytes of a 200 answering a resume that the reader already had
        self._got, self._since = 0, 0.0  # this answer's bytes and start: the rate rule

    def read(self, n: int = CHUNK_SIZE) -> bytes:
        want = CHUNK_SIZE if n is None or n <= 0 else min(n, CHUNK_SIZE)
        while True:
            if self._resp is None and self.total is not None and self.offset >= self.total:
                return b""  # all of it (a 416 to a resume can say so)
            resp = self._resp or self._open()
            if resp is None:
                continue  # failed, and waited to try again; or found the end
            try:
                # read1: whatever has arrived, so a trickle is noticed while it trickles
                data = resp.raw.read1(want, decode_content=False)
            except NETWORK_ERRORS as exc:
                self._failed(classify_network_error(exc, self.offset, self.total))
                continue
            if not data:
                if self.total is not None and self.offset < self.total:
                    self._failed(FetchFailure(f"short-body: have {self.offset} of {self.total} bytes", True, True))
                    continue
                self.close()
                return b""
            self._got += len(data)
            if (slow := self._client.too_slow(self._got, time.monotonic() - self._since)) is not None:
                self._give_up(slow)  # not retried: it would trickle again
            if self._skip:
                drop = min(self._skip, len(data))
                self._skip -= drop
                data = data[drop:]
                if not data:
                    continue
            if self.total is not None and self.offset + len(data) > self.total:
                self._give_up(FetchFailure(f"long-body: more than the {self.total} bytes declared", True, False))
            self.offset += len(data)
            return data

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def _failed(self, failure: FetchFailure, retry_after_s: float | None = None) -> None:
        """Count a failed attempt and wait to try again, or raise :class:`StreamFailed`."""
        self.close()
        if self.offset - self._failed_at >= self.PROGRESS_RESETS:
            self._failures = 0
        self._failures += 1
        self._failed_at = self.offset
        if (
            not (failure.transient and failure.retryable)
            or self._failures >= self._client.max_attempts
            or not self._client.wait_to_retry(self._failures - 1, retry_after_s)
        ):
            self._give_up(failure, retry_after_s)

    def _give_up(self, failure: FetchFailure, retry_after_s: float | None = None) -> NoReturn:
        self.close()
        raise StreamFailed(Attempt(False, self.requests, self.http_status, failure, retry_after_s))

    def _open(self) -> Response | None:
        headers = {}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            if self._etag:
                headers["If-Range"] = self._etag
        opened = self._client.open(self._url, headers, accept=(200, 206, 416) if self.offset else (200,))
        self.requests += opened.requests
        self.http_status = opened.http_status
        resp = opened.response
        if resp is None:
            assert opened.failure is not None
            self._failed(opened.failure, opened.retry_after_s)
            return None
        self._resp = resp
        status, clen, etag = opened.http_status, resp.raw.length_remaining, _strong_etag(resp)
        if self._etag and etag and etag != self._etag:
            self._give_up(FetchFailure("changed-while-downloading", True, False))
        self._skip = 0
        if status == 416:  # nothing from the byte reached: right only if that was the end (no length declared)
            m = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if self.total is None and m and int(m.group(1)) == self.offset:
                self.total = self.offset
                self.close()
                return None
            self._give_up(FetchFailure(f"changed-while-downloading: http-{status}", True, False))
        if status == 206:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != self.offset or int(m.group(2)) < self.offset:
                self._give_up(FetchFailure(f"bad-range-answer: http-{status}", True, False))
            declared = None if m.group(3) == "*" else int(m.group(3))
        else:  # 200: the first answer, or a server that ignored Range (or whose archive changed)
            if self.offset and self._etag and etag != self._etag:
                self._give_up(FetchFailure("changed-while-downloading", True, False))
            self._etag = self._etag or etag
            self._skip = self.offset
            declared = clen
        if self.total is None:
            if declared == 0:
                self._give_up(FetchFailure("empty-body", False, False))
            self.total = declared
        elif declared is not None and declared != self.total:
            self._give_up(FetchFailure(f"changed-while-downloading: {declared} bytes, not {self.total}", True, False))
        self._got, self._since = 0, time.monotonic()
        return resp
