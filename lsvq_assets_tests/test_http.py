"""HttpFetcher against the real loopback HTTP server (real sockets, real bytes)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path

import pytest
import requests

from lsvq_assets.core.files import sha256_file
from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import ManifestRow
from lsvq_assets.core.urls import check_url
from lsvq_assets.net import CHUNK_SIZE, FetchResult, HttpFetcher, parse_retry_after
from lsvq_assets.net.window import Window
from lsvq_assets.sources.base import ClipResult
from lsvq_assets.sources.url import START_WINDOW, UrlClipSource
from lsvq_assets_tests.harness import private_tmpfs_unshare
from lsvq_assets_tests.loopback import (  # noqa: F401 - loopback is a fixture
    Fault,
    LoopbackServer,
    loopback,
    make_self_signed_cert,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_env_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests honours *_proxy variables: loopback traffic must not go anywhere else.
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def fast_fetcher(**kw: object) -> HttpFetcher:
    params: dict[str, object] = dict(
        timeout_s=2.0, connect_timeout_s=2.0, backoff_base_s=0.01, backoff_max_s=0.05, max_attempts=3
    )
    params.update(kw)
    return HttpFetcher(**params)  # type: ignore[arg-type]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Anything but the expected clips: temp files must never survive."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix == ".part")


def assert_failed_cleanly(result: FetchResult, dest: Path) -> None:
    assert not result.ok
    assert result.sha256 is None and result.size is None
    assert not dest.exists()
    assert leftovers(dest.parent) == []


# --------------------------------------------------------------------------- check_url / sha256_file


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.org/a.mp4", None),
        ("https://example.org:8443/x/y%20z.mp4?sig=1", None),
        ("HTTPS://EXAMPLE.ORG/a", None),
        ("ftp://example.org/a.mp4", "bad-url-scheme: ftp"),
        ("file:///etc/passwd", "bad-url-scheme: file"),
        ("/relative/path.mp4", "bad-url-scheme: none"),
        ("example.org/a.mp4", "bad-url-scheme: none"),
        ("http:///nohost", "bad-url: no host"),
    ],
)
def test_check_url(url: str, reason: str | None) -> None:
    # core.urls.check_url: the one rule, used by the client for URLs and redirect targets
    assert check_url(url) == reason


def test_urls_the_rule_lets_through_never_raise(loopback: LoopbackServer, tmp_path: Path) -> None:
    """Odd URLs that pass check_url end as results (bad port: permanent, 0 requests);
    control characters are percent-encoded by requests, never injected as headers."""
    with fast_fetcher(max_attempts=1) as fetcher:
        bad_port = fetcher.fetch("http://127.0.0.1:99999/a.mp4", tmp_path / "a.mp4")
        assert (bad_port.ok, bad_port.reason, bad_port.transient, bad_port.attempts) == (
            False, "bad-url: InvalidURL", False, 0
        )
        injected = fetcher.fetch(loopback.base_url + "/a.mp4\r\nX-Evil: 1", tmp_path / "a.mp4")
    assert injected.reason == "http-404"
    (record,) = loopback.records()
    assert record.header("X-Evil") is None and record.raw_path == "/a.mp4%0D%0AX-Evil:%201"


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == (sha(data), len(data))
    assert sha256_file(path, bufsize=4096) == (sha(data), len(data))
    empty = tmp_path / "e.bin"
    empty.write_bytes(b"")
    assert sha256_file(empty) == (sha(b""), 0)


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 2 ", now) == 2.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after(None, now) is None


# --------------------------------------------------------------------------- success paths


@pytest.mark.parametrize("size", [1, 2, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * (1 << 20) + 5])
def test_fetch_success_byte_identical(loopback: LoopbackServer, tmp_path: Path, size: int) -> None:
    data = loopback.put_random("clips/some clip #1.mp4", size)
    dest = tmp_path / "out" / "nested" / "clip.mp4"
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(loopback.url("clips/some clip #1.mp4"), dest)
    assert result.ok, result
    assert (result.sha256, result.size) == (sha(data), size)
    assert result.http_status == 200 and result.reason is None and not result.transient
    assert result.attempts == 1
    assert dest.read_bytes() == data
    assert sha256_file(dest) == (sha(data), size)
    assert leftovers(dest.parent) == []
    (record,) = loopback.records("clips/some clip #1.mp4")
    assert record.header("Accept-Encoding") == "identity"
    assert record.header("User-Agent") == "lsvq_assets/0.1"


@pytest.mark.parametrize("tls", [False, True])
def test_no_wait_after_the_last_byte(
    loopback: LoopbackServer, tmp_path: Path, tls: bool, request: pytest.FixtureRequest
) -> None:
    """The check for bytes beyond Content-Length must not wait on a quiet socket:
    with a 60 s read timeout, small clips still take milliseconds."""
    server = loopback
    if tls:
        server = request.getfixturevalue("tls_loopback")
        request.getfixturevalue("monkeypatch").setenv("REQUESTS_CA_BUNDLE", str(request.getfixturevalue("tls_cert")[0]))
    sizes = [1, 2, 100, 8191, 8192, 8193, 16384, 70_000]
    blobs = {f"n{size}.mp4": server.put_random(f"n{size}.mp4", size) for size in sizes}
    results: list[FetchResult] = []
    with fast_fetcher(timeout_s=60.0) as fetcher:
        worker = threading.Thread(
            target=lambda: results.extend(fetcher.fetch(server.url(n), tmp_path / n) for n in blobs), daemon=True
        )
        worker.start()
        worker.join(timeout=5.0)
        assert not worker.is_alive(), f"stalled after the last byte: {[r.elapsed_s for r in results]}"
    assert len(results) == len(sizes) and all(r.ok for r in results)


def test_fetch_replaces_existing_dest(loopback: LoopbackServer, tmp_path: Path) -> None:
    data = loopback.put_random("a.mp4", 5000)
    dest = tmp_path / "a.mp4"
    dest.write_bytes(b"old partial junk")
    with fast_fetcher() as fetcher:
        assert fetcher.fetch(loopback.url("a.mp4"), dest).ok
    assert dest.read_bytes() == data
    assert (dest.stat().st_mode & 0o777) == 0o644


def test_temp_file_is_hidden_in_dest_dir_while_streaming(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("v.mp4", 4 * 65536)
    loopback.set_fault("v.mp4", Fault.slow(delay_s=0.15, chunk_size=65536))
    out = tmp_path / "clips"
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if out.exists():
                seen.update(p.name for p in out.iterdir())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with fast_fetcher(timeout_s=2.0) as fetcher:
            result = fetcher.fetch(loopback.url("v.mp4"), out / "v.mp4")
    finally:
        stop.set()
        watcher.join()
    assert result.ok
    temps = [n for n in seen if n != "v.mp4"]
    assert temps, "expected to observe the temp file during the slow download"
    assert all(n.startswith(".v.mp4.") and n.endswith(".part") for n in temps), temps
    assert leftovers(out) == []


def test_memory_does_not_grow_with_clip_size(loopback: LoopbackServer, tmp_path: Path) -> None:
    size = 24 * (1 << 20)
    loopback.put("big.mp4", os.urandom(size))
    with fast_fetcher(timeout_s=10) as fetcher:
        tracemalloc.start()
        try:
            result = fetcher.fetch(loopback.url("big.mp4"), tmp_path / "big.mp4")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.ok and result.size == size
    assert peak < 4 * CHUNK_SIZE + (1 << 20), f"peak traced memory {peak} bytes for a {size}-byte clip"


def test_connection_reuse_sequential(loopback: LoopbackServer, tmp_path: Path) -> None:
    blobs = {f"c{i}.mp4": loopback.put_random(f"c{i}.mp4", 8000 + i) for i in range(30)}
    with fast_fetcher() as fetcher:
        for name, data in blobs.items():
            r = fetcher.fetch(loopback.url(name), tmp_path / name)
            assert r.ok and r.sha256 == sha(data)
    assert loopback.count() == 30
    assert loopback.connections == 1


def test_connection_reuse_concurrent_and_thread_safe(loopback: LoopbackServer, tmp_path: Path) -> None:
    rnd = random.Random(7)
    blobs = {f"d/{i:04d}.mp4": loopback.put_random(f"d/{i:04d}.mp4", rnd.randint(1, 300_000)) for i in range(240)}
    out = tmp_path / "clips"
    with fast_fetcher(concurrency=8) as fetcher, ThreadPoolExecutor(8) as pool:
        results = dict(zip(blobs, pool.map(lambda n: fetcher.fetch(loopback.url(n), out / n), blobs)))
    for name, data in blobs.items():
        r = results[name]
        assert r.ok and r.attempts == 1 and r.sha256 == sha(data) and r.size == len(data)
        assert (out / name).read_bytes() == data
    assert loopback.count() == 240
    assert loopback.connections <= 8
    assert leftovers(out / "d") == []


def test_503_storm_on_first_request_of_every_clip(loopback: LoopbackServer, tmp_path: Path) -> None:
    names = [f"s{i}.mp4" for i in range(40)]
    blobs = {n: loopback.put_random(n, 20_000) for n in names}
    loopback.set_fault_all("503")
    with fast_fetcher(concurrency=8) as fetcher, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: fetcher.fetch(loopback.url(n), tmp_path / n), names))
    assert all(r.ok and r.attempts == 2 for r in results)
    assert all((tmp_path / n).read_bytes() == blobs[n] for n in names)
    assert loopback.count() == 80
    assert [r.status for r in loopback.records(names[0])] == [503, 200]
    assert loopback.connections <= 8  # 503 bodies are drained: keep-alive survives


# --------------------------------------------------------------------------- HTTP errors and retries


@pytest.mark.parametrize("status", [404, 410, 400, 451])
def test_4xx_is_permanent_and_not_retried(loopback: LoopbackServer, tmp_path: Path, status: int) -> None:
    loopback.put_random("a.mp4", 1000)
    loopback.set_fault("a.mp4", str(status), forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=4) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert result.reason == f"http-{status}"
    assert result.http_status == status
    assert result.transient is False
    assert result.attempts == 1
    assert loopback.count("a.mp4") == 1


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_transient_but_not_retried_in_fetch(loopback: LoopbackServer, tmp_path: Path, status: int) -> None:
    """A refusal is about credentials, not the file: a later run tries again, this fetch does not."""
    loopback.put_random("a.mp4", 1000)
    loopback.set_fault("a.mp4", str(status), forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=4) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert (result.reason, result.http_status, result.transient, result.attempts) == (f"http-{status}", status, True, 1)
    assert loopback.count("a.mp4") == 1


def test_missing_file_is_404(loopback: LoopbackServer, tmp_path: Path) -> None:
    dest = tmp_path / "nope.mp4"
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(loopback.url("nope.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert (result.reason, result.transient, result.attempts) == ("http-404", False, 1)


@pytest.mark.parametrize("first", ["503", "500", "502", "429", "408"])
def test_transient_status_then_200(loopback: LoopbackServer, tmp_path: Path, first: str) -> None:
    data = loopback.put_random("a.mp4", 50_000)
    loopback.set_fault("a.mp4", first)
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert result.ok and result.attempts == 2 and result.sha256 == sha(data)
    assert [r.status for r in loopback.records("a.mp4")] == [int(first), 200]
    assert loopback.connections == 1


@pytest.mark.parametrize("status", ["429", "503"])
def test_retry_after_seconds_is_honoured(loopback: LoopbackServer, tmp_path: Path, status: str) -> None:
    data = loopback.put_random("a.mp4", 10_000)
    loopback.set_fault("a.mp4", f"{status}:1")
    with fast_fetcher(backoff_base_s=0.001, backoff_max_s=0.001) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert result.ok and result.attempts == 2 and result.sha256 == sha(data)
    first, second = loopback.records("a.mp4")
    gap = second.time - first.time
    assert 0.95 <= gap < 2.0, gap
    assert result.elapsed_s >= 0.95


def test_retry_after_is_capped(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("a.mp4", 1000)
    loopback.set_fault("a.mp4", Fault.http(429, retry_after=3600))
    with fast_fetcher(retry_after_max_s=0.2) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert result.ok and result.attempts == 2
    assert 0.2 <= result.elapsed_s < 1.5


def test_retry_after_http_date(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("a.mp4", 1000)
    # HTTP-dates have 1 s resolution: "now + 2 s" means a wait in (1, 2] s.
    loopback.set_fault("a.mp4", Fault.http(503, retry_after=formatdate(time.time() + 2, usegmt=True)))
    with fast_fetcher(backoff_base_s=0.001) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert result.ok and result.attempts == 2
    first, second = loopback.records("a.mp4")
    assert 0.9 <= second.time - first.time < 2.5


def test_5xx_storm_exhausts_attempts(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("a.mp4", 1000)
    loopback.set_fault("a.mp4", "500", "503", "502", forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=4) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert result.transient is True
    assert result.attempts == 4 == loopback.count("a.mp4")
    assert result.reason == "http-500"  # the last of 500, 503, 502, 500
    assert result.http_status == 500


def test_backoff_is_capped_by_backoff_max(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("a.mp4", 1000)
    loopback.set_fault("a.mp4", "500", forever=True)
    with fast_fetcher(max_attempts=4, backoff_base_s=100.0, backoff_max_s=0.05) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert result.attempts == 4 and result.elapsed_s < 1.0


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=3) as fetcher:
        result = fetcher.fetch(f"http://127.0.0.1:{port}/a.mp4", dest)
    assert_failed_cleanly(result, dest)
    assert (result.reason, result.transient, result.attempts, result.http_status) == (
        "connection-error: refused",
        True,
        3,
        None,
    )


# --------------------------------------------------------------------------- broken bodies


BROKEN_BODIES = [
    ("truncate", "short-body: got 100000 of 200000 bytes"),
    ("truncate:0", "short-body: got 0 of 200000 bytes"),
    ("long", "long-body: more than Content-Length 200000"),
    ("long:1", "long-body: more than Content-Length 200000"),
    ("reset", None),  # "connection-error: reset" or a short body, depending on timing
    ("slow:1.0", "timeout"),
    ("hang:1.0", "timeout"),
]


@pytest.mark.parametrize(("fault", "reason"), BROKEN_BODIES)
def test_broken_bodies_are_never_accepted(
    loopback: LoopbackServer, tmp_path: Path, fault: str, reason: str | None
) -> None:
    loopback.put_random("a.mp4", 200_000)
    loopback.set_fault("a.mp4", fault, forever=True)
    dest = tmp_path / "clips" / "a.mp4"
    with fast_fetcher(timeout_s=0.3, max_attempts=2) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert result.transient is True
    assert result.attempts == 2
    if reason is not None:
        assert result.reason == reason
    else:
        assert result.reason is not None
        assert result.reason == "connection-error: reset" or result.reason.startswith("short-body"), result.reason


@pytest.mark.parametrize("fault", ["truncate", "long", "reset", "slow:1.0", "hang:1.0", "empty"])
def test_broken_body_then_good_body_on_retry(loopback: LoopbackServer, tmp_path: Path, fault: str) -> None:
    data = loopback.put_random("a.mp4", 200_000)
    loopback.set_fault("a.mp4", fault)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(timeout_s=0.3) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    if fault == "empty":  # permanent: no retry
        assert_failed_cleanly(result, dest)
        assert (result.reason, result.transient, result.attempts) == ("empty-body", False, 1)
        return
    assert result.ok and result.attempts == 2 and dest.read_bytes() == data
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("size", [1, 2, 100, 8191, 8192, 8193, 65535, 65536, 65537, CHUNK_SIZE + 1, 1_000_003])
@pytest.mark.parametrize("extra", [1, 7, 5000, 70_000])
def test_long_body_detected_for_all_sizes(loopback: LoopbackServer, tmp_path: Path, size: int, extra: int) -> None:
    loopback.put_random("a.mp4", size)
    loopback.set_fault("a.mp4", Fault.long(extra=extra), forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=1) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert (result.reason, result.transient, result.attempts) == (f"long-body: more than Content-Length {size}", True, 1)


def test_long_body_on_keepalive_connection_is_not_reused(loopback: LoopbackServer, tmp_path: Path) -> None:
    """Server declares N, sends N+extra and keeps the connection open: the fetcher
    must reject the clip AND drop that connection (else the next clip on it would
    read the surplus bytes as its status line)."""
    first = loopback.put_random("a.mp4", 30_000)
    second = loopback.put_random("b.mp4", 30_000)
    loopback.set_fault("a.mp4", Fault.long(extra=300, keep_alive=True))
    with fast_fetcher(max_attempts=1) as fetcher:
        bad = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
        good = fetcher.fetch(loopback.url("b.mp4"), tmp_path / "b.mp4")
        again = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert bad.reason == "long-body: more than Content-Length 30000"
    assert good.ok and good.attempts == 1 and (tmp_path / "b.mp4").read_bytes() == second
    assert again.ok and again.attempts == 1 and (tmp_path / "a.mp4").read_bytes() == first
    conn_ids = [r.conn_id for r in loopback.records()]
    assert conn_ids[0] != conn_ids[1] and conn_ids[1] == conn_ids[2]


def test_long_body_with_late_extra_bytes_needs_grace(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("a.mp4", 10_000)
    loopback.set_fault("a.mp4", Fault.long(extra=10, extra_delay_s=0.05), forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=1, overrun_grace_s=0.5) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert result.reason == "long-body: more than Content-Length 10000"


def test_truncated_small_body(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("a.mp4", 1)
    loopback.set_fault("a.mp4", "truncate", forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=1) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert result.reason == "short-body: got 0 of 1 bytes"


def test_empty_body_is_permanent(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("a.mp4", 1000)
    loopback.put("zero.mp4", b"")
    loopback.set_fault("a.mp4", "empty", forever=True)
    with fast_fetcher(max_attempts=4) as fetcher:
        for name in ("a.mp4", "zero.mp4"):
            dest = tmp_path / name
            result = fetcher.fetch(loopback.url(name), dest)
            assert_failed_cleanly(result, dest)
            assert (result.reason, result.transient, result.attempts, result.http_status) == (
                "empty-body",
                False,
                1,
                200,
            )


def test_slow_but_within_read_timeout_succeeds(loopback: LoopbackServer, tmp_path: Path) -> None:
    data = loopback.put_random("a.mp4", 5 * 4096)
    loopback.set_fault("a.mp4", Fault.slow(delay_s=0.05, chunk_size=4096))
    with fast_fetcher(timeout_s=0.5) as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert result.ok and result.attempts == 1 and (tmp_path / "a.mp4").read_bytes() == data


# --------------------------------------------------------------------------- redirects and URLs


def test_redirects_are_followed(loopback: LoopbackServer, tmp_path: Path) -> None:
    data = loopback.put_random("real/clip 1.mp4", 40_000)
    loopback.set_fault("r1", Fault.redirect("/r2", status=301), forever=True)
    loopback.set_fault("r2", Fault.redirect(loopback.url("real/r3"), status=307), forever=True)  # absolute
    loopback.set_fault("real/r3", Fault.redirect("clip%201.mp4", status=308), forever=True)  # relative
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(loopback.url("r1"), tmp_path / "a.mp4")
    assert result.ok and result.sha256 == sha(data)
    assert result.attempts == 4
    assert [r.path for r in loopback.records()] == ["r1", "r2", "real/r3", "real/clip 1.mp4"]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///etc/passwd", "redirect-to-bad-scheme: file"),
        ("ftp://127.0.0.1/a.mp4", "redirect-to-bad-scheme: ftp"),
        ("gopher://x/", "redirect-to-bad-scheme: gopher"),
        ("https:///nohost", "redirect-to-bad-url: bad-url: no host"),
    ],
)
def test_redirect_to_bad_url_is_refused(loopback: LoopbackServer, tmp_path: Path, location: str, reason: str) -> None:
    loopback.set_fault("a.mp4", f"redirect:{location}", forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert (result.reason, result.transient, result.attempts, result.http_status) == (reason, False, 1, 302)


def test_redirect_loop(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.set_fault("loop", "redirect:/loop", forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_redirects=3, max_attempts=4) as fetcher:
        result = fetcher.fetch(loopback.url("loop"), dest)
    assert_failed_cleanly(result, dest)
    assert (result.reason, result.transient) == ("too-many-redirects", False)
    assert result.attempts == 4 == loopback.count("loop")  # 1 request + 3 redirects followed


def test_redirect_to_missing_is_permanent(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.set_fault("a.mp4", "redirect:/gone.mp4", forever=True)
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert (result.reason, result.transient, result.attempts) == ("http-404", False, 2)


def test_redirect_hop_failure_retries_whole_chain(loopback: LoopbackServer, tmp_path: Path) -> None:
    data = loopback.put_random("b.mp4", 1000)
    loopback.set_fault("a.mp4", "redirect:/b.mp4", forever=True)
    loopback.set_fault("b.mp4", "503")
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "a.mp4")
    assert result.ok and result.sha256 == sha(data)
    assert result.attempts == 4  # a, b(503), a, b(200)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/a.mp4", "bad-url-scheme: ftp"),
        ("file:///etc/passwd", "bad-url-scheme: file"),
        ("http:///a.mp4", "bad-url: no host"),
        ("a.mp4", "bad-url-scheme: none"),
    ],
)
def test_bad_urls_refused_without_a_request(loopback: LoopbackServer, tmp_path: Path, url: str, reason: str) -> None:
    dest = tmp_path / "a.mp4"
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(url, dest)
    assert result == FetchResult(False, None, None, None, reason, False, 0, result.elapsed_s)
    assert loopback.count() == 0
    assert not tmp_path.joinpath("a.mp4").exists()


def test_fetch_after_close_raises(tmp_path: Path) -> None:
    fetcher = fast_fetcher()
    fetcher.close()
    with pytest.raises(RuntimeError):
        fetcher.fetch("http://127.0.0.1:9/a", tmp_path / "a")


# --------------------------------------------------------------------------- TLS (verification stays on)


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_loopback(tmp_path: Path, tls_cert: tuple[Path, Path]):  # noqa: ANN201
    cert, key = tls_cert
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    root = tmp_path / "tls-root"
    root.mkdir()
    with LoopbackServer(root, ssl_context=ctx) as server:
        yield server


def test_https_success_and_untrusted_cert(
    tls_loopback: LoopbackServer, tls_cert: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tls_loopback.put_random("a.mp4", 300_000)
    url = tls_loopback.url("a.mp4")
    assert url.startswith("https://127.0.0.1:")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with fast_fetcher() as fetcher:
        refused = fetcher.fetch(url, tmp_path / "x.mp4")
    assert_failed_cleanly(refused, tmp_path / "x.mp4")
    assert (refused.reason, refused.transient, refused.attempts) == ("tls-error: certificate-verify-failed", True, 1)

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_cert[0]))
    with fast_fetcher() as fetcher:
        results = [fetcher.fetch(url, tmp_path / f"{i}.mp4") for i in range(5)]
    assert all(r.ok and r.sha256 == sha(data) for r in results)
    assert (tmp_path / "4.mp4").read_bytes() == data


def test_https_trusts_the_ca_bundle_requests_trusts(
    tls_loopback: LoopbackServer, tls_cert: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``REQUESTS_CA_BUNDLE``, certifi's bundle, as requests: a certificate the system store
    would trust (``SSL_CERT_FILE``) is refused, whatever way the request goes out."""
    tls_loopback.put_random("a.mp4", 1000)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert[0]))
    with fast_fetcher() as fetcher:
        refused = fetcher.fetch(tls_loopback.url("a.mp4"), tmp_path / "x.mp4")
    assert (refused.ok, refused.reason) == (False, "tls-error: certificate-verify-failed")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_loopback.url("a.mp4"), timeout=5)


