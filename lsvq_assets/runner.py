"""What the CLI does after parsing: register partitions, run each that is not current through Dagster, assemble the shards."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from lsvq_assets import parallel, progress
from lsvq_assets.automation import PARTITION_JOB
from lsvq_assets.checks import LEAKAGE_CHECK
from lsvq_assets.core import storage
from lsvq_assets.core.locks import EXIT_LOCKED, cli_lock, describe  # noqa: F401  (EXIT_LOCKED: 3)
from lsvq_assets.core.partitioning import Plan
from lsvq_assets.parallel import Outcome
from lsvq_assets.partitions import register_partitions
from lsvq_assets.runs import SignalWatch, close_connections, fail_abandoned_runs, failure_message, interrupted, open_instance, ui_command

log = logging.getLogger("lsvq_assets")

EXIT_OK, EXIT_TRANSIENT, EXIT_USER = 0, 1, 2


class ShardFailed(RuntimeError):
    """The shards run failed (the CLI exits 1: the partitions are recorded, run again)."""


@dataclass
class CliReport:
    failed: dict[str, str] = field(default_factory=dict)  # partition -> why
    skipped: list[str] = field(default_factory=list)  # partitions already current
    shards: dict[str, dict] = field(default_factory=dict)  # split -> shard metadata
    leaks: dict[str, list[dict]] = field(default_factory=dict)  # split -> clips also in another split


def run_partitions(
    config: dict,
    plan: Plan,
    keys: list[str],
    instance: dg.DagsterInstance,
    *,
    run_config: dict | None = None,
    tags: dict | None = None,
    force: bool = False,
    workers: int = 1,
) -> CliReport:
    """Materialise each partition that is not current (one run each, ``workers`` at once), then every split's shard."""
    from lsvq_assets.automation import SHARDS_JOB, observe, read_state
    from lsvq_assets.definitions import build_defs
    from lsvq_assets.resources import LsvqSettings
    from lsvq_assets.schedules import refresh_plan

    defs = build_defs(config)
    lsvq = LsvqSettings(**config.get("lsvq", {}))
    splits = list(plan.splits)
    register_partitions(instance, plan.partitions)
    state = read_state(lsvq)
    report = CliReport()
    if force:
        todo = list(keys)
    else:
        asset_keys = [dg.AssetKey(k) for k in ("lsvq_manifest", "lsvq_clips", "lsvq_probes")] + [
            dg.AssetKey(f"lsvq_rows_{s}") for s in splits
        ]
        layout = lsvq.layout()
        outputs_there = lambda k: all(storage.exists(layout.partition_file(k, f"rows_{s}.parquet")) for s in state.splits_in.get(k, []))  # noqa: E731
        # A partition with a run in progress elsewhere runs here too: its partition lock makes this
        # run wait for that one, then find its clips done (and a run left "in progress" by a CLI
        # killed on another host does not block it forever).
        need = refresh_plan(instance, state, asset_keys, keys, skip_in_progress=False)
        todo = [k for k in keys if k in need or not outputs_there(k)]
        report.skipped = [k for k in keys if k not in todo]
        if report.skipped:
            log.info(
                "%d of %d partitions are current (label rows, outputs and last run unchanged): not run again",
                len(report.skipped),
                len(keys),
            )
    observe(instance, state, todo)
    job = defs.resolve_job_def(PARTITION_JOB)

    def run_one(key: str, on: dg.DagsterInstance) -> Outcome:
        # "lsvq/pid": the process that runs it, a worker's own (a run whose process died is marked failed)
        own_tags = {**tags, "lsvq/pid": str(os.getpid())} if tags and "lsvq/pid" in tags else tags
        result = job.execute_in_process(partition_key=key, instance=on, run_config=run_config, tags=own_tags, raise_on_error=False)
        if result.success:
            return Outcome(key, True, result.run_id)
        return Outcome(key, False, result.run_id, failure_message(result), interrupted(result))

    board = progress.Board(sum(len({r.src for r in plan.partitions[k]}) for k in todo), log=log.info)
    progress.install(board)
    done = 0

    with SignalWatch() as signalled:

        def finished(outcome: Outcome) -> None:
            nonlocal done
            if outcome.interrupted or signalled():
                raise KeyboardInterrupt(f"partition {outcome.key}")  # stop here, as the operator asked (exit 130)
            done += 1
            if outcome.success:
                log.info("partition %d/%d %s: done (run %s)", done, len(todo), outcome.key, outcome.run_id)
            else:
                report.failed[outcome.key] = outcome.message
                log.warning("partition %d/%d %s: FAILED (run %s): %s", done, len(todo), outcome.key, outcome.run_id, outcome.message)
                if not outcome.run_id:  # its worker died: the run it left "in progress" is marked failed now
                    fail_abandoned_runs(instance, lsvq.layout().lsvq_dir)

        try:
            if workers > 1 and len(todo) > 1 and instance.is_persistent and parallel.can_fork():
                if instance.telemetry_enabled:  # a new instance's id (and Dagster's welcome) made once, not by each process
                    from dagster_shared.telemetry import get_or_set_instance_id

                    get_or_set_instance_id()
                shared = close_connections(instance)  # no open connection may cross the fork

                def open_runner() -> Callable[[str], Outcome]:  # in a forked worker process
                    own = instance if shared else dg.DagsterInstance.from_ref(instance.get_ref())
                    return lambda key: run_one(key, own)

                parallel.run_parallel(todo, workers, lambda key: run_one(key, instance), open_runner, board, finished)
            else:
                for key in todo:
                    finished(run_one(key, instance))
        finally:
            progress.install(None)
            board.close()
        current = {s: meta for s in splits if (meta := _current_shard(instance, lsvq, s))}
        report.shards.update(current)
        if len(current) == len(splits):
            log.info("every shard is current (its label file, settings and partitions' rows unchanged): not assembled again")
            return report
        shard_config = {"loggers": run_config["loggers"]} if run_config and "loggers" in run_config else None
        result = defs.resolve_job_def(SHARDS_JOB).execute_in_process(
            instance=instance,
            run_config=shard_config,
            tags=tags,
            raise_on_error=False,
            asset_selection=[dg.AssetKey(f"lsvq_shard_{s}") for s in splits if s not in current],
        )
        if (not result.success and interrupted(result)) or signalled():
            raise KeyboardInterrupt("shards")
    for split in splits:
        mats = result.asset_materializations_for_node(f"lsvq_shard_{split}")
        if mats:
            report.shards[split] = {k: v.value for k, v in mats[-1].metadata.items()}
    for ev in result.get_asset_check_evaluations():
        if ev.check_name == LEAKAGE_CHECK and not ev.passed:
            split = ev.asset_key.path[-1].removeprefix("lsvq_shard_")
            records = ev.metadata["records"].value if "records" in ev.metadata else []
            report.leaks[split] = [dict(r) for r in records] if isinstance(records, list) else []
    if not result.success:
        raise ShardFailed(f"assembling the shards failed: {failure_message(result)}")
    return report


