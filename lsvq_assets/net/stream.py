"""Streaming a response body to disk in bounded steps (plain Python, no Dagster).

* :func:`stream_to_file` reads the served bytes raw in fixed-size chunks, hashes them while it
  writes them to a hidden temp file in ``dest``'s directory, then fsyncs and renames it onto
  ``dest``; the temp file never survives a failure. A body shorter than its Content-Length, a
  reset, a stall longer than the read timeout, or a body *longer* than its Content-Length (bytes
  waiting beyond the last declared one) is never accepted.
* :func:`append_to_file` appends a body to a partial file (resumable downloads): what arrived is
  kept whatever happens, so the next attempt can ask for the rest with ``Range``.

Both apply the client's minimum-rate rule while the bytes arrive.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import time
from pathlib import Path

import urllib3

from lsvq_assets.core.files import Writeback, temp_beside
from lsvq_assets.net.client import Attempt, HttpClient, Response
from lsvq_assets.net.errors import NETWORK_ERRORS, FetchFailure, classify_network_error, disk_failure

__all__ = ["CHUNK_SIZE", "append_to_file", "stream_to_file", "write_all"]

#: Bytes read from the network (and written to disk) per step. Memory per
#: in-flight download is bounded by this, whatever the clip size.
CHUNK_SIZE = 256 * 1024


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _wait_readable(fd: int, timeout_s: float) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(max(0, int(timeout_s * 1000))))
    readable, _, _ = select.select([fd], [], [], max(0.0, timeout_s))
    return bool(readable)


def _socket_has_more_data(sock: object, grace_s: float) -> bool:
    """True if application bytes are waiting on ``sock`` (after the body's end).

    Plain sockets are peeked (MSG_PEEK|MSG_DONTWAIT, nothing consumed). TLS
    sockets cannot be peeked: decrypted-but-unread bytes show in ``pending()``;
    otherwise one non-blocking ``recv`` tells application data (-> True; the
    connection is closed anyway) from nothing / a TLS-only record such as a
    session ticket or close_notify (-> False). ``grace_s`` > 0 first waits up
    to that long for the socket to become readable.
    """
    if sock is None:
        return False
    try:
        if isinstance(sock, ssl.SSLSocket):
            if sock.pending() > 0:
                return True
            if grace_s > 0:
                _wait_readable(sock.fileno(), grace_s)
            # Always try: OpenSSL may already hold the next record in its buffers
            # (the fd then does not look readable).
            previous = sock.gettimeout()
            sock.settimeout(0.0)
            try:
                return bool(sock.recv(1))
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return False
            finally:
                sock.settimeout(previous)
        # Poll first, always: on a socket with a timeout CPython waits for
        # readability *before* recv(), so MSG_DONTWAIT alone would block for
        # the whole read timeout when nothing follows the body.
        if not _wait_readable(sock.fileno(), grace_s):  # type: ignore[attr-defined]
            return False
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # type: ignore[attr-defined]
        return bool(data)  # b"" = orderly EOF: no extra bytes
    except BlockingIOError:
        return False
    except (OSError, ValueError, AttributeError, TypeError):
        # Connection already broken or not a real socket: nothing provable.
        return False


def _overrun_pending(raw: urllib3.BaseHTTPResponse, grace_s: float) -> bool:
    """With exactly one declared body byte left: are there bytes beyond it?

    Looks at (1) http.client's read buffer — a peek makes sure the last
    declared byte has arrived, and whatever came with it is there too — and
    (2) the socket itself (kernel queue / TLS buffer), before the final
    read hands the connection back to the pool. Raises socket errors
    (timeout, reset) from the peek; the caller classifies them.
    """
    http_resp = getattr(raw, "_fp", None)
    reader = getattr(http_resp, "fp", None)
    peek = getattr(reader, "peek", None)
    if peek is not None:
        buffered = peek(1)  # blocks (read timeout) only if nothing is buffered
        if len(buffered) > 1:
            return True
        if not buffered:
            return False  # EOF: the read that follows reports the short body
    conn = getattr(raw, "connection", None)
    return _socket_has_more_data(getattr(conn, "sock", None), grace_s)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def stream_to_file(client: HttpClient, resp: Response, dest: Path, n_requests: int) -> Attempt:
    """Stream ``resp``'s body onto ``dest`` (temp file, sha256 while streaming, fsync, rename)."""
    status = resp.status_code
    raw = resp.raw
    clen: int | None = raw.length_remaining  # None: chunked or close-delimited

    def failed(failure: FetchFailure) -> Attempt:
        return Attempt(False, n_requests, status, failure)

    if clen == 0:
        return failed(FetchFailure("empty-body", False, False))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = temp_beside(dest)
    except OSError as exc:
        return failed(disk_failure(exc))

    hasher = hashlib.sha256()
    body_started = time.monotonic()
    written = 0
    writeback = Writeback(fd)  # a big clip is on disk by its fsync
    done = False
    try:
        while True:
            # ---- network
            try:
                if clen is not None:
                    remaining = clen - written
                    if remaining <= 0:
                        break
                    if remaining == 1:
                        # Before the last declared byte is consumed (and the
                        # connection goes back to the pool): any byte beyond it?
                        if _overrun_pending(raw, client.overrun_grace_s):
                            raw.close()  # never reuse a desynchronised connection
                            return failed(FetchFailure(f"long-body: more than Content-Length {clen}", True, True))
                        amt = 1
                    else:
                        amt = min(CHUNK_SIZE, remaining - 1)
                else:
                    amt = CHUNK_SIZE
                # read1: whatever has arrived (one recv), so the rate check below runs
                # while a trickling body is still coming, not after CHUNK_SIZE bytes.
                data = raw.read1(amt, decode_content=False)
            except NETWORK_ERRORS as exc:  # incl. raw socket errors from the peek
                return failed(classify_network_error(exc, written, clen))
            if not data:
                if clen is not None:  # defensive: urllib3 normally raises IncompleteRead
                    return failed(FetchFailure(f"short-body: got {written} of {clen} bytes", True, True))
                break
            # ---- disk
            hasher.update(data)
            try:
                write_all(fd, data)
                writeback.wrote(len(data))
            except OSError as exc:
                return failed(disk_failure(exc))
            written += len(data)
            if (slow := client.too_slow(written, time.monotonic() - body_started)) is not None:
                return failed(slow)

        if written == 0:
            return failed(FetchFailure("empty-body", False, False))
        try:
            os.fchmod(fd, 0o644)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp_name, dest)
        except OSError as exc:
            return failed(disk_failure(exc))
        done = True
        return Attempt(True, n_requests, status, sha256=hasher.hexdigest(), size=written)
    finally:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        if not done:
            _unlink_quietly(tmp_name)


