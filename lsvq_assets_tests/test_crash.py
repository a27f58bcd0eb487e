"""kill -9 at any moment, then the same command again: exactly the shard an uninterrupted run gives.

How the shards are compared: rows in the same order with every field equal except
``ingested_at_utc``; that one is when the clip was ingested, kept in the partition's fetch state, so
* in the resumed working directory each row's timestamp is the store's, and a clip that was
  recorded done before a kill keeps the timestamp it had then (resuming never moves it);
* against the uninterrupted reference run it legitimately differs (another run, another moment).
Re-running after completion gives the byte-identical shard without a single request.

The kill moments are observed, not timed: a clip's temp file appearing (a download mid-body),
the ffprobe wrapper announcing a probe, the shard's temp file or the last partition's rows table
appearing (assembly), plus one kill at a random moment.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from lsvq_assets.core.files import TEMP_NAME, atomic_open, remove_stale_temps, temp_beside
from lsvq_assets.core.locks import read_holder
from lsvq_assets_tests.clipgen import ClipSpec
from lsvq_assets_tests.corpus import Corpus, CorpusClip, build_corpus
from lsvq_assets_tests.harness import (
    check_invariants,
    cli_args,
    cli_env,
    run_cli,
    shard_rows,
    start_cli,
    temp_files,
    wait_for,
    without_timestamps,
)
from lsvq_assets_tests.loopback import Fault, LoopbackServer

CRASH_CLIPS = (
    [CorpusClip(f"yfcc-batch1/{i}", 10.0 + i, "ok", ClipSpec(seed=200 + i)) for i in range(6)]
    + [CorpusClip(f"ia-batch2/{i}", 40.5 + i, "ok", ClipSpec(seed=300 + i, codec="mpeg4")) for i in range(4)]
    + [CorpusClip("ia-batch2/broken", 20.0, "broken"), CorpusClip("backup/gone", 30.0, "missing")]
    + [CorpusClip(f"backup/{i}", 70.25 + i, "ok", ClipSpec(seed=400 + i)) for i in range(3)]
    + [CorpusClip("backup/dup", 99.0, "dup")]
)
PARTITIONS = ["yfcc-batch1", "ia-batch2", "backup"]


@pytest.fixture(scope="module")
def crash_corpus(tmp_path_factory, clip_factory, broken_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("crash-corpus"), clip_factory, broken_factory, CRASH_CLIPS)


@pytest.fixture(scope="module")
def slow_ffprobe(tmp_path_factory) -> Path:
    """An ffprobe that first drops a marker (so a test sees probing start) and takes 0.1 s longer."""
    real = shutil.which("ffprobe")
    if real is None:
        pytest.skip("the crash test probes through an ffprobe wrapper; install ffmpeg (.ci/run does)")
    path = tmp_path_factory.mktemp("bin") / "ffprobe-marked"
    path.write_text(f'#!/bin/sh\n: > "$LSVQ_TEST_PROBE_MARKS/$$"\nsleep 0.1\nexec {real} "$@"\n')
    path.chmod(0o755)
    return path


def _args(work: Path, corpus: Corpus, server: LoopbackServer, ffprobe: Path) -> list[str]:
    return cli_args(work, corpus.csv, server.base_url, "--concurrency", "2", "--ffprobe-bin", str(ffprobe))


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_shard(
    tmp_path: Path, crash_corpus: Corpus, slow_ffprobe: Path
) -> None:
    corpus = crash_corpus
    marks = tmp_path / "probe-marks"
    marks.mkdir()
    env = {"LSVQ_TEST_PROBE_MARKS": str(marks)}
    logs = tmp_path / "logs"
    timings: dict[str, float] = {}

    with LoopbackServer(corpus.root) as server:
        # The reference: one uninterrupted run in another working directory.
        ref = tmp_path / "reference"
        t0 = time.monotonic()
        done = run_cli(_args(ref, corpus, server, slow_ffprobe), logs, "reference", {"LSVQ_TEST_PROBE_MARKS": str(tmp_path)})
        timings["uninterrupted run"] = time.monotonic() - t0
        assert done.proc.returncode == 0, done.stderr
        reference = shard_rows(ref)
        assert [r["src"] for r in reference] == [c.src for c in corpus.clips if c.kind == "ok"]

        work = tmp_path / "work"
        args = _args(work, corpus, server, slow_ffprobe)
        server.latency_s = 0.15  # downloads take long enough to be caught in the middle
        first_done: dict[str, str] = {}  # src -> ingested_at_utc when first seen done
        landed: list[str] = []

        def kill_when(name: str, moment, what: str, may_finish: bool = False) -> None:
            cli = start_cli(args, logs, name, env)
            try:
                landed.append(f"{wait_for(moment, 90, what, cli)} after {time.monotonic() - cli.started:.1f}s")
            except AssertionError:
                if not (may_finish and cli.proc.poll() == 0):
                    raise
                landed.append("(the run completed first)")
            finally:
                cli.kill_group()
            records = check_invariants(work, corpus.root)
            for src, rec in records.items():
                if rec.state in ("done", "broken") and rec.ingested_at_utc:
                    assert first_done.setdefault(src, rec.ingested_at_utc) == rec.ingested_at_utc, src

        # 1. Mid-body: a clip trickles, its hidden temp file is there when the group is killed.
        server.set_fault("yfcc-batch1/3.mp4", Fault.slow(delay_s=0.3, chunk_size=1024))
        clip_dir = work / "clips" / "yfcc-batch1"
        kill_when(
            "kill-1",
            lambda: [p.name for p in clip_dir.glob(".3.mp4.*.part")] and "downloading (temp file present)",
            "a download in progress",
        )
        stale = list(clip_dir.glob(".3.mp4.*.part"))
        assert stale, "the kill was meant to leave a temp file behind"
        assert not (clip_dir / "3.mp4").exists()

        # 2. Probing: the wrapper marks each ffprobe it runs.
        for mark in marks.iterdir():  # clips may be probed while others download: count from here
            mark.unlink()
        kill_when("kill-2", lambda: any(marks.iterdir()) and "probing (ffprobe running)", "probing")
        assert not any(p.exists() for p in stale), "the next run of the partition removes a killed run's temp files"

        # 3. A random moment.
        t_kill = random.Random().uniform(0.5, 4.0)
        kill_when(
            "kill-3", lambda c=time.monotonic(): time.monotonic() - c > t_kill and f"random ({t_kill:.2f} s)", "random", True
        )

        # 4. Assembly: the last partition's rows table is rewritten, or the shard's temp file appears.
        rows_part = work / "partitions" / PARTITIONS[-1] / "rows_train.parquet"
        if landed[-1] == "(the run completed first)":
            # Nothing is left to assemble: without its rows table (the outputs are the truth) the
            # last partition runs again, and the shard is assembled again after it.
            rows_part.unlink()
        since = time.time()

        def assembling() -> str | None:
            if list(work.glob(".lsvq.jsonl.*.part")):
                return "writing the shard (temp file present)"
            if rows_part.exists() and rows_part.stat().st_mtime > since:
                return "assembling (last partition's rows written)"
            return None

        kill_when("kill-4", assembling, "shard assembly")

        # Then the same command to the end.
        server.latency_s = 0.0
        t0 = time.monotonic()
        final = run_cli(args, logs, "resume", env)
        timings["resume after 4 kills"] = time.monotonic() - t0
        assert final.proc.returncode == 0, final.stderr
        assert "Traceback" not in final.stderr

    records = check_invariants(work, corpus.root)
    rows = shard_rows(work)
    assert without_timestamps(rows) == without_timestamps(reference)
    for row in rows:
        assert row["ingested_at_utc"] == records[row["src"]].ingested_at_utc
        if row["src"] in first_done:
            assert row["ingested_at_utc"] == first_done[row["src"]], row["src"]
    replay = json.loads((work / "lsvq.manifest.json").read_text())
    assert replay["stats"] == json.loads((ref / "lsvq.manifest.json").read_text())["stats"]
    assert temp_files(work) == [], "temp files left by the kills are cleaned up by the next run"

    # The runs the kills interrupted are not "in progress" forever in the UI: marked failed.
    instance = dg.DagsterInstance.from_config(str(work / ".dagster"))
    unfinished = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING])
    )
    assert unfinished == []
    assert instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))

    # Once more: no request, the byte-identical file.
    with LoopbackServer(corpus.root) as server:
        before = (work / "lsvq.jsonl").read_bytes()
        again = run_cli(cli_args(work, corpus.csv, server.base_url, "--concurrency", "2", "--ffprobe-bin", str(slow_ffprobe)), logs, "again", env)
        assert again.proc.returncode == 0, again.stderr
        assert server.count() == 0
    assert (work / "lsvq.jsonl").read_bytes() == before
    print(f"\nkills landed: {landed}; " + ", ".join(f"{k}: {v:.1f}s" for k, v in timings.items()))


# --------------------------------------------------------------------------- atomic files under kill -9

_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lsvq_assets.core.files import atomic_open
    target = Path(sys.argv[1])
    n = 0
    print("ready", flush=True)
    while True:
        n += 1
        line = (f"{n:08d}" * 16 + "\\n").encode()
        with atomic_open(target, "wb") as fh:
            for _ in range(40_000):  # ~5 MB, written in many small writes
                fh.write(line)
    """
)


