"""The Dagster UI as an operator runs it, for the browser tests: ``dagster-webserver`` and
``dagster-daemon run`` as subprocesses on 127.0.0.1 against one ``DAGSTER_HOME``, plus what a test
needs to talk to them (GraphQL over loopback) and to drive Debian's Chromium through Playwright.

Nothing here reaches beyond 127.0.0.1: proxies are dropped from the environment (``cli_env``), the
requests session ignores proxy variables, and Chromium runs with its background networking off.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from lsvq_assets_tests.harness import REPO_ROOT, cli_env

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections (component updates, sync,
# variations) are refused by the closed network and slow every page load down.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WORKSPACE = REPO_ROOT / "workspace.yaml"
DEPLOY_INSTANCE_YAML = REPO_ROOT / "deploy" / "dagster.yaml"
BIN = Path(sys.executable).parent


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev,browser]'; never `playwright install`)"
    for tool in ("dagster-webserver", "dagster-daemon"):
        if not (BIN / tool).exists():
            return f"{BIN / tool} is missing"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_home(home: Path) -> Path:
    """A fresh ``DAGSTER_HOME`` with the deployment's dagster.yaml (Dagster's defaults without it)."""
    home.mkdir(parents=True, exist_ok=True)
    if DEPLOY_INSTANCE_YAML.is_file():
        (home / "dagster.yaml").write_text(DEPLOY_INSTANCE_YAML.read_text())
    else:  # no deployment file yet: Dagster's defaults, without telemetry
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def _descendants(pid: int) -> list[tuple[int, int]]:
    """Every process below ``pid`` as (pid, start time), deepest first."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))):
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    out: list[tuple[int, int]] = []

    def walk(p: int) -> None:
        for child in children.get(p, []):
            walk(child[0])
            out.append(child)

    walk(pid)
    return out


@dataclass
class Service:
    """One long-running process in its own session (process group), output in a log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM its process group, then SIGKILL the group and every process it had started
        (code servers and run workers, collected by id before the signal; some leave the group)."""
        pids = _descendants(self.proc.pid)
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid, started in pids:
            stat = _proc_stat(pid)
            if stat and stat[1] == started:  # still that same process (not a reused pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=15)


@dataclass
class DagsterUi:
    """``dagster-webserver`` and ``dagster-daemon run`` on one instance, with the operator's LSVQ_* settings."""

    home: Path
    env: dict[str, str]  # LSVQ_* and DAGSTER_HOME
    logs: Path
    port: int = field(default_factory=free_port)
    services: list[Service] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str]) -> Service:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [str(BIN / name), *args],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=cli_env(self.env), cwd=REPO_ROOT, start_new_session=True,
            )
        service = Service(name, proc, log)
        self.services.append(service)
        return service

    def start(self, timeout: float = 90) -> "DagsterUi":
        self._start("dagster-webserver", ["-h", "127.0.0.1", "-p", str(self.port), "-w", str(WORKSPACE)])
        self._start("dagster-daemon", ["run", "-w", str(WORKSPACE)])
        self.wait_until(self._code_location_loaded, timeout, "the webserver to answer with the lsvq_assets code location loaded")
        return self

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()

    def __enter__(self) -> "DagsterUi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to it
    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # no proxy, ever: this is loopback
        return s

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
        with self.session() as s:
            r = s.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
        r.raise_for_status()
        doc = r.json()
        if doc.get("errors"):
            raise AssertionError(f"GraphQL errors: {doc['errors']}")
        return doc["data"]

    def _code_location_loaded(self) -> bool:
        try:
            data = self.graphql(
                "{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus "
                "locationOrLoadError { __typename } } } } }",
                timeout=5,
            )
        except (requests.RequestException, ValueError, AssertionError):
            return False
        entries = data["workspaceOrError"].get("locationEntries", [])
        return any(
            e["name"] == "lsvq_assets" and e["loadStatus"] == "LOADED" and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def wait_until(self, predicate: Callable[[], object], timeout: float, what: str, every: float = 0.5) -> object:
        """Poll ``predicate``; fail early, with the logs, if a service died."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            for service in self.services:
                if not service.alive():
                    raise AssertionError(f"{service.name} exited ({service.proc.returncode}) before {what}:\n{service.tail()}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {s.name}\n{s.tail(2000)}" for s in self.services)
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
            time.sleep(every)
