"""What runs by itself: the manifest's state as the sensor and the schedule see it, their settings,
and the automation-condition sensor that re-assembles the shard after slices change.

The sensor (``sensors.py``) and the schedule (``schedules.py``) launch downloads, so both start
stopped. ``lsvq_automation_sensor`` starts running: it only evaluates the automation conditions of
``lsvq_probes`` and ``lsvq_shard_rows`` (finish a slice whose ``lsvq_clips`` was materialised alone,
e.g. by a backfill of its failed partitions) and ``lsvq_shard`` (re-assemble once slice runs have
settled). None of them fetches anything, so it is safe to leave running, and with the daemon up
nobody has to remember to re-assemble the shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from lsvq_assets.core.slicing import fingerprint
from lsvq_assets.settings import LsvqSettings

MANIFEST_CSV_KEY = dg.AssetKey("lsvq_manifest_csv")
MANIFEST_KEY = dg.AssetKey("lsvq_manifest")
SHARD_ROWS_KEY = dg.AssetKey("lsvq_shard_rows")
SHARD_KEY = dg.AssetKey("lsvq_shard")
SLICE_KEYS = [MANIFEST_KEY, dg.AssetKey("lsvq_clips"), dg.AssetKey("lsvq_probes"), SHARD_ROWS_KEY]
SLICE_JOB = "lsvq_slice_job"
DATA_VERSION_TAG = "dagster/data_version"  # what Dagster reads as an event's data version


class AutomationSettings(dg.ConfigurableResource):
    """How much one sensor or schedule tick may launch (the rest waits for the next tick)."""

    max_runs_per_tick: int = Field(default=25, description="Slice runs one lsvq_manifest_sensor tick requests at most, 1 or more (LSVQ_MAX_RUNS_PER_TICK).")
    max_scheduled_runs: int = Field(default=100, description="Slice runs one lsvq_refresh_schedule tick requests at most, 1 or more (LSVQ_MAX_SCHEDULED_RUNS).")


AUTOMATION_ENV_VARS = {"max_runs_per_tick": "LSVQ_MAX_RUNS_PER_TICK", "max_scheduled_runs": "LSVQ_MAX_SCHEDULED_RUNS"}


def automation_settings(environ: Mapping[str, str] | None = None, **overrides: int) -> AutomationSettings:
    """The resource, each *set* ``LSVQ_MAX_*`` variable bound as an ``EnvVar`` (explicit arguments win)."""
    environ = os.environ if environ is None else environ
    bound = {field: dg.EnvVar.int(var) for field, var in AUTOMATION_ENV_VARS.items() if var in environ}
    return AutomationSettings(**{**bound, **overrides})


def slicing_basis(lsvq: LsvqSettings) -> str:
    """The settings besides the file that decide the slices and their fingerprints."""
    return f"max_rows={lsvq.max_rows};slice_rows={lsvq.slice_rows};max_slice_rows={lsvq.max_slice_rows};suffix={lsvq.clip_suffix}"


@dataclass(frozen=True)
class ManifestState:
    """The manifest as the automation sees it: its file and each slice's fingerprint, in manifest order."""

    path: str
    sha256: str
    fingerprints: dict[str, str]
    rows: dict[str, int]


def read_state(lsvq: LsvqSettings) -> ManifestState:
    """Parse the manifest and fingerprint its slices (ManifestError when it cannot be used)."""
    manifest = lsvq.read_manifest()
    slices = lsvq.slices(manifest)
    return ManifestState(
        path=str(manifest.path),
        sha256=manifest.sha256,
        fingerprints={key: fingerprint(rows) for key, rows in slices.items()},
        rows={key: len(rows) for key, rows in slices.items()},
    )


def manifest_observations(state: ManifestState, keys: Iterable[str], whole_file: bool) -> list[dg.AssetObservation]:
    """Observations of ``lsvq_manifest_csv``: one per slice in ``keys`` (data version = its
    fingerprint, so a changed row makes exactly its slice stale) and, with ``whole_file``, one for
    the file (data version = its sha256; reported last, so the asset's page shows the file's
    sha256, path and size, and a run's provenance points after every slice's observation)."""
    events = [
        dg.AssetObservation(
            asset_key=MANIFEST_CSV_KEY,
            partition=key,
            tags={DATA_VERSION_TAG: state.fingerprints[key]},
            metadata={"manifest_sha256": state.sha256, "manifest_path": dg.MetadataValue.path(state.path), "rows": state.rows[key]},
        )
        for key in keys
    ]
    if whole_file:
        events.append(
            dg.AssetObservation(
                asset_key=MANIFEST_CSV_KEY,
                tags={DATA_VERSION_TAG: state.sha256},
                metadata={
                    "manifest_path": dg.MetadataValue.path(state.path),
                    "sha256": state.sha256,
                    "slices": len(state.fingerprints),
                    "rows": sum(state.rows.values()),
                },
            )
        )
    return events


lsvq_automation_sensor = dg.AutomationConditionSensorDefinition(
    "lsvq_automation_sensor",
    target=dg.AssetSelection.assets("lsvq_probes", "lsvq_shard_rows", "lsvq_shard"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-assembles lsvq_shard once slice runs have settled, and finishes a slice whose "
    "lsvq_clips was materialised alone (probes, rows). Never downloads: safe to leave running.",
)