def test_environment_proxies_are_honoured_per_host(loopback: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTP_PROXY`` and ``NO_PROXY`` apply as requests applies them, on every request (worked out once per origin).

    127.0.0.2:9 has no server: a request reaches the clip only through the proxy (the loopback
    server, which answers an absolute-form target with its file)."""
    data = loopback.put_random("a.mp4", 50_000)
    monkeypatch.setenv("HTTP_PROXY", loopback.base_url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    with fast_fetcher(max_attempts=1) as fetcher:
        results = [fetcher.fetch("http://127.0.0.2:9/a.mp4", tmp_path / f"{i}.mp4") for i in range(3)]
    assert all(r.ok and r.sha256 == sha(data) for r in results)
    assert [r.raw_path for r in loopback.records("a.mp4")] == ["http://127.0.0.2:9/a.mp4"] * 3

    monkeypatch.setenv("NO_PROXY", "127.0.0.2")  # that host now bypasses the proxy: nothing listens there
    with fast_fetcher(max_attempts=1) as fetcher:
        direct = fetcher.fetch("http://127.0.0.2:9/a.mp4", tmp_path / "direct.mp4")
    assert not direct.ok and direct.reason is not None and direct.reason.startswith("connection"), direct.reason
    assert loopback.count("a.mp4") == 3


@pytest.mark.parametrize("size", [1, 100, 16383, 16384, 16385, 65536, 300_000])
@pytest.mark.parametrize("extra", [1, 20_000])
def test_https_long_body_detected(
    tls_loopback: LoopbackServer,
    tls_cert: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    extra: int,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_cert[0]))
    good = tls_loopback.put_random("b.mp4", 1000)
    tls_loopback.put_random("a.mp4", size)
    tls_loopback.set_fault("a.mp4", Fault.long(extra=extra, keep_alive=True), forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=1) as fetcher:
        result = fetcher.fetch(tls_loopback.url("a.mp4"), dest)
        after = fetcher.fetch(tls_loopback.url("b.mp4"), tmp_path / "b.mp4")
    assert_failed_cleanly(result, dest)
    assert result.reason == f"long-body: more than Content-Length {size}"
    assert after.ok and after.attempts == 1 and after.sha256 == sha(good)


@pytest.mark.parametrize(("fault", "prefixes"), [("truncate", ("short-body",)), ("reset", ("short-body", "connection-error"))])
def test_https_broken_bodies(
    tls_loopback: LoopbackServer,
    tls_cert: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    prefixes: tuple[str, ...],
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_cert[0]))
    tls_loopback.put_random("a.mp4", 200_000)
    tls_loopback.set_fault("a.mp4", fault, forever=True)
    dest = tmp_path / "a.mp4"
    with fast_fetcher(max_attempts=2) as fetcher:
        result = fetcher.fetch(tls_loopback.url("a.mp4"), dest)
    assert_failed_cleanly(result, dest)
    assert result.transient and result.attempts == 2
    assert result.reason is not None and result.reason.startswith(prefixes), result.reason


# --------------------------------------------------------------------------- disk errors


def test_dest_dir_not_creatable_is_disk_error(loopback: LoopbackServer, tmp_path: Path) -> None:
    loopback.put_random("a.mp4", 1000)
    (tmp_path / "blocker").write_bytes(b"a file where a directory should be")
    with fast_fetcher() as fetcher:
        result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / "blocker" / "sub" / "a.mp4")
    assert not result.ok
    assert (result.reason, result.transient, result.attempts) == ("disk-error: Not a directory", True, 1)


_CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from pathlib import Path
    from lsvq_assets.net import HttpFetcher
    url_big, url_small, out, mode = sys.argv[1:5]
    out = Path(out)
    if mode == "rlimit":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    with HttpFetcher(timeout_s=5, connect_timeout_s=5, backoff_base_s=0.01) as f:
        big = f.fetch(url_big, out / "big.mp4")
        small = f.fetch(url_small, out / "small.mp4")
    print(json.dumps({"big": big.__dict__, "small": small.__dict__,
                      "files": sorted(os.listdir(out))}))
    """
)


