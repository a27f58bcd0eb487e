"""lsvq_manifest_sensor: observe every split's label file, register partitions, run the new and changed ones."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import dagster as dg

from lsvq_assets.automation import PARTITION_JOB, LabelState, basis, label_observations, read_state
from lsvq_assets.core.errors import UserError
from lsvq_assets.core.files import sha256_file
from lsvq_assets.partitions import PARTITIONS_NAME, folder_partitions
from lsvq_assets.resources import AutomationSettings, LsvqSettings


@dataclass
class LabelsCursor:
    """What the sensor has done, as compact JSON.

    ``files``: split -> sha256 of the label file last read. ``requested``: partition -> version its
    last requested run was for. ``observed``: "split/partition" -> fingerprint last observed.
    ``pending``: partitions selected but over the per-tick cap, waiting for a later tick.
    """

    files: dict[str, str] = field(default_factory=dict)
    basis: str = ""
    requested: dict[str, str] = field(default_factory=dict)
    observed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> LabelsCursor:
        data = json.loads(text) if text else {}
        if "files" not in data:  # a cursor of the single-manifest version: start over
            data = {}
        return cls(
            dict(data.get("files", {})),
            data.get("basis", ""),
            dict(data.get("requested", {})),
            dict(data.get("observed", {})),
            list(data.get("pending", [])),
        )

    def dumps(self) -> str:
        data = {"files": self.files, "basis": self.basis, "requested": self.requested, "observed": self.observed, "pending": self.pending}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def unchanged(self, lsvq: LsvqSettings) -> bool:
        """Nothing waits for a later tick and the files and settings are those last read (hashing costs ms, parsing ~1 s)."""
        if not self.files or self.pending or self.basis != basis(lsvq):
            return False
        try:
            current = {s: sha256_file(p)[0] for s, p in lsvq.split_files().items()}
        except (OSError, UserError):
            return False  # read_state says what is wrong
        return current == self.files


def plan_tick(cursor: LabelsCursor, state: LabelState, cap: int) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """((split, partition) to observe, partitions to launch now, partitions left for later ticks)."""
    observe = [pair for pair, fp in state.fingerprints.items() if cursor.observed.get(f"{pair[0]}/{pair[1]}") != fp]
    todo = [k for k in state.selected if cursor.requested.get(k) != state.versions[k]]
    return observe, todo[:cap], todo[cap:]


@dg.sensor(
    name="lsvq_manifest_sensor",
    job_name=PARTITION_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Observes every split's label file (per-partition fingerprints, file sha256), registers new "
    "partitions and runs lsvq_partition_job for selected partitions that are new or whose rows changed, a bounded number per tick.",
)
def lsvq_manifest_sensor(
    context: dg.SensorEvaluationContext, lsvq: LsvqSettings, lsvq_automation: AutomationSettings
) -> dg.SensorResult | dg.SkipReason:
    """One tick: read the label files, compare each partition's version with the cursor, request runs."""
    cursor = LabelsCursor.parse(context.cursor)
    if cursor.unchanged(lsvq):
        return dg.SkipReason(f"label files unchanged: all {len(cursor.requested)} selected partitions already requested")
    try:
        state = read_state(lsvq)
    except UserError as exc:
        return dg.SkipReason(f"label files not usable, nothing requested: {exc}")
    observe, launch, later = plan_tick(cursor, state, max(1, lsvq_automation.max_runs_per_tick))
    changed_files = [s for s, (_, sha) in state.files.items() if cursor.files.get(s) != sha]
    events = label_observations(state, observe, whole_files=changed_files)
    requested = {k: v for k, v in cursor.requested.items() if k in state.versions} | {k: state.versions[k] for k in launch}
    new_cursor = LabelsCursor(
        files={s: sha for s, (_, sha) in state.files.items()},
        basis=basis(lsvq),
        requested=requested,
        observed={f"{s}/{k}": fp for (s, k), fp in state.fingerprints.items()},
        pending=later,
    ).dumps()
    known = set(context.instance.get_dynamic_partitions(PARTITIONS_NAME))
    new_keys = [k for k in state.versions if k not in known]
    # Every partition is registered (the UI shows them all); runs go to the selected ones.
    registration = [folder_partitions.build_add_request(new_keys)] if new_keys else []
    if not launch:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(f"no partition's rows changed: all {len(state.selected)} selected partitions already requested"),
            asset_events=events,
            dynamic_partitions_requests=registration,
            cursor=new_cursor,
        )
    # One run key per (partition, rows, previous cursor): a retried tick launches nothing twice, while
    # the same rows coming back later (an edit undone) launch again.
    tick = hashlib.sha256((context.cursor or "").encode()).hexdigest()[:8]
    requests = [
        dg.RunRequest(
            partition_key=key,
            run_key=f"{key}:{state.versions[key]}:{tick}",
            tags={"lsvq/reason": "changed" if key in cursor.requested else "new", "lsvq/partition_version": state.versions[key]},
        )
        for key in launch
    ]
    if later:
        context.log.info(
            f"{len(launch)} partition runs requested; {len(later)} more on the next ticks "
            f"(max_runs_per_tick={lsvq_automation.max_runs_per_tick})"
        )
    return dg.SensorResult(
        run_requests=requests,
        # Registered by the daemon before it launches the runs of this same tick.
        dynamic_partitions_requests=registration,
        asset_events=events,
        cursor=new_cursor,
    )