def _current_shard(instance: dg.DagsterInstance, lsvq: Any, split: str) -> dict | None:
    """The metadata of the split's last shard when it is current (same inputs, files in place), else None."""
    from lsvq_assets.assets.shard import shard_inputs

    event = instance.get_latest_materialization_event(dg.AssetKey(f"lsvq_shard_{split}"))
    mat = event.asset_materialization if event is not None else None
    if mat is None or "inputs" not in mat.metadata:
        return None
    meta = {k: v.value for k, v in mat.metadata.items()}
    out, replay = lsvq.shard_paths(split)
    if meta["inputs"] != shard_inputs(lsvq, split) or not (storage.exists(out) and storage.exists(replay)):
        return None
    return meta


@dataclass(frozen=True)
class Invocation:
    """How the operator ran the command, as far as the runs need it."""

    log_level: str
    options: dict  # lsvq_clips's run config: retry_failed, verify
    argv: list[str]
    chosen: bool = False  # --partition keys given
    workers: int = 1  # --partition-runs


def run_cli(config: dict, plan: Plan, keys: list[str], how: Invocation, *, wait: bool = False) -> int:
    """The CLI's full run, holding the working directory's CLI lock; returns its exit code.

    Another CLI run on the same working directory: ``LockHeld`` (exit 3), or with ``wait`` a wait for it.
    With ``chosen`` partitions (``--partition``) no directory lock is taken: several CLIs may each run
    their own partitions at once (each partition still has one writer: its partition lock here, the
    run queue's one-run-per-partition limit across hosts).
    """
    from lsvq_assets.resources import LsvqSettings

    lsvq_dir = LsvqSettings(**config.get("lsvq", {})).layout().lsvq_dir
    lsvq_dir.mkdir(parents=True, exist_ok=True)

    def waiting(holder: dict) -> None:
        log.warning("another run is using %s (%s): waiting for it to finish", lsvq_dir, describe(holder))

    if how.chosen:
        return _run_locked(config, plan, keys, how)
    with cli_lock(lsvq_dir, how.argv, wait=wait, on_wait=waiting):
        return _run_locked(config, plan, keys, how)


