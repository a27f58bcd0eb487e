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

from lsvq_assets.assets.clips import SOURCE_POOL, lsvq_clips
from lsvq_assets.assets.manifest import labels_key, manifest_asset
from lsvq_assets.assets.probes import lsvq_probes
from lsvq_assets.assets.rows import rows_asset
from lsvq_assets.assets.shard import shard_asset
from lsvq_assets.automation import REGISTER_JOB, read_state
from lsvq_assets.definitions import build_defs, defs
from lsvq_assets.partitions import PARTITIONS_NAME, register_partitions
from lsvq_assets.resources import AutomationSettings, LsvqSettings, build_resources
from lsvq_assets.sensors import LabelsCursor, lsvq_manifest_sensor
from lsvq_assets_tests.corpus import Corpus
from lsvq_assets_tests.manifest_fixtures import write_patchvq_csv

ROWS = [("yfcc-batch1/1", 50.0), ("yfcc-batch1/2", 60.0), ("ia-batch2/1", 70.0), ("ia-batch2/2", 20.5), ("backup/9", 33.0)]
KEYS = ["yfcc-batch1", "ia-batch2", "backup"]
LABELS_KEY = labels_key("train")
PARTITION_ASSETS = ("lsvq_manifest", "lsvq_clips", "lsvq_probes", "lsvq_rows_train")
SHARD = "lsvq_shard_train"
lsvq_refresh_schedule = defs.get_repository_def().get_schedule_def("lsvq_refresh_schedule")


def write_csv(path: Path, rows: list[tuple[str, object]]) -> Path:
    write_patchvq_csv(path, 0, columns=5, names=[], extra_rows=rows)
    return path


def settings(tmp_path: Path, csv: Path, min_csv_rows: int = 1) -> LsvqSettings:
    return LsvqSettings(lsvq_dir=str(tmp_path / "lsvq"), manifest_csv=str(csv), min_csv_rows=min_csv_rows, max_rows=0)


def sensor_tick(instance: dg.DagsterInstance, lsvq: LsvqSettings, cursor: str | None, cap: int = 25, definitions: dg.Definitions = defs):
    """Evaluate one tick, then record its observations and register its partitions, as the daemon does."""
    # As context managers: a context that opens an instance from instance_ref must close it, or
    # Dagster's current defs-state storage keeps pointing at a disposed instance.
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        cursor=cursor,
        definitions=definitions,
        resources={"lsvq": lsvq, "lsvq_automation": AutomationSettings(max_runs_per_tick=cap)},
    ) as context:
        data = lsvq_manifest_sensor.evaluate_tick(context)
    for event in data.asset_events:
        instance.report_runless_asset_event(event)
    for request in data.dynamic_partitions_requests or []:
        register_partitions(instance, request.partition_keys)
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


def observations(instance: dg.DagsterInstance, key: dg.AssetKey = LABELS_KEY) -> list[tuple[str | None, str]]:
    records = instance.fetch_observations(key, limit=1000, ascending=True).records
    return [(r.partition_key, r.asset_observation.tags["dagster/data_version"]) for r in records]


# --- how it is wired ------------------------------------------------------------------------------


def test_sensor_and_schedule_start_stopped_and_the_shard_follows_by_itself() -> None:
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("lsvq_manifest_sensor")
    schedule = repo.get_schedule_def("lsvq_refresh_schedule")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert sensor.minimum_interval_seconds == 60 and sensor.job_name == "lsvq_partition_job"
    assert schedule.cron_schedule == "0 3 * * *" and schedule.job_name == "lsvq_partition_job"
    # The automation sensor never downloads, so it runs by default: nobody has to remember to re-assemble.
    automation = repo.get_sensor_def("lsvq_automation_sensor")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    assert "default_automation_condition_sensor" not in {s.name for s in repo.sensor_defs}
    graph = defs.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == {"lsvq_probes", "lsvq_rows_train", SHARD}  # never lsvq_clips: no download starts by itself
    assert automation.asset_selection.resolve(graph) == {dg.AssetKey(k) for k in automated}
    # Every run that downloads is in the source's pool; the label file is partitioned like the outputs.
    assert defs.resolve_assets_def("lsvq_clips").op.pool == SOURCE_POOL
    assert graph.get(LABELS_KEY).partitions_def.name == PARTITIONS_NAME
    assert all(graph.get(dg.AssetKey(a)).partitions_def.name == PARTITIONS_NAME for a in PARTITION_ASSETS)
    assert REGISTER_JOB in {j.name for j in repo.get_all_jobs()}


# --- the sensor -----------------------------------------------------------------------------------


