"""What runs by itself: the label files' state as the sensor and the schedule see it, and the
automation-condition sensor that finishes partitions and re-assembles the shards.

The sensor (``sensors.py``) and the schedule (``schedules.py``) launch downloads, so both start
stopped. ``lsvq_automation_sensor`` starts running: it only evaluates the automation conditions of
``lsvq_probes`` and ``lsvq_rows_<split>`` (finish a partition whose ``lsvq_clips`` was materialised
alone, e.g. by a backfill of its failed partitions) and ``lsvq_shard_<split>`` (re-assemble once
partition runs have settled). None of them fetches anything, so it is safe to leave running.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from lsvq_assets.assets.manifest import labels_key, partition_version
from lsvq_assets.resources import LsvqSettings

MANIFEST_KEY = dg.AssetKey("lsvq_manifest")
PARTITION_JOB = "lsvq_partition_job"
SHARDS_JOB = "lsvq_shards_job"
REGISTER_JOB = "lsvq_register_partitions"
DATA_VERSION_TAG = "dagster/data_version"  # what Dagster reads as an event's data version


def basis(lsvq: LsvqSettings) -> str:
    """The settings besides the files that decide the partitions, their versions and the selection."""
    return f"max_rows={lsvq.max_rows};flat={lsvq.flat_chunk_rows};suffix={lsvq.clip_suffix};cv={lsvq.corpus_version}"


@dataclass(frozen=True)
class LabelState:
    """The label files as the automation sees them."""

    files: dict[str, tuple[str, str]]  # split -> (path, sha256)
    versions: dict[str, str]  # partition -> lsvq_manifest's data version, every partition in order
    fingerprints: dict[tuple[str, str], str]  # (split, partition) -> that split's rows' fingerprint
    rows: dict[str, int]  # partition -> rows of every split
    selected: list[str]  # partitions holding a capped row of some split
    splits_in: dict[str, list[str]]  # partition -> the splits with rows in it


def read_state(lsvq: LsvqSettings) -> LabelState:
    """Parse every split's label file and fingerprint the partitions (ManifestError when one cannot be used)."""
    plan = lsvq.plan()
    return LabelState(
        files={s: (str(m.path), m.sha256) for s, m in plan.splits.items()},
        versions={k: partition_version(plan.fingerprint(k), lsvq.corpus_version) for k in plan.partitions},
        fingerprints={(s, k): plan.fingerprint(k, s) for k in plan.partitions for s in plan.splits},
        rows={k: len(v) for k, v in plan.partitions.items()},
        selected=plan.selected(),
        splits_in={k: list(dict.fromkeys(r.split for r in v)) for k, v in plan.partitions.items()},
    )


def label_observations(state: LabelState, pairs: Iterable[tuple[str, str]], whole_files: Iterable[str] = ()) -> list[dg.AssetObservation]:
    """Observations of ``lsvq_labels_<split>``: one per (split, partition) in ``pairs`` (data version =
    the fingerprint of the split's rows there, so a changed row makes exactly its partition stale)
    and, for each split in ``whole_files``, one for the file (data version = its sha256; reported
    last, so the asset's page shows the file's sha256 and path)."""
    events = [
        dg.AssetObservation(
            asset_key=labels_key(split),
            partition=key,
            tags={DATA_VERSION_TAG: state.fingerprints[(split, key)]},
            metadata={"label_sha256": state.files[split][1], "label_path": dg.MetadataValue.path(state.files[split][0])},
        )
        for split, key in pairs
    ]
    for split in whole_files:
        path, sha = state.files[split]
        events.append(
            dg.AssetObservation(
                asset_key=labels_key(split),
                tags={DATA_VERSION_TAG: sha},
                metadata={"label_path": dg.MetadataValue.path(path), "sha256": sha, "partitions": len(state.versions)},
            )
        )
    return events


def observe(instance: dg.DagsterInstance, state: LabelState, keys: Iterable[str]) -> None:
    """Record what runs for ``keys`` will read, so their lineage points at these versions of the files."""
    keys = list(keys)
    pairs = [(s, k) for k in keys for s in state.files]
    for event in label_observations(state, pairs, whole_files=state.files):
        instance.report_runless_asset_event(event)


lsvq_automation_sensor = dg.AutomationConditionSensorDefinition(
    "lsvq_automation_sensor",
    target=dg.AssetSelection.all() - dg.AssetSelection.assets("lsvq_manifest", "lsvq_clips"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-assembles each split's shard once partition runs have settled, and finishes a partition "
    "whose lsvq_clips was materialised alone (probes, rows). Never downloads: safe to leave running.",
)


@dg.op(name="register_label_partitions")
def register_label_partitions(context: dg.OpExecutionContext, lsvq: LsvqSettings) -> None:
    """Read every split's label file, register all its partitions and observe them; downloads nothing."""
    from lsvq_assets.core.errors import UserError
    from lsvq_assets.partitions import register_partitions

    try:
        state = read_state(lsvq)
    except UserError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    new = register_partitions(context.instance, state.versions)
    observe(context.instance, state, state.versions)
    context.log.info(
        f"{len(state.versions)} partitions in {', '.join(state.files)} ({len(new)} new); {len(state.selected)} hold "
        f"rows under max_rows={lsvq.max_rows}. Nothing was downloaded: materialise the ones you want."
    )


@dg.job(
    name=REGISTER_JOB,
    description="Registers every partition of the current label files (and observes them) without downloading "
    "anything, so the UI lists them all before you choose what to materialise.",
)
def lsvq_register_partitions() -> None:
    register_label_partitions()
