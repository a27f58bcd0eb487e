"""lsvq_manifest_sensor, lsvq_refresh_schedule, the shard's automation and lineage, on temporary instances.

Sensor and schedule ticks are evaluated as the daemon does (``evaluate_tick``: run requests resolved
against the job's partitions), and the tick's asset events and partition registrations are then
applied to the instance as the daemon would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from lsvq_assets.assets.clips import SOURCE_POOL
from lsvq_assets.automation import MANIFEST_CSV_KEY, AutomationSettings, read_state
from lsvq_assets.definitions import SLICE_ASSETS, build_defs, build_resources, defs, lsvq_shard
from lsvq_assets.partitions import SLICES_PARTITIONS_NAME, register_slices
from lsvq_assets.schedules import lsvq_refresh_schedule
from lsvq_assets.sensors import ManifestCursor, lsvq_manifest_sensor
from lsvq_assets.settings import LsvqSettings
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.manifest_fixtures import write_patchvq_csv

ROWS = [("yfcc-batch1/1", 50.0), ("yfcc-batch1/2", 60.0), ("ia-batch2/1", 70.0), ("ia-batch2/2", 20.5), ("backup/9", 33.0)]
KEYS = ["yfcc-batch1", "ia-batch2", "backup"]


def write_csv(path: Path, rows: list[tuple[str, object]]) -> Path:
    write_patchvq_csv(path, 0, columns=5, names=[], extra_rows=rows)
    return path


def settings(tmp_path: Path, csv: Path, min_csv_rows: int = 1) -> LsvqSettings:
    return LsvqSettings(lsvq_dir=str(tmp_path / "lsvq"), manifest_csv=str(csv), min_csv_rows=min_csv_rows, max_rows=0)


def sensor_tick(instance: dg.DagsterInstance, lsvq: LsvqSettings, cursor: str | None, cap: int = 25):
    """Evaluate one tick, then record its observations and register its slices, as the daemon does."""
    # As context managers: a context that opens an instance from instance_ref must close it, or
    # Dagster's current defs-state storage keeps pointing at a disposed instance.
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        cursor=cursor,
        definitions=defs,
        resources={"lsvq": lsvq, "lsvq_automation": AutomationSettings(max_runs_per_tick=cap)},
    ) as context:
        data = lsvq_manifest_sensor.evaluate_tick(context)
    for event in data.asset_events:
        instance.report_runless_asset_event(event)
    for request in data.dynamic_partitions_requests or []:
        register_slices(instance, request.partition_keys)
    return data


def schedule_tick(instance: dg.DagsterInstance, lsvq: LsvqSettings, cap: int = 100):
    with dg.build_schedule_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        repository_def=defs.get_repository_def(),
        resources={"lsvq": lsvq, "lsvq_automation": AutomationSettings(max_scheduled_runs=cap)},
    ) as context:
        return lsvq_refresh_schedule.evaluate_tick(context)


def requested(data) -> list[str]:
    return [r.partition_key for r in data.run_requests or []]


def observations(instance: dg.DagsterInstance) -> list[tuple[str | None, str]]:
    records = instance.fetch_observations(MANIFEST_CSV_KEY, limit=1000, ascending=True).records
    return [(r.partition_key, r.asset_observation.tags["dagster/data_version"]) for r in records]


# --- how it is wired ------------------------------------------------------------------------------


def test_sensor_and_schedule_start_stopped_and_the_shard_follows_by_itself() -> None:
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("lsvq_manifest_sensor")
    schedule = repo.get_schedule_def("lsvq_refresh_schedule")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert sensor.minimum_interval_seconds == 60 and sensor.job_name == "lsvq_slice_job"
    assert schedule.cron_schedule == "0 3 * * *" and schedule.job_name == "lsvq_slice_job"
    # The automation sensor never downloads, so it runs by default: nobody has to remember to re-assemble.
    automation = repo.get_sensor_def("lsvq_automation_sensor")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    assert "default_automation_condition_sensor" not in {s.name for s in repo.sensor_defs}
    graph = defs.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == {"lsvq_probes", "lsvq_shard_rows", "lsvq_shard"}  # never lsvq_clips: no download starts by itself
    assert automation.asset_selection.resolve(graph) == {dg.AssetKey(k) for k in automated}
    # Every run that downloads is in the source's pool; the CSV is partitioned like the slices.
    assert defs.resolve_assets_def("lsvq_clips").op.pool == SOURCE_POOL
    assert graph.get(MANIFEST_CSV_KEY).partitions_def.name == SLICES_PARTITIONS_NAME


# --- the sensor -----------------------------------------------------------------------------------


def test_sensor_requests_new_then_only_changed_slices(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", ROWS)
    lsvq = settings(tmp_path, csv)
    state = read_state(lsvq)
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance, lsvq, None)
        assert requested(first) == KEYS
        assert {r.tags["lsvq/reason"] for r in first.run_requests} == {"new"}
        assert instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME) == KEYS  # registered in the same tick
        # One observation per slice (its fingerprint) and one for the whole file (its sha256).
        assert observations(instance) == [(k, state.fingerprints[k]) for k in KEYS] + [(None, state.sha256)]
        cursor = json.loads(first.cursor)
        assert cursor["requested"] == state.fingerprints and cursor["observed"] == {} and cursor["sha256"] == state.sha256

        again = sensor_tick(instance, lsvq, first.cursor)
        assert requested(again) == [] and "unchanged" in again.skip_message and "3 slices" in again.skip_message

        # One MOS changed in ia-batch2, a new folder appended: exactly those two.
        write_csv(csv, [*ROWS[:3], ("ia-batch2/2", 20.75), ROWS[4], ("ia-batch9/1", 10.0), ("ia-batch9/2", 11.0)])
        changed = sensor_tick(instance, lsvq, again.cursor)
        assert requested(changed) == ["ia-batch2", "ia-batch9"]
        assert [r.tags["lsvq/reason"] for r in changed.run_requests] == ["changed", "new"]
        assert instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME) == [*KEYS, "ia-batch9"]
        new_state = read_state(lsvq)
        assert observations(instance)[-3:] == [
            ("ia-batch2", new_state.fingerprints["ia-batch2"]),
            ("ia-batch9", new_state.fingerprints["ia-batch9"]),
            (None, new_state.sha256),
        ]
        assert sensor_tick(instance, lsvq, changed.cursor).skip_message

        # A change outside every slice (a dropped row) observes the file and requests nothing.
        write_csv(csv, [*ROWS[:3], ("ia-batch2/2", 20.75), ROWS[4], ("ia-batch9/1", 10.0), ("ia-batch9/2", 11.0), ("x/bad", "nan")])
        n = len(observations(instance))
        quiet = sensor_tick(instance, lsvq, changed.cursor)
        assert requested(quiet) == [] and "no slice's rows did" in quiet.skip_message
        assert [p for p, _ in observations(instance)[n:]] == [None]


def test_sensor_caps_runs_per_tick_and_remembers_only_what_it_requested(tmp_path: Path) -> None:
    lsvq = settings(tmp_path, write_csv(tmp_path / "m.csv", ROWS))
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance, lsvq, None, cap=2)
        assert requested(first) == KEYS[:2]
        assert instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME) == KEYS  # all registered at once
        cursor = ManifestCursor.parse(first.cursor)
        assert set(cursor.requested) == set(KEYS[:2]) and set(cursor.observed) == {"backup"}
        second = sensor_tick(instance, lsvq, first.cursor, cap=2)
        assert requested(second) == ["backup"]
        assert len([p for p, _ in observations(instance) if p == "backup"]) == 1  # observed once, run later
        assert "unchanged" in sensor_tick(instance, lsvq, second.cursor, cap=2).skip_message
        assert len(first.cursor) < 400


def test_settings_and_cap_come_from_lsvq_variables(tmp_path: Path, monkeypatch) -> None:
    """As deployed: the webserver and the daemon get LSVQ_* variables, the resources bind them."""
    csv = write_csv(tmp_path / "m.csv", ROWS)
    for var, value in {"LSVQ_DIR": tmp_path / "lsvq", "LSVQ_MANIFEST_CSV": csv, "LSVQ_MIN_CSV_ROWS": 1, "LSVQ_MAX_ROWS": 0, "LSVQ_MAX_RUNS_PER_TICK": 2}.items():
        monkeypatch.setenv(var, str(value))
    deployed = build_defs()
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, instance_ref=instance.get_ref(), definitions=deployed, resources=deployed.resources
        )
        assert requested(lsvq_manifest_sensor.evaluate_tick(context)) == KEYS[:2]


@pytest.mark.parametrize(
    "problem, expected",
    [("missing", "not found"), ("no-mos", "no mos column"), ("too-few", "--min-csv-rows")],
)
def test_unusable_manifest_skips_with_its_message(tmp_path: Path, problem: str, expected: str) -> None:
    csv = tmp_path / "m.csv"
    if problem == "no-mos":
        csv.write_text("name,height\na/x,720\n")
    elif problem == "too-few":
        csv.write_text("name,mos\na/x,50\n")
    lsvq = settings(tmp_path, csv, min_csv_rows=2 if problem == "too-few" else 1)
    with dg.instance_for_test() as instance:
        for data in (sensor_tick(instance, lsvq, None), schedule_tick(instance, lsvq)):
            assert not data.run_requests
            assert str(csv) in data.skip_message and expected in data.skip_message, data.skip_message
        assert instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME) == []


# --- the schedule ---------------------------------------------------------------------------------


def _report_slice_done(instance: dg.DagsterInstance, key: str, fingerprint: str) -> None:
    """Record a slice as materialised (what a successful slice run leaves), without running it."""
    tags = {"dagster/data_version": fingerprint}
    instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_manifest", partition=key, tags=tags))
    instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_shard_rows", partition=key))


def test_schedule_requests_missing_then_stale_slices(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", ROWS)
    lsvq = settings(tmp_path, csv)
    with dg.instance_for_test() as instance:
        first = schedule_tick(instance, lsvq, cap=2)
        assert requested(first) == KEYS[:2] and {r.tags["lsvq/reason"] for r in first.run_requests} == {"missing"}
        assert instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME) == KEYS  # registered before the runs
        assert [p for p, _ in observations(instance)] == [*KEYS[:2], None]  # what those runs will read

        for key, fp in read_state(lsvq).fingerprints.items():
            _report_slice_done(instance, key, fp)
        current = schedule_tick(instance, lsvq)
        assert requested(current) == [] and "current" in current.skip_message
        assert "lsvq_shard is older" in current.skip_message

        # A backfill of lsvq_clips alone failed for "backup"; a run of "ia-batch2" is in progress.
        job = defs.resolve_job_def("lsvq_slice_job")
        failed = instance.create_run_for_job(
            job, asset_selection=frozenset({dg.AssetKey("lsvq_clips")}), tags={"dagster/partition": "backup"}, status=dg.DagsterRunStatus.STARTED
        )
        instance.report_run_failed(failed)
        instance.create_run_for_job(job, tags={"dagster/partition": "ia-batch2"}, status=dg.DagsterRunStatus.STARTED)
        write_csv(csv, [ROWS[0], ("yfcc-batch1/2", 61.0), ("ia-batch2/1", 71.0), *ROWS[3:]])  # both stale
        stale = schedule_tick(instance, lsvq)  # ia-batch2 waits for its run to end
        assert {r.partition_key: r.tags["lsvq/reason"] for r in stale.run_requests} == {"yfcc-batch1": "stale", "backup": "failed"}


# --- the shard's automation -----------------------------------------------------------------------


def requested_by_asset(result) -> dict[str, set]:
    keys = ("lsvq_probes", "lsvq_shard_rows", "lsvq_shard")
    return {k: set(p) for k in keys if (p := result.get_requested_partitions(dg.AssetKey(k)))}


def test_shard_is_requested_once_after_slices_settle_and_a_clips_only_run_is_finished(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        register_slices(instance, KEYS)
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.total_requested == 0

        for key in KEYS:
            _report_slice_done(instance, key, "fp")
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert requested_by_asset(result) == {"lsvq_shard": {None}}
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0  # handled: one assembly for the batch

        # A slice still running holds the shard back until it ends.
        run = instance.create_run_for_job(
            defs.resolve_job_def("lsvq_slice_job"), tags={"dagster/partition": "backup"}, status=dg.DagsterRunStatus.STARTED
        )
        instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_shard_rows", partition="yfcc-batch1"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0
        instance.report_run_failed(run)
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert requested_by_asset(result) == {"lsvq_shard": {None}}

        # lsvq_clips materialised alone (a backfill of its failed partition): probes and rows follow.
        instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_clips", partition="ia-batch2"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert requested_by_asset(result) == {"lsvq_probes": {"ia-batch2"}, "lsvq_shard_rows": {"ia-batch2"}}
        for asset in ("lsvq_probes", "lsvq_shard_rows"):  # that run done
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition="ia-batch2"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert requested_by_asset(result) == {"lsvq_shard": {None}}

        # A slice run that failed at lsvq_clips has re-written lsvq_manifest only: nothing follows
        # (rebuilding the rows from the old clips would turn the failed partition into a materialised one).
        instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_manifest", partition="ia-batch2"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0


# --- lineage: one changed row ---------------------------------------------------------------------


def _stale(instance: dg.DagsterInstance) -> dict[str, str]:
    """Every slice asset partition's and the shard's status as the UI computes it."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None), instance=instance, asset_graph=graph)
    resolver = CachingStaleStatusResolver(instance, graph, view)
    out = {}
    for asset in SLICE_ASSETS:
        for key in instance.get_dynamic_partitions(SLICES_PARTITIONS_NAME):
            out[f"{asset.key.to_user_string()}[{key}]"] = resolver.get_status(asset.key, key).value
    out["lsvq_shard"] = resolver.get_status(lsvq_shard.key).value
    return out