def test_sensor_requests_new_then_only_changed_partitions(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", ROWS)
    lsvq = settings(tmp_path, csv)
    state = read_state(lsvq)
    sha = state.files["train"][1]
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance, lsvq, None)
        assert requested(first) == KEYS
        assert {r.tags["lsvq/reason"] for r in first.run_requests} == {"new"}
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == KEYS  # registered in the same tick
        # One observation per partition (its rows' fingerprint) and one for the whole file (its sha256).
        assert observations(instance) == [(k, state.fingerprints[("train", k)]) for k in KEYS] + [(None, sha)]
        cursor = json.loads(first.cursor)
        assert cursor["requested"] == state.versions and cursor["files"] == {"train": sha}
        assert cursor["observed"] == {f"train/{k}": state.fingerprints[("train", k)] for k in KEYS} and cursor["pending"] == []

        again = sensor_tick(instance, lsvq, first.cursor)
        assert requested(again) == [] and "unchanged" in again.skip_message and "3 selected partitions" in again.skip_message

        # One MOS changed in ia-batch2, a new folder appended: exactly those two.
        write_csv(csv, [*ROWS[:3], ("ia-batch2/2", 20.75), ROWS[4], ("ia-batch9/1", 10.0), ("ia-batch9/2", 11.0)])
        changed = sensor_tick(instance, lsvq, again.cursor)
        assert requested(changed) == ["ia-batch2", "ia-batch9"]
        assert [r.tags["lsvq/reason"] for r in changed.run_requests] == ["changed", "new"]
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == [*KEYS, "ia-batch9"]
        new_state = read_state(lsvq)
        assert observations(instance)[len(KEYS) + 1 :] == [
            ("ia-batch2", new_state.fingerprints[("train", "ia-batch2")]),
            ("ia-batch9", new_state.fingerprints[("train", "ia-batch9")]),
            (None, new_state.files["train"][1]),
        ]
        assert sensor_tick(instance, lsvq, changed.cursor).skip_message

        # A change outside every partition (a dropped row) observes the file and requests nothing.
        write_csv(csv, [*ROWS[:3], ("ia-batch2/2", 20.75), ROWS[4], ("ia-batch9/1", 10.0), ("ia-batch9/2", 11.0), ("x/bad", "nan")])
        n = len(observations(instance))
        quiet = sensor_tick(instance, lsvq, changed.cursor)
        assert requested(quiet) == [] and "no partition's rows changed" in quiet.skip_message
        assert [p for p, _ in observations(instance)[n:]] == [None]


TEST_ROWS = [("yfcc-batch1/3", 40.0), ("ia-batch5/1", 30.0), ("ia-batch5/2", 31.0)]


def two_splits(tmp_path: Path, max_rows: int = 0) -> tuple[dict, Path, Path]:
    train = write_csv(tmp_path / "train.csv", ROWS)
    test = write_csv(tmp_path / "test.csv", TEST_ROWS)
    config = {"lsvq": {"lsvq_dir": str(tmp_path / "lsvq"), "splits": f"train={train},test={test}", "min_csv_rows": 1, "max_rows": max_rows}}
    return config, train, test


def test_sensor_watches_every_split_and_a_changed_test_row_runs_only_its_partition(tmp_path: Path) -> None:
    config, _, test = two_splits(tmp_path)
    two = build_defs(config)
    lsvq = LsvqSettings(**config["lsvq"])
    keys = [*KEYS, "ia-batch5"]  # yfcc-batch1 holds rows of both splits
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance, lsvq, None, definitions=two)
        assert requested(first) == keys
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == keys
        # Each split's file is observed in every partition (data version: its rows there, none
        # is a version too) and once whole.
        assert [p for p, _ in observations(instance, labels_key("train"))] == [*keys, None]
        assert [p for p, _ in observations(instance, labels_key("test"))] == [*keys, None]
        assert "unchanged" in sensor_tick(instance, lsvq, first.cursor, definitions=two).skip_message

        # One row of the test file changes (it sits in yfcc-batch1, beside train rows).
        write_csv(test, [("yfcc-batch1/3", 41.5), *TEST_ROWS[1:]])
        n_train, n_test = len(observations(instance, labels_key("train"))), len(observations(instance, labels_key("test")))
        tick = sensor_tick(instance, lsvq, first.cursor, definitions=two)
        assert requested(tick) == ["yfcc-batch1"]
        assert [r.tags["lsvq/reason"] for r in tick.run_requests] == ["changed"]
        state = read_state(lsvq)
        assert observations(instance, labels_key("train"))[n_train:] == []  # the train file did not change
        assert observations(instance, labels_key("test"))[n_test:] == [
            ("yfcc-batch1", state.fingerprints[("test", "yfcc-batch1")]),
            (None, state.files["test"][1]),
        ]
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == keys


