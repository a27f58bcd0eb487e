"""Sources that misbehave and input that is hostile: nothing lost, nothing half-written, nothing
outside its directory.

* storms of 429/503 (Retry-After honoured) are absorbed by retries with backoff and jitter;
* truncated bodies, resets and trickling sources are never recorded as done (exit 1, then a
  clean re-run completes the exact shard);
* a full disk (a real ENOSPC on a tiny tmpfs) is a transient failure with a clear message;
* hostile manifests (traversal and absolute names, huge fields, non-UTF-8, binary files, devices,
  non-http(s) schemes, redirects to them) end in a one-line ``error:`` with exit 2 or in a
  recorded failure, and the directories around the working directory are left as they were.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest

from lsvq_assets.net import HttpFetcher
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.harness import (
    private_tmpfs_unshare,
    assert_exact_shard,
    check_invariants,
    cli_args,
    cli_env,
    requests_per_path,
    run_cli,
    shard_rows,
    store_records,
    temp_files,
    tree_state,
)
from lsvq_assets_tests.loopback import Fault, LoopbackServer, loopback  # noqa: F401  (fixture)

# --------------------------------------------------------------------------- the rate floor (unit)


def test_trickling_body_is_abandoned_once_the_read_timeout_has_passed(loopback: LoopbackServer, tmp_path: Path) -> None:
    """256 bytes every 50 ms never trips a 0.5 s read timeout; the rate floor ends it (transient, one try)."""
    loopback.put_random("a.mp4", 60_000)
    loopback.set_fault("a.mp4", Fault.slow(delay_s=0.05, chunk_size=256), forever=True)
    dest = tmp_path / "clips" / "a.mp4"
    with HttpFetcher(timeout_s=0.5, connect_timeout_s=2, backoff_base_s=0.01, max_attempts=3) as fetcher:
        started = time.monotonic()
        result = fetcher.fetch(loopback.url("a.mp4"), dest)
        took = time.monotonic() - started
    assert not result.ok and result.reason.startswith("too-slow: ") and result.reason.endswith("under 16384 B/s")
    assert result.transient is True and result.attempts == 1  # not retried in-fetch: it would trickle as long again
    assert 0.5 <= took < 2.5, took
    assert not dest.exists() and temp_files(tmp_path) == []


def test_slow_source_above_the_floor_or_without_one_completes(loopback: LoopbackServer, tmp_path: Path) -> None:
    data = loopback.put_random("a.mp4", 6_000)
    loopback.set_fault("a.mp4", Fault.slow(delay_s=0.05, chunk_size=512), forever=True)  # ~10 KB/s for 0.6 s
    for floor in (0, 1024):
        with HttpFetcher(timeout_s=0.3, min_rate_bytes_s=floor, max_attempts=1) as fetcher:
            result = fetcher.fetch(loopback.url("a.mp4"), tmp_path / f"{floor}.mp4")
        assert result.ok, result.reason
        assert (tmp_path / f"{floor}.mp4").read_bytes() == data


# --------------------------------------------------------------------------- hostile manifest files


def _hostile_files(tmp: Path, corpus: Corpus) -> dict[str, tuple[Path, list[str]]]:
    """case -> (manifest path, substrings of the one error line)."""
    d = tmp / "manifests"
    d.mkdir()
    huge = d / "huge-field.csv"
    huge.write_text("name,mos\n" + "a/" + "x" * 200_000 + ",50\n")
    clip = d / "clip.mp4"
    shutil.copyfile(corpus.root / corpus.by_kind("ok")[0].src, clip)
    gz = d / "manifest.csv.gz"
    gz.write_bytes(gzip.compress(b"name,mos\na/1,50\n" * 100, mtime=0))
    db = d / "store.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    utf16 = d / "utf16.csv"
    utf16.write_bytes("name,mos\na/1,50\n".encode("utf-16"))
    highbytes = d / "high.bin"
    highbytes.write_bytes(bytes(range(0x80, 0x100)) * 8)
    sparse = d / "sparse.csv"
    with open(sparse, "wb") as fh:
        fh.truncate(300 * 1024 * 1024)  # no disk used; must not be read into memory
    fifo = d / "pipe.csv"
    os.mkfifo(fifo)
    return {
        "huge-field": (huge, ["huge-field.csv", "line 2", "not a readable CSV", "field larger than field limit"]),
        "video": (clip, ["clip.mp4", "not a text file"]),
        "gzip": (gz, ["manifest.csv.gz", "not"]),
        "sqlite": (db, ["store.sqlite3", "not a text file"]),
        "utf16": (utf16, ["utf16.csv", "UTF-16", "save the manifest as UTF-8"]),
        "not-utf8": (highbytes, ["high.bin", "line 1", "not UTF-8"]),
        "sparse-300MB": (sparse, ["sparse.csv", "314572800 bytes", "right file"]),
        "fifo": (fifo, ["pipe.csv", "not a regular file"]),
        "device": (Path("/dev/zero"), ["/dev/zero", "not a regular file"]),
    }


def test_hostile_manifest_files_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, corpus: Corpus, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lsvq_assets.cli import main

    for var in [v for v in os.environ if v.startswith("LSVQ_")]:
        monkeypatch.delenv(var)
    cases = _hostile_files(tmp_path, corpus)
    work = tmp_path / "work"
    before = tree_state(tmp_path)
    # A real run, not --dry-run: it must stop before it creates anything. The device and the pipe
    # run in a subprocess with a timeout: reading them would never end.
    in_process = [c for c in cases if c not in ("fifo", "device")]
    results: dict[str, tuple[int, str, str]] = {}
    logger = logging.getLogger("lsvq_assets")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))  # main() adds its own handler
    monkeypatch.setattr(logger, "level", logger.level)
    for case in in_process:
        code = main(cli_args(work, cases[case][0], "http://127.0.0.1:9"))
        out, err = capsys.readouterr()
        results[case] = (code, out, err)

    def run(case: str) -> tuple[int, str, str]:
        proc = subprocess.run([sys.executable, "-m", "lsvq_assets", *cli_args(work, cases[case][0], "http://127.0.0.1:9")],
                              capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    with ThreadPoolExecutor(2) as pool:
        results.update(zip(["fifo", "device"], pool.map(run, ["fifo", "device"])))
    for case, (code, out, err) in results.items():
        assert code == 2, (case, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
        assert all(s in lines[0] for s in cases[case][1]), (case, lines[0])
        assert out == "" and "Traceback" not in err, case
    assert tree_state(tmp_path) == before  # not even the working directory was created


# --------------------------------------------------------------------------- end to end: sources misbehaving


@pytest.mark.slow
def test_429_and_503_storm_is_absorbed_and_retry_after_honoured(tmp_path: Path, corpus: Corpus, served) -> None:
    """Every clip's first request gets 429 with Retry-After: 1, its second a 503: the run completes."""
    served.set_fault_all("429:1", "503")
    work = tmp_path / "work"
    cli = run_cli(cli_args(work, corpus.csv, served.base_url, "--concurrency", "4"), tmp_path / "logs", "storm")
    assert cli.proc.returncode == 0, cli.stderr
    assert "wrote 5 rows, skipped 1 (download-failed), 1 (broken-clip), 1 dedups" in cli.stdout
    assert_exact_shard(work, corpus)
    gaps_after_503 = []
    for clip in corpus.clips:
        recs = served.records(clip.src)
        assert [r.status for r in recs] == [429, 503, 404 if clip.kind == "missing" else 200], clip.src
        assert recs[1].time - recs[0].time >= 0.95, (clip.src, "Retry-After: 1 not honoured")
        gaps_after_503.append(recs[2].time - recs[1].time)
    assert max(gaps_after_503) <= 1.5  # backoff 0.5 s * 2**1 at most, plus scheduling
    assert len({round(g, 2) for g in gaps_after_503}) > 1  # jitter: not all clips retry in lockstep
    assert store_records(work)["ia-batch2/gone.mp4"].transient is False  # the 404 after the storm is permanent


