"""The command: ``python -m lsvq_assets`` and ``lsvq-to-corpus-jsonl`` (see :func:`lsvq_assets.cli.main`)."""

import gc
import sys


def command() -> int:
    """Run the CLI as a command, its imports made with Python's cyclic collector off.

    Importing Dagster, SQLAlchemy, alembic, PyAV and pyarrow makes ~300,000 objects, and the
    collector walked them again and again while they were made: ~0.6 s of a ~2.8 s start
    (measured). :func:`lsvq_assets.cli.main` collects once, freezes what the imports left and turns
    the collector back on before any run; an early exit (``--help``, a user error) leaves it off.
    """
    gc.disable()
    try:
        from lsvq_assets.cli import main

        return main()
    finally:
        gc.enable()


if __name__ == "__main__":
    sys.exit(command())
