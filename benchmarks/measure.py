"""Running a command and measuring it: wall time and peak memory of its whole process tree.

Peak memory is measured two ways, and the larger is reported:

* ``os.wait4`` on the child returns its rusage, whose ``ru_maxrss`` is the high-water mark of
  the largest single process in the tree (the child or any descendant it waited for) — exact,
  but a per-process maximum;
* a sampler thread sums the proportional set size (``Pss`` in ``/proc/<pid>/smaps_rollup``,
  else ``VmRSS``) over the child and all its descendants (``/proc/<pid>/task/*/children``) every
  ``interval_s`` — the tree's total, but only as fine as the sampling. PSS, not RSS: a child
  between fork and exec (or sharing libraries) would otherwise count the parent's pages twice.

Linux only (``/proc``); elsewhere the sampler is skipped and only ``ru_maxrss`` is reported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_mb: float  # max(ru_maxrss, sampled tree peak)
    maxrss_mb: float  # largest single process (wait4)
    tree_peak_mb: float  # sampled sum of PSS over the tree
    cpu_s: float  # user + system CPU time of the tree (wait4)
    stdout: str
    stderr: str
    started_at: float  # time.time() just before the spawn


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        out.extend(int(p) for p in text.split())
    return out


def _rss_kb(pid: int) -> int:
    for path, key in ((f"/proc/{pid}/smaps_rollup", b"Pss:"), (f"/proc/{pid}/status", b"VmRSS:")):
        try:
            with open(path, "rb") as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return 0


def tree_rss_kb(pid: int) -> tuple[frozenset[int], int]:
    """(pids in the tree, their summed PSS in KiB)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_kb(p)
        todo.extend(_children(p))
    return frozenset(seen), total


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None, interval_s: float = 0.05, timeout_s: float = 1800) -> Measured:
    """Run ``cmd`` to completion, capturing its output, its wall time and its peak memory."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started_at = time.time()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            # A sample counts only when the tree is the same as in the one before: around a fork
            # the parent and the child are read at different moments and their pages counted twice.
            last: frozenset[int] = frozenset()
            while not stop.is_set():
                pids, kb = tree_rss_kb(proc.pid)
                if pids == last:
                    peak[0] = max(peak[0], kb)
                last = pids
                stop.wait(interval_s)

        sampler = threading.Thread(target=sample, daemon=True)
        if os.path.isdir("/proc"):
            sampler.start()
        deadline = time.monotonic() + timeout_s
        while True:  # os.wait4 gives the child's own rusage; poll it so a hung child can be killed
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.005)
        wall = time.monotonic() - t0
        stop.set()
        if sampler.is_alive():
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    maxrss = usage.ru_maxrss / 1024  # KiB on Linux
    tree = peak[0] / 1024
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(proc.returncode, wall, max(maxrss, tree), maxrss, tree, cpu, stdout, stderr, started_at)


class RunDirs:
    """A new directory for each timed run (phase), all removed together once the benchmark is done.

    Removing a phase's files just before the next phase creates as many made that phase slow on
    ext4 and worse, at random: for a while after a deletion, the kernel's inode allocator
    steps over every recently deleted inode (``recently_deleted`` in ``perf``), and creating a file
    took ~0.9 ms instead of ~30 us. ``tar xzf`` of the replica took 12-25 s right after a removal
    against 3.7 s otherwise, whichever phase came second paid for it, and the ratios moved by 2x.
    The laptop benchmark's CLI run (1,000 clips and a Dagster instance) took ~10.4 s in a directory
    whose previous run had just been removed, ~7.0 s in a new one. Kept to the end, the runs need
    the disk of all of them (``make bench-scale``: ``2 x --repeat`` times the replica's bytes).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # An earlier benchmark's directories (one cut short left its renamed ones): removed at the end too.
        earlier = [p for p in (root, *root.parent.glob(f".old-*-{root.name}")) if p.is_dir()]
        self.trash = [p if p.name.startswith(".old-") else p.rename(p.with_name(f".old-{time.time_ns()}-{p.name}")) for p in earlier]
        self.n = 0

    def new(self, name: str) -> Path:
        self.n += 1
        return self.root / f"{self.n:02d}-{name}"

    def remove(self, keep: bool) -> None:
        for p in self.trash + ([] if keep else [self.root]):
            shutil.rmtree(p, ignore_errors=True)
