"""The HTTP client every source shares (plain Python, no Dagster).

One :class:`HttpClient` holds one ``requests.Session`` for a run and is shared by a pool of
worker threads:

* the adapter keeps up to ``concurrency`` connections per host alive (connection reuse);
* a GET goes straight to urllib3's pool for its origin, the pool, TLS settings, headers and
  timeouts requests would use (:meth:`HttpClient._get`); through ``Session.send`` when a proxy,
  a ``~/.netrc`` login or a login in the URL applies, the host is not ASCII or the session holds
  cookies;
* :meth:`HttpClient.open` follows redirects by hand (at most ``max_redirects``): every
  ``Location`` is resolved against the current URL and re-checked with :func:`check_url`
  (http/https only); TLS is always verified; bodies are read raw (``Accept-Encoding: identity``);
* what requests takes from the environment (proxies, ``REQUESTS_CA_BUNDLE``, ``~/.netrc``) is
  read once per origin, not for every request (:meth:`HttpClient._environment`);
* :meth:`HttpClient.retrying` runs attempts with exponential backoff and full jitter, or after the
  server's ``Retry-After`` (capped), for failures that are transient and retryable;
* :meth:`HttpClient.too_slow` is the minimum-rate rule: once the read timeout has passed, a body
  must keep ``min_rate_bytes_s`` on average (the read timeout alone never fires while bytes trickle);
* a :class:`Bearer` token goes only to its own origin (scheme https, or a loopback host), set per
  request: never on a redirect to another host, never in the session's headers, never in a repr.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.utils
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict

from lsvq_assets.core.urls import check_url
from lsvq_assets.net.auth import Bearer, BearerAuth
from lsvq_assets.net.errors import (
    NETWORK_ERRORS,
    REDIRECT_STATUSES,
    FetchFailure,
    classify_network_error,
    status_failure,
)

__all__ = ["Attempt", "HttpClient", "Opened", "Response", "fix_location", "redirect_reason"]

# Error/redirect bodies up to this size are drained so the connection can go
# back to the pool; larger (or unsized) ones are dropped with the connection.
_MAX_DRAIN_BYTES = 64 * 1024


def fix_location(location: str) -> str:
    """A ``Location`` header as the server meant it (http.client decodes latin-1; servers send UTF-8)."""
    try:
        return location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return location


def redirect_reason(bad: str) -> str:
    """``check_url``'s reason for a redirect target, e.g. ``redirect-to-bad-scheme: ftp``."""
    prefix = "bad-url-scheme: "
    if bad.startswith(prefix):
        return "redirect-to-bad-scheme: " + bad[len(prefix) :]
    return "redirect-to-bad-url: " + bad


@dataclass
class Attempt:
    """One attempt's outcome (a request with its redirect hops, and the body)."""

    ok: bool
    requests: int
    http_status: int | None = None
    failure: FetchFailure | None = None
    retry_after_s: float | None = None
    sha256: str | None = None
    size: int | None = None


class Response:
    """A streamed response: its status, its headers and its body read from ``raw`` (urllib3's), as requests gives them."""

    __slots__ = ("raw", "url")

    def __init__(self, raw: urllib3.BaseHTTPResponse, url: str) -> None:
        self.raw = raw
        self.url = url

    @property
    def status_code(self) -> int:
        return self.raw.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.raw.headers  # case-insensitive, repeated headers joined (as requests' own)

    def close(self) -> None:
        """As ``requests.Response.close`` for a body read raw: a body not read to its end drops the connection."""
        self.raw.close()
        self.raw.release_conn()


@dataclass(frozen=True)
class _Route:
    """How requests to one origin go out without a proxy: urllib3's pool for it, found as requests finds it."""

    host: dict[str, Any]
    pool_kwargs: dict[str, Any]
    verify: Any  # requests' TLS settings for the origin (True, or a CA bundle's path)
    cert: Any


@dataclass
class Opened:
    """:meth:`HttpClient.open`'s answer: a response with an accepted status (close it), or a failure."""

    response: Response | None
    requests: int
    http_status: int | None
    url: str  # the last URL requested (after redirects)
    failure: FetchFailure | None = None
    retry_after_s: float | None = None

    def attempt(self) -> Attempt:
        return Attempt(False, self.requests, self.http_status, self.failure, self.retry_after_s)


