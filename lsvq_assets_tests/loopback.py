"""A real HTTP/1.1 server on 127.0.0.1 for the test suite, with fault injection.

``LoopbackServer(root)`` serves the files under ``root`` with keep-alive,
``Range: bytes=N-`` / ``bytes=N-M`` (206 + Content-Range, 416 when out of
range, ``If-Range`` against the ETag), HEAD, and ``sendfile`` for speed.

Faults are queued per path and consumed one per request to that path; then the
path is served normally (``forever=True`` cycles the queue instead). A fault is
a :class:`Fault` or a string:

=====================  =======================================================
``"404"`` ``"503"`` …  that status with a small body (keep-alive)
``"429:2"``            status with ``Retry-After: 2`` (anything after ``:`` is
                       the header value, e.g. an HTTP-date)
``"empty"``            200 with ``Content-Length: 0``
``"truncate[:f]"``     full Content-Length, sends fraction f (0.5) then FIN
``"long[:n]"``         Content-Length N, sends N + n (4096) bytes, then FIN
``"reset[:f]"``        headers + fraction f (0.5) of the body, then RST
                       (SO_LINGER 0)
``"slow[:s]"``         trickles 1 KiB chunks with s (1.0) seconds between them
``"hang[:s]"``         reads the request, says nothing for s (5.0) seconds,
                       then answers normally (if the client is still there)
``"redirect:<loc>"``   302 with ``Location: <loc>`` (``Fault.redirect(loc,
                       status=301)`` for other codes)
=====================  =======================================================

``LoopbackServer(root, host="127.0.0.2")`` listens on another loopback address (a different host
for a client). ``server.required_authorization = "Bearer t"`` answers 401 (``WWW-Authenticate:
Bearer``) to every request without exactly that ``Authorization`` header, before any fault.

``LoopbackServer(root, ssl_context=ctx)`` serves https:// instead (see
:func:`make_self_signed_cert`; clients trust it via ``REQUESTS_CA_BUNDLE``).
``server.latency_s`` (settable) sleeps before every answer; ``server.honor_range
= False`` answers Range requests with a plain 200.

The request log (:attr:`LoopbackServer.requests`) records every request when it
is parsed (before the answer is written), so counts are final once the client
has its response. :attr:`LoopbackServer.connections` counts accepted TCP
connections (to check keep-alive reuse).

Use the ``loopback`` fixture (function-scoped): ``from
lsvq_assets_tests.loopback import loopback`` in a test module or conftest.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import socket
import ssl
import subprocess
import sys
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urlsplit

import pytest

__all__ = ["Fault", "LoopbackServer", "RequestRecord", "loopback", "make_self_signed_cert"]


# --------------------------------------------------------------------------- faults

_BODY_FAULTS = frozenset({"truncate", "long", "reset", "slow"})
_KINDS = frozenset({"status", "empty", "truncate", "long", "reset", "slow", "hang", "redirect"})


@dataclass(frozen=True)
class Fault:
    kind: str  # status | empty | truncate | long | reset | slow | hang | redirect
    status: int = 0  # "status" and "redirect" (default 302)
    retry_after: str | None = None  # Retry-After header value for "status"
    location: str | None = None  # "redirect"
    delay_s: float | None = None  # "slow": pause between chunks (1.0); "hang": silence (5.0)
    chunk_size: int = 1024  # "slow"
    extra: int = 4096  # "long": bytes sent beyond Content-Length
    extra_delay_s: float = 0.0  # "long": pause between the declared body and the extra bytes
    fraction: float = 0.5  # "truncate"/"reset": share of the body sent before closing
    keep_alive: bool = False  # "long": keep the connection open afterwards (garbage for a reusing client)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")

    # convenience constructors
    @classmethod
    def http(cls, status: int, retry_after: float | str | None = None) -> "Fault":
        ra = None if retry_after is None else (str(retry_after) if not isinstance(retry_after, float) else f"{retry_after:g}")
        return cls("status", status=status, retry_after=ra)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> "Fault":
        return cls("redirect", status=status, location=location)

    @classmethod
    def slow(cls, delay_s: float = 1.0, chunk_size: int = 1024) -> "Fault":
        return cls("slow", delay_s=delay_s, chunk_size=chunk_size)

    @classmethod
    def hang(cls, seconds: float = 5.0) -> "Fault":
        return cls("hang", delay_s=seconds)

    @classmethod
    def long(cls, extra: int = 4096, extra_delay_s: float = 0.0, keep_alive: bool = False) -> "Fault":
        return cls("long", extra=extra, extra_delay_s=extra_delay_s, keep_alive=keep_alive)

    @classmethod
    def parse(cls, spec: "str | Fault") -> "Fault":
        if isinstance(spec, Fault):
            return spec
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"bad fault spec {spec!r}")
        name, sep, arg = spec.partition(":")
        if name.isdigit() and len(name) == 3:
            return cls("status", status=int(name), retry_after=arg.strip() or None)
        if name == "redirect":
            if not arg:
                raise ValueError("redirect fault needs a location: 'redirect:<location>'")
            return cls.redirect(arg)
        if name == "empty":
            return cls("empty")
        if name in ("truncate", "reset"):
            return cls(name, fraction=float(arg) if arg else 0.5)
        if name == "long":
            return cls("long", extra=int(arg) if arg else 4096)
        if name == "slow":
            return cls("slow", delay_s=float(arg) if arg else 1.0)
        if name == "hang":
            return cls("hang", delay_s=float(arg) if arg else 5.0)
        raise ValueError(f"unknown fault spec {spec!r}")

    def label(self) -> str:
        if self.kind == "status":
            return str(self.status) + (f":{self.retry_after}" if self.retry_after else "")
        if self.kind == "redirect":
            return f"redirect:{self.location}"
        return self.kind


@dataclass
class RequestRecord:
    method: str
    path: str  # decoded path relative to root, no leading "/"
    raw_path: str  # request target as sent (percent-encoded, with query)
    headers: dict[str, str]
    time: float  # time.time() when the request was parsed
    conn_id: int  # which TCP connection carried it (1, 2, ...)
    fault: str | None = None  # label of the injected fault, if any
    status: int | None = None  # status answered (None: no answer yet / none)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers.items():
            if k.lower() == lname:
                return v
        return None

    @property
    def range(self) -> str | None:
        return self.header("Range")


@dataclass
class _FaultQueue:
    faults: deque[Fault]
    forever: bool


def _norm(relpath: str) -> str:
    return relpath.lstrip("/")


# --------------------------------------------------------------------------- handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() unblocks and forgets handler threads itself
    allow_reuse_address = True
    request_queue_size = 256
    owner: "LoopbackServer"

    def handle_error(self, request, client_address):  # noqa: ANN001 - socketserver API
        # Clients hanging up / resetting are part of the tests; anything else is a bug here.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def finish_request(self, request, client_address):  # noqa: ANN001 - socketserver API
        ctx = self.owner.ssl_context
        if ctx is None:
            super().finish_request(request, client_address)
            return
        # TLS handshake in the connection's own thread (never in the accept loop).
        request.settimeout(10)
        try:
            tls = ctx.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            return  # e.g. the client rejected our certificate
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lsvq-loopback/1"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are closed after this
    server: _Server

    # --- connection bookkeeping
    def setup(self) -> None:
        super().setup()
        try:  # no Nagle stalls between header and body writes
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.conn_id = self.server.owner._conn_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._conn_closed(self.connection)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    # --- helpers
    def _answer(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"", head: bool = False) -> None:
        self._record.status = status
        self.send_response(status)
        hdrs = {"Content-Length": str(len(body)), "Content-Type": "text/plain; charset=utf-8"}
        if headers:
            hdrs.update(headers)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self._record.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        rel = _norm(unquote(urlsplit(self.path).path))
        fault = owner._next_fault(rel)
        self._record = RequestRecord(
            method=self.command,
            path=rel,
            raw_path=self.path,
            headers=dict(self.headers.items()),
            time=time.time(),
            conn_id=self.conn_id,
            fault=fault.label() if fault else None,
        )
        owner._log(self._record)
        try:
            if owner.latency_s > 0 and owner._stopping.wait(owner.latency_s):
                self.close_connection = True
                return
            if owner.required_authorization is not None and self.headers.get("Authorization") != owner.required_authorization:
                self._answer(401, {"WWW-Authenticate": "Bearer"}, b"unauthorized\n", head)
                return
            if fault is not None and fault.kind == "hang":
                if owner._stopping.wait(fault.delay_s if fault.delay_s is not None else 5.0):
                    self.close_connection = True
                    return
                fault = None  # then answer normally
            if fault is not None and fault.kind not in _BODY_FAULTS:
                self._simple_fault(fault, head)
                return
            self._serve_file(rel, head, fault)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            self.close_connection = True
        except OSError:
            self.close_connection = True

    def _simple_fault(self, fault: Fault, head: bool) -> None:
        if fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._answer(fault.status, headers, f"fault {fault.status}\n".encode(), head)
        elif fault.kind == "empty":
            self._answer(200, {"Content-Type": "application/octet-stream"}, b"", head)
        elif fault.kind == "redirect":
            assert fault.location is not None
            self._answer(fault.status or 302, {"Location": fault.location}, b"", head)
        else:  # pragma: no cover - guarded by _BODY_FAULTS
            raise AssertionError(fault)

    def _resolve(self, rel: str) -> Path | None:
        owner = self.server.owner
        if rel == "" or any(part in ("..",) for part in rel.split("/")) or "\x00" in rel:
            return None
        path = owner.root.joinpath(*[p for p in posixpath.normpath(rel).split("/") if p not in ("", ".")])
        try:
            resolved = path.resolve()
        except OSError:
            return None
        if not resolved.is_relative_to(owner._root_resolved) or not resolved.is_file():
            return None
        return resolved

    def _serve_file(self, rel: str, head: bool, fault: Fault | None) -> None:
        owner = self.server.owner
        path = self._resolve(rel)
        if path is None:
            self._answer(404, body=b"not found\n", head=head)
            return
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{size:x}-{st.st_mtime_ns:x}"'
            headers = {
                "Content-Type": "application/octet-stream",
                "ETag": etag,
                "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            }
            if owner.honor_range:
                headers["Accept-Ranges"] = "bytes"
            status, start, length = 200, 0, size
            rng = self.headers.get("Range")
            if rng and owner.honor_range and fault is None:
                if_range = self.headers.get("If-Range")
                m = re.fullmatch(r"\s*bytes\s*=\s*(\d+)\s*-\s*(\d*)\s*", rng)
                if m and (if_range is None or if_range.strip() == etag):
                    first = int(m.group(1))
                    last = int(m.group(2)) if m.group(2) else size - 1
                    if first >= size:
                        self._answer(416, {"Content-Range": f"bytes */{size}"}, b"", head)
                        return
                    if last >= first:
                        last = min(last, size - 1)
                        status, start, length = 206, first, last - first + 1
                        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            if fault is None:
                headers["Content-Length"] = str(length)
                self._start(status, headers)
                if not head and length:
                    self.connection.sendfile(f, start, length)
                return
            self._body_fault(fault, f, size, headers)

    def _body_fault(self, fault: Fault, f, size: int, headers: dict[str, str]) -> None:  # noqa: ANN001
        owner = self.server.owner
        headers["Content-Length"] = str(size)
        self._start(200, headers)
        sock = self.connection
        if fault.kind == "truncate":
            n = int(size * fault.fraction)
            if n:
                sock.sendfile(f, 0, n)
            self.close_connection = True  # FIN after a short body
        elif fault.kind == "long":
            body = f.read()
            extra = hashlib.sha256(body).digest() * (fault.extra // 32 + 1)
            extra = extra[: fault.extra]
            if fault.extra_delay_s > 0:
                sock.sendall(body)
                owner._stopping.wait(fault.extra_delay_s)
                sock.sendall(extra)
            else:
                sock.sendall(body + extra)  # one send: the extra bytes travel with the last ones
            self.close_connection = not fault.keep_alive
        elif fault.kind == "reset":
            n = int(size * fault.fraction)
            if n:
                sock.sendfile(f, 0, n)
            owner._stopping.wait(0.05)  # let the client read what was sent
            self.close_connection = True
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop makefile's reference so close() is real: RST
            sock.close()
        elif fault.kind == "slow":
            delay = fault.delay_s if fault.delay_s is not None else 1.0
            sent = 0
            while sent < size:
                chunk = f.read(fault.chunk_size)
                if not chunk:
                    break
                sock.sendall(chunk)
                sent += len(chunk)
                if sent < size and owner._stopping.wait(delay):
                    break
            self.close_connection = True
        else:  # pragma: no cover
            raise AssertionError(fault)


# --------------------------------------------------------------------------- server


class LoopbackServer:
    """Threaded HTTP/1.1 keep-alive server over ``root`` on 127.0.0.1 (or ``host``):<free port>."""

    def __init__(
        self, root: Path, latency_s: float = 0.0, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.root = Path(root)
        self.host = host  # a loopback address: 127.0.0.0/8
        self.required_authorization: str | None = None  # see the module docstring
        self.ssl_context = ssl_context  # server-side context: serve https://
        self._root_resolved = self.root.resolve()
        self.latency_s = float(latency_s)  # sleep before answering each request
        self.honor_range = True  # False: ignore Range, answer 200 with the full body
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._queues: dict[str, _FaultQueue] = {}
        self._default: tuple[tuple[Fault, ...], bool] | None = None
        self._default_queues: dict[str, _FaultQueue] = {}
        self._connections_total = 0
        self._connections_base = 0
        self._active: dict[int, socket.socket] = {}
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- lifecycle
    def start(self) -> "LoopbackServer":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _Server((self.host, 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self.base_url = f"{'https' if self.ssl_context else 'http'}://{host}:{port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            active = list(self._active.values())
        for sock in active:  # unblock handler threads (idle keep-alive, slow, hang)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- content helpers
    def url(self, relpath: str) -> str:
        parts = _norm(relpath).split("/")
        return self.base_url + "/" + "/".join(quote(p, safe="") for p in parts)

    def put(self, relpath: str, data: bytes) -> Path:
        """Write ``data`` at ``root/relpath`` (directories created)."""
        path = self.root.joinpath(*_norm(relpath).split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def put_random(self, relpath: str, size: int) -> bytes:
        data = os.urandom(size)
        self.put(relpath, data)
        return data

    # -- faults
    def set_fault(self, relpath: str, *faults: str | Fault, forever: bool = False) -> None:
        """Replace ``relpath``'s fault queue (consumed one per request).

        ``forever=True`` cycles the queue endlessly (storms, redirect loops).
        A path with its own queue (even an empty one) ignores set_fault_all.
        """
        parsed = deque(Fault.parse(f) for f in faults)
        with self._lock:
            self._queues[_norm(relpath)] = _FaultQueue(parsed, forever)

    def set_fault_all(self, *faults: str | Fault, forever: bool = False) -> None:
        """Default fault queue given afresh to every path without its own queue.

        ``set_fault_all("503")``: the first request of each path gets a 503.
        ``set_fault_all()`` removes the default.
        """
        parsed = tuple(Fault.parse(f) for f in faults)
        with self._lock:
            self._default = (parsed, forever) if parsed else None
            self._default_queues.clear()

    def clear_faults(self) -> None:
        with self._lock:
            self._queues.clear()
            self._default = None
            self._default_queues.clear()

    def _next_fault(self, rel: str) -> Fault | None:
        with self._lock:
            q = self._queues.get(rel)
            if q is None and self._default is not None:
                q = self._default_queues.get(rel)
                if q is None:
                    faults, forever = self._default
                    q = self._default_queues[rel] = _FaultQueue(deque(faults), forever)
            if q is None or not q.faults:
                return None
            fault = q.faults.popleft()
            if q.forever:
                q.faults.append(fault)
            return fault

    # -- log
    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def count(self, relpath: str | None = None) -> int:
        with self._lock:
            if relpath is None:
                return len(self.requests)
            rel = _norm(relpath)
            return sum(1 for r in self.requests if r.path == rel)

    def records(self, relpath: str | None = None) -> list[RequestRecord]:
        with self._lock:
            if relpath is None:
                return list(self.requests)
            rel = _norm(relpath)
            return [r for r in self.requests if r.path == rel]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self._connections_base = self._connections_total

    # -- connections
    @property
    def connections(self) -> int:
        """TCP connections accepted since start (or the last reset_log)."""
        with self._lock:
            return self._connections_total - self._connections_base

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._active)

    def _conn_opened(self, sock: socket.socket) -> int:
        with self._lock:
            self._connections_total += 1
            conn_id = self._connections_total
            self._active[id(sock)] = sock
        if self._stopping.is_set():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return conn_id

    def _conn_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._active.pop(id(sock), None)


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for 127.0.0.1/localhost via the openssl CLI (pytest.skip if absent).

    Clients trust it legitimately (verification stays on) with
    ``REQUESTS_CA_BUNDLE=<cert.pem>``.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[LoopbackServer]:
    """A started LoopbackServer over a fresh directory (``server.root``)."""
    root = tmp_path / "loopback-root"
    root.mkdir()
    server = LoopbackServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
