"""The CLI's partition runs, several at once: the CLI runs one, forked worker processes the others (DESIGN §2).

A partition run is one process's work on one core for most of its time (Python's ``tarfile``,
Dagster's events, the fetch state); the probes and downloads it starts already run in threads. So
the CLI runs up to ``--partition-runs`` partitions at once: its own process takes keys from a
queue, and so does each worker forked from it once its imports are done (no second start-up; the
memory they share stays shared until one of them writes to it, ``gc.freeze()`` before the fork
keeps the collector from doing so). A worker uses the CLI's instance when its connections could be
closed before the fork (an SQLite connection must not cross a ``fork()``), else opens it again.

What the operator sees is unchanged: one progress board (the workers send their clip counts and
log lines to the CLI, which draws them), one line per finished partition, Ctrl-C or SIGTERM stops
every run (exit 130), and ``kill -9`` of the CLI takes its workers with it (``PR_SET_PDEATHSIG``).
Where ``fork`` is not available, the partitions run one after another in the CLI's process.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from lsvq_assets import progress

log = logging.getLogger("lsvq_assets")

PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15  # <linux/prctl.h>
WORKER_NAME = "lsvq-partition"  # a worker's process name (at most 15 bytes)
STOP_WAIT_S = 120.0  # how long the workers' interrupted runs may take to end
COUNT_EVERY_S = 0.1  # a worker sends its clip counts at most this often (a message a clip cost both processes)


@dataclass(frozen=True)
class Outcome:
    """How one partition's run ended, as the CLI reports it."""

    key: str
    success: bool
    run_id: str = ""
    message: str = ""  # why it failed
    interrupted: bool = False  # Ctrl-C / SIGTERM ended it


def can_fork() -> bool:
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


class _RelayPartition:
    """A worker's partition on the CLI's board: its counts, summed over ``COUNT_EVERY_S``."""

    def __init__(self, relay: _Relay, key: str) -> None:
        self.relay, self.key = relay, key
        self.lock = threading.Lock()  # the download and probe threads count at once
        self.n = self.nbytes = 0
        self.last = 0.0

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        with self.lock:
            self.n, self.nbytes = self.n + n, self.nbytes + nbytes
            due = time.monotonic() - self.last >= COUNT_EVERY_S
            counts = self._take_locked() if due else None
        if counts:  # counts add up: their order among threads does not matter
            self.relay.send(counts)

    def _take_locked(self) -> tuple | None:
        counts = ("count", self.key, self.n, self.nbytes) if self.n or self.nbytes else None
        self.n = self.nbytes = 0
        self.last = time.monotonic()
        return counts

    def close(self) -> None:
        with self.lock:
            counts = self._take_locked()
        if counts:
            self.relay.send(counts)
        self.relay.send(("closed", self.key))


class _Relay:
    """A worker's progress board: clip counts and log lines go to the CLI's board."""

    bar = None

    def __init__(self, conn: Connection) -> None:
        self.conn, self.lock = conn, threading.Lock()

    def send(self, message: tuple) -> None:
        with self.lock:  # the download and probe threads report at once
            self.conn.send(message)

    def partition(self, key: str, total: int) -> _RelayPartition:
        self.send(("partition", key, total))
        return _RelayPartition(self, key)

    def write(self, line: str, stream: Any) -> bool:
        self.send(("line", line, stream is sys.stdout))
        return True


