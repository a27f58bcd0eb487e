"""One URL to one file: :class:`HttpFetcher` (plain Python, no Dagster).

:meth:`HttpFetcher.fetch` streams one URL into ``dest`` through the shared client (redirects,
retries, timeouts, minimum rate: :mod:`lsvq_assets.net.client`) and :func:`stream_to_file`
(sha256 while streaming, temp file renamed into place). Transient failures (timeouts, connection
errors, 408/425/429/5xx, short or long bodies) are retried with backoff or after ``Retry-After``;
401/403 are transient but not retried in the same fetch; permanent failures (404, 410, other 4xx,
empty body, bad scheme, redirect problems) are not retried.

``fetch`` never raises for network, HTTP or disk problems: it returns a :class:`FetchResult`
whose ``reason`` is a short stable string.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lsvq_assets.core.urls import check_url
from lsvq_assets.net.client import Attempt, HttpClient, Opened
from lsvq_assets.net.errors import NETWORK_ERRORS, classify_network_error, is_push_back
from lsvq_assets.net.stream import stream_to_file

__all__ = ["FetchResult", "HttpFetcher"]


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
    waited_s: float = 0.0  # of elapsed_s, waiting for the server's answers (request sent, headers back)
    pushed_back: bool = False  # an attempt met 429, 503, a refused connection or a timeout


class HttpFetcher(HttpClient):
    """Thread-safe streaming downloader of one URL per call. See the module docstring."""

    def __enter__(self) -> HttpFetcher:
        return self

    def fetch(self, url: str, dest: Path) -> FetchResult:
        if self.closed:
            raise RuntimeError("HttpFetcher is closed")
        dest = Path(dest)
        started = time.monotonic()
        bad = check_url(url)
        if bad is not None:
            return FetchResult(False, None, None, None, bad, False, 0, time.monotonic() - started)
        waited, pushed_back = 0.0, False

        def once() -> Attempt:
            nonlocal waited, pushed_back
            sent = time.monotonic()
            opened = self.open(url)
            waited += time.monotonic() - sent  # the server's answer: request sent, headers back
            out = self._read_body(opened, dest)
            pushed_back = pushed_back or is_push_back(out.failure)
            return out

        out, attempts = self.retrying(once)
        elapsed = time.monotonic() - started
        if out.ok:
            return FetchResult(True, out.sha256, out.size, out.http_status, None, False, attempts, elapsed, waited, pushed_back)
        failure = out.failure
        assert failure is not None
        return FetchResult(False, None, None, out.http_status, failure.reason, failure.transient, attempts, elapsed, waited, pushed_back)

    def _read_body(self, opened: Opened, dest: Path) -> Attempt:
        if opened.response is None:
            return opened.attempt()
        try:
            return stream_to_file(self, opened.response, dest, opened.requests)
        except NETWORK_ERRORS as exc:  # defensive: stream_to_file classifies what it reads
            return Attempt(False, opened.requests, opened.http_status, classify_network_error(exc, None, None))
        finally:
            opened.response.close()