class HttpClient:
    """One session, redirects, retries, rate and timeouts. See the module docstring."""

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
        bearer: Bearer | None = None,
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
        self._bearer = bearer

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
        self.session.headers.update({"User-Agent": user_agent, "Accept-Encoding": "identity", "Accept": "*/*"})
        self.session.max_redirects = self.max_redirects
        self._adapter = adapter
        self._timeout = urllib3.Timeout(connect=self.connect_timeout_s, read=self.timeout_s)
        self._origins: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {}  # see _environment
        self._routes: dict[tuple[str, str], _Route | None] = {}  # see _route

    # -- lifecycle
    def close(self) -> None:
        self._closed.set()
        self.session.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- retries and rate
    def retry_delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before the next attempt: Retry-After (capped), else full-jitter backoff."""
        if retry_after_s is not None:
            return min(self.retry_after_max_s, retry_after_s)
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * (2**attempt)))

    def retrying(self, attempt: Callable[[], Attempt]) -> tuple[Attempt, int]:
        """Run ``attempt`` until it succeeds, fails for good or ``max_attempts`` are spent.

        Returns the last attempt and the requests made by all of them. Closing the client while
        it waits ends the loop with the last failure.
        """
        total = 0
        out: Attempt | None = None
        for i in range(self.max_attempts):
            out = attempt()
            total += out.requests
            failure = out.failure
            if out.ok or failure is None or not failure.transient or not failure.retryable:
                break
            if i == self.max_attempts - 1 or not self.wait_to_retry(i, out.retry_after_s):
                break
        assert out is not None
        return out, total

    def wait_to_retry(self, attempt: int, retry_after_s: float | None) -> bool:
        """Wait before attempt ``attempt + 1`` (see :meth:`retry_delay`); False if the client was closed meanwhile."""
        return not self._closed.wait(self.retry_delay(attempt, retry_after_s))

    def too_slow(self, written: int, elapsed_s: float) -> FetchFailure | None:
        """The minimum-rate rule: a transient failure, not retried in-fetch (it would trickle again)."""
        if self.min_rate_bytes_s > 0 and elapsed_s > self.timeout_s and written < self.min_rate_bytes_s * elapsed_s:
            reason = f"too-slow: {written} bytes in {elapsed_s:.0f}s, under {self.min_rate_bytes_s:.0f} B/s"
            return FetchFailure(reason, transient=True, retryable=False)
        return None

    # -- one request and its redirect hops
    def _auth_for(self, url: str) -> BearerAuth | None:
        """The token's auth for a request to ``url``, decided afresh on every hop (None: send none).

        Given explicitly so that a ``~/.netrc`` entry for the mirror cannot replace the token."""
        return self._bearer.auth() if self._bearer is not None and self._bearer.applies_to(url) else None

    def _environment(self, url: str) -> tuple[dict[str, Any], Any]:
        """What ``Session.get`` would take from the environment for ``url``, worked out once per origin.

        The proxies (``*_proxy``, ``no_proxy``), the CA bundle (``REQUESTS_CA_BUNDLE``) and a
        ``~/.netrc`` login for the host: ``Session.get`` reads them again for every request, which
        was a fifth of a small clip's CPU in the download (measured with py-spy, laptop case).
        """
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        found = self._origins.get(origin)
        if found is None:
            settings = self.session.merge_environment_settings(url, {}, True, None, None)
            netrc = requests.utils.get_netrc_auth(url) if self.session.trust_env else None
            found = self._origins[origin] = (settings, netrc)
        return found

    def _route(self, url: str) -> _Route | None:
        """The pool for ``url``'s origin when a request to it needs nothing of requests' own, else None.

        None when a proxy applies, a ``~/.netrc`` login does, or the host is not plain ASCII: those
        requests go through ``Session.send`` as before. Worked out once per origin.
        """
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        if origin in self._routes:
            return self._routes[origin]
        settings, netrc = self._environment(url)
        route = None
        if not netrc and (parts.hostname or "").isascii() and not requests.utils.select_proxy(url, settings["proxies"]):
            request = requests.PreparedRequest()
            request.prepare(method="GET", url=f"{parts.scheme}://{parts.netloc}/")
            host, pool_kwargs = self._adapter.build_connection_pool_key_attributes(request, settings["verify"], settings["cert"])
            route = _Route(host, pool_kwargs, settings["verify"], settings["cert"])
        self._routes[origin] = route
        return route

    def _get(self, url: str, headers: Mapping[str, str] | None) -> Response:
        """One GET, as ``Session.get(url, stream=True, allow_redirects=False)`` sends it.

        Straight to urllib3's pool for the origin (the one requests' adapter would pick, with the
        same TLS settings, headers, timeouts and no retries): requests' own handling of a request
        cost ~0.75 ms of the ~4.4 ms of CPU a small clip's download took (measured, 16 threads).
        The URL is prepared by requests as before (stripped,
        dot segments removed, quoted; a bad one raises here). Cookies, proxies, ``~/.netrc`` and a
        login in the URL go through requests.
        """
        prepared = requests.PreparedRequest()
        prepared.prepare_url(url, None)
        target = prepared.url or url
        route = self._route(target)
        if route is None or self.session.cookies or urlsplit(target).username is not None:
            return self._send(url, headers)
        sent = {**self.session.headers, **(headers or {})}
        if (bearer := self._auth_for(target)) is not None:
            sent["Authorization"] = bearer.header
        pool = self._adapter.poolmanager.connection_from_host(**route.host, pool_kwargs=route.pool_kwargs)
        self._adapter.cert_verify(pool, target, route.verify, route.cert)  # the CA bundle requests trusts (certifi's by default)
        raw = pool.urlopen(
            "GET",
            prepared.path_url,
            headers=sent,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
            retries=self._adapter.max_retries,
            timeout=self._timeout,
        )
        response = Response(raw, target)
        if "Set-Cookie" in raw.headers:  # kept, and sent back from now on, as the session would
            try:
                prepared.prepare_headers(sent)
                extract_cookies_to_jar(self.session.cookies, prepared, raw)
            except BaseException:
                response.close()
                raise
        return response

    def _send(self, url: str, headers: Mapping[str, str] | None) -> Response:
        """One GET through ``Session.send``, with the environment asked once per origin."""
        merged = CaseInsensitiveDict(self.session.headers)
        merged.update(headers or {})
        request = requests.PreparedRequest()
        # a bad URL raises here, as in Session.get
        request.prepare(method="GET", url=url, headers=merged, cookies=self.session.cookies, hooks=self.session.hooks)
        settings, netrc = self._environment(request.url or url)
        auth = self._auth_for(request.url or url) or netrc
        if auth:
            request.prepare_auth(auth)
        resp = self.session.send(request, allow_redirects=False, timeout=(self.connect_timeout_s, self.timeout_s), **settings)
        return Response(resp.raw, resp.url or url)

    def open(self, url: str, headers: Mapping[str, str] | None = None, accept: Collection[int] = (200,)) -> Opened:
        """GET ``url`` (with ``headers`` on every hop, e.g. ``Range``/``If-Range``), following redirects.

        A final status in ``accept`` comes back as an open streaming response (the caller reads and
        closes it); any other status, a network error or a bad redirect comes back as a failure, its
        small body drained so the connection can be reused.
        """
        current, status, n_requests = url, None, 0
        for _hop in range(self.max_redirects + 1):
            n_requests += 1
            try:
                resp = self._get(current, headers)
            except NETWORK_ERRORS as exc:
                failure = classify_network_error(exc, None, None)
                if failure.reason.startswith("bad-url"):
                    n_requests -= 1  # refused by requests/urllib3 before anything was sent
                return Opened(None, n_requests, status, current, failure)
            keep = False
            try:
                status = resp.status_code
                if status in REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    self.drain_small_body(resp)
                    if not location:
                        return Opened(None, n_requests, status, current, FetchFailure("redirect-without-location", False, False))
                    target = urljoin(current, fix_location(location.strip()))
                    if (bad := check_url(target)) is not None:
                        return Opened(None, n_requests, status, current, FetchFailure(redirect_reason(bad), False, False))
                    current = target
                    continue
                if status not in accept:
                    failure, retry_after = status_failure(status, resp.headers)
                    self.drain_small_body(resp)
                    return Opened(None, n_requests, status, current, failure, retry_after)
                keep = True
                return Opened(resp, n_requests, status, current)
            except NETWORK_ERRORS as exc:  # e.g. while draining an error body
                return Opened(None, n_requests, status, current, classify_network_error(exc, None, None))
            finally:
                if not keep:
                    resp.close()
        return Opened(None, n_requests, status, current, FetchFailure("too-many-redirects", False, False))

    @staticmethod
    def drain_small_body(resp: Response) -> None:
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