def _run_child(cmd: list[str]) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_disk_full_enospc_on_tiny_tmpfs(loopback: LoopbackServer, tmp_path: Path) -> None:
    """Real ENOSPC: a 256 KiB tmpfs mounted in a private mount namespace."""
    unshare = private_tmpfs_unshare(tmp_path / "tiny")
    mnt = tmp_path / "tiny"
    loopback.put_random("big.mp4", 1 << 20)
    small = loopback.put_random("small.mp4", 50_000)
    script = (
        'mount -t tmpfs -o size=256k tmpfs "$1" && mkdir "$1/clips" && shift && exec "$@"'
    )
    report = _run_child(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(mnt),
         sys.executable, "-c", _CHILD, loopback.url("big.mp4"), loopback.url("small.mp4"), str(mnt / "clips"), "tmpfs"]
    )
    big = report["big"]
    assert big["ok"] is False
    assert big["reason"] == "disk-error: No space left on device"
    assert big["transient"] is True and big["attempts"] == 1  # not retried in-fetch
    assert report["small"]["ok"] is True and report["small"]["sha256"] == sha(small)
    assert report["files"] == ["small.mp4"]  # the failed temp file was removed (which also freed the space)
    assert not any(mnt.iterdir())  # the mount never leaked into our namespace


def test_disk_error_file_size_limit(loopback: LoopbackServer, tmp_path: Path) -> None:
    """Real EFBIG from the kernel (RLIMIT_FSIZE in a child process): works unprivileged."""
    loopback.put_random("big.mp4", 1 << 20)
    small = loopback.put_random("small.mp4", 50_000)
    out = tmp_path / "clips"
    out.mkdir()
    report = _run_child(
        [sys.executable, "-c", _CHILD, loopback.url("big.mp4"), loopback.url("small.mp4"), str(out), "rlimit"]
    )
    big = report["big"]
    assert (big["ok"], big["reason"], big["transient"], big["attempts"]) == (False, "disk-error: File too large", True, 1)
    assert report["small"]["ok"] is True and report["small"]["sha256"] == sha(small)
    assert report["files"] == ["small.mp4"]