def _run_locked(config: dict, plan: Plan, keys: list[str], how: Invocation) -> int:
    from lsvq_assets.resources import LsvqSettings

    lsvq = LsvqSettings(**config.get("lsvq", {}))
    instance = open_instance(lsvq.layout())
    try:
        return _run_on(instance, lsvq, config, plan, keys, how)
    finally:
        instance.dispose()  # its open SQLite connections closed (and their WAL checkpointed) before the UI opens the files


def _run_on(instance: dg.DagsterInstance, lsvq: Any, config: dict, plan: Plan, keys: list[str], how: Invocation) -> int:
    layout = lsvq.layout()
    fail_abandoned_runs(instance, layout.lsvq_dir)
    dagster_level = "DEBUG" if how.log_level == "DEBUG" else "CRITICAL"
    run_config = {
        "ops": {"lsvq_clips": {"config": how.options}},
        "loggers": {"console": {"config": {"log_level": dagster_level}}},
    }
    tags = {
        "lsvq/argv": json.dumps(how.argv),
        "lsvq/entry_point": "cli",
        "lsvq/lsvq_dir": str(layout.lsvq_dir),
        "lsvq/pid": str(os.getpid()),
        "lsvq/host": socket.gethostname(),
    }
    log.info(
        "%s; %d of %d partitions hold the rows under the cap; Dagster instance %s",
        ", ".join(f"{s}: {len(plan.capped(s))} rows from {m.path}" for s, m in plan.splits.items()),
        len(keys),
        len(plan.partitions),
        instance.root_directory,
    )
    try:
        report = run_partitions(
            config,
            plan,
            keys,
            instance,
            run_config=run_config,
            tags=tags,
            force=bool(how.options.get("retry_failed") or how.options.get("verify")),
            workers=how.workers,
        )
    except ShardFailed as exc:
        print(f"error: {exc}; the partitions are recorded: run the same command again.", file=sys.stderr)
        return EXIT_TRANSIENT
    threshold = lsvq.attrition_warn_threshold
    for split in plan.splits:
        meta = report.shards.get(split, {})
        print(meta.get("summary", f"no shard written for {split}"))
        if meta and meta.get("attrition_pct", 0) / 100 > threshold:
            log.warning(
                "attrition %.2f%% of %s (%d of %d rows failed to download) is above --attrition-warn-threshold %.2f; "
                "the failures are in the shard's failed_clips table and in each partition's lsvq_clips outcome table",
                meta["attrition_pct"],
                split,
                meta["skipped_download"],
                meta.get("rows", 0),
                threshold,
            )
        if meta.get("pending_rows"):
            log.warning("%s: %d rows wait for partitions not materialised yet", split, meta["pending_rows"])
    for leaks in report.leaks.values():
        for leak in leaks:
            where = ", ".join(f"{s}: {leak[s]}" for s in plan.splits if leak.get(s))
            print(f"leakage: the same clip (sha256 {leak['src_sha256'][:16]}) is in two splits: {where}", file=sys.stderr)
    for split in plan.splits:
        print(f"replay manifest -> {lsvq.shard_paths(split)[1]}")
    print(f"open the UI on this instance: {ui_command(instance, config)}")
    if report.failed:
        keys_text = ", ".join(sorted(report.failed))
        print(
            f"{len(report.failed)} partition(s) failed transiently ({keys_text}): run the same command again, "
            f"or backfill the failed partitions in the UI.",
            file=sys.stderr,
        )
        return EXIT_TRANSIENT
    return EXIT_OK
