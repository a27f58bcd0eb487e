"""lsvq-to-corpus-jsonl: the seed's operator CLI, materialising the assets through Dagster."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from lsvq_assets.core.errors import UserError
from lsvq_assets.settings import DEFAULT_LSVQ_DIR, ENV_VARS

log = logging.getLogger("lsvq_assets")

# CLI flag dest -> (resource key, field). Values come from the flag, else the LSVQ_* variable, else the default.
FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "lsvq_dir": ("lsvq", "lsvq_dir"),
    "manifest_csv": ("lsvq", "manifest_csv"),
    "progress_path": ("lsvq", "progress_path"),
    "clips_subdir": ("lsvq", "clips_subdir"),
    "clip_suffix": ("lsvq", "clip_suffix"),
    "output": ("lsvq", "output"),
    "manifest_out": ("lsvq", "manifest_out"),
    "corpus_version": ("lsvq", "corpus_version"),
    "attrition_warn_threshold": ("lsvq", "attrition_warn_threshold"),
    "max_rows": ("lsvq", "max_rows"),
    "min_csv_rows": ("lsvq", "min_csv_rows"),
    "source": ("clip_source", "source"),
    "clip_url_template": ("clip_source", "clip_url_template"),
    "archive_url_template": ("clip_source", "archive_url_template"),
    "local_clips": ("clip_source", "local_clips"),
    "keep_archives": ("clip_source", "keep_archives"),
    "concurrency": ("clip_source", "concurrency"),
    "download_timeout_s": ("clip_source", "download_timeout_s"),
    "probe_backend": ("prober", "backend"),
    "ffprobe_bin": ("prober", "ffprobe_bin"),
}


EXIT_CODES_EPILOG = """\
exit codes:
  0    the shard was written; clips that failed permanently (404, 410, empty body, not a
       video) are skipped and recorded, as the seed does (also: --help, --dry-run)
  1    some slices failed transiently (timeouts, 5xx, 429, resets, a full disk) or the shard
       could not be assembled: everything else is recorded, run the same command again
       (also Python's code for an unexpected error, printed with its traceback)
  2    the command line, a setting or the manifest cannot be used (one line: "error: ...")
  3    another run of this command holds the working directory (its pid is named); let it
       finish, or pass --wait to start when it is done
  130  interrupted (Ctrl-C or SIGTERM); run the same command again to resume
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lsvq-to-corpus-jsonl",
        description="Ingest LSVQ into the MOS-corpus JSONL shard by materialising the lsvq_assets "
        "Dagster assets in-process (the runs show in the Dagster UI).",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--lsvq-dir", help=f"working directory (default: {DEFAULT_LSVQ_DIR}; LSVQ_DIR)")
    a("--manifest-csv", help="split CSV or labels file (default: <lsvq-dir>/manifest.csv; LSVQ_MANIFEST_CSV)")
    a("--progress-path", help="the seed's progress file to import (default: <lsvq-dir>/.download-progress.json)")
    a("--clips-subdir", help="clips directory under --lsvq-dir (default: clips)")
    a("--clip-suffix", help="suffix appended to every CSV name (default: .mp4)")
    a("--output", help="output JSONL (default: <lsvq-dir>/lsvq.jsonl; LSVQ_OUTPUT)")
    a("--manifest-out", help="replay manifest (default: <output> with .manifest.json)")
    a("--corpus-version", help="dataset version in every row (default: lsvq-2021)")
    a("--attrition-warn-threshold", type=float, help="advisory download-failure rate (default: 0.10)")
    a("--max-rows", type=int, help="row cap in manifest order (default: 500; 0 = all; LSVQ_MAX_ROWS)")
    a("--full", action="store_true", help="no row cap: ingest the whole manifest")
    a("--min-csv-rows", type=int, help="refuse a manifest with fewer data rows (default: 1000)")
    a("--download-timeout-s", type=float, help="connect and read timeout per request, seconds (default: 120); "
      "a download still under 16 KiB/s after that long is abandoned (transient)")
    a("--concurrency", type=int, help="clips downloaded at once (default: 16; LSVQ_CONCURRENCY)")
    a("--clip-url-template", help="per-clip URL from {name} {folder} {stem} {suffix} when the manifest has no URL column")
    a("--source", choices=["auto", "url", "archive", "local"], help="where clips come from (default: auto; LSVQ_SOURCE)")
    a("--archive-url-template", help="folder archive URL with {folder} (LSVQ_ARCHIVE_URL_TEMPLATE)")
    a("--local-clips", help="directory of already extracted clips, for --source local (LSVQ_LOCAL_CLIPS)")
    a("--keep-archives", action="store_true", default=None, help="keep folder archives after their slice succeeded")
    a("--probe-backend", choices=["pyav", "ffprobe"], help="pyav (in-process, default) or ffprobe (LSVQ_PROBE_BACKEND)")
    a("--ffprobe-bin", help="ffprobe binary (default: $FFPROBE_BIN or ffprobe); naming it selects --probe-backend ffprobe")
    a("--curl-bin", help="accepted for the seed's scripts and ignored: clips are fetched in-process")
    a("--retry-failed", action="store_true", help="also retry clips that failed permanently (404, 410, empty body)")
    a("--verify", action="store_true", help="re-hash clips already on disk instead of trusting their recorded size")
    a("--dry-run", action="store_true", help="parse, validate and slice; download nothing; print JSON")
    a("--wait", action="store_true", help="when another run holds the working directory, wait for it instead of exiting with code 3")
    a("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def resolve_config(args: argparse.Namespace, environ: os._Environ | dict | None = None) -> dict[str, dict]:
    """Resource constructor arguments: flag, else LSVQ_* variable, else the field's default."""
    environ = os.environ if environ is None else environ
    config: dict[str, dict] = {}
    for dest, (resource, field) in FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        var = ENV_VARS.get(resource, {}).get(field)
        if value is None and var and environ.get(var):
            value = environ[var]
        if value is not None:
            config.setdefault(resource, {})[field] = value
    if args.full:
        config.setdefault("lsvq", {})["max_rows"] = 0
    if args.ffprobe_bin and not args.probe_backend and not environ.get("LSVQ_PROBE_BACKEND"):
        config.setdefault("prober", {})["backend"] = "ffprobe"
    return config


def _invalid_settings(exc: ValueError) -> str:
    """One line naming each bad setting, its LSVQ_* variable and value."""
    problems = []
    for err in getattr(exc, "errors", lambda: [])() or [{"loc": (), "msg": str(exc)}]:
        field = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        var = ENV_VARS.get("lsvq", {}).get(field)
        where = f"{field} ({var})" if var else field
        value = f" = {err['input']!r}" if "input" in err else ""
        problems.append(f"{where}{value}: {err.get('msg', 'invalid')}")
    return "invalid setting: " + "; ".join(problems) + "."


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and threading.current_thread() is threading.main_thread():
        # The command itself: SIGTERM (systemd, docker stop, timeout) stops it like Ctrl-C, exit 130.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(args.log_level)
    try:
        from lsvq_assets.settings import LsvqSettings

        config = resolve_config(args)
        try:
            lsvq = LsvqSettings(**config.get("lsvq", {}))
        except ValueError as exc:  # pydantic's ValidationError, e.g. LSVQ_MAX_ROWS=abc
            raise UserError(_invalid_settings(exc)) from None
        manifest = lsvq.read_manifest()
        slices = lsvq.slices(manifest)
        if args.dry_run:
            kept = sum(len(rows) for rows in slices.values())
            print(
                json.dumps(
                    {
                        "rows": kept,
                        "dropped": manifest.dropped_counts(),
                        "slices": {k: len(v) for k, v in slices.items()},
                        "manifest": str(manifest.path),
                        "format": manifest.format,
                        "data_rows": manifest.data_rows,
                        "defaulted": manifest.defaulted,
                        "max_rows": lsvq.max_rows,
                    }
                )
            )
            return 0
        from lsvq_assets.runner import run_cli

        from lsvq_assets.resources import ClipSourceResource, ProbeResource

        # Setup problems (no ffprobe, no --local-clips directory, a bad template) are user errors: find them before any run.
        ProbeResource(**config.get("prober", {})).prober()
        ClipSourceResource(**config.get("clip_source", {})).open(manifest.has_urls).close()
        options = {"retry_failed": args.retry_failed, "verify": args.verify}
        argv_used = list(sys.argv[1:] if argv is None else argv)
        # Everything imported now lives for the whole run: keep the collector from walking it again
        # and again (measured: ~0.3 s a run, and ~0.5 s at exit, in benchmarks/).
        gc.freeze()
        return run_cli(config, manifest, slices, log_level=args.log_level, options=options, argv=argv_used, wait=args.wait)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