# --------------------------------------------------------------------------- the loopback server itself


def test_loopback_range_requests(loopback: LoopbackServer) -> None:
    data = loopback.put_random("dir/arch ive.tar", 10_000)
    url = loopback.url("dir/arch ive.tar")
    assert url.endswith("/dir/arch%20ive.tar")
    with requests.Session() as s:
        full = s.get(url)
        assert full.status_code == 200 and full.content == data
        assert full.headers["Accept-Ranges"] == "bytes"
        etag = full.headers["ETag"]
        part = s.get(url, headers={"Range": "bytes=4000-"})
        assert part.status_code == 206 and part.content == data[4000:]
        assert part.headers["Content-Range"] == "bytes 4000-9999/10000"
        mid = s.get(url, headers={"Range": "bytes=10-19"})
        assert mid.status_code == 206 and mid.content == data[10:20]
        beyond = s.get(url, headers={"Range": "bytes=10000-"})
        assert beyond.status_code == 416 and beyond.headers["Content-Range"] == "bytes */10000"
        same = s.get(url, headers={"Range": "bytes=5-", "If-Range": etag})
        assert same.status_code == 206 and same.content == data[5:]
        changed = s.get(url, headers={"Range": "bytes=5-", "If-Range": '"other"'})
        assert changed.status_code == 200 and changed.content == data
        head = s.head(url)
        assert head.status_code == 200 and head.headers["Content-Length"] == "10000"
        loopback.honor_range = False
        ignored = s.get(url, headers={"Range": "bytes=4000-"})
        assert ignored.status_code == 200 and ignored.content == data
    assert [r.range for r in loopback.records()][:3] == [None, "bytes=4000-", "bytes=10-19"]
    assert loopback.connections == 1