def test_register_job_registers_every_partition_and_materialises_nothing(tmp_path: Path) -> None:
    config, _, _ = two_splits(tmp_path, max_rows=1)  # the cap selects yfcc-batch1 only: all four are registered
    two = build_defs(config)
    lsvq = LsvqSettings(**config["lsvq"])
    assert read_state(lsvq).selected == ["yfcc-batch1"]
    keys = [*KEYS, "ia-batch5"]
    with dg.instance_for_test() as instance:
        result = two.resolve_job_def(REGISTER_JOB).execute_in_process(instance=instance)
        assert result.success
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == keys
        graph = two.resolve_asset_graph()
        materialised = {k for k in graph.get_all_asset_keys() if instance.fetch_materializations(k, limit=1).records}
        assert materialised == set()
        assert [p for p, _ in observations(instance, labels_key("test"))] == [*keys, None]
        assert not (tmp_path / "lsvq" / "clips").exists() and not (tmp_path / "lsvq" / "partitions").exists()
        # Run again: idempotent, nothing new.
        assert two.resolve_job_def(REGISTER_JOB).execute_in_process(instance=instance).success
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == keys


def test_sensor_caps_runs_per_tick_and_remembers_only_what_it_requested(tmp_path: Path) -> None:
    lsvq = settings(tmp_path, write_csv(tmp_path / "m.csv", ROWS))
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance, lsvq, None, cap=2)
        assert requested(first) == KEYS[:2]
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == KEYS  # all registered at once
        cursor = LabelsCursor.parse(first.cursor)
        assert set(cursor.requested) == set(KEYS[:2]) and cursor.pending == ["backup"]
        second = sensor_tick(instance, lsvq, first.cursor, cap=2)
        assert requested(second) == ["backup"]
        assert len([p for p, _ in observations(instance) if p == "backup"]) == 1  # observed once, run later
        assert "unchanged" in sensor_tick(instance, lsvq, second.cursor, cap=2).skip_message
        assert len(first.cursor) < 600


def test_settings_and_cap_come_from_lsvq_variables(tmp_path: Path, monkeypatch) -> None:
    """As deployed: the webserver and the daemon get LSVQ_* variables, the resources bind them."""
    csv = write_csv(tmp_path / "m.csv", ROWS)
    for var, value in {"LSVQ_DIR": tmp_path / "lsvq", "LSVQ_MANIFEST_CSV": csv, "LSVQ_MIN_CSV_ROWS": 1, "LSVQ_MAX_ROWS": 0, "LSVQ_MAX_RUNS_PER_TICK": 2}.items():
        monkeypatch.setenv(var, str(value))
    deployed = build_defs()
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(
            instance=instance, instance_ref=instance.get_ref(), definitions=deployed, resources=deployed.resources
        ) as context:
            assert requested(lsvq_manifest_sensor.evaluate_tick(context)) == KEYS[:2]


@pytest.mark.parametrize(
    "problem, expected",
    [("missing", "not found"), ("no-mos", "no mos column"), ("too-few", "--min-csv-rows")],
)
def test_unusable_label_file_skips_with_its_message(tmp_path: Path, problem: str, expected: str) -> None:
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
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == []


# --- the schedule ---------------------------------------------------------------------------------


def _report_partition_done(instance: dg.DagsterInstance, key: str, version: str) -> None:
    """Record a partition as materialised (what a successful partition run leaves), without running it."""
    instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_manifest", partition=key, tags={"dagster/data_version": version}))
    for asset in PARTITION_ASSETS[1:]:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=key))


