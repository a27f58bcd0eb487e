"""Two runs at once on one working directory: no corruption, no lost update, no double download.

What must not overlap, and what happens instead:
* two CLI runs on one working directory: the second exits 3 naming the holder's pid, or with
  ``--wait`` waits for it (``<lsvq_dir>/locks/cli.lock``);
* the same partition's clips materialised twice at once (the CLI beside a UI run or a backfill):
  the second waits for the first, then finds the clips done (``locks/slice-<key>.lock``);
* different partitions run side by side; registering the same partition keys from several processes
  at once is safe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy.exc

from lsvq_assets.core.locks import EXIT_LOCKED, cli_lock, read_holder, slice_lock, slice_lock_path
from lsvq_assets.partitions import PARTITIONS_NAME, register_partitions
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.harness import assert_exact_shard, cli_args, cli_env, requests_per_path, start_cli, wait_for


# --------------------------------------------------------------------------- the CLI lock


def test_second_cli_run_exits_3_naming_the_holder(tmp_path: Path, corpus: Corpus) -> None:
    work = tmp_path / "work"
    with cli_lock(work, ["--lsvq-dir", str(work)], wait=False):
        cli = start_cli(cli_args(work, corpus.csv, "http://127.0.0.1:9"), tmp_path / "logs", "second")
        assert cli.wait(60) == EXIT_LOCKED == 3
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: another run is using "), cli.stderr
    assert f"pid {os.getpid()}" in lines[0] and "--wait" in lines[0] and "cli.lock" in lines[0]
    assert cli.stdout == ""
    assert sorted(p.name for p in work.iterdir()) == ["locks"]  # nothing else touched: no instance, no store


@pytest.mark.slow
def test_two_cli_runs_at_once_then_a_third(tmp_path: Path, corpus: Corpus, served) -> None:
    work, logs = tmp_path / "work", tmp_path / "logs"
    args = cli_args(work, corpus.csv, served.base_url, "--concurrency", "2")
    served.latency_s = 0.2  # each run takes seconds: the two overlap for sure
    a, b = start_cli(args, logs, "a"), start_cli(args, logs, "b")
    lock = work / "locks" / "cli.lock"
    holder = wait_for(lambda: lock.exists() and read_holder(lock).get("pid"), 60, "one run to take the lock")
    third = start_cli([*args, "--wait"], logs, "third")  # starts while the winner runs: waits for it
    codes = {a.pid: a.wait(), b.pid: b.wait()}
    assert third.wait() == 0, third.stderr
    winner, loser = (a, b) if a.pid == holder else (b, a)
    assert codes[winner.pid] == 0, winner.stderr
    assert codes[loser.pid] == 3, loser.stderr
    assert f"pid {winner.pid}" in loser.stderr and "Traceback" not in loser.stderr
    assert len(loser.stderr.strip().splitlines()) == 1
    assert "waiting for it to finish" in third.stderr and f"pid {winner.pid}" in third.stderr
    # Every clip was fetched once, by the winner; the 404 was not asked again (permanent).
    assert requests_per_path(served) == {c.src: 1 for c in corpus.clips}
    assert "wrote 5 rows, skipped 1 (download-failed), 1 (broken-clip), 1 dedups" in third.stdout
    assert_exact_shard(work, corpus)


# --------------------------------------------------------------------------- the slice lock

_UI_RUN = textwrap.dedent(
    """
    import json, sys
    import dagster as dg
    from lsvq_assets.definitions import build_defs
    from lsvq_assets.partitions import register_partitions
    config, home, key = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    instance = dg.DagsterInstance.from_config(home)
    register_partitions(instance, [key])
    result = build_defs(config).resolve_job_def("lsvq_partition_job").execute_in_process(
        partition_key=key, instance=instance, raise_on_error=False
    )
    print(json.dumps({"success": result.success}))
    """
)


@pytest.mark.slow
def test_cli_beside_a_ui_run_of_the_same_partition(tmp_path: Path, corpus: Corpus, served) -> None:
    """A UI/backfill run materialises partition yfcc-batch1 while the CLI reaches the same partition: the
    CLI's lsvq_clips waits for it, then finds every clip done; nothing is downloaded twice."""
    work, logs = tmp_path / "work", tmp_path / "logs"
    (work / ".dagster").mkdir(parents=True)
    dg.DagsterInstance.from_config(str(work / ".dagster"))  # created once, before two processes open it
    key = "yfcc-batch1"
    config = {
        "lsvq": {"lsvq_dir": str(work), "manifest_csv": str(corpus.csv), "min_csv_rows": 1, "max_rows": 0},
        "clip_source": {"clip_url_template": served.base_url + "/{name}{suffix}", "concurrency": 2},
    }
    served.set_fault("yfcc-batch1/725.mp4", "hang:20")  # the UI run holds the partition for 20 s or more
    ui = subprocess.Popen(
        [sys.executable, "-c", _UI_RUN, json.dumps(config), str(work / ".dagster"), key],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), start_new_session=True,
    )
    try:
        lock = slice_lock_path(work, key)
        wait_for(lambda: lock.exists() and read_holder(lock).get("pid") == ui.pid, 60, "the UI run to hold the partition")
        cli = start_cli(cli_args(work, corpus.csv, served.base_url, "--concurrency", "2"), logs, "cli")
        assert cli.wait() == 0, cli.stderr
        out, err = ui.communicate(timeout=120)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
    assert json.loads(out.decode().strip().splitlines()[-1]) == {"success": True}, err.decode()[-3000:]
    assert f"partition {key} is being materialised by pid {ui.pid}" in cli.stderr
    assert requests_per_path(served) == {c.src: 1 for c in corpus.clips}
    assert_exact_shard(work, corpus)