@pytest.mark.slow
def test_truncated_reset_and_trickling_bodies_are_never_done(tmp_path: Path, corpus: Corpus, served) -> None:
    broken = {
        "yfcc-batch1/725.mp4": "truncate",
        "ia-batch2/alpha.mp4": "reset",
        "yfcc-batch1/St._Charles_Bridge.mp4": Fault.slow(delay_s=0.4, chunk_size=256),  # 640 B/s
    }
    for path, fault in broken.items():
        served.set_fault(path, fault, forever=True)
    work, logs = tmp_path / "work", tmp_path / "logs"
    args = cli_args(work, corpus.csv, served.base_url, "--concurrency", "4", "--download-timeout-s", "1")
    started = time.monotonic()
    first = run_cli(args, logs, "faulty")
    took = time.monotonic() - started
    assert first.proc.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr
    assert "2 partition(s) failed transiently (ia-batch2, yfcc-batch1)" in first.stderr
    size = (corpus.root / "yfcc-batch1/725.mp4").stat().st_size
    for reason in (f"short-body: got {size // 2} of {size} bytes", "too-slow: ", "ia-batch2"):
        assert reason in first.stderr, reason
    records = check_invariants(work, corpus.root)
    for path in broken:
        rec = records[path]
        assert rec.state == "failed" and rec.transient and rec.sha256 is None, rec
        assert not (work / "clips" / path).exists()
    assert records["yfcc-batch1/St._Charles_Bridge.mp4"].attempts == 1  # too slow: not retried in-run
    assert records["yfcc-batch1/725.mp4"].attempts == 4  # truncated: retried (max_attempts 4)
    assert temp_files(work) == []
    assert took < 60  # the trickler (4.9 KB at 640 B/s: 8 s a try) was cut at the 1 s timeout

    served.clear_faults()
    served.reset_log()
    second = run_cli(args, logs, "clean")
    assert second.proc.returncode == 0, second.stderr
    assert requests_per_path(served) == {p: 1 for p in broken}  # only what failed is fetched again
    assert_exact_shard(work, corpus)


