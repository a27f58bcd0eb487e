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
from lsvq_assets.core.locks import EXIT_LOCKED, cli_lock, describe  # noqa: F401  (EXIT_LOCKED: 3)
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


class ShardFailed(RuntimeError):
    """The lsvq_shard run failed (the CLI exits 1: the slices are recorded, run again)."""


@dataclass
class CliReport:
    failed_slices: dict[str, str] = field(default_factory=dict)
    shard_metadata: dict = field(default_factory=dict)


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Did Ctrl-C / SIGTERM end this run? Dagster turns the signal into a failed step, not an exception."""
    return any(
        event.is_step_failure
        and event.step_failure_data is not None
        and event.step_failure_data.error is not None
        and event.step_failure_data.error.cls_name == "DagsterExecutionInterruptedError"
        for event in result.all_events
    )


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
        if not result.success and _interrupted(result):
            raise KeyboardInterrupt(f"slice {key}")  # stop here, as the operator asked (exit 130)
        if result.success:
            log.info("slice %d/%d %s: done (run %s)", n, len(slices), key, result.run_id)
        else:
            report.failed_slices[key] = _failure_message(result)
            log.warning("slice %d/%d %s: FAILED (run %s): %s", n, len(slices), key, result.run_id, report.failed_slices[key])
    shard_config = {"loggers": run_config["loggers"]} if run_config and "loggers" in run_config else None
    result = defs.resolve_job_def("lsvq_shard_job").execute_in_process(
        instance=instance, run_config=shard_config, tags=tags, raise_on_error=False
    )
    if not result.success and _interrupted(result):
        raise KeyboardInterrupt("lsvq_shard")
    if not result.success:
        raise ShardFailed(f"assembling the shard failed: {_failure_message(result)}")
    mats = result.asset_materializations_for_node("lsvq_shard")
    report.shard_metadata = {k: v.value for k, v in mats[-1].metadata.items()} if mats else {}
    return report


def fail_abandoned_runs(instance: dg.DagsterInstance, lsvq_dir: Path) -> list[str]:
    """Mark failed the runs a CLI on ``lsvq_dir`` started and never ended (its process was killed).

    Called with the working directory's CLI lock held, so no live CLI owns such a run. Without
    this the UI would show them (and their partitions) as in progress forever.
    """
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
            tags={"lsvq/entry_point": "cli", "lsvq/lsvq_dir": str(lsvq_dir)},
        )
    )
    for rec in records:
        run = rec.dagster_run
        instance.report_run_failed(
            run,
            message=f"The CLI process that ran this (pid {run.tags.get('lsvq/pid', '?')}) ended without finishing it "
            f"(killed?); marked failed by the next CLI run on {lsvq_dir} (pid {os.getpid()}).",
        )
        log.warning("run %s was left unfinished by a killed CLI run: marked failed", run.run_id)
    return [rec.dagster_run.run_id for rec in records]


def run_cli(
    config: dict, manifest: Manifest, slices: dict[str, list[ManifestRow]], *, log_level: str, options: dict, argv: list[str], wait: bool = False
) -> int:
    """The CLI's full run, holding the working directory's CLI lock; returns its exit code.

    Another CLI run on the same working directory: ``LockHeld`` (exit 3), or with ``wait`` a wait for it.
    """
    from lsvq_assets.settings import LsvqSettings

    lsvq_dir = LsvqSettings(**config.get("lsvq", {})).layout().lsvq_dir
    lsvq_dir.mkdir(parents=True, exist_ok=True)

    def waiting(holder: dict) -> None:
        log.warning("another run is using %s (%s): waiting for it to finish", lsvq_dir, describe(holder))

    with cli_lock(lsvq_dir, argv, wait=wait, on_wait=waiting):
        return _run_locked(config, manifest, slices, log_level=log_level, options=options, argv=argv)


def _run_locked(config: dict, manifest: Manifest, slices: dict[str, list[ManifestRow]], *, log_level: str, options: dict, argv: list[str]) -> int:
    from lsvq_assets.settings import LsvqSettings

    lsvq = LsvqSettings(**config.get("lsvq", {}))
    layout = lsvq.layout()
    instance = open_instance(layout)
    fail_abandoned_runs(instance, layout.lsvq_dir)
    dagster_level = "DEBUG" if log_level == "DEBUG" else "CRITICAL"
    run_config = {
        "ops": {"lsvq_clips": {"config": options}},
        "loggers": {"console": {"config": {"log_level": dagster_level}}},
    }
    tags = {
        "lsvq/argv": json.dumps(argv),
        "lsvq/entry_point": "cli",
        "lsvq/lsvq_dir": str(layout.lsvq_dir),
        "lsvq/pid": str(os.getpid()),
    }
    rows = sum(len(v) for v in slices.values())
    log.info("%d rows in %d slices from %s; Dagster instance %s", rows, len(slices), manifest.path, instance.root_directory)
    try:
        report = run_slices(config, slices, instance, run_config=run_config, tags=tags)
    except ShardFailed as exc:
        print(f"error: {exc}; the slices are recorded: run the same command again.", file=sys.stderr)
        return EXIT_TRANSIENT
    meta = report.shard_metadata
    print(meta.get("summary", "no shard written"))
    threshold = lsvq.attrition_warn_threshold
    if meta and meta.get("attrition_pct", 0) / 100 > threshold:
        log.warning(
            "attrition %.2f%% (%d of %d rows failed to download) is above --attrition-warn-threshold %.2f; "
            "the failures are recorded in %s and in each slice's lsvq_clips failed_clips table",
            meta["attrition_pct"], meta["skipped_download"], rows, threshold, layout.store_path,
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