def _die_with(parent: int) -> None:
    """This process is killed when the CLI that forked it dies, even by ``kill -9``; ``ps``/``top`` call it ``WORKER_NAME``."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        libc.prctl(PR_SET_NAME, WORKER_NAME.encode())
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _worker(conn: Connection, parent: int, open_runner: Callable[[], Callable[[str], Outcome]]) -> None:
    _die_with(parent)
    os.setpgid(0, 0)  # a Ctrl-C reaches the CLI, which stops each worker once (a second would cut a run's cleanup)
    signal.set_wakeup_fd(-1)  # the CLI's own, inherited
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        relay = _Relay(conn)
        progress.install(relay)
        run = open_runner()
        while (key := conn.recv()) is not None:
            outcome = run(key)
            relay.send(("done", outcome))
            if outcome.interrupted:
                break
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # stopped by the CLI while waiting for work, or the CLI is gone


class _Workers:
    """The forked workers and the thread in the CLI that hands them keys and relays what they send."""

    def __init__(self, n: int, open_runner: Callable[[], Callable[[str], Outcome]], board: Any, take: Callable[[], str | None]) -> None:
        self.board, self.take = board, take
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self.procs: dict[Connection, Any] = {}
        self.running: dict[Connection, str] = {}
        self.parts: dict[str, Any] = {}
        self.stopping = False
        ctx = multiprocessing.get_context("fork")
        gc.freeze()  # what exists now is shared with the workers: the collector must not touch (copy) it
        for _ in range(n):  # forked before this object's thread starts: no thread but the main one crosses a fork
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(theirs, os.getpid(), open_runner), daemon=True)
            proc.start()
            theirs.close()
            self.procs[mine] = proc
        self.thread = threading.Thread(target=self._relay, name="lsvq-partition-workers", daemon=True)
        self.thread.start()

    def _give(self, conn: Connection) -> None:
        key = None if self.stopping else self.take()
        with contextlib.suppress(OSError):
            conn.send(key)  # None: no more work, the worker ends
        if key is not None:
            self.running[conn] = key

    def _handle(self, conn: Connection, message: tuple) -> None:
        kind = message[0]
        if kind == "partition":
            self.parts[message[1]] = self.board.partition(message[1], message[2])
        elif kind == "count":
            self.parts[message[1]].update(message[2], message[3])
        elif kind == "closed":
            self.parts.pop(message[1]).close()
        elif kind == "line":
            stream = sys.stdout if message[2] else sys.stderr
            if not progress.write_line(message[1], stream):
                print(message[1], file=stream, flush=True)
        elif kind == "done":
            outcome: Outcome = message[1]
            self.running.pop(conn, None)
            self.outcomes.put(outcome)
            if not outcome.interrupted:
                self._give(conn)

    def _gone(self, conn: Connection) -> None:
        proc = self.procs.pop(conn)
        proc.join()
        conn.close()
        key = self.running.pop(conn, None)
        if key in self.parts:
            self.parts.pop(key).close()
        if key is not None:
            why = f"its worker process ended without a result (exit code {proc.exitcode})"
            self.outcomes.put(Outcome(key, False, message=why))

    def _relay(self) -> None:
        for conn in list(self.procs):
            self._give(conn)
        while self.procs:
            for ready in wait(list(self.procs), timeout=1.0):
                assert isinstance(ready, Connection)
                try:
                    message = ready.recv()
                except (EOFError, OSError):
                    self._gone(ready)
                else:
                    self._handle(ready, message)

    def outcomes_so_far(self) -> list[Outcome]:
        done = []
        with contextlib.suppress(queue.Empty):
            while True:
                done.append(self.outcomes.get_nowait())
        return done

    def finish(self, on_outcome: Callable[[Outcome], None]) -> None:
        """Wait for every worker to end, passing on each outcome as it comes."""
        while self.thread.is_alive() or not self.outcomes.empty():
            with contextlib.suppress(queue.Empty):
                on_outcome(self.outcomes.get(timeout=0.2))

    def stop(self) -> None:
        """Stop each worker's run once (it ends as interrupted) and wait for them; kill what is left after STOP_WAIT_S."""
        self.stopping = True
        for proc in list(self.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        self.thread.join(STOP_WAIT_S)
        for proc in list(self.procs.values()):
            proc.kill()
        for outcome in self.outcomes_so_far():
            log.warning("partition %s: %s (run %s)", outcome.key, "interrupted" if outcome.interrupted else "ended", outcome.run_id)


def run_parallel(
    keys: list[str],
    workers: int,
    run_here: Callable[[str], Outcome],
    open_runner: Callable[[], Callable[[str], Outcome]],
    board: Any,
    on_outcome: Callable[[Outcome], None],
) -> None:
    """Run ``keys`` ``workers`` at once: in this process (``run_here``) and in ``workers - 1`` forked ones.

    ``open_runner`` is called once in each forked worker and returns the function that runs a key
    there. ``on_outcome`` is called in this thread as each run ends. An interrupt (KeyboardInterrupt
    here, or raised by ``on_outcome``) stops every worker's run and is re-raised once they have
    ended; a worker that dies gives its partition a failed outcome.
    """
    pending = list(reversed(keys))
    lock = threading.Lock()

    def take() -> str | None:
        with lock:
            return pending.pop() if pending else None

    others = _Workers(min(workers, len(keys)) - 1, open_runner, board, take)
    try:
        while (key := take()) is not None:
            outcome = run_here(key)
            for other in others.outcomes_so_far():
                on_outcome(other)
            on_outcome(outcome)
        others.finish(on_outcome)
    except BaseException:
        others.stop()  # Ctrl-C / SIGTERM, or a run interrupted
        raise
