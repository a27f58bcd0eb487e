"""Who may write what at the same time: advisory ``flock`` locks under ``<lsvq_dir>/locks/``.

* ``cli.lock``: one operator CLI run per working directory. A second run stops at once with
  exit code 3 and a message naming the holder (``--wait``: it waits for the holder instead).
  Runs launched from the Dagster UI do not take it.
* ``slice-<key>.lock``: one ``lsvq_clips`` materialisation of a slice at a time, whoever runs it
  (the CLI, the UI, a backfill; any process). A second one waits, then finds the slice's clips
  done. Different slices never wait for each other.

A ``flock`` belongs to the open file: the kernel drops it when its holder exits, however it exits
(``kill -9`` included), so a lock is never stale and nothing has to be cleaned up after a crash.
The files themselves are never deleted (deleting a lock file someone waits on would let two
holders in). Each holder writes who it is (pid, host, start, what it runs) into the file, for
the messages of the processes that find it taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lsvq_assets.core.errors import UserError
from lsvq_assets.core.store import utc_now

LOCKS_DIR = "locks"
CLI_LOCK = "cli.lock"
EXIT_LOCKED = 3

_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,79}")


class LockHeld(UserError):
    """Another process holds the lock (the CLI exits with EXIT_LOCKED)."""

    exit_code = EXIT_LOCKED

    def __init__(self, message: str, holder: dict) -> None:
        super().__init__(message)
        self.holder = holder


def read_holder(path: Path) -> dict:
    """What the lock's current (or last) holder wrote about itself; {} when unknown."""
    try:
        data = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder_of_taken(path: Path, patience_s: float = 2.0) -> dict:
    """The holder of a lock just found taken: it writes who it is right after taking the lock, so
    an empty file means "a moment ago"; read again for a little while before saying unknown."""
    deadline = time.monotonic() + patience_s
    while True:
        holder = read_holder(path)
        if holder.get("pid") or time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


def describe(holder: dict) -> str:
    """``pid 123 on host, since 2024-05-01T12:00:00+00:00, running X`` (what is known of it)."""
    if not holder.get("pid"):
        return "a process that did not say who it is"
    parts = [f"pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else "")]
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    if holder.get("what"):
        parts.append(str(holder["what"]))
    return ", ".join(parts)


@contextlib.contextmanager
def file_lock(path: Path, what: str, *, wait: bool, on_wait: Callable[[dict], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block.

    Taken: ``wait=False`` raises ``LockHeld``; ``wait=True`` calls ``on_wait(holder)`` once and
    blocks until the holder releases it (or dies).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of_taken(path)
            if not wait:
                raise LockHeld(f"{path} is held by {describe(holder)}", holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me, sort_keys=True) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_path(lsvq_dir: Path, name: str) -> Path:
    return Path(lsvq_dir) / LOCKS_DIR / name


def slice_lock_path(lsvq_dir: Path, key: str) -> Path:
    """The slice's lock file; keys that are not plain file names are hashed."""
    plain = _PLAIN_KEY.fullmatch(key) and ".." not in key
    name = key if plain else "h-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return lock_path(lsvq_dir, f"slice-{name}.lock")


@contextlib.contextmanager
def cli_lock(lsvq_dir: Path, argv: list[str], *, wait: bool, on_wait: Callable[[dict], None] | None = None) -> Iterator[None]:
    """The working directory's CLI lock; raises ``LockHeld`` (exit 3) with a one-line message."""
    path = lock_path(lsvq_dir, CLI_LOCK)
    what = "lsvq-to-corpus-jsonl " + " ".join(argv)
    try:
        with file_lock(path, what.strip(), wait=wait, on_wait=on_wait):
            yield
    except LockHeld as exc:
        raise LockHeld(
            f"another run is using {lsvq_dir}: {describe(exc.holder)}. Let it finish and run again, "
            f"or pass --wait to start when it is done (lock file: {path}).",
            exc.holder,
        ) from None


@contextlib.contextmanager
def slice_lock(lsvq_dir: Path, key: str, what: str, on_wait: Callable[[dict], None] | None = None) -> Iterator[None]:
    """One writer of a slice's clips at a time: waits for the holder (it never fails for it)."""
    with file_lock(slice_lock_path(lsvq_dir, key), what, wait=True, on_wait=on_wait):
        yield