def append_to_file(client: HttpClient, resp: Response, part: Path, truncate: bool) -> tuple[int, FetchFailure | None]:
    """Append ``resp``'s body to ``part`` (``truncate``: start it afresh): (bytes written, failure).

    The bytes written stay in ``part`` whatever the failure, so a later attempt can resume. A body
    shorter than its Content-Length is a ``short-body`` failure; checking the whole file's length
    is the caller's job.
    """
    raw = resp.raw
    clen: int | None = raw.length_remaining  # None: chunked or close-delimited
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(part, flags, 0o644)
    except OSError as exc:
        return 0, disk_failure(exc)
    written = 0
    writeback = Writeback(fd)  # a big archive is on disk by its fsync
    started = time.monotonic()
    try:
        while True:
            try:
                # read1: whatever has arrived, so a trickle is noticed while it trickles
                data = raw.read1(CHUNK_SIZE, decode_content=False)
            except NETWORK_ERRORS as exc:  # the part keeps what arrived: the next attempt resumes
                return written, classify_network_error(exc, written, clen)
            if not data:
                break
            try:
                write_all(fd, data)
                writeback.wrote(len(data))
            except OSError as exc:
                return written, disk_failure(exc)
            written += len(data)
            if (slow := client.too_slow(written, time.monotonic() - started)) is not None:
                return written, slow  # the part is kept: the next run resumes from here
    finally:
        os.close(fd)
    if clen is not None and written != clen:
        return written, FetchFailure(f"short-body: got {written} of {clen} bytes", True, True)
    return written, None
