"""The production topology on this machine: every Dagster role its own process, one PostgreSQL instance.

* PostgreSQL: the session's throwaway server (pg.py), a fresh database; ``DAGSTER_HOME/dagster.yaml`` is
  ``deploy/compose-dagster.yaml`` (what docker-compose.yml runs: ``deploy/dagster-postgres.yaml`` with the
  DefaultRunLauncher named, each run its own process started by the code server) with two test-only
  changes (``instance_yaml``): the run queue polled every second, and run monitoring polling every 2 s
  with 30 s start/cancel timeouts; the workspace is ``deploy/compose-workspace.yaml`` on 127.0.0.1. The queue's limits (8 runs,
  the ``lsvq_source`` pool of 2, one run per ``dagster/partition`` value) are the deploy file's.
* a gRPC code server (``dagster api grpc -m lsvq_assets.definitions``): the webserver and the daemon load
  the code location from it (``workspace.yaml`` with ``grpc_server``), and it starts every run worker, so
  its environment (``LSVQ_*``, ``DAGSTER_PG_*``) is what runs inherit;
* ``dagster-webserver`` (the test speaks GraphQL to it, as the UI does) and ``dagster-daemon run``
  (run queue, backfills, sensors, run monitoring), same ``DAGSTER_HOME`` and environment;
* a generated corpus of four folders and two splits served from a loopback clip server, with a 404 and
  a broken clip (so failed-clip and broken rows are compared too).

The one test (stages in order, each bounded by a timeout): the job ``lsvq_register_partitions`` launched
over GraphQL registers the four partitions; a backfill of every partition of the partitioned assets
(``launchPartitionBackfill``) runs while one clip of ``kv-batch4`` hangs on the clip server, and the run
worker of that partition's run is killed with SIGKILL mid-download (its pid from the run's own
"Started process for run (pid: N)" event, checked to be a child of our code server); that run is marked
failed ("terminated by signal 9 (SIGKILL)") and the partition shows failed while the three others are
materialised. Who marks it: with the DefaultRunLauncher the code server that started the worker notices
its death (it checks its run processes every 0.5 s); the daemon's run monitoring cannot ask this launcher
about a worker's health (``supports_check_run_worker_health`` is False), it fails runs whose worker never
started or never stopped after a cancel (the start/cancel timeouts) and, with ``max_runtime_seconds``, runs
that overstay. A code server killed together with its workers leaves its runs STARTED until such a timeout:
that is what K8sRunLauncher/DockerRunLauncher's health checks cover in production; a second backfill of the
failed partition completes; ``lsvq_shards_job`` launched over GraphQL writes both split shards, which must
equal byte for byte (except ``ingested_at_utc``) the shards of a single-process CLI run
(``python -m lsvq_assets``) over the same label files on a local directory.

Storage is a parameter (``STORAGE_MODES``): ``shared-dir`` (today: every process shares ``LSVQ_DIR``) and
``s3`` (``LSVQ_STORAGE=s3://bucket/prefix`` on the moto fixture, a separate ``LSVQ_DIR`` scratch per
process; no clip may exist under any local directory, the clips must be in the bucket). ``s3`` skips until
the settings declare ``LSVQ_STORAGE``.

Without PostgreSQL binaries this skips (with the reason) unless LSVQ_REQUIRE_POSTGRES=1; ``s3`` without moto
unless LSVQ_REQUIRE_S3=1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from lsvq_assets import settings as lsvq_settings
from lsvq_assets_tests.clipgen import ClipSpec
from lsvq_assets_tests.corpus import Corpus, CorpusClip, build_corpus
from lsvq_assets_tests.harness import REPO_ROOT, start_cli
from lsvq_assets_tests.loopback import Fault, LoopbackServer
from lsvq_assets_tests.pg import PgServer
from lsvq_assets_tests.ui_stack import BIN, DagsterUi, _descendants, free_port

pytestmark = [pytest.mark.topology, pytest.mark.postgres, pytest.mark.slow]

COMPOSE_INSTANCE = REPO_ROOT / "deploy" / "compose-dagster.yaml"  # = dagster-postgres.yaml + DefaultRunLauncher (test_deploy.py)
COMPOSE_WORKSPACE = REPO_ROOT / "deploy" / "compose-workspace.yaml"
LOCATION = "lsvq_assets"
REPOSITORY = "__repository__"  # the repository of a Definitions object
SPLITS = ("train", "test")
KILLED, WITH_404, BROKEN, CLEAN = "kv-batch4", "ia-batch2", "yfcc-batch1", "ugc-batch3"
KEYS = {KILLED, WITH_404, BROKEN, CLEAN}
HANGING_CLIP = "kv-batch4/lake.mp4"  # hangs on the first request: its partition's run is in flight when killed
TRAIN = [
    CorpusClip("yfcc-batch1/725", 76.84375, "ok", ClipSpec(seed=31)),
    CorpusClip("yfcc-batch1/broken", 40.0, "broken"),
    CorpusClip("ia-batch2/alpha", 12.25, "ok", ClipSpec(seed=32, codec="vp9")),
    CorpusClip("ia-batch2/gone", 50.0, "missing"),
    CorpusClip("ugc-batch3/sunset", 61.0, "ok", ClipSpec(seed=33, width=48, height=64)),
    CorpusClip("kv-batch4/lake", 44.5, "ok", ClipSpec(seed=34)),
]
TEST = [
    CorpusClip("yfcc-batch1/harbour", 33.5, "ok", ClipSpec(seed=41)),
    CorpusClip("ia-batch2/Disney_Presents..._Mary_Poppins", 71.0, "ok", ClipSpec(seed=42)),
    CorpusClip("ugc-batch3/market", 45.25, "ok", ClipSpec(seed=43, codec="mpeg4")),
    CorpusClip("kv-batch4/pond", 58.0, "ok", ClipSpec(seed=44)),
]
PARTITIONED = ["lsvq_manifest", "lsvq_clips", "lsvq_probes", *(f"lsvq_rows_{s}" for s in SPLITS)]
TIMESTAMP = re.compile(rb'"ingested_at_utc": ?"[^"]*"')
# Timeouts of each stage (seconds): the whole test stays under 4 minutes on 2 cores.
START_S, REGISTER_S, BACKFILL_S, KILL_S, SHARDS_S, CLI_S = 60, 60, 100, 60, 60, 120


def storage_supported() -> bool:
    """Whether the settings declare the object-store storage root (LSVQ_STORAGE)."""
    return any(getattr(s, "var", None) == "LSVQ_STORAGE" for s in getattr(lsvq_settings, "SETTINGS", ()))


STORAGE_MODES = [
    "shared-dir",
    pytest.param("s3", marks=[pytest.mark.s3, pytest.mark.skipif(not storage_supported(), reason="LSVQ_STORAGE is not a setting yet (object-store storage root)")]),
]

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""
LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}
"""
RUN = "query Run($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { runId status jobName tags { key value } } } }"
RUN_EVENTS = """
query RunEvents($runId: ID!) {
  logsForRun(runId: $runId) { __typename ... on EventConnection { events { __typename ... on MessageEvent { message } } } }
}
"""
RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { __typename ... on Runs { results { runId status jobName tags { key value } } } }
}
"""
BACKFILL = "query Backfill($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } } }"
PARTITION_STATUSES = """
query Statuses($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionKeysByDimension { partitionKeys }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions unmaterializedPartitions }
      }
    }
  }
}
"""
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}


# --------------------------------------------------------------------------- setup


def instance_yaml() -> str:
    """deploy/compose-dagster.yaml (the deploy file + DefaultRunLauncher, as docker-compose.yml runs it) with
    the test's queue polling and run-monitoring timeouts; nothing else changes."""
    config = yaml.safe_load(COMPOSE_INSTANCE.read_text())
    assert config["run_launcher"]["class"] == "DefaultRunLauncher" and config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    config["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    config["run_monitoring"].update(start_timeout_seconds=30, cancel_timeout_seconds=30, poll_interval_seconds=2)
    return yaml.safe_dump(config, sort_keys=False)


def workspace_yaml(port: int) -> str:
    """deploy/compose-workspace.yaml with the code server on 127.0.0.1:port instead of user_code:4000."""
    workspace = yaml.safe_load(COMPOSE_WORKSPACE.read_text())
    (entry,) = workspace["load_from"]
    assert entry["grpc_server"]["location_name"] == LOCATION
    entry["grpc_server"].update(host="127.0.0.1", port=port)
    return yaml.safe_dump(workspace, sort_keys=False)


def label_files(base: Path) -> dict[str, Path]:
    return {"train": base / "LSVQ_whole_train.csv", "test": base / "labels_test.txt"}


def write_labels(base: Path) -> dict[str, Path]:
    """train: a PatchVQ-style CSV; test: a FAST-VQA-style labels file (as test_browser.py)."""
    files = label_files(base)
    with open(files["train"], "w", newline="") as fh:
        fh.write("name,height,width,mos,frame_number\n")
        fh.writelines(f"{c.name},48,64,{c.mos!r},6\n" for c in TRAIN)
    with open(files["test"], "w") as fh:
        fh.writelines(f"{c.src}, -1, -1, {c.mos!r}\n" for c in TEST)
    return files


@pytest.fixture(scope="module")
def topo_corpus(tmp_path_factory: pytest.TempPathFactory, clip_factory, broken_factory) -> tuple[Corpus, dict[str, Path]]:
    base = tmp_path_factory.mktemp("topo-corpus")
    corpus = build_corpus(base, clip_factory, broken_factory, [*TRAIN, *TEST])
    return corpus, write_labels(base)


def settings_env(files: dict[str, Path], base_url: str) -> dict[str, str]:
    """The LSVQ_* settings every process gets (the CLI takes the same ones as flags)."""
    return {
        "LSVQ_SPLITS": ",".join(f"{s}={p}" for s, p in files.items()),
        "LSVQ_MIN_CSV_ROWS": "1",
        "LSVQ_MAX_ROWS": "0",
        "LSVQ_CLIP_URL_TEMPLATE": base_url + "/{name}{suffix}",
        "LSVQ_CONCURRENCY": "2",
        "LSVQ_PROBE_CONCURRENCY": "2",
        "LSVQ_MAX_ATTEMPTS": "2",
    }


class Topology(DagsterUi):
    """Code server + webserver + daemon, each with its own environment (``envs[name]``)."""

    def __init__(self, home: Path, envs: dict[str, dict[str, str]], logs: Path) -> None:
        super().__init__(home, envs["dagster-webserver"], logs)
        self.envs = envs
        self.grpc_port = free_port()
        self.workspace = home / "workspace.yaml"
        self.workspace.write_text(workspace_yaml(self.grpc_port))

    def _start_as(self, name: str, tool: str, args: list[str]):
        self.env = self.envs[name]
        service = self._start(tool, args)
        service.name = name
        return service

    def start(self, timeout: float = START_S) -> "Topology":
        self.code_server = self._start_as(
            "code-server", "dagster",
            ["api", "grpc", "-h", "127.0.0.1", "-p", str(self.grpc_port), "-m", "lsvq_assets.definitions", "--location-name", LOCATION],
        )
        self._start_as("dagster-webserver", "dagster-webserver", ["-h", "127.0.0.1", "-p", str(self.port), "-w", str(self.workspace)])
        self._start_as("dagster-daemon", "dagster-daemon", ["run", "-w", str(self.workspace)])
        self.wait_until(self._code_location_loaded, timeout, "the webserver to load the code location from the gRPC server")
        return self

    # -- GraphQL helpers
    def launch_job(self, job: str) -> str:
        params = {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": job}, "runConfigData": {}}
        payload = self.graphql(LAUNCH_RUN, {"executionParams": params})["launchRun"]
        assert payload["__typename"] == "LaunchRunSuccess", payload
        return payload["run"]["runId"]

    def run(self, run_id: str) -> dict:
        return self.graphql(RUN, {"runId": run_id})["runOrError"]

    def wait_run(self, run_id: str, timeout: float) -> dict:
        return self.wait_until(lambda: (r := self.run(run_id))["status"] in TERMINAL_RUN and r, timeout, f"run {run_id} to end")

    def runs(self, **tags: str) -> list[dict]:
        flt = {"tags": [{"key": k, "value": v} for k, v in tags.items()]} if tags else {}
        return self.graphql(RUNS, {"filter": flt})["runsOrError"]["results"]

    def run_messages(self, run_id: str) -> list[str]:
        events = self.graphql(RUN_EVENTS, {"runId": run_id})["logsForRun"]["events"]
        return [e.get("message") or "" for e in events]

    def launch_backfill(self, partitions: list[str]) -> str:
        params = {"partitionNames": sorted(partitions), "assetSelection": [{"path": [a]} for a in PARTITIONED]}
        payload = self.graphql(LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
        assert payload["__typename"] == "LaunchBackfillSuccess", payload
        return payload["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        return self.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]["status"]

    def wait_backfill(self, backfill_id: str, timeout: float) -> str:
        return self.wait_until(
            lambda: (s := self.backfill_status(backfill_id)) in TERMINAL_BACKFILL and s, timeout, f"backfill {backfill_id} to end", every=1
        )

    def statuses(self, asset: str) -> dict:
        node = self.graphql(PARTITION_STATUSES, {"key": {"path": [asset]}})["assetNodeOrError"]
        return {"keys": set(node["partitionKeysByDimension"][0]["partitionKeys"]), **{
            k: set(v) for k, v in node["assetPartitionStatuses"].items() if k != "__typename"
        }}


def run_worker_pid(stack: Topology, run_id: str) -> int:
    """The run's worker process: the pid of its "Started process for run (pid: N)" event, which must be
    a live process below our code server (never anything else is signalled)."""
    for message in stack.run_messages(run_id):
        if m := re.search(r"Started process for run \(pid: (\d+)\)", message):
            pid = int(m.group(1))
            assert pid in {p for p, _ in _descendants(stack.code_server.proc.pid)}, f"pid {pid} is not a child of the code server"
            return pid
    return 0


def shard_bytes(path: Path) -> bytes:
    return TIMESTAMP.sub(b'"ingested_at_utc": "-"', path.read_bytes())


def local_clip_files(*roots: Path, served: Path) -> list[Path]:
    names = {p.name for p in served.rglob("*.mp4")}
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file() and p.name in names]


# --------------------------------------------------------------------------- the test


@pytest.mark.parametrize("storage", STORAGE_MODES)
def test_production_topology_backfill_kill_and_shards_equal_the_cli(
    storage: str, tmp_path: Path, topo_corpus, pg_server: PgServer, pg_database: dict[str, str], request: pytest.FixtureRequest
) -> None:
    started = time.monotonic()
    corpus, files = topo_corpus
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml())
    pg_env = {
        "DAGSTER_HOME": str(home), "DAGSTER_PG_USERNAME": pg_database["username"], "DAGSTER_PG_PASSWORD": pg_database["password"],
        "DAGSTER_PG_HOST": pg_database["hostname"], "DAGSTER_PG_DB": pg_database["db_name"], "DAGSTER_PG_PORT": pg_database["port"],
    }
    # Create the instance's tables once, as a deployment's first start does: three processes creating
    # them at the same moment race in PostgreSQL ("type job_ticks already exists").
    with pytest.MonkeyPatch.context() as env:
        for name, value in pg_env.items():
            env.setenv(name, value)
        dg.DagsterInstance.from_config(str(home)).dispose()
    with LoopbackServer(corpus.root) as clips:
        common = settings_env(files, clips.base_url)
        roles = ("code-server", "dagster-webserver", "dagster-daemon")
        storage_url = ""
        if storage == "shared-dir":
            shared = tmp_path / "lsvq"
            envs = {r: {**pg_env, **common, "LSVQ_DIR": str(shared)} for r in roles}
            scratch = [shared]
        else:  # an object-store storage root; each process its own local scratch
            s3 = request.getfixturevalue("s3_server")
            bucket = request.getfixturevalue("s3_bucket")
            storage_url = f"s3://{bucket}/lsvq"
            scratch = [tmp_path / f"scratch-{r}" for r in roles]
            envs = {r: {**pg_env, **common, **s3.env(), "LSVQ_STORAGE": storage_url, "LSVQ_DIR": str(d)} for r, d in zip(roles, scratch)}

        # The reference: one CLI process over the same label files on a local directory (its own SQLite instance),
        # started now so it runs while the stack starts.
        ref = tmp_path / "reference"
        (ref / "dagster-home").mkdir(parents=True)
        cli = start_cli(
            ["--lsvq-dir", str(ref / "work"), "--output-dir", str(ref / "out"), *(a for s, p in files.items() for a in ("--split", f"{s}={p}")),
             "--min-csv-rows", "1", "--full", "--clip-url-template", clips.base_url + "/{name}{suffix}", "--concurrency", "2"],
            tmp_path / "logs", "reference-cli", env={"DAGSTER_HOME": str(ref / "dagster-home")},
        )
        stack = Topology(home, envs, tmp_path / "logs")
        try:
            stack.start()
            assert cli.wait(CLI_S) == 0, cli.stderr[-3000:]
            figures = {"stack_up_s": round(time.monotonic() - started, 1)}

            # 1. Register partitions: the job over GraphQL, run by a worker the code server starts. Downloads nothing.
            clips.reset_log()
            run = stack.wait_run(stack.launch_job("lsvq_register_partitions"), REGISTER_S)
            assert run["status"] == "SUCCESS", stack.run_messages(run["runId"])[-20:]
            assert stack.statuses("lsvq_clips")["keys"] == KEYS
            assert clips.count() == 0
            figures["registered_s"] = round(time.monotonic() - started, 1)

            # 2. A backfill of every partition; KILLED's run hangs on one clip and its worker is killed.
            clips.set_fault(HANGING_CLIP, Fault.hang(BACKFILL_S))
            first = stack.launch_backfill(sorted(KEYS))

            def killable() -> tuple[str, int] | None:
                if not any(r.path == HANGING_CLIP for r in clips.requests):
                    return None
                for r in stack.runs(**{"dagster/partition": KILLED}):
                    if r["status"] == "STARTED" and (pid := run_worker_pid(stack, r["runId"])):
                        return r["runId"], pid
                return None

            killed_run, pid = stack.wait_until(killable, KILL_S, f"the run of {KILLED} to hang on {HANGING_CLIP}")
            os.kill(pid, signal.SIGKILL)
            assert stack.wait_backfill(first, BACKFILL_S) in ("COMPLETED_FAILED", "FAILED", "COMPLETED")
            dead = stack.wait_run(killed_run, 30)
            assert dead["status"] == "FAILURE", dead
            # Marked failed by the code server that started it (its check of its run processes, every 0.5 s).
            assert any(f"Run execution process for {killed_run} was terminated by signal 9 (SIGKILL)" in m for m in stack.run_messages(killed_run))
            clips_status = stack.statuses("lsvq_clips")
            assert clips_status["failedPartitions"] == {KILLED}, clips_status
            assert clips_status["materializedPartitions"] == KEYS - {KILLED}, clips_status
            for asset in PARTITIONED:
                assert KEYS - {KILLED} <= stack.statuses(asset)["materializedPartitions"], asset
            figures["first_backfill_s"] = round(time.monotonic() - started, 1)

            # 3. The UI's "failed and missing": a second backfill of the failed partition completes.
            clips.clear_faults()
            failed = sorted(KEYS - stack.statuses("lsvq_clips")["materializedPartitions"])
            assert failed == [KILLED]
            second = stack.launch_backfill(failed)
            assert stack.wait_backfill(second, BACKFILL_S) in ("COMPLETED_SUCCESS", "COMPLETED"), stack.runs(**{"dagster/backfill": second})
            for asset in PARTITIONED:
                st = stack.statuses(asset)
                assert st["materializedPartitions"] == KEYS and not st["failedPartitions"], (asset, st)
            # one run per partition at a time (the queue's dagster/partition limit): never two runs of one partition overlapped
            partition_runs = [r for r in stack.runs() if r["jobName"] != "lsvq_register_partitions" and any(t["key"] == "dagster/partition" for t in r["tags"])]
            assert sorted(r["status"] for r in partition_runs if dict((t["key"], t["value"]) for t in r["tags"])["dagster/partition"] == KILLED) == ["FAILURE", "SUCCESS"]
            figures["second_backfill_s"] = round(time.monotonic() - started, 1)

            # 4. The shards: lsvq_shards_job over GraphQL.
            run = stack.wait_run(stack.launch_job("lsvq_shards_job"), SHARDS_S)
            assert run["status"] == "SUCCESS", stack.run_messages(run["runId"])[-20:]
            figures["shards_s"] = round(time.monotonic() - started, 1)
        finally:
            stack.stop()
            if cli.proc.poll() is None:
                cli.kill_group()

        # 5. The shards equal the single-process CLI's, byte for byte but for ingested_at_utc.
        for split in SPLITS:
            name = f"lsvq_{split}.jsonl"
            expected = shard_bytes(ref / "out" / name)
            assert expected.count(b"\n") == sum(c.kind == "ok" for c in (TRAIN if split == "train" else TEST))
            if storage == "shared-dir":
                got = shard_bytes(shared / name)
            else:
                import s3fs

                fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3.endpoint_url}, key=s3.access_key, secret=s3.secret_key, skip_instance_cache=True)
                got = TIMESTAMP.sub(b'"ingested_at_utc": "-"', fs.cat(f"{storage_url}/{name}"))
            assert got == expected, split
        if storage == "s3":
            # No clip under any local directory of the stack; every downloaded clip is in the bucket.
            assert local_clip_files(*scratch, home, served=corpus.root) == []
            keys = s3.list_keys(bucket)
            ok = [c.src for c in corpus.clips if c.kind in ("ok", "broken")]
            assert all(any(k.endswith(src) for k in keys) for src in ok), keys
        figures["total_s"] = round(time.monotonic() - started, 1)
        print("topology figures:", json.dumps(figures))
        (tmp_path / "logs" / "figures.json").write_text(json.dumps(figures))