def test_loopback_fault_queue_log_and_latency(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with LoopbackServer(root, latency_s=0.1) as server:
        server.put("a", b"abc")
        server.set_fault("a", "503", "429:4")
        with requests.Session() as s:
            t0 = time.monotonic()
            statuses = [s.get(server.url("a")).status_code for _ in range(3)]
            elapsed = time.monotonic() - t0
            assert s.get(server.url("../etc/passwd")).status_code == 404
        assert statuses == [503, 429, 200]
        assert elapsed >= 0.3
        assert server.records("a")[1].fault == "429:4"
        assert server.count("a") == 3 and server.count() == 4
        server.reset_log()
        assert server.count() == 0 and server.connections == 0
    with pytest.raises(ValueError):
        Fault.parse("bogus")


@pytest.mark.parametrize(
    "form",
    [
        "{base}/a b/é x.mp4?v=1&w=a b",  # quoting: a space, a non-ASCII letter, a query
        "  {base}/a b/é x.mp4",  # leading whitespace (a setting typed with a space)
        "{base}/x/../a b/./é x.mp4#frag",  # dot segments and a fragment
        "http://user:pw@{host}/a b/é x.mp4",  # a login in the URL: requests' Basic header
    ],
)
def test_a_request_goes_out_as_requests_would_send_it(loopback: LoopbackServer, tmp_path: Path, form: str) -> None:
    """Straight to urllib3's pool or not, a GET carries the same target and headers as ``requests.Session.get`` sends."""
    data = loopback.put_random("a b/é x.mp4", 10_000)
    url = form.format(base=loopback.base_url, host=loopback.base_url.removeprefix("http://"))
    with fast_fetcher() as fetcher:
        assert fetcher.fetch(url, tmp_path / "ours.mp4").sha256 == sha(data)
        opened = fetcher.open(url, {"Range": "bytes=10-"}, accept=(206,))
        assert opened.response is not None and opened.response.status_code == 206
        assert opened.response.headers.get("content-range") == "bytes 10-9999/10000"  # any case, as requests' headers
        opened.response.close()
    with requests.Session() as session:
        session.headers.update({"User-Agent": "lsvq_assets/0.1", "Accept-Encoding": "identity", "Accept": "*/*"})
        session.get(url, stream=True).close()
        session.get(url, stream=True, headers={"Range": "bytes=10-"}).close()
    ours, ranged, theirs, theirs_ranged = loopback.records("a b/é x.mp4")
    assert (ours.raw_path, ours.headers) == (theirs.raw_path, theirs.headers)
    assert (ranged.raw_path, ranged.headers) == (theirs_ranged.raw_path, theirs_ranged.headers)
    assert ours.raw_path.startswith("/a%20b/%C3%A9%20x.mp4")
    assert ("Authorization" in ours.headers) == ("user:pw@" in url)


def test_a_cookie_a_server_sets_is_sent_back_as_the_session_would(tmp_path: Path) -> None:
    """A ``Set-Cookie`` is kept for the run and sent on the requests that follow, not before."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Cookie"))
            body = b"x" * 1000
            self.send_response(200)
            if self.path == "/login":
                self.send_header("Set-Cookie", "session=abc; Path=/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with fast_fetcher() as fetcher:
            results = [fetcher.fetch(f"{base}/{name}", tmp_path / f"{i}.mp4") for i, name in enumerate(["a", "login", "b", "c"])]
    finally:
        server.shutdown()
        server.server_close()
    assert all(r.ok for r in results)
    assert seen == [None, None, "session=abc", "session=abc"]


# --------------------------------------------------------------------------- how many downloads at once


def test_window_doubles_while_waiting_dominates_halves_on_push_back_and_keeps_its_bounds() -> None:
    w = Window(start=4, cap=16)

    def done(n: int, waited: float, total: float, *, ok: bool = True, pushed_back: bool = False) -> None:
        for _ in range(n):
            with w.slot() as epoch:
                assert epoch is not None
            w.finished(epoch, waited, total, ok=ok, pushed_back=pushed_back)

    done(3, 0.1, 0.12)  # downloads that mostly waited for the server
    assert w.limit == 4  # no decision before a window's worth has finished
    done(1, 0.1, 0.12)
    assert w.limit == 8
    done(8, 0.1, 0.12)
    assert w.limit == 16
    done(32, 0.1, 0.12)
    assert w.limit == 16  # the cap
    done(40, 0.1, 0.101, ok=False)  # failures (a 404 is all waiting) are not counted
    assert w.limit == 16
    done(1, 0.01, 0.02, pushed_back=True)
    assert w.limit == 8
    done(8, 0.001, 0.2)  # reading the bodies is what takes the time: more at once would not help
    assert w.limit == 8
    for _ in range(5):
        done(1, 0.0, 0.0, pushed_back=True)
    assert w.limit == 1 and w.most_running == 1
    done(1, 0.001, 0.2)  # a window's worth without push-back: back towards where it started...
    assert w.limit == 2
    done(2, 0.001, 0.2)
    assert w.limit == 4
    done(8, 0.001, 0.2)  # ...and no further while the bodies take the time
    assert w.limit == 4


def test_a_burst_of_push_back_halves_the_window_once() -> None:
    """The downloads already under way when the server pushed back do not halve it again."""
    w = Window(start=16, cap=64)
    slots = [w.slot() for _ in range(16)]
    epochs = [s.__enter__() for s in slots]
    assert w.most_running == 16
    for s, epoch in zip(slots, epochs, strict=True):  # all 16 met a 429
        s.__exit__(None, None, None)
        assert epoch is not None
        w.finished(epoch, 0.01, 0.02, ok=False, pushed_back=True)
    assert w.limit == 8


def _fetch_all(source: UrlClipSource, names: list[str], root: Path) -> dict[str, ClipResult]:
    """Every clip through the source (its pool, its window), closed after; the result of each."""
    rows = [ManifestRow(i, i + 2, n.removesuffix(".mp4"), n, n.split("/", 1)[0], 50.0, 0.0, 0, None) for i, n in enumerate(names)]
    results: dict[str, ClipResult] = {}
    try:
        source.fetch(rows, Layout.create(root / "work"), lambda res: results.__setitem__(res.src, res))
    finally:
        source.close()
    assert set(results) == set(names)
    return results


def test_a_server_slow_to_answer_gets_more_connections_up_to_the_cap(loopback: LoopbackServer, tmp_path: Path) -> None:
    names = [f"f/{i:03d}.mp4" for i in range(240)]
    blobs = {n: loopback.put_random(n, 4000) for n in names}
    loopback.latency_s = 0.1  # every answer waits: the downloads are latency, not bytes
    source = UrlClipSource(loopback.base_url + "/{name}{suffix}", concurrency=64, timeout_s=5.0)
    results = _fetch_all(source, names, tmp_path)
    assert all(results[n].ok and results[n].sha256 == sha(blobs[n]) for n in names)
    assert source.window is not None and source.window.limit == 64 and source.window.most_running > START_WINDOW
    assert source.metadata() == {"downloads_at_once": source.window.most_running}
    assert START_WINDOW < loopback.connections <= 64


def test_bodies_that_take_the_time_keep_the_window_where_it_starts(loopback: LoopbackServer, tmp_path: Path) -> None:
    names = [f"f/{i:03d}.mp4" for i in range(48)]
    blobs = {n: loopback.put_random(n, 4096) for n in names}
    loopback.set_fault_all(Fault.slow(0.05), forever=True)  # answered at once, then 1 KiB every 50 ms
    source = UrlClipSource(loopback.base_url + "/{name}{suffix}", concurrency=64, timeout_s=5.0)
    results = _fetch_all(source, names, tmp_path)
    assert all(results[n].ok and results[n].sha256 == sha(blobs[n]) for n in names)
    assert source.window is not None and source.window.limit == START_WINDOW and source.window.most_running <= START_WINDOW


def test_a_server_that_pushes_back_gets_fewer_downloads_at_once(loopback: LoopbackServer, tmp_path: Path) -> None:
    names = [f"f/{i:03d}.mp4" for i in range(40)]
    blobs = {n: loopback.put_random(n, 4000) for n in names}
    loopback.set_fault_all("429:0")  # the first request of every clip: "too many requests"
    source = UrlClipSource(loopback.base_url + "/{name}{suffix}", concurrency=64, timeout_s=5.0, backoff_base_s=0.01)
    results = _fetch_all(source, names, tmp_path)
    assert all(results[n].ok and results[n].sha256 == sha(blobs[n]) and results[n].attempts == 2 for n in names)
    assert source.window is not None and source.window.limit < START_WINDOW and source.window.most_running <= START_WINDOW


def test_a_closed_window_starts_nothing_more() -> None:
    """When a run is stopped, the downloads waiting for a place are told to start none."""
    w = Window(start=1, cap=1)
    told: list[int | None] = []
    with w.slot() as first:
        waiter = threading.Thread(target=lambda: told.extend(_held(w)))
        waiter.start()
        time.sleep(0.05)
        assert waiter.is_alive() and not told  # the window is full: it waits
        w.close()
        waiter.join(5)
    assert first is not None and told == [None]
    with w.slot() as later:
        assert later is None


def _held(w: Window) -> list[int | None]:
    with w.slot() as held:
        return [held]