def test_slice_lock_waits_for_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    holder_code = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from lsvq_assets.core.locks import slice_lock
        with slice_lock(Path(sys.argv[1]), "yfcc-batch1", "holder"):
            print("held", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(tmp_path)], stdout=subprocess.PIPE, env=cli_env(), start_new_session=True
    )
    waited: list[dict] = []
    got = threading.Event()

    def waiter() -> None:
        with slice_lock(tmp_path, "yfcc-batch1", "waiter", on_wait=waited.append):
            got.set()

    try:
        assert proc.stdout.readline().strip() == b"held"
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)
        assert not got.is_set()  # waiting for the holder
        assert waited and waited[0]["pid"] == proc.pid and waited[0]["what"] == "holder"
        os.killpg(proc.pid, signal.SIGKILL)  # a holder killed with -9 releases it
        assert got.wait(5)
        thread.join(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    # Other slices never wait; keys that are not plain names get a hashed file under locks/.
    with slice_lock(tmp_path, "yfcc-batch1", "a"), slice_lock(tmp_path, "ia-batch2", "b"):
        pass
    assert slice_lock_path(tmp_path, "../../etc/x").parent == tmp_path / "locks"
    assert slice_lock_path(tmp_path, "a~2").name == "slice-a~2.lock"


# --------------------------------------------------------------------------- registering partitions


def test_register_partitions_when_another_process_registers_them_meanwhile() -> None:
    instance = dg.DagsterInstance.ephemeral()
    real_add = instance.add_dynamic_partitions
    calls: list[list[str]] = []

    def racing_add(name: str, keys: list[str]) -> None:
        calls.append(list(keys))
        if len(calls) == 1:  # another process registers two of them between our read and our insert
            real_add(name, ["a", "b"])
            raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
        real_add(name, keys)

    instance.add_dynamic_partitions = racing_add  # type: ignore[method-assign]
    assert register_partitions(instance, ["a", "b", "c", "a"]) == ["c"]
    assert calls == [["a", "b", "c"], ["c"]]
    assert instance.get_dynamic_partitions(PARTITIONS_NAME) == ["a", "b", "c"]
    assert register_partitions(instance, ["a", "c"]) == []


_REGISTER = textwrap.dedent(
    """
    import sys, time
    import dagster as dg
    from lsvq_assets.partitions import register_partitions
    instance = dg.DagsterInstance.from_config(sys.argv[1])
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    for r in range(25):
        register_partitions(instance, [f"r{r}-{i}" for i in range(40)])
    print("ok")
    """
)


@pytest.mark.slow
def test_register_partitions_from_three_processes_at_once(tmp_path: Path) -> None:
    """Without the retry, about half of such rounds failed with sqlalchemy's IntegrityError here."""
    home = tmp_path / "home"
    home.mkdir()
    dg.DagsterInstance.from_config(str(home))
    start = time.time() + 3
    procs = [
        subprocess.Popen([sys.executable, "-c", _REGISTER, str(home), str(start)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=cli_env())
        for _ in range(3)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == b"ok", err.decode()[-2000:]
    keys = dg.DagsterInstance.from_config(str(home)).get_dynamic_partitions(PARTITIONS_NAME)
    assert sorted(keys) == sorted({f"r{r}-{i}" for r in range(25) for i in range(40)})
