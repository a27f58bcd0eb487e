"""What the CLI does after parsing: register slices, run each through Dagster, assemble the shard."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from lsvq_assets.core.layout import Layout
from lsvq_assets.core.manifest import Manifest, ManifestRow
from lsvq_assets.partitions import register_slices

log = logging.getLogger("lsvq_assets")

EXIT_OK, EXIT_TRANSIENT, EXIT_USER = 0, 1, 2


def open_instance(layout: Layout) -> dg.DagsterInstance:
    """The instance at $DAGSTER_HOME when set, else a persistent one under the working directory."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    layout.dagster_home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.from_config(str(layout.dagster_home))


def ui_command(instance: dg.DagsterInstance, config: dict) -> str:
    """The command that opens the Dagster UI on the instance and settings the CLI used."""
    from lsvq_assets.settings import ENV_VARS

    env = [f"DAGSTER_HOME={shlex.quote(instance.root_directory)}"]
    for key, fields in ENV_VARS.items():
        for name, var in fields.items():
            value = config.get(key, {}).get(name)
            if value not in (None, ""):
                if name in ("lsvq_dir", "manifest_csv", "output", "manifest_out", "local_clips", "progress_path"):
                    value = str(Path(value).expanduser().absolute())
                env.append(f"{var}={shlex.quote(str(value))}")
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    target = f"-w {shlex.quote(str(workspace))}" if workspace.exists() else "-m lsvq_assets.definitions"
    return " ".join(env) + f" dagster dev {target}"


@dataclass
class CliReport:
    failed_slices: dict[str, str] = field(default_factory=dict)
    shard_metadata: dict = field(default_factory=dict)


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.user_failure_data:
            return event.step_failure_data.user_failure_data.description or "failed"
        if event.is_step_failure and event.step_failure_data:
            return event.step_failure_data.error.message.strip().splitlines()[-1] if event.step_failure_data.error else "failed"
    return "failed"


def run_slices(
    config: dict,
    slices: dict[str, list[ManifestRow]],
    instance: dg.DagsterInstance,
    *,
    run_config: dict | None = None,
    tags: dict | None = None,
) -> CliReport:
    """Materialise each slice (one run each), then the shard; return what failed and the shard's metadata."""
    from lsvq_assets.definitions import build_defs

    defs = build_defs(config)
    register_slices(instance, slices)
    report = CliReport()
    slice_job = defs.resolve_job_def("lsvq_slice_job")
    for n, key in enumerate(slices, 1):
        result = slice_job.execute_in_process(
            partition_key=key, instance=instance, run_config=run_config, tags=tags, raise_on_error=False
        )
        if result.success:
            log.info("slice %d/%d %s: done (run %s)", n, len(slices), key, result.run_id)
        else:
            report.failed_slices[key] = _failure_message(result)
            log.warning("slice %d/%d %s: FAILED (run %s): %s", n, len(slices), key, result.run_id, report.failed_slices[key])
    shard_config = {"loggers": run_config["loggers"]} if run_config and "loggers" in run_config else None
    result = defs.resolve_job_def("lsvq_shard_job").execute_in_process(
        instance=instance, run_config=shard_config, tags=tags, raise_on_error=False
    )
    if not result.success:
        raise RuntimeError(f"assembling the shard failed: {_failure_message(result)}")
    mats = result.asset_materializations_for_node("lsvq_shard")
    report.shard_metadata = {k: v.value for k, v in mats[-1].metadata.items()} if mats else {}
    return report


def run_cli(config: dict, manifest: Manifest, slices: dict[str, list[ManifestRow]], *, log_level: str, options: dict, argv: list[str]) -> int:
    """The CLI's full run; returns its exit code."""
    from lsvq_assets.settings import LsvqSettings

    lsvq = LsvqSettings(**config.get("lsvq", {}))
    layout = lsvq.layout()
    layout.lsvq_dir.mkdir(parents=True, exist_ok=True)
    instance = open_instance(layout)
    dagster_level = "DEBUG" if log_level == "DEBUG" else "CRITICAL"
    run_config = {
        "ops": {"lsvq_clips": {"config": options}},
        "loggers": {"console": {"config": {"log_level": dagster_level}}},
    }
    tags = {"lsvq/argv": json.dumps(argv), "lsvq/entry_point": "cli"}
    rows = sum(len(v) for v in slices.values())
    log.info("%d rows in %d slices from %s; Dagster instance %s", rows, len(slices), manifest.path, instance.root_directory)
    report = run_slices(config, slices, instance, run_config=run_config, tags=tags)
    meta = report.shard_metadata
    print(meta.get("summary", "no shard written"))
    threshold = lsvq.attrition_warn_threshold
    if meta and meta.get("attrition_pct", 0) / 100 > threshold:
        log.warning(
            "attrition %.2f%% (%d of %d rows failed to download) is above --attrition-warn-threshold %.2f; "
            "failures are recorded in %s (and %s)",
            meta["attrition_pct"], meta["skipped_download"], rows, threshold, layout.store_path, layout.progress_path,
        )
    print(f"replay manifest -> {layout.manifest_out}")
    print(f"open the UI on this instance: {ui_command(instance, config)}")
    if report.failed_slices:
        keys = ", ".join(sorted(report.failed_slices))
        print(
            f"{len(report.failed_slices)} slice(s) failed transiently ({keys}): run the same command again, "
            f"or backfill the failed partitions of lsvq_clips in the UI.",
            file=sys.stderr,
        )
        return EXIT_TRANSIENT
    return EXIT_OK
