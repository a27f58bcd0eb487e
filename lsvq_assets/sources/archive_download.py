"""Bringing one folder archive to disk, resumably, through the shared HTTP client.

:func:`download` makes the archive whole at ``<archive>`` through ``<archive>.part``: a fresh GET,
or ``Range: bytes=<part size>-`` (plus ``If-Range`` with the strong ETag this process saw) to resume.
The client does the redirects, the retries (backoff, Retry-After), the timeouts and the rate rule;
this module only interprets 200/206/416 and the lengths. :func:`folder_lock` is the per-archive
``flock`` that keeps parallel processes off the same ``.part``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import requests

from lsvq_assets.net.client import Attempt, HttpClient
from lsvq_assets.net.errors import NETWORK_ERRORS, FetchFailure, classify_network_error, disk_failure, status_failure
from lsvq_assets.net.stream import append_to_file

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("lsvq_assets.sources.archive")

__all__ = ["download", "folder_lock", "lock_path", "part_path", "unlink"]

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


def _stream(
    client: HttpClient, resp: requests.Response, part: Path, archive: Path, offset: int, total: int | None, n_requests: int
) -> Attempt:
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
