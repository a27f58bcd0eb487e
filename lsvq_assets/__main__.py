"""The command: ``python -m lsvq_assets`` and ``lsvq-to-corpus-jsonl`` (see :func:`lsvq_assets.cli.main`)."""

import gc
import sys


def command() -> int:
    """Run the CLI as a command, its imports made with Python's cyclic collector off.

    Importing Dagster, SQLAlchemy, alembic, PyAV and pyarrow makes ~300,000 objects, and the
    collector walked them again and again while they were made (the imports alone: 2.1-2.8 s with
    it, 1.7-2.0 s without, measured). :func:`lsvq_assets.cli.main` collects once (~0.2 s), freezes
    what is left and turns the collector back on before any run; an early exit (``--help``, a user
    error) ends with it off.
    """
    gc.disable()
    try:
        from lsvq_assets.cli import main

        return main()
    finally:
        gc.enable()


if __name__ == "__main__":
    sys.exit(command())
