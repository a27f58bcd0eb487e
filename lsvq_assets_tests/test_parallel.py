"""Several partitions at once (``--partition-runs``): forked workers beside the CLI's own runs.

Real CLI processes on a real loopback server: the runs overlap, the shard is exactly the one of
one run at a time, a worker killed with -9 fails only its partition (and the next command finishes
it), and ``kill -9`` of the CLI takes its workers with it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dagster as dg
import pytest

from lsvq_assets.parallel import WORKER_NAME
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.harness import (
    assert_exact_shard,
    check_invariants,
    cli_args,
    run_cli,
    shard_rows,
    start_cli,
    wait_for,
    without_timestamps,
)


def _workers(pid: int) -> list[int]:
    """The CLI's forked workers: its children named ``lsvq-partition``."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    found = []
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == WORKER_NAME:
                found.append(child)
        except OSError:
            pass
    return found


def _gone(pid: int) -> bool:
    """Ended (a zombie not reaped yet counts: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _partition_runs(work: Path) -> list[dg.RunRecord]:
    instance = dg.DagsterInstance.from_config(str(work / ".dagster"))
    return [r for r in instance.get_run_records() if "dagster/partition" in r.dagster_run.tags]


def test_two_partition_runs_at_once_give_the_shard_of_one_at_a_time(tmp_path: Path, corpus: Corpus, served) -> None:
    served.latency_s = 0.05  # each run lasts long enough to see them overlap
    two, one = tmp_path / "two", tmp_path / "one"
    home = two / ".dagster"  # as DAGSTER_HOME: Dagster's telemetry id is made there (else in ~/.dagster)
    home.mkdir(parents=True)
    args = cli_args(two, corpus.csv, served.base_url, "--partition-runs", "2")
    parallel = run_cli(args, tmp_path / "logs", "two", {"DAGSTER_HOME": str(home)})
    assert parallel.proc.returncode == 0, parallel.stderr
    runs = _partition_runs(two)
    assert len(runs) == 2 and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    (a, b) = sorted(runs, key=lambda r: r.start_time or 0)
    assert a.start_time is not None and b.start_time is not None and a.end_time is not None
    assert b.start_time < a.end_time, "the two partition runs did not overlap"
    assert "Traceback" not in parallel.stderr and parallel.stderr.count(": done (run ") == 2
    assert parallel.stderr.count("Welcome to Dagster!") == 1  # a new instance's telemetry id: made before the fork, once
    assert_exact_shard(two, corpus)
    check_invariants(two, corpus.root)

    sequential = run_cli(cli_args(one, corpus.csv, served.base_url, "--partition-runs", "1"), tmp_path / "logs", "one")
    assert sequential.proc.returncode == 0, sequential.stderr
    (a, b) = sorted(_partition_runs(one), key=lambda r: r.start_time or 0)
    assert a.end_time is not None and b.start_time is not None and b.start_time >= a.end_time
    assert without_timestamps(shard_rows(two)) == without_timestamps(shard_rows(one))


def test_a_worker_killed_fails_only_its_partition_and_the_next_run_finishes_it(tmp_path: Path, corpus: Corpus, served) -> None:
    served.latency_s = 0.4
    work = tmp_path / "work"
    cli = start_cli(cli_args(work, corpus.csv, served.base_url, "--concurrency", "1"), tmp_path / "logs", "first")
    worker = wait_for(lambda: _workers(cli.pid), 60, "a worker process", cli)[0]  # type: ignore[index]
    wait_for(lambda: served.count() >= 2, 60, "downloads under way", cli)
    os.kill(worker, signal.SIGKILL)
    assert cli.wait(240) == 1, cli.stderr
    assert "its worker process ended without a result (exit code -9)" in cli.stderr
    assert "1 partition(s) failed transiently" in cli.stderr and "Traceback" not in cli.stderr
    served.latency_s = 0.0
    again = run_cli(cli_args(work, corpus.csv, served.base_url), tmp_path / "logs", "again")
    assert again.proc.returncode == 0, again.stderr
    assert_exact_shard(work, corpus)
    check_invariants(work, corpus.root)
    statuses = sorted(r.dagster_run.status.value for r in _partition_runs(work))
    assert "STARTED" not in statuses and "FAILURE" in statuses  # the killed worker's run is marked failed


@pytest.mark.slow
def test_kill_9_of_the_cli_takes_its_workers_with_it(tmp_path: Path, corpus: Corpus, served) -> None:
    served.latency_s = 0.4
    work = tmp_path / "work"
    cli = start_cli(cli_args(work, corpus.csv, served.base_url, "--concurrency", "1"), tmp_path / "logs", "killed")
    workers = wait_for(lambda: _workers(cli.pid), 60, "a worker process", cli)
    wait_for(lambda: served.count() >= 2, 60, "downloads under way", cli)
    os.kill(cli.pid, signal.SIGKILL)  # the CLI alone: its workers are in a process group of their own
    cli.wait(30)
    deadline = time.monotonic() + 30
    while not all(_gone(w) for w in workers):  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "a worker outlived its CLI"
        time.sleep(0.05)
    served.latency_s = 0.0
    again = run_cli(cli_args(work, corpus.csv, served.base_url), tmp_path / "logs", "again")
    assert again.proc.returncode == 0, again.stderr
    assert_exact_shard(work, corpus)
    check_invariants(work, corpus.root)
