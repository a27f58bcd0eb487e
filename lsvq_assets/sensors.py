"""lsvq_manifest_sensor: observe the manifest, register its slices, run the new and changed ones."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import dagster as dg

from lsvq_assets.automation import (
    SLICE_JOB,
    AutomationSettings,
    ManifestState,
    manifest_observations,
    read_state,
    slicing_basis,
)
from lsvq_assets.core.errors import UserError
from lsvq_assets.core.files import sha256_file
from lsvq_assets.partitions import SLICES_PARTITIONS_NAME, slices_partitions
from lsvq_assets.settings import LsvqSettings


@dataclass
class ManifestCursor:
    """What the sensor has done, as compact JSON (about 45 bytes a slice).

    ``requested``: slice -> fingerprint of the rows its last requested run was for (only slices
    actually requested). ``observed``: slice -> fingerprint last observed where it differs from
    ``requested`` (slices over the per-tick cap, waiting for a later tick). ``sha256`` and ``basis``:
    the file last read and the slicing settings it was read with.
    """

    sha256: str = ""
    basis: str = ""
    requested: dict[str, str] = field(default_factory=dict)
    observed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> "ManifestCursor":
        data = json.loads(text) if text else {}
        return cls(data.get("sha256", ""), data.get("basis", ""), dict(data.get("requested", {})), dict(data.get("observed", {})))

    def dumps(self) -> str:
        data = {"sha256": self.sha256, "basis": self.basis, "requested": self.requested, "observed": self.observed}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def unchanged(self, lsvq: LsvqSettings) -> bool:
        """Nothing waits for a later tick and the file and settings are those last read.

        Hashing the file costs milliseconds; parsing 39k rows about a second.
        """
        if not self.sha256 or self.observed or self.basis != slicing_basis(lsvq):
            return False
        try:
            return sha256_file(lsvq.layout().manifest_csv)[0] == self.sha256
        except OSError:
            return False  # read_state says what is wrong

    def last_observed(self, key: str) -> str | None:
        return self.observed.get(key, self.requested.get(key))

    def after(self, state: ManifestState, basis: str, launched: list[str]) -> "ManifestCursor":
        """The cursor once ``launched`` are requested; slices gone from the manifest are forgotten."""
        fps = state.fingerprints
        requested = {k: v for k, v in self.requested.items() if k in fps} | {k: fps[k] for k in launched}
        observed = {k: fp for k, fp in fps.items() if requested.get(k) != fp}
        return ManifestCursor(state.sha256, basis, requested, observed)


def plan_tick(cursor: ManifestCursor, state: ManifestState, cap: int) -> tuple[list[str], list[str], list[str]]:
    """(slices to observe, slices to launch now, slices left for later ticks), in manifest order."""
    fps = state.fingerprints
    observe = [k for k, fp in fps.items() if fp != cursor.last_observed(k)]
    pending = [k for k, fp in fps.items() if fp != cursor.requested.get(k)]
    return observe, pending[:cap], pending[cap:]


@dg.sensor(
    name="lsvq_manifest_sensor",
    job_name=SLICE_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Observes the manifest (per-slice fingerprints, file sha256), registers new slices and "
    "runs lsvq_slice_job for slices that are new or whose rows changed, a bounded number per tick.",
)
def lsvq_manifest_sensor(
    context: dg.SensorEvaluationContext, lsvq: LsvqSettings, lsvq_automation: AutomationSettings
) -> dg.SensorResult | dg.SkipReason:
    """One tick: read the manifest, compare each slice's fingerprint with the cursor, request runs."""
    cursor = ManifestCursor.parse(context.cursor)
    if cursor.unchanged(lsvq):
        return dg.SkipReason(
            f"manifest {lsvq.layout().manifest_csv} unchanged (sha256 {cursor.sha256[:12]}): "
            f"all {len(cursor.requested)} slices already requested"
        )
    try:
        state = read_state(lsvq)
    except UserError as exc:
        return dg.SkipReason(f"manifest not usable, nothing requested: {exc}")
    observe, launch, later = plan_tick(cursor, state, max(1, lsvq_automation.max_runs_per_tick))
    events = manifest_observations(state, observe, whole_file=state.sha256 != cursor.sha256)
    new_cursor = cursor.after(state, slicing_basis(lsvq), launch).dumps()
    if not launch:
        what = "changed, but no slice's rows did" if state.sha256 != cursor.sha256 else "unchanged"
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"manifest {state.path} {what} (sha256 {state.sha256[:12]}): all {len(state.fingerprints)} slices already requested"
            ),
            asset_events=events,
            cursor=new_cursor,
        )
    known = set(context.instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME))
    new_keys = [k for k in state.fingerprints if k not in known]
    # One run key per (slice, rows, previous cursor): a retried tick launches nothing twice, while
    # the same rows coming back later (an edit undone) launch again.
    tick = hashlib.sha256((context.cursor or "").encode()).hexdigest()[:8]
    requests = [
        dg.RunRequest(
            partition_key=key,
            run_key=f"{key}:{state.fingerprints[key]}:{tick}",
            tags={"lsvq/reason": "changed" if key in cursor.requested else "new", "lsvq/slice_fingerprint": state.fingerprints[key]},
        )
        for key in launch
    ]
    if later:
        context.log.info(
            f"{len(launch)} slice runs requested; {len(later)} more on the next ticks (max_runs_per_tick={lsvq_automation.max_runs_per_tick})"
        )
    return dg.SensorResult(
        run_requests=requests,
        # Registered by the daemon before it launches the runs of this same tick.
        dynamic_partitions_requests=[slices_partitions.build_add_request(new_keys)] if new_keys else [],
        asset_events=events,
        cursor=new_cursor,
    )
