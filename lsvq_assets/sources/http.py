"""Streaming HTTP(S) downloader for LSVQ clips (plain Python, no Dagster).

One :class:`HttpFetcher` is shared by a pool of worker threads. Each
:meth:`HttpFetcher.fetch` streams one URL into ``dest``:

* one ``requests.Session`` whose adapter keeps up to ``concurrency``
  connections per host alive (connection reuse across clips);
* redirects are followed by hand (at most ``max_redirects``), every
  ``Location`` is resolved against the current URL and re-checked with
  :func:`check_url` (http/https only); TLS is always verified;
* the served bytes are read raw (``Accept-Encoding: identity``, no
  transparent decoding) in fixed-size chunks, hashed while they are written to
  a hidden temp file in ``dest``'s directory, then fsync'ed and renamed onto
  ``dest``. The temp file never survives a failure;
* a body shorter than its Content-Length, a reset, a stall longer than the
  read timeout, or a body *longer* than its Content-Length is never accepted;
* a body that trickles (still under ``min_rate_bytes_s`` on average once the
  read timeout has passed) is abandoned (``too-slow``, transient, not retried
  in-fetch): the read timeout alone never fires while bytes keep coming;
* transient failures (timeouts, connection errors, 408/425/429/5xx, short or
  long bodies) are retried with exponential backoff and full jitter, or after
  the server's ``Retry-After`` for 429/503; permanent failures (404, 410, other
  4xx, empty body, bad scheme, redirect problems) are not.

``fetch`` never raises for network, HTTP or disk problems: it returns a
:class:`FetchResult` whose ``reason`` is a short stable string.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import random
import select
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter

# The URL rule and the file hash live in core (one place each); re-exported here.
from lsvq_assets.core.files import sha256_file
from lsvq_assets.core.urls import check_url

__all__ = ["CHUNK_SIZE", "FetchResult", "HttpFetcher", "check_url", "sha256_file"]

#: Bytes read from the network (and written to disk) per step. Memory per
#: in-flight download is bounded by this, whatever the clip size.
CHUNK_SIZE = 256 * 1024

# Error/redirect bodies up to this size are drained so the connection can go
# back to the pool; larger (or unsized) ones are dropped with the connection.
_MAX_DRAIN_BYTES = 64 * 1024

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_AFTER_STATUSES = frozenset({429, 503})
TRANSIENT_4XX = frozenset({408, 425, 429})

# Exceptions that mean "the network or the server misbehaved" (never a bug of ours).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,  # includes socket.timeout / TimeoutError and ssl.SSLError
)


@dataclass(frozen=True)
class FetchResult:
    ok: bool
    sha256: str | None  # of the bytes written, computed while streaming
    size: int | None
    http_status: int | None  # last HTTP status seen (None if no response)
    reason: str | None  # None on success; short stable string otherwise
    transient: bool  # True: worth retrying in a later run
    attempts: int  # HTTP requests made (retries and redirect hops included)
    elapsed_s: float


# --------------------------------------------------------------------------- helpers


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        seconds = float(value)  # lenient: "1.5"
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN guard
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now_ts = time.time() if now is None else now
    return max(0.0, when.timestamp() - now_ts)


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """exc and everything it wraps (cause, context, exception args, .reason)."""
    out: list[BaseException] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        todo.append(e.__cause__)
        todo.append(e.__context__)
        for arg in getattr(e, "args", ()):
            if isinstance(arg, BaseException):
                todo.append(arg)
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    return out


@dataclass(frozen=True)
class FetchFailure:
    reason: str
    transient: bool
    retryable: bool  # retry inside this fetch (False: give up now, even if transient)


def classify_network_error(exc: BaseException, written: int | None, clen: int | None) -> FetchFailure:
    chain = _exception_chain(exc)

    def has(*types: type[BaseException]) -> BaseException | None:
        for e in chain:
            if isinstance(e, types):
                return e
        return None

    # Bad URL detected by requests/urllib3 itself (check_url let it through).
    bad = has(
        requests.exceptions.InvalidURL,
        requests.exceptions.InvalidSchema,
        requests.exceptions.MissingSchema,
        urllib3.exceptions.LocationValueError,
    )
    if bad is not None:
        return FetchFailure(f"bad-url: {type(bad).__name__}", transient=False, retryable=False)

    if has(http.client.IncompleteRead) is not None:
        if clen is not None:
            return FetchFailure(f"short-body: got {written or 0} of {clen} bytes", True, True)
        return FetchFailure(f"short-body: got {written or 0} bytes, chunked body incomplete", True, True)

    if has(ssl.SSLCertVerificationError) is not None:
        # Transient for a later run, but a broken certificate will not heal in
        # the next few seconds: do not burn in-fetch retries on it.
        return FetchFailure("tls-error: certificate-verify-failed", transient=True, retryable=False)
    ssl_error = has(ssl.SSLError)
    if ssl_error is not None or has(urllib3.exceptions.SSLError, requests.exceptions.SSLError) is not None:
        short = str(getattr(ssl_error, "reason", None) or "handshake").lower().replace("_", "-")
        return FetchFailure(f"tls-error: {short}", True, True)

    if has(ConnectionRefusedError) is not None:
        return FetchFailure("connection-error: refused", True, True)
    if has(ConnectionResetError) is not None:
        return FetchFailure("connection-error: reset", True, True)
    if has(BrokenPipeError) is not None:
        return FetchFailure("connection-error: broken-pipe", True, True)
    if has(ConnectionAbortedError) is not None:
        return FetchFailure("connection-error: aborted", True, True)
    if has(socket.gaierror, urllib3.exceptions.NameResolutionError) is not None:
        return FetchFailure("connection-error: name-resolution", True, True)
    if has(http.client.RemoteDisconnected) is not None:
        return FetchFailure("connection-error: remote-disconnected", True, True)

    # urllib3 2.x: NewConnectionError subclasses ConnectTimeoutError; a real
    # connect timeout is a ConnectTimeoutError that is not a NewConnectionError.
    for e in chain:
        if isinstance(e, (socket.timeout, urllib3.exceptions.ReadTimeoutError, requests.exceptions.Timeout)) or (
            isinstance(e, urllib3.exceptions.ConnectTimeoutError)
            and not isinstance(e, urllib3.exceptions.NewConnectionError)
        ):
            return FetchFailure("timeout", True, True)

    if has(requests.exceptions.ProxyError, urllib3.exceptions.ProxyError) is not None:
        return FetchFailure("connection-error: proxy", True, True)

    if has(urllib3.exceptions.InvalidHeader, http.client.LineTooLong, http.client.BadStatusLine) is not None:
        return FetchFailure("protocol-error: malformed response", True, True)

    for e in chain:
        if isinstance(e, OSError) and e.errno:
            name = errno.errorcode.get(e.errno, str(e.errno))
            return FetchFailure(f"connection-error: {name.lower()}", True, True)
    root = chain[-1] if chain else exc
    return FetchFailure(f"connection-error: {type(root).__name__}", True, True)


def disk_failure(exc: OSError) -> FetchFailure:
    text = exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else None) or type(exc).__name__
    # Transient (the run can be resumed once space is freed) but never retried
    # in-fetch: a full disk does not empty itself in a few seconds.
    return FetchFailure(f"disk-error: {text}", transient=True, retryable=False)


def fix_location(location: str) -> str:
    # http.client decodes header bytes as latin-1; servers send UTF-8 (as requests does).
    try:
        return location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return location


def redirect_reason(bad: str) -> str:
    prefix = "bad-url-scheme: "
    if bad.startswith(prefix):
        return "redirect-to-bad-scheme: " + bad[len(prefix):]
    return "redirect-to-bad-url: " + bad


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


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass
class _Outcome:
    ok: bool
    requests: int
    http_status: int | None = None
    sha256: str | None = None
    size: int | None = None
    failure: FetchFailure | None = None
    retry_after_s: float | None = None


# --------------------------------------------------------------------------- fetcher


class HttpFetcher:
    """Thread-safe streaming downloader. See the module docstring."""

    def __init__(
        self,
        *,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        concurrency: int = 16,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_redirects: int = 5,
        retry_after_max_s: float = 120.0,
        user_agent: str = "lsvq_assets/0.1",
        overrun_grace_s: float = 0.0,
        min_rate_bytes_s: float = 16 * 1024,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.concurrency = int(concurrency)
        self.max_attempts = int(max_attempts)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_redirects = int(max_redirects)
        self.retry_after_max_s = float(retry_after_max_s)
        self.user_agent = user_agent
        # Extra wait for bytes beyond Content-Length after the last declared
        # byte arrived. 0 = only what is already buffered/queued (same segment).
        self.overrun_grace_s = float(overrun_grace_s)
        # Average body rate a download must keep once timeout_s has passed (0: no floor).
        self.min_rate_bytes_s = float(min_rate_bytes_s)

        self._closed = threading.Event()
        self.session = requests.Session()
        adapter = HTTPAdapter(
            pool_connections=max(16, self.concurrency),  # host pools kept (CDN + redirect hosts)
            pool_maxsize=self.concurrency,  # connections kept alive per host
            pool_block=False,
            max_retries=0,  # every request is counted and retried here, not in urllib3
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {
                "User-Agent": user_agent,
                "Accept-Encoding": "identity",
                "Accept": "*/*",
            }
        )
        self.session.max_redirects = self.max_redirects

    # -- lifecycle
    def close(self) -> None:
        self._closed.set()
        self.session.close()

    def __enter__(self) -> "HttpFetcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public
    def retry_delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before the next attempt: Retry-After (capped), else full-jitter backoff."""
        if retry_after_s is not None:
            return min(self.retry_after_max_s, retry_after_s)
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * (2**attempt)))

    def fetch(self, url: str, dest: Path) -> FetchResult:
        if self._closed.is_set():
            raise RuntimeError("HttpFetcher is closed")
        dest = Path(dest)
        started = time.monotonic()
        bad = check_url(url)
        if bad is not None:
            return FetchResult(False, None, None, None, bad, False, 0, time.monotonic() - started)

        attempts = 0
        outcome: _Outcome | None = None
        for i in range(self.max_attempts):
            outcome = self._try_once(url, dest)
            attempts += outcome.requests
            failure = outcome.failure
            if outcome.ok or failure is None or not failure.transient or not failure.retryable:
                break
            if i == self.max_attempts - 1:
                break
            if self._closed.wait(self.retry_delay(i, outcome.retry_after_s)):
                break  # fetcher closed while waiting: report the last failure
        assert outcome is not None
        elapsed = time.monotonic() - started
        if outcome.ok:
            return FetchResult(True, outcome.sha256, outcome.size, outcome.http_status, None, False, attempts, elapsed)
        failure = outcome.failure
        assert failure is not None
        return FetchResult(False, None, None, outcome.http_status, failure.reason, failure.transient, attempts, elapsed)

    # -- one try: request + redirect hops + body
    def _try_once(self, url: str, dest: Path) -> _Outcome:
        current = url
        status: int | None = None
        n_requests = 0
        for _hop in range(self.max_redirects + 1):
            n_requests += 1
            try:
                resp = self.session.get(
                    current,
                    stream=True,
                    allow_redirects=False,
                    timeout=(self.connect_timeout_s, self.timeout_s),
                )
            except NETWORK_ERRORS as exc:
                failure = classify_network_error(exc, None, None)
                if failure.reason.startswith("bad-url"):
                    n_requests -= 1  # refused by requests/urllib3 before anything was sent
                return _Outcome(False, n_requests, status, failure=failure)
            try:
                status = resp.status_code
                if status in REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    self.drain_small_body(resp)
                    if not location:
                        return _Outcome(False, n_requests, status, failure=FetchFailure("redirect-without-location", False, False))
                    target = urljoin(current, fix_location(location.strip()))
                    bad = check_url(target)
                    if bad is not None:
                        return _Outcome(False, n_requests, status, failure=FetchFailure(redirect_reason(bad), False, False))
                    current = target
                    continue
                if status != 200:
                    retry_after = None
                    if status in RETRY_AFTER_STATUSES:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    self.drain_small_body(resp)
                    transient = status >= 500 or status in TRANSIENT_4XX
                    return _Outcome(
                        False,
                        n_requests,
                        status,
                        failure=FetchFailure(f"http-{status}", transient, transient),
                        retry_after_s=retry_after,
                    )
                return self._stream_body(resp, dest, n_requests)
            except NETWORK_ERRORS as exc:  # e.g. while draining an error body
                return _Outcome(False, n_requests, status, failure=classify_network_error(exc, None, None))
            finally:
                resp.close()
        return _Outcome(False, n_requests, status, failure=FetchFailure("too-many-redirects", False, False))

    @staticmethod
    def drain_small_body(resp: requests.Response) -> None:
        """Read a small sized body so the keep-alive connection can be reused."""
        raw = resp.raw
        remaining = getattr(raw, "length_remaining", None)
        if remaining is None or remaining > _MAX_DRAIN_BYTES:
            return  # resp.close() drops the connection instead
        try:
            while remaining > 0:
                data = raw.read(remaining, decode_content=False)
                if not data:
                    break
                remaining -= len(data)
        except NETWORK_ERRORS:
            pass

    def _stream_body(self, resp: requests.Response, dest: Path, n_requests: int) -> _Outcome:
        status = resp.status_code
        raw = resp.raw
        clen: int | None = raw.length_remaining  # None: chunked or close-delimited
        if clen == 0:
            return _Outcome(False, n_requests, status, failure=FetchFailure("empty-body", False, False))

        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as exc:
            return _Outcome(False, n_requests, status, failure=disk_failure(exc))

        hasher = hashlib.sha256()
        body_started = time.monotonic()
        written = 0
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
                            if self._overrun_pending(raw):
                                raw.close()  # never reuse a desynchronised connection
                                return _Outcome(
                                    False,
                                    n_requests,
                                    status,
                                    failure=FetchFailure(f"long-body: more than Content-Length {clen}", True, True),
                                )
                            amt = 1
                        else:
                            amt = min(CHUNK_SIZE, remaining - 1)
                    else:
                        amt = CHUNK_SIZE
                    # read1: whatever has arrived (one recv), so the rate check below runs
                    # while a trickling body is still coming, not after CHUNK_SIZE bytes.
                    data = raw.read1(amt, decode_content=False)
                except NETWORK_ERRORS as exc:  # incl. raw socket errors from the peek
                    return _Outcome(False, n_requests, status, failure=classify_network_error(exc, written, clen))
                if not data:
                    if clen is not None:  # defensive: urllib3 normally raises IncompleteRead
                        return _Outcome(
                            False,
                            n_requests,
                            status,
                            failure=FetchFailure(f"short-body: got {written} of {clen} bytes", True, True),
                        )
                    break
                # ---- disk
                hasher.update(data)
                try:
                    write_all(fd, data)
                except OSError as exc:
                    return _Outcome(False, n_requests, status, failure=disk_failure(exc))
                written += len(data)
                elapsed = time.monotonic() - body_started
                if self.min_rate_bytes_s > 0 and elapsed > self.timeout_s and written < self.min_rate_bytes_s * elapsed:
                    return _Outcome(
                        False,
                        n_requests,
                        status,
                        failure=FetchFailure(
                            f"too-slow: {written} bytes in {elapsed:.0f}s, under {self.min_rate_bytes_s:.0f} B/s",
                            transient=True,
                            retryable=False,  # another attempt would trickle as long again
                        ),
                    )

            if written == 0:
                return _Outcome(False, n_requests, status, failure=FetchFailure("empty-body", False, False))
            try:
                os.fchmod(fd, 0o644)
                os.fsync(fd)
                os.close(fd)
                fd = -1
                os.replace(tmp_name, dest)
            except OSError as exc:
                return _Outcome(False, n_requests, status, failure=disk_failure(exc))
            done = True
            return _Outcome(True, n_requests, status, sha256=hasher.hexdigest(), size=written)
        finally:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if not done:
                try:
                    os.unlink(tmp_name)
                except FileNotFoundError:
                    pass
                except OSError:
                    pass

    def _overrun_pending(self, raw: urllib3.response.HTTPResponse) -> bool:
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
        return _socket_has_more_data(getattr(conn, "sock", None), self.overrun_grace_s)