def test_atomic_file_is_whole_after_kill_9_and_its_temp_is_cleaned_next_time(tmp_path: Path) -> None:
    """The shard and the partition files go through atomic_open: killed mid-write, the target is the
    previous whole file (or absent), never a part; the killed writer's temp is removed by the next write."""
    target = tmp_path / "lsvq.jsonl"
    rng = random.Random()
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, env=cli_env(), start_new_session=True
        )
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
            proc.stdout.close()
        if target.exists():
            data = target.read_bytes()
            lines = data.split(b"\n")
            assert lines[-1] == b"" and len(lines) - 1 == 40_000 and len(set(lines[:-1])) == 1
            assert target.stat().st_mode & 0o777 == 0o644  # readable by the trainer's user, unlike mkstemp's 0600
    leftovers = list(tmp_path.glob(".lsvq.jsonl.*.part"))
    with atomic_open(target, "w") as fh:
        fh.write("new\n")
    assert target.read_text() == "new\n"
    assert list(tmp_path.glob(".lsvq.jsonl.*.part")) == []
    assert len(leftovers) <= 1  # each write removed the temps its killed predecessors left


def test_remove_stale_temps_spares_live_recent_and_foreign_files(tmp_path: Path) -> None:
    old = time.time() - 60

    def temp(name: str, age_s: float | None = 60) -> Path:
        path = tmp_path / name
        path.write_bytes(b"x")
        if age_s is not None:
            os.utime(path, (time.time() - age_s, time.time() - age_s))
        return path

    stale = temp(".a.mp4.abcd1234.part")
    other_target = temp(".b.mp4.abcd1234.part")
    recent = temp(".a.mp4.zzzz9999.part", age_s=None)
    not_ours = [temp(".a.mp4.part"), temp("a.mp4.abcd1234.part"), temp(".a.mp4.ABCD1234.part"), temp("a.mp4")]
    live = temp(".a.mp4.live_123.part")
    import fcntl

    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        removed = remove_stale_temps(tmp_path, {"a.mp4"}, older_than=old + 30)
    finally:
        os.close(fd)
    assert removed == [stale]
    assert all(p.exists() for p in [other_target, recent, live, *not_ours])
    assert sorted(remove_stale_temps(tmp_path, None, older_than=old + 30)) == sorted([other_target, live])
    assert remove_stale_temps(tmp_path / "missing", None, older_than=time.time()) == []


