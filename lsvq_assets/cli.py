"""lsvq-to-corpus-jsonl: the seed's operator CLI, materialising the assets through Dagster."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lsvq-to-corpus-jsonl",
        description="Ingest LSVQ into the MOS-corpus JSONL shard by materialising the lsvq_assets "
        "Dagster assets in-process (the runs show in the Dagster UI).",
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
    a("--dry-run", action="store_true", help="parse, validate and slice; download nothing; print JSON")
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
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        from lsvq_assets.settings import LsvqSettings

        config = resolve_config(args)
        lsvq = LsvqSettings(**config.get("lsvq", {}))
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

        return run_cli(config, manifest, slices, log_level=args.log_level)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
