"""Progress of long work: clips done of total, bytes, rate, ETA.

A partition's run counts its clips as they finish (``lsvq_clips``). Where that count goes:
- in the operator CLI on a terminal: one tqdm bar per running partition and one overall;
- in the CLI without a terminal (CI, ``nohup``, a log file): a plain summary line every 30 s;
- in a run launched by the UI, a sensor or a backfill: the run's log, at most every 15 s.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _eta(done: int, total: int, elapsed: float) -> str:
    if not done or done >= total:
        return "-"
    seconds = elapsed * (total - done) / done
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class Counter:
    """Clips and bytes of one piece of work, thread-safe."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.bytes = total, 0, 0
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def add(self, n: int, nbytes: int) -> None:
        with self.lock:
            self.done += n
            self.bytes += nbytes

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.bytes / elapsed if elapsed > 0 else 0.0
        return f"{self.done}/{self.total} clips, {_human(self.bytes)}, {_human(rate)}/s, ETA {_eta(self.done, self.total, elapsed)}"


class LogProgress:
    """One partition's progress in its run's log, at most every ``interval_s`` (never one event per clip)."""

    def __init__(self, key: str, total: int, log: Callable[[str], Any], interval_s: float = 15.0) -> None:
        self.key, self.log, self.interval_s = key, log, interval_s
        self.counter = Counter(total)
        self.last = time.monotonic()

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        self.counter.add(n, nbytes)
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self.log(f"partition {self.key}: {self.counter.line()}")

    def close(self) -> None:
        """Nothing to close: the run logs its outcome itself."""


class Board:
    """The CLI's progress: tqdm bars on a terminal, else a summary line every ``interval_s``."""

    def __init__(
        self, total: int, stream: Any = None, tty: bool | None = None, interval_s: float = 30.0, log: Callable[[str], Any] | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.overall = Counter(total)
        self.interval_s, self.log = interval_s, log or (lambda line: print(line, file=self.stream, flush=True))
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.bar: Any = None
        self.slots: list[bool] = []
        if self.tty:
            from tqdm import tqdm

            self._tqdm = tqdm
            self.bar = tqdm(total=total, desc="all partitions", unit="clip", file=self.stream, position=0)

    def partition(self, key: str, total: int) -> BoardPartition:
        with self.lock:
            slot = next((i for i, used in enumerate(self.slots) if not used), len(self.slots))
            if slot == len(self.slots):
                self.slots.append(True)
            self.slots[slot] = True
        bar = self._tqdm(total=total, desc=key, unit="clip", file=self.stream, position=slot + 1, leave=False) if self.tty else None
        return BoardPartition(self, key, total, slot, bar)

    def _update(self, n: int, nbytes: int) -> None:
        self.overall.add(n, nbytes)
        if self.bar is not None:
            with self.lock:
                self.bar.update(n)
                self.bar.set_postfix_str(f"{_human(self.overall.bytes)}", refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self.log(f"progress: {self.overall.line()}")

    def _release(self, slot: int) -> None:
        with self.lock:
            self.slots[slot] = False

    def write(self, line: str, stream: Any) -> bool:
        if self.bar is None:
            return False
        self._tqdm.write(line, file=stream)
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.overall.done:
            self.log(f"progress: {self.overall.line()}")


class BoardPartition:
    def __init__(self, board: Board, key: str, total: int, slot: int, bar: Any) -> None:
        self.board, self.key, self.slot, self.bar = board, key, slot, bar
        self.counter = Counter(total)

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        self.counter.add(n, nbytes)
        if self.bar is not None:
            self.bar.update(n)
        self.board._update(n, nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.board._release(self.slot)


class PartitionProgress(Protocol):
    """One partition's clip count, wherever it goes."""

    def update(self, n: int = 1, nbytes: int = 0) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Where a process's partitions report: the CLI's ``Board``, or a worker's relay to it (``parallel``)."""

    def partition(self, key: str, total: int) -> PartitionProgress: ...

    def write(self, line: str, stream: Any) -> bool: ...


_board: Sink | None = None


def install(board: Sink | None) -> None:
    """The CLI's board for the partitions it runs in this process (None: back to run logs)."""
    global _board
    _board = board


def write_line(line: str, stream: Any) -> bool:
    """Print a log line above the bars when a board draws on a terminal; False when there is none."""
    board = _board
    return board is not None and board.write(line, stream)


def partition_progress(key: str, total: int, log: Callable[[str], Any]) -> PartitionProgress:
    """Where one partition's clip count goes: the CLI's board in its process, else the run's log."""
    board = _board
    return board.partition(key, total) if board is not None else LogProgress(key, total, log)