def test_temp_files_beside_a_target_are_new_files_that_stale_cleanup_knows(tmp_path: Path) -> None:
    """``temp_beside`` names a temp file after the process; a name taken falls back to mkstemp's."""
    dest = tmp_path / "a.b.mp4.mp4"
    first, second = temp_beside(dest), temp_beside(dest)
    for fd, _ in (first, second):
        os.write(fd, b"x")
        os.close(fd)
    assert Path(first[1]).name == f".a.b.mp4.mp4.{os.getpid():08x}.part" and first[1] != second[1]
    assert all(TEMP_NAME.fullmatch(Path(p).name)["target"] == dest.name for _, p in (first, second))
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for _, p in (first, second))
    later = time.time() + 60
    assert sorted(remove_stale_temps(tmp_path, {dest.name}, older_than=later)) == sorted(Path(p) for _, p in (first, second))


@pytest.mark.slow
def test_ctrl_c_or_sigterm_stops_the_run_with_130(tmp_path: Path, corpus: Corpus, served) -> None:
    """Dagster turns the signal into a failed step; the CLI must stop there, not carry on with the
    next partitions (and assemble a shard) as if one partition had merely failed."""
    served.latency_s = 0.3
    work = tmp_path / "work"
    for sig in (signal.SIGINT, signal.SIGTERM):
        seen = served.count()
        cli = start_cli(cli_args(work, corpus.csv, served.base_url, "--concurrency", "1"), tmp_path / "logs", sig.name)
        wait_for(lambda: served.count() > seen, 60, "a download", cli)
        os.kill(cli.pid, sig)
        assert cli.wait(60) == 130, cli.stderr
        assert cli.stderr.strip().endswith("interrupted: run the same command again to resume.")
        assert "Traceback" not in cli.stderr and "partition 2/2" not in cli.stderr
        assert not (work / "lsvq.jsonl").exists()  # no shard assembled behind the operator's back
        check_invariants(work, corpus.root)
    assert served.count() < len(corpus.clips)  # it stopped downloading
    # and SIGTERM before any partition runs (the lock taken, the instance opening) ends the same way
    cli = start_cli(cli_args(work, corpus.csv, served.base_url), tmp_path / "logs", "early")
    lock = work / "locks" / "cli.lock"
    wait_for(lambda: read_holder(lock).get("pid") == cli.pid, 60, "the CLI lock", cli)
    os.kill(cli.pid, signal.SIGTERM)
    assert cli.wait(60) == 130, cli.stderr