def test_schedule_requests_missing_then_stale_partitions(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", ROWS)
    lsvq = settings(tmp_path, csv)
    with dg.instance_for_test() as instance:
        first = schedule_tick(instance, lsvq, cap=2)
        assert requested(first) == KEYS[:2] and {r.tags["lsvq/reason"] for r in first.run_requests} == {"missing"}
        assert instance.get_dynamic_partitions(PARTITIONS_NAME) == KEYS  # registered before the runs
        assert [p for p, _ in observations(instance)] == [*KEYS[:2], None]  # what those runs will read

        for key, version in read_state(lsvq).versions.items():
            _report_partition_done(instance, key, version)
        current = schedule_tick(instance, lsvq)
        assert requested(current) == [] and "current" in current.skip_message

        # A backfill of lsvq_clips alone failed for "backup"; a run of "ia-batch2" is in progress.
        job = defs.resolve_job_def("lsvq_partition_job")
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
    keys = ("lsvq_probes", "lsvq_rows_train", SHARD)
    return {k: set(p) for k in keys if (p := result.get_requested_partitions(dg.AssetKey(k)))}


def test_shard_is_requested_once_after_partitions_settle_and_a_clips_only_run_is_finished(tmp_path: Path) -> None:
    with dg.instance_for_test() as instance:
        register_partitions(instance, KEYS)
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.total_requested == 0

        for key in KEYS:
            _report_partition_done(instance, key, "v")
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert requested_by_asset(result) == {SHARD: {None}}
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0  # handled: one assembly for the batch

        # A partition still running holds the shard back until it ends.
        run = instance.create_run_for_job(
            defs.resolve_job_def("lsvq_partition_job"), tags={"dagster/partition": "backup"}, status=dg.DagsterRunStatus.STARTED
        )
        instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_rows_train", partition="yfcc-batch1"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0
        instance.report_run_failed(run)
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert requested_by_asset(result) == {SHARD: {None}}

        # lsvq_clips materialised alone (a backfill of its failed partition): probes and rows follow.
        instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_clips", partition="ia-batch2"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert requested_by_asset(result) == {"lsvq_probes": {"ia-batch2"}, "lsvq_rows_train": {"ia-batch2"}}
        for asset in ("lsvq_probes", "lsvq_rows_train"):  # that run done
            instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition="ia-batch2"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert requested_by_asset(result) == {SHARD: {None}}

        # A partition run that failed at lsvq_clips has re-written lsvq_manifest only: nothing follows
        # (rebuilding the rows from the old clips would turn the failed partition into a materialised one).
        instance.report_runless_asset_event(dg.AssetMaterialization("lsvq_manifest", partition="ia-batch2"))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0


# --- lineage: one changed row ---------------------------------------------------------------------


def partition_assets(splits: list[str]) -> list[dg.AssetsDefinition]:
    """What lsvq_partition_job materialises (lsvq_rows is one multi-asset with an output per split)."""
    return [manifest_asset(splits), lsvq_clips, lsvq_probes, rows_asset(splits)]


def _stale(instance: dg.DagsterInstance) -> dict[str, str]:
    """Every partition asset's and the shard's status as the UI computes it."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None), instance=instance, asset_graph=graph)
    resolver = CachingStaleStatusResolver(instance, graph, view)
    out = {}
    for asset in PARTITION_ASSETS:
        for key in instance.get_dynamic_partitions(PARTITIONS_NAME):
            out[f"{asset}[{key}]"] = resolver.get_status(dg.AssetKey(asset), key).value
    out[SHARD] = resolver.get_status(dg.AssetKey(SHARD)).value
    return out


def test_one_changed_row_makes_exactly_its_partition_and_what_follows_stale(tmp_path: Path, corpus: Corpus, served) -> None:
    csv = shutil.copyfile(corpus.csv, tmp_path / "LSVQ_whole_train.csv")
    config = {
        "lsvq": {"lsvq_dir": str(tmp_path / "work"), "manifest_csv": str(csv), "min_csv_rows": 1, "max_rows": 0},
        "clip_source": {"clip_url_template": served.base_url + "/{name}{suffix}", "concurrency": 4},
        "prober": {},
    }
    resources = build_resources(config)
    lsvq = resources["lsvq"]
    assets = partition_assets(["train"])
    manifest, shard = assets[0], shard_asset("train")
    with dg.instance_for_test() as instance:
        first = sensor_tick(instance, lsvq, None)
        keys = requested(first)
        assert keys == ["yfcc-batch1", "ia-batch2"]
        for key in keys:
            assert dg.materialize(assets, instance=instance, partition_key=key, resources=resources).success
        assert dg.materialize([shard], instance=instance, resources=resources).success
        assert set(_stale(instance).values()) == {StaleStatus.FRESH.value}

        # One MOS in yfcc-batch1 changes; the sensor observes exactly that partition of the label file.
        text = csv.read_text().replace("yfcc-batch1/725,48,64,76.84375", "yfcc-batch1/725,48,64,77.5")
        assert text != csv.read_text()
        csv.write_text(text)
        tick = sensor_tick(instance, lsvq, first.cursor)
        assert requested(tick) == ["yfcc-batch1"]
        # The shard reads the label file itself (its rows' order and cap), so it is stale at once too.
        status = _stale(instance)
        assert {k for k, v in status.items() if v == "STALE"} == {"lsvq_manifest[yfcc-batch1]", SHARD}

        # The partition's manifest re-read: what reads it directly (clips, rows) is stale next, not ia-batch2.
        assert dg.materialize([manifest], instance=instance, partition_key="yfcc-batch1", resources=resources).success
        status = _stale(instance)
        assert {k for k, v in status.items() if v == "STALE"} == {"lsvq_clips[yfcc-batch1]", "lsvq_rows_train[yfcc-batch1]", SHARD}

        # The partition's run (what the sensor requested): its rows change, so the shard is stale; nothing else.
        assert dg.materialize(assets, instance=instance, partition_key="yfcc-batch1", resources=resources).success
        status = _stale(instance)
        assert {k for k, v in status.items() if v == "STALE"} == {SHARD}
        assert dg.materialize([shard], instance=instance, resources=resources).success
        assert set(_stale(instance).values()) == {StaleStatus.FRESH.value}
