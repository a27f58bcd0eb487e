"""Dagster runs of the operator CLI: its instance, what an in-process run ended with, signals that
Dagster holds back, and runs a killed CLI left behind."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from lsvq_assets.core.layout import Layout

log = logging.getLogger("lsvq_assets")


def open_instance(layout: Layout) -> dg.DagsterInstance:
    """The instance at $DAGSTER_HOME when set, else a persistent one under the working directory.

    On Dagster's default SQLite storage (no storage configured in its ``dagster.yaml``) its files
    are written through connections kept open (see ``instance_storage``): the same files, faster.
    """
    from dagster._core.instance.config import DAGSTER_CONFIG_YAML_FILENAME, dagster_instance_config
    from dagster._core.instance.ref import InstanceRef

    from lsvq_assets.instance_storage import STORAGE_KEYS, instance_overrides, load_alembic_scripts_once

    load_alembic_scripts_once()  # the instance's databases are checked (and a new one's stamped) on scripts loaded once
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        layout.dagster_home.mkdir(parents=True, exist_ok=True)
        home = str(layout.dagster_home)
    elif not os.path.isabs(home) or not os.path.isdir(home):
        return dg.DagsterInstance.get()  # Dagster's own error for a DAGSTER_HOME it cannot use
    # Without a dagster.yaml there is nothing to read: Dagster warns about it once, when it opens the instance below.
    has_yaml = os.path.exists(os.path.join(home, DAGSTER_CONFIG_YAML_FILENAME))
    config, custom_class = dagster_instance_config(home) if has_yaml else ({}, None)
    if custom_class is not None or any(config.get(k) for k in STORAGE_KEYS):
        return dg.DagsterInstance.from_config(home)
    overrides = instance_overrides(home, capture_logs=bool(config.get("compute_logs")))
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(home, overrides=overrides))


def close_connections(instance: dg.DagsterInstance) -> bool:
    """Close the connections the CLI's pooled SQLite storages keep open (they reopen when next used).

    True when the instance then holds no open connection, so a process forked now may use it
    (the CLI's own SQLite instance); False for another storage (PostgreSQL...), whose pool a forked
    process must not share: it opens the instance again from its ref.
    """
    closers = [getattr(storage, "close_connections", None) for storage in (instance.run_storage, instance.event_log_storage)]
    for close in closers:
        if close is not None:
            close()
    return all(closers)


def ui_command(instance: dg.DagsterInstance, config: dict) -> str:
    """The command that opens the Dagster UI on the instance with every setting the CLI used."""
    from lsvq_assets.settings import ui_command_env

    env = [f"DAGSTER_HOME={shlex.quote(instance.root_directory)}", *ui_command_env(config)]
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    target = f"-w {shlex.quote(str(workspace))}" if workspace.exists() else "-m lsvq_assets.definitions"
    return " ".join(env) + f" dagster dev {target}"


def interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Did Ctrl-C / SIGTERM end this run? Dagster turns the signal into a failed step, not an exception."""
    return any(
        event.is_step_failure
        and event.step_failure_data is not None
        and event.step_failure_data.error is not None
        and event.step_failure_data.error.cls_name == "DagsterExecutionInterruptedError"
        for event in result.all_events
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.user_failure_data:
            return event.step_failure_data.user_failure_data.description or "failed"
        if event.is_step_failure and event.step_failure_data:
            return event.step_failure_data.error.message.strip().splitlines()[-1] if event.step_failure_data.error else "failed"
    return "failed"


class SignalWatch:
    """Did SIGINT / SIGTERM arrive? Dagster holds a signal that lands in a run's tail (after its last
    step) and drops it when the run ends; the wakeup fd still sees it, so the CLI stops (exit 130)."""

    def __enter__(self) -> Callable[[], bool]:
        self.fds: tuple[int, int] | None = None
        if threading.current_thread() is threading.main_thread():
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self.fds, self.previous = (r, w), signal.set_wakeup_fd(w)
        return self.fired

    def fired(self) -> bool:
        if self.fds is None:
            return False
        try:
            data = os.read(self.fds[0], 512)
        except BlockingIOError:
            return False
        return any(b in (signal.SIGINT, signal.SIGTERM) for b in data)

    def __exit__(self, *exc_info: object) -> None:
        if self.fds is not None:
            signal.set_wakeup_fd(self.previous)
            for fd in self.fds:
                os.close(fd)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def fail_abandoned_runs(instance: dg.DagsterInstance, lsvq_dir: Path) -> list[str]:
    """Mark failed the runs a CLI on this host and ``lsvq_dir`` started and never ended (its process was killed).

    A run whose CLI process is still alive (another CLI given other ``--partition`` keys) is left
    alone. Without this the UI would show them (and their partitions) as in progress forever.
    """
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
            tags={"lsvq/entry_point": "cli", "lsvq/lsvq_dir": str(lsvq_dir), "lsvq/host": socket.gethostname()},
        )
    )
    dead = [rec.dagster_run for rec in records if not _alive(rec.dagster_run.tags.get("lsvq/pid", ""))]
    for run in dead:
        instance.report_run_failed(
            run,
            message=f"The CLI process that ran this (pid {run.tags.get('lsvq/pid', '?')}) ended without finishing it "
            f"(killed?); marked failed by the next CLI run on {lsvq_dir} (pid {os.getpid()}).",
        )
        log.warning("run %s was left unfinished by a killed CLI run: marked failed", run.run_id)
    return [run.run_id for run in dead]
