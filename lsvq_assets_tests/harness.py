"""Running the CLI as an operator does, and checking what a run (or a killed run) left behind.

Used by the fault, crash and concurrency tests: start ``python -m lsvq_assets`` in its own session
(so ``os.killpg`` hits it and every child it spawned), wait for observable moments, and check the
working directory's invariants.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lsvq_assets.core.files import TEMP_NAME
from lsvq_assets.core.rows import line_problems
from lsvq_assets.core.store import STATE_FILE, ClipRecord, FetchState
from lsvq_assets_tests.corpus import Corpus

REPO_ROOT = Path(__file__).resolve().parents[1]


def cli_env(extra: dict | None = None) -> dict:
    """The caller's environment without LSVQ_*/DAGSTER_HOME and proxies (loopback stays loopback)."""
    drop = ("LSVQ_", "DAGSTER_HOME", "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def cli_args(work: Path, csv: Path, base_url: str, *extra: str) -> list[str]:
    return [
        "--lsvq-dir", str(work),
        "--manifest-csv", str(csv),
        "--min-csv-rows", "1",
        "--full",
        "--clip-url-template", base_url + "/{name}{suffix}",
        *extra,
    ]


@dataclass
class CliProcess:
    """A CLI run in its own session (process group); stdout/stderr go to files, never to full pipes."""

    proc: subprocess.Popen
    out: Path
    err: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout=timeout)

    def kill_group(self) -> None:
        """SIGKILL the whole process group (the CLI and any ffprobe it runs), then reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


def start_cli(args: list[str], logs: Path, name: str, env: dict | None = None, cwd: Path | None = None) -> CliProcess:
    logs.mkdir(parents=True, exist_ok=True)
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lsvq_assets", *args],
            stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=cli_env(env), cwd=cwd or logs,
            start_new_session=True,
        )
    return CliProcess(proc, out, err, time.monotonic())


def run_cli(args: list[str], logs: Path, name: str, env: dict | None = None, timeout: float = 240) -> CliProcess:
    cli = start_cli(args, logs, name, env)
    try:
        cli.wait(timeout)
    except subprocess.TimeoutExpired:
        cli.kill_group()
        raise
    return cli


def wait_for(predicate: Callable[[], object], timeout: float, what: str, proc: CliProcess | None = None) -> object:
    """Poll ``predicate`` every 10 ms until it is truthy; fail if the process ended first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"the CLI ended (exit {proc.proc.returncode}) before {what}:\n{proc.stderr[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_records(work: Path) -> dict[str, ClipRecord]:
    """Every clip record of every partition's private fetch state (each file must be whole JSON:
    a torn one would be silently ignored by FetchState, so it is parsed here first)."""
    records: dict[str, ClipRecord] = {}
    for path in sorted((work / "partitions").glob(f"*/{STATE_FILE}")):
        json.loads(path.read_bytes())  # whole, never torn
        with FetchState(path) as state:
            for rec in state.all_records():
                assert rec.src not in records, f"{rec.src} is recorded in two partitions"
                records[rec.src] = rec
    return records


def temp_files(root: Path) -> list[Path]:
    """Hidden ``.<name>.XXXXXXXX.part`` files anywhere under ``root``."""
    return sorted(p for p in root.rglob("*") if TEMP_NAME.fullmatch(p.name))


def check_invariants(work: Path, served_root: Path) -> dict[str, ClipRecord]:
    """What must hold in a working directory at any moment, killed or not. Returns the store's records.

    * every partition's fetch state is whole JSON and each clip is recorded in one partition only;
    * a clip recorded done (or broken) is on disk, complete: its size and sha256 are the recorded ones;
    * every visible file in the clips directory is a whole clip (the served bytes), never a partial one;
    * the shard, if there is one, is whole: newline-terminated valid rows.
    """
    records = store_records(work)
    clips = work / "clips"
    for rec in records.values():
        if rec.state in ("done", "broken") and rec.sha256:
            path = clips / rec.src
            assert path.is_file(), f"{rec.src} is recorded {rec.state} but not on disk"
            data = path.read_bytes()
            assert (len(data), sha256(data)) == (rec.size, rec.sha256), f"{rec.src} on disk differs from its record"
    if clips.exists():
        for path in clips.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                src = path.relative_to(clips).as_posix()
                assert path.read_bytes() == (served_root / src).read_bytes(), f"partial or foreign file visible: {src}"
    shard = work / "lsvq.jsonl"
    if shard.exists():
        text = shard.read_text()
        assert text == "" or text.endswith("\n"), "the shard is cut short"
        for line in text.splitlines():
            assert line_problems(line) == [], line
    return records


def shard_rows(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "lsvq.jsonl").read_text().splitlines()]


def without_timestamps(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "ingested_at_utc"} for r in rows]


def tree_state(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every path under ``root`` (except ``skip``'s subtree) with its type, size and mtime: a snapshot."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if skip is None or Path(dirpath) / d != skip]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def assert_exact_shard(work: Path, corpus: Corpus) -> None:
    """The rows the corpus must give, in manifest order, each stamped with the store's ingestion time."""
    records = check_invariants(work, corpus.root)
    rows = shard_rows(work)
    ok = corpus.by_kind("ok")
    assert [r["src"] for r in rows] == [c.src for c in ok]
    for clip, row in zip(ok, rows):
        expected = corpus.expected_row_fields(clip)
        assert {k: row[k] for k in expected} == expected
        assert row["ingested_at_utc"] == records[clip.src].ingested_at_utc
    assert (work / "lsvq.jsonl").read_text() == "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def requests_per_path(server) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in server.records():
        out[rec.path] = out.get(rec.path, 0) + 1
    return out


def private_tmpfs_unshare(probe_dir: Path) -> str:
    """The ``unshare`` binary when a tiny tmpfs can be mounted in a private mount namespace here
    (a real ENOSPC for the disk-full tests); skips the calling test with the reason otherwise."""
    import shutil

    import pytest

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux 'unshare' to mount a tiny tmpfs privately")
    probe_dir.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe_dir)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here (needs CAP_SYS_ADMIN or a user namespace): {probe.stderr.strip()}")
    return unshare
