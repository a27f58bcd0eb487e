"""Progress of long work: bars on a terminal, plain lines elsewhere, a sensible interval in run logs."""

from __future__ import annotations

import fcntl
import io
import os
import re
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

from lsvq_assets.progress import Board, LogProgress
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.harness import cli_args, cli_env


def test_run_log_progress_is_throttled_not_one_event_per_clip() -> None:
    lines: list[str] = []
    progress = LogProgress("yfcc-batch1", total=1000, log=lines.append, interval_s=3600)
    for _ in range(1000):
        progress.update(1, 10_000)
    assert lines == []  # nothing before the interval has passed
    progress = LogProgress("yfcc-batch1", total=4, log=lines.append, interval_s=0)
    progress.update(2, 2_000_000)
    assert lines and lines[-1].startswith("partition yfcc-batch1: 2/4 clips, 2.0 MB,")
    assert "ETA" in lines[-1]


def test_board_without_a_terminal_writes_plain_summary_lines() -> None:
    lines: list[str] = []
    board = Board(total=3, stream=io.StringIO(), tty=False, interval_s=0, log=lines.append)
    part = board.partition("ia-batch2", 3)
    part.update(1, 500)
    part.update(2, 1500)
    part.close()
    board.close()
    assert lines[0].startswith("progress: 1/3 clips, 500 B")
    assert lines[-1].startswith("progress: 3/3 clips, 2.0 KB")
    assert not any("\r" in line or "\x1b[" in line for line in lines)


def _run(args: list[str], stderr_tty: bool, err_file: Path) -> tuple[int, str]:
    env = cli_env()
    if not stderr_tty:
        with open(err_file, "w") as err:
            proc = subprocess.run([sys.executable, "-m", "lsvq_assets", *args], env=env, stdout=subprocess.DEVNULL, stderr=err, timeout=300)
        return proc.returncode, err_file.read_text()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "lsvq_assets", *args], env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its side
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_cli_shows_bars_on_a_terminal_and_plain_lines_in_a_file(tmp_path: Path, corpus: Corpus, served) -> None:
    code, screen = _run(cli_args(tmp_path / "tty", corpus.csv, served.base_url), True, tmp_path / "unused")
    assert code == 0
    assert "all partitions" in screen and "clip" in screen, screen[-3000:]  # tqdm overall bar
    assert "yfcc-batch1" in screen
    code, text = _run(cli_args(tmp_path / "file", corpus.csv, served.base_url), False, tmp_path / "err.log")
    assert code == 0
    assert "\r" not in text and "all partitions" not in text
    assert "progress: 8/8 clips" in text  # the closing summary line
    assert re.search(r"partition [12]/2 yfcc-batch1: done", text) and re.search(r"partition [12]/2 ia-batch2: done", text)  # two at once