_CHECK_IN_NAMESPACE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from lsvq_assets_tests.harness import check_invariants, temp_files
    work, served, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    records = check_invariants(work, served)
    json.dump({
        "done": {s: r.ingested_at_utc for s, r in records.items() if r.state == "done"},
        "failed": {s: [r.reason, r.transient] for s, r in records.items() if r.state == "failed"},
        "files": sorted(p.relative_to(work / "clips").as_posix() for p in (work / "clips").rglob("*") if p.is_file()),
        "temps": [str(p) for p in temp_files(work)],
    }, open(out, "w"))
    """
)


@pytest.mark.slow
def test_full_disk_is_transient_and_clear_then_a_rerun_completes(tmp_path: Path, corpus: Corpus, served) -> None:
    """The clips directory on a 16 KiB tmpfs (a private mount namespace): real ENOSPC mid-run."""
    unshare = private_tmpfs_unshare(tmp_path / "probe")
    work, logs = tmp_path / "work", tmp_path / "logs"
    (work / "clips").mkdir(parents=True)
    logs.mkdir()
    report = tmp_path / "report.json"
    args = cli_args(work, corpus.csv, served.base_url, "--concurrency", "1")
    script = (
        'mount -t tmpfs -o size=16k tmpfs "$0/clips" || exit 99; '
        '"$1" -m lsvq_assets "${@:4}"; rc=$?; '
        '"$1" -c "$2" "$0" "$3" "$0/../report.json"; exit $rc'
    )
    proc = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "bash", "-c", script, str(work),
         sys.executable, _CHECK_IN_NAMESPACE, str(corpus.root), *args],
        capture_output=True, text=True, env=cli_env(), cwd=logs, timeout=240,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "disk-error: No space left on device" in proc.stderr
    inside = json.loads(report.read_text())
    assert inside["temps"] == []  # failed writes removed their temp files (which also frees the space)
    assert inside["done"] and inside["failed"]
    assert all(reason == "disk-error: No space left on device" and transient
               for src, (reason, transient) in inside["failed"].items() if src != "ia-batch2/gone.mp4")
    assert set(inside["done"]) <= set(inside["files"])  # done means on disk, whole (checked in there)
    assert not any((work / "clips").iterdir())  # the tmpfs never leaked out of its namespace

    # Space again: the same command completes; clips done before keep their ingestion time.
    again = run_cli(args, logs, "after")
    assert again.proc.returncode == 0, again.stderr
    assert_exact_shard(work, corpus)
    rows = {r["src"]: r for r in shard_rows(work)}
    for src, when in inside["done"].items():
        if src in rows:
            assert rows[src]["ingested_at_utc"] == when


# --------------------------------------------------------------------------- end to end: hostile rows


@pytest.mark.slow
def test_hostile_rows_are_dropped_or_fail_and_nothing_lands_outside(tmp_path: Path, corpus: Corpus, loopback: LoopbackServer) -> None:
    served = loopback
    ok = {"h/ok": 50.0, "h/ünïcödé ✓ clip": 61.5}
    for name, clip in zip(ok, corpus.by_kind("ok")):
        served.put(name + ".mp4", (corpus.root / clip.src).read_bytes())
    served.set_fault("h/to-file.mp4", "redirect:file:///etc/passwd", forever=True)
    served.set_fault("h/to-ftp.mp4", "redirect:ftp://127.0.0.1/x.mp4", forever=True)
    served.set_fault("h/to-dotdot.mp4", "redirect:/../../../etc/passwd", forever=True)
    url = lambda name: served.base_url + "/" + quote(name + ".mp4")  # noqa: E731
    rows = [
        *[(n, str(m), url(n)) for n, m in ok.items()],
        ("../escape", "1", url("../escape")),
        ("/etc/cron.d/lsvq", "1", url("x")),
        ("h/../../up", "1", url("x")),
        ("h/" + "x" * 5000, "1", url("x")),
        ("h/ctl\x01name", "1", url("x")),
        ("h/file-url", "1", "file:///etc/passwd"),
        ("h/ftp-url", "1", "ftp://127.0.0.1/x.mp4"),
        ("h/js-url", "1", "javascript:alert(1)"),
        ("h/huge-mos", "9" * 100_000, url("x")),
        ("h/to-file", "1", url("h/to-file")),
        ("h/to-ftp", "1", url("h/to-ftp")),
        ("h/to-dotdot", "1", url("h/to-dotdot")),
        ("h/huge-url", "1", served.base_url + "/" + "a" * 100_000),
    ]
    manifest = tmp_path / "hostile.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("name", "mos", "url"), *rows])
    work, logs = tmp_path / "work", tmp_path / "logs"
    logs.mkdir()
    args = ["--lsvq-dir", str(work), "--manifest-csv", str(manifest), "--min-csv-rows", "1", "--full"]
    before = tree_state(tmp_path, skip=logs)
    cron = Path("/etc/cron.d/lsvq.mp4")

    dry = subprocess.run([sys.executable, "-m", "lsvq_assets", *args, "--dry-run"], capture_output=True, text=True, env=cli_env())
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dropped"] == {
        "path-traversal": 2, "absolute-name": 1, "name-too-long": 1, "bad-name": 1, "bad-url-scheme": 3, "bad-mos": 1,
    }
    cli = run_cli(args, logs, "hostile")
    assert cli.proc.returncode == 0, cli.stderr  # recorded failures are permanent: the shard is written
    assert "Traceback" not in cli.stderr

    assert [r["src"] for r in shard_rows(work)] == [n + ".mp4" for n in ok]
    records = store_records(work)
    assert {s: (r.reason, r.transient) for s, r in records.items() if r.state == "failed"} == {
        "h/to-file.mp4": ("redirect-to-bad-scheme: file", False),
        "h/to-ftp.mp4": ("redirect-to-bad-scheme: ftp", False),
        "h/to-dotdot.mp4": ("http-404", False),
        "h/huge-url.mp4": ("http-414", False),
    }
    after = tree_state(tmp_path, skip=logs)
    outside = {p: v for p, v in after.items() if not p.startswith("work")}
    assert outside == {p: v for p, v in before.items() if not p.startswith("work")}
    assert sorted(p.relative_to(work / "clips").as_posix() for p in (work / "clips").rglob("*") if p.is_file()) == sorted(
        n + ".mp4" for n in ok
    )
    assert {p.name for p in work.iterdir()} <= {
        ".dagster", "clips", "partitions", "locks",
        "lsvq.jsonl", "lsvq.manifest.json",
    }
    assert {p.name for p in (work / "partitions").iterdir()} == {"h"}
    assert not cron.exists()



def test_help_documents_the_exit_codes() -> None:
    from lsvq_assets.cli import build_parser
    from lsvq_assets.core.locks import EXIT_LOCKED
    from lsvq_assets.runner import EXIT_OK, EXIT_TRANSIENT, EXIT_USER

    text = build_parser().format_help()
    section = text[text.index("exit codes:"):]
    for code in (EXIT_OK, EXIT_TRANSIENT, EXIT_USER, EXIT_LOCKED, 130):
        assert f"\n  {code} " in section, code
    assert "--wait" in section
