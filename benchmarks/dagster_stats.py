"""Where a CLI run's time went, read back from the Dagster instance it used.

For every run: its wall time (the run record's creation to its last event), each step's time,
and the time inside each asset body. A body's time is the ``compute_s`` the asset puts in its
materialisation metadata when it has one (measured inside the body), else the step's
STEP_START -> first STEP_OUTPUT interval (the body plus the little Dagster does between the
two: an upper bound, so the overhead derived from it is a lower bound; said in the output).
Dagster's own overhead in a run = run wall time - time inside asset bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
from dagster import DagsterEventType as E


@dataclass
class StepStats:
    key: str
    step_s: float  # STEP_START -> STEP_SUCCESS/FAILURE
    body_s: float  # time inside the asset body
    body_from: str  # "metadata" | "events"
    metadata: dict = field(default_factory=dict)


@dataclass
class RunStats:
    run_id: str
    job: str
    partition: str | None
    status: str
    wall_s: float  # run record created -> last event
    steps: dict[str, StepStats] = field(default_factory=dict)
    events: int = 0

    @property
    def body_s(self) -> float:
        return sum(s.body_s for s in self.steps.values())

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.wall_s - self.body_s)


def _value(v):
    return getattr(v, "value", v)


def read_runs(dagster_home: str) -> list[RunStats]:
    """Every run in the instance at ``dagster_home``, oldest first."""
    instance = dg.DagsterInstance.from_config(dagster_home)
    out = []
    try:
        for run in reversed(instance.get_runs()):
            record = instance.get_run_record_by_id(run.run_id)
            logs = instance.all_logs(run.run_id)
            created = record.create_timestamp.timestamp()
            start = min([created] + [r.timestamp for r in logs])
            end = max(r.timestamp for r in logs) if logs else start
            stats = RunStats(
                run.run_id, run.job_name, run.tags.get("dagster/partition"), run.status.value, end - start, events=len(logs)
            )
            per_step: dict[str, dict] = {}
            for r in logs:
                ev = r.dagster_event
                if ev is None or not r.step_key:
                    continue
                s = per_step.setdefault(r.step_key, {})
                if ev.event_type == E.STEP_START:
                    s["start"] = r.timestamp
                elif ev.event_type == E.STEP_OUTPUT and "output" not in s:
                    s["output"] = r.timestamp
                elif ev.event_type in (E.STEP_SUCCESS, E.STEP_FAILURE):
                    s["end"] = r.timestamp
                elif ev.event_type == E.ASSET_MATERIALIZATION:
                    mat = ev.event_specific_data.materialization
                    meta = s.setdefault("metadata", {})
                    meta.update({k: _value(v) for k, v in mat.metadata.items()})
                    if isinstance(meta.get("timings"), dict):  # lsvq_clips keeps its timings in one JSON value
                        meta.update(meta["timings"])
            for key, s in per_step.items():
                if "start" not in s:
                    continue
                meta = s.get("metadata", {})
                end = s.get("end", s.get("output", s["start"]))
                if isinstance(meta.get("compute_s"), (int, float)):
                    body, source = float(meta["compute_s"]), "metadata"
                else:
                    body, source = s.get("output", end) - s["start"], "events"
                stats.steps[key] = StepStats(key, end - s["start"], body, source, meta)
            out.append(stats)
    finally:
        instance.dispose()
    return out
