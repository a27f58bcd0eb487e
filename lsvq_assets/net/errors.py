"""What went wrong with a request, as a short stable reason (plain Python, no Dagster).

Every failure is a :class:`FetchFailure`: a reason string that ends up in the outcome table,
whether it is *transient* (worth trying again in a later run) and whether it is *retryable*
inside the current fetch (a full disk or a refused token does not heal in a few seconds).
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime

import requests
import urllib3

__all__ = [
    "AUTH_STATUSES",
    "NETWORK_ERRORS",
    "REDIRECT_STATUSES",
    "RETRY_AFTER_STATUSES",
    "TRANSIENT_4XX",
    "FetchFailure",
    "classify_network_error",
    "disk_failure",
    "is_push_back",
    "parse_retry_after",
    "status_failure",
]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_AFTER_STATUSES = frozenset({429, 503})
TRANSIENT_4XX = frozenset({408, 425, 429})
#: Refusals that say "not with these credentials", never "this file is bad": transient (a token or
#: accepted terms fix them before the next run) but not retried in the same fetch.
AUTH_STATUSES = frozenset({401, 403})

# Exceptions that mean "the network or the server misbehaved" (never a bug of ours).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,  # includes socket.timeout / TimeoutError and ssl.SSLError
)


@dataclass(frozen=True)
class FetchFailure:
    reason: str
    transient: bool
    retryable: bool  # retry inside this fetch (False: give up now, even if transient)


#: Failures that say "fewer requests at once, please": the server's own words, or a connection it
#: refused or left unanswered. Not a reset: a server closing an idle keep-alive connection as the
#: client reuses it looks the same, and is no sign of load.
PUSH_BACK_REASONS = frozenset({*(f"http-{s}" for s in RETRY_AFTER_STATUSES), "connection-error: refused", "timeout"})


def is_push_back(failure: FetchFailure | None) -> bool:
    return failure is not None and failure.reason in PUSH_BACK_REASONS


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


def status_failure(status: int, headers: Mapping[str, str]) -> tuple[FetchFailure, float | None]:
    """The failure for a final (non-redirect, unwanted) status, and the Retry-After to honour.

    5xx, 408, 425 and 429 are transient and retried; 401 and 403 are transient but not retried
    in-fetch; every other status (404, 410, other 4xx) is permanent.
    """
    retry_after = parse_retry_after(headers.get("Retry-After")) if status in RETRY_AFTER_STATUSES else None
    if status in AUTH_STATUSES:
        return FetchFailure(f"http-{status}", transient=True, retryable=False), None
    transient = status >= 500 or status in TRANSIENT_4XX
    return FetchFailure(f"http-{status}", transient, transient), retry_after


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


def classify_network_error(exc: BaseException, written: int | None, clen: int | None) -> FetchFailure:
    """The failure for an exception raised by requests/urllib3/sockets (never its message text)."""
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
            isinstance(e, urllib3.exceptions.ConnectTimeoutError) and not isinstance(e, urllib3.exceptions.NewConnectionError)
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
    """A local write/rename problem: transient (free space, then run again), never retried in-fetch."""
    text = exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else None) or type(exc).__name__
    return FetchFailure(f"disk-error: {text}", transient=True, retryable=False)
