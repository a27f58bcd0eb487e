"""The command: ``python -m lsvq_assets`` and ``lsvq-to-corpus-jsonl`` (see :func:`lsvq_assets.cli.main`)."""

import atexit
import gc
import os
import sys
from typing import NoReturn


def command() -> int:
    """Run the CLI as a command, its imports made with Python's cyclic collector off.

    Importing Dagster, SQLAlchemy, alembic, PyAV and pyarrow makes ~300,000 objects, and the
    collector walked them again and again while they were made (the imports alone: 2.1-2.8 s with
    it, 1.7-2.0 s without, measured). :func:`lsvq_assets.cli.main` freezes them and turns the
    collector back on before any run; an early exit (``--help``, a user error) ends with it off.
    """
    gc.disable()
    try:
        from lsvq_assets.cli import main

        return main()
    finally:
        gc.enable()


def run() -> NoReturn:
    """The command's entry (console script and ``python -m``): :func:`command`, then :func:`exit_now`.

    Under a profiler or a tracer (``python -m cProfile -o``, ``trace``, a debugger), which write
    their results as the interpreter unwinds, the process exits the usual way.
    """
    code = command()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` without the interpreter's teardown.

    Python's shutdown frees the ~400,000 objects Dagster and the rest made, one by one: 0.2-0.6 s
    on every invocation, a no-op refresh included (measured: 3.91 -> 3.29 s). Nothing of the command's work depends
    on it: its files are fsynced and renamed, its Dagster instance disposed (the SQLite WAL
    checkpointed) and its partition workers gone before :func:`command` returns. What a normal exit
    does for the rest still happens: the ``atexit`` handlers run (logging's flush among them),
    then stdout and stderr are flushed.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): what could be written was
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