def test_one_changed_row_makes_exactly_its_slice_and_what_follows_stale(tmp_path: Path, corpus: Corpus, served) -> None:
    csv = shutil.copyfile(corpus.csv, tmp_path / "LSVQ_whole_train.csv")
    config = {
        "lsvq": {"lsvq_dir": str(tmp_path / "work"), "manifest_csv": str(csv), "min_csv_rows": 1, "max_rows": 0},
        "clip_source": {"clip_url_template": served.base_url + "/{name}{suffix}", "concurrency": 4},
        "prober": {},
    }
    resources = build_resources(config)
    lsvq = resources["lsvq"]
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance, lsvq, None)
        keys = requested(first)
        assert keys == ["yfcc-batch1", "ia-batch2"]
        for key in keys:
            assert dg.materialize(SLICE_ASSETS, instance=instance, partition_key=key, resources=resources).success
        assert dg.materialize([lsvq_shard], instance=instance, resources=resources).success
        assert set(_stale(instance).values()) == {StaleStatus.FRESH.value}

        # One MOS in yfcc-batch1 changes; the sensor observes exactly that slice of the CSV.
        text = csv.read_text().replace("yfcc-batch1/725,48,64,76.84375", "yfcc-batch1/725,48,64,77.5")
        assert text != csv.read_text()
        csv.write_text(text)
        tick = sensor_tick(instance, lsvq, first.cursor)
        assert requested(tick) == ["yfcc-batch1"]
        status = _stale(instance)
        assert {k for k, v in status.items() if v == "STALE"} == {"lsvq_manifest[yfcc-batch1]"}

        # The slice's manifest re-read: what reads it directly (clips, rows) is stale next, not ia-batch2.
        assert dg.materialize([SLICE_ASSETS[0]], instance=instance, partition_key="yfcc-batch1", resources=resources).success
        status = _stale(instance)
        assert {k for k, v in status.items() if v == "STALE"} == {"lsvq_clips[yfcc-batch1]", "lsvq_shard_rows[yfcc-batch1]"}

        # The slice's run (what the sensor requested): its rows change, so the shard is stale; nothing else.
        assert dg.materialize(SLICE_ASSETS, instance=instance, partition_key="yfcc-batch1", resources=resources).success
        status = _stale(instance)
        assert {k for k, v in status.items() if v == "STALE"} == {"lsvq_shard"}
        assert dg.materialize([lsvq_shard], instance=instance, resources=resources).success
        assert set(_stale(instance).values()) == {StaleStatus.FRESH.value}
