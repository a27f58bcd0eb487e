"""lsvq-to-corpus-jsonl: the seed's operator CLI, materialising the assets through Dagster."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.abc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from lsvq_assets.core.errors import UserError
from lsvq_assets.settings import SETTINGS, Setting, parse_value

log = logging.getLogger("lsvq_assets")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a caller may have replaced it since import)."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass

    def emit(self, record: logging.LogRecord) -> None:
        from lsvq_assets import progress

        try:
            if progress.write_line(self.format(record), sys.stderr):  # above the progress bars
                return
        except Exception:  # noqa: BLE001 - fall back to a plain line
            pass
        super().emit(record)


_handler = _StderrHandler()
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

EXIT_CODES_EPILOG = """\
exit codes:
  0    the shards were written; clips that failed permanently (404, 410, empty body, not a
       video) are skipped and recorded, as the seed does (also: --help, --dry-run)
  1    some partitions failed transiently (timeouts, 5xx, 429, resets, a full disk) or a shard
       could not be assembled: everything else is recorded, run the same command again
       (also Python's code for an unexpected error, printed with its traceback)
  2    the command line, a setting or a label file cannot be used (one line: "error: ...")
  3    another run of this command holds the working directory (its pid is named); let it
       finish, or pass --wait to start when it is done
  130  interrupted (Ctrl-C or SIGTERM); run the same command again to resume
"""


DEFAULT_PARTITION_RUNS = min(2, os.cpu_count() or 1)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number >= 1")
    return value


def dest(s: Setting) -> str:
    return (s.flag or s.var).lstrip("-").replace("-", "_").lower()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lsvq-to-corpus-jsonl",
        description="Ingest LSVQ into MOS-corpus JSONL shards (one per split) by materialising the "
        "lsvq_assets Dagster assets in-process (the runs show in the Dagster UI). Every setting "
        "has an LSVQ_* variable; a flag wins over its variable, which wins over the default.",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for s in SETTINGS:
        if not s.flag:
            continue
        default = s.default_text().strip("*")
        help_text = f"{s.help} (default: {default}; {s.var})"
        if s.kind is bool:
            p.add_argument(s.flag, dest=dest(s), action="store_const", const="true", default=None, help=help_text)
        elif s.repeat:
            p.add_argument(s.flag, dest=dest(s), action="append", metavar="NAME=PATH", help=help_text)
        else:
            metavar = "{" + ",".join(s.choices) + "}" if s.choices else dest(s).upper()
            p.add_argument(s.flag, dest=dest(s), metavar=metavar, help=help_text)
    a = p.add_argument
    a("--full", action="store_true", help="no row cap: ingest every row of every split (--max-rows 0)")
    a(
        "--partition",
        action="append",
        metavar="KEY",
        help="run only this partition (repeatable), then assemble the shards from every partition materialised so far",
    )
    a("--curl-bin", help="accepted for the seed's scripts and ignored: clips are fetched in-process")
    a("--retry-failed", action="store_true", help="also retry clips that failed permanently (404, 410, empty body)")
    a("--verify", action="store_true", help="re-hash clips already on disk; a clip whose bytes changed is removed and fetched again")
    a("--dry-run", action="store_true", help="parse, validate and partition; download nothing; print JSON")
    a("--wait", action="store_true", help="when another run holds the working directory, wait for it instead of exiting with code 3")
    a(
        "--partition-runs",
        type=_positive,
        default=DEFAULT_PARTITION_RUNS,
        metavar="N",
        help=f"partitions run at once: this process runs one, forked worker processes the others (default: {DEFAULT_PARTITION_RUNS}, "
        "the cores up to 2); 1 runs them one after another in this process",
    )
    a("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def resolve_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Resource constructor arguments: flag, else variable, else the default; each value checked (UserError)."""
    environ = os.environ if environ is None else environ
    config: dict[str, dict] = {}
    for s in SETTINGS:
        raw = getattr(args, dest(s), None) if s.flag else None
        if isinstance(raw, list):
            raw = ",".join(raw)
        if raw is not None:
            config.setdefault(s.resource, {})[s.field] = parse_value(s, raw, from_flag=True)
        elif environ.get(s.var, "") != "":
            config.setdefault(s.resource, {})[s.field] = parse_value(s, environ[s.var])
    if args.full:
        config.setdefault("lsvq", {})["max_rows"] = 0
    if args.ffprobe_bin and not args.probe_backend and not environ.get("LSVQ_PROBE_BACKEND"):
        config.setdefault("prober", {})["backend"] = "ffprobe"
    return config


HIDDEN = ("pandas", "numpy")  # optional for pyarrow, and used by nothing here
M_ARENA_MAX = -8  # glibc's mallopt parameter


class _Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (not used by lsvq-to-corpus-jsonl)", name=name)
        return None


def _lean_process() -> None:
    """Keep the command's memory to what it uses; each partition run in a worker process pays it again.

    - pandas and numpy look absent. pyarrow imports numpy when it is installed, and pandas the
      first time it converts Python values, only to ask whether they are pandas objects; both are
      optional for pyarrow and nothing here uses them (pandas ~50 MB, numpy ~10 MB).
    - Arrow allocates through the C library's ``malloc`` instead of its own mimalloc heap, which
      keeps what it once held (17-30 MB a process here). Set before Arrow's first allocation (its
      C++ readers read the variable then); an operator's own ``ARROW_DEFAULT_MEMORY_POOL`` wins.
    - glibc keeps at most 2 arenas instead of one per thread that allocates (the download, probe
      and Dagster threads); those threads stream and hash, they allocate little.

    Measured with ``make bench-scale`` (the tree's peak, 3,300 rows, two partition runs at once):
    pandas hidden 311 -> 264 MB at corpus scale (one run at a time); the allocator 321-323 -> 287-290 MB;
    the arenas -> 279-282 MB with numpy hidden. Only the command itself does this (``main()``
    without ``argv``), never a process that imports the package (the UI's code server, the tests).
    """
    if not any(name in sys.modules for name in HIDDEN) and not any(isinstance(f, _Hidden) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hidden())
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and threading.current_thread() is threading.main_thread():
        # The command itself: SIGTERM (systemd, docker stop, timeout) stops it like Ctrl-C, exit 130.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        _lean_process()
    args = build_parser().parse_args(argv)
    if _handler not in log.handlers:
        log.addHandler(_handler)
    log.setLevel(args.log_level)
    try:
        from lsvq_assets.resources import ClipSourceResource, LsvqSettings, ProbeResource

        config = resolve_config(args)
        lsvq = LsvqSettings(**config.get("lsvq", {}))
        for split in lsvq.split_names():
            lsvq.shard_paths(split)  # --output with several splits: a user error, before any work
        plan = lsvq.plan()
        keys = plan.selected()
        if args.partition:
            unknown = [k for k in args.partition if k not in plan.partitions]
            if unknown:
                raise UserError(f"--partition {unknown[0]}: no such partition in the label files (try --dry-run to list them).")
            keys = list(dict.fromkeys(args.partition))
        if args.dry_run:
            summary = plan.summary()
            if args.partition:
                summary["slices"] = {k: len(plan.partitions[k]) for k in keys}
            summary.update(
                max_rows=lsvq.max_rows,
                partitions=len(plan.partitions),
                label_files={
                    s: {"path": str(m.path), "format": m.format, "data_rows": m.data_rows, "defaulted": m.defaulted}
                    for s, m in plan.splits.items()
                },
            )
            print(json.dumps(summary))
            return 0
        from lsvq_assets.runner import Invocation, run_cli

        # Setup problems (no ffprobe, no --local-clips directory, a bad template, an unreadable
        # token file) are user errors: find them before any run.
        ProbeResource(**config.get("prober", {})).prober()
        ClipSourceResource(**config.get("clip_source", {})).open(any(m.has_urls for m in plan.splits.values())).close()
        options = {"retry_failed": args.retry_failed, "verify": args.verify}
        argv_used = list(sys.argv[1:] if argv is None else argv)
        # Everything imported now lives for the whole run: keep the collector from walking it again
        # and again (measured: ~0.3 s a run, and ~0.5 s at exit, in benchmarks/). The command
        # (__main__.command) made it with the collector off, and the collector is on for the runs.
        # No collection first: it took 0.12-0.14 s to find ~800 garbage objects among ~150,000.
        gc.freeze()
        if argv is None:
            gc.enable()
        how = Invocation(args.log_level, options, argv_used, chosen=bool(args.partition), workers=args.partition_runs)
        return run_cli(config, plan, keys, how, wait=args.wait)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