def test_sync_files_flushes_each_filesystem_once_and_falls_back_to_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive's members are made durable together before they are renamed into place."""
    from lsvq_assets.core import files

    paths = []
    for i in range(5):
        p = tmp_path / f"m{i}.part"
        p.write_bytes(b"x" * (i + 1))
        paths.append(p)
    calls: list[int] = []
    real = files._SYNCFS
    if real is not None:
        monkeypatch.setattr(files, "_SYNCFS", lambda fd: calls.append(fd) or real(fd))
        files.sync_files(paths)
        assert len(calls) == 1  # one filesystem: one syncfs for the five files
    fsynced: list[int] = []
    monkeypatch.setattr(files, "_SYNCFS", None)  # no syncfs (not Linux): an fsync of each
    monkeypatch.setattr(files.os, "fsync", lambda fd: fsynced.append(fd))
    files.sync_files(paths)
    assert len(fsynced) == 5
    with pytest.raises(FileNotFoundError):
        files.sync_files([tmp_path / "gone.part"])


def test_a_big_file_is_handed_to_the_disk_while_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writeback: every 8 MiB and at the end of a file of 1 MiB or more, the kernel is asked to
    start writing (sync_file_range, the real call); small files are left to the flush of many."""
    from lsvq_assets.core import files
    from lsvq_assets.sources.extract import extract_members

    real = files._SYNC_FILE_RANGE
    if real is None:
        pytest.skip("no sync_file_range in this libc (not Linux): writeback is left to the flush")
    calls: list[tuple[int, int]] = []

    def recorded(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append((fd, os.fstat(fd).st_size))
        rc = real(fd, offset, nbytes, flags)
        assert rc == 0, os.strerror(ctypes.get_errno())
        return rc

    monkeypatch.setattr(files, "_SYNC_FILE_RANGE", recorded)
    chunk = b"v" * (1 << 20)
    with open(tmp_path / "big", "wb") as fh:
        wb = files.Writeback(fh.fileno())
        for _ in range(20):  # 20 MiB: at 8 and 16 MiB, then the rest at the end
            fh.write(chunk)
            fh.flush()
            wb.wrote(len(chunk))
        wb.end()
        wb.end()  # nothing new: no second call
    assert [size >> 20 for _, size in calls] == [8, 16, 20]

    calls.clear()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, size in (("f/small.mp4", 900_000), ("f/big.mp4", 3 << 20)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
    buf.seek(0)
    clips = tmp_path / "clips"
    out = extract_members(buf, {"f/small.mp4": clips / "f/small.mp4", "f/big.mp4": clips / "f/big.mp4"}, clips)
    assert all(r.ok for r in out.values())
    assert [size for _, size in calls] == [3 << 20]  # the 3 MiB member, once written; not the 0.9 MB one
