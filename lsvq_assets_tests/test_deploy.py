"""deploy/: the files parse and say the same thing as the instance file the tests run.

Nothing here pulls an image, builds one or talks to a cluster: the compose file and the Helm values are
checked as YAML against ``deploy/dagster-postgres.yaml`` (which test_postgres.py runs) and
``deploy/compose-dagster.yaml`` / ``deploy/compose-workspace.yaml`` (which test_topology.py runs).
"""

from __future__ import annotations

import yaml

from lsvq_assets.settings import SETTINGS
from lsvq_assets_tests.harness import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
LOCATION = "lsvq_assets"
PENDING_VARS = {"LSVQ_STORAGE"}  # the object-store storage root, landing with the lead's change


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_compose_instance_is_the_deploy_file_with_the_default_run_launcher() -> None:
    compose, deploy = load("compose-dagster.yaml"), load("dagster-postgres.yaml")
    assert compose.pop("run_launcher") == {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}
    assert compose == deploy


def test_compose_file_runs_the_five_roles_against_that_instance_and_workspace() -> None:
    compose = load("docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "minio", "user_code", "webserver", "daemon"} <= set(services)
    workspace = load("compose-workspace.yaml")
    (entry,) = workspace["load_from"]
    grpc = entry["grpc_server"]
    assert grpc["location_name"] == LOCATION and grpc["host"] == "user_code"
    user_code = " ".join(services["user_code"]["command"])
    assert f"-p {grpc['port']}" in user_code and "-m lsvq_assets.definitions" in user_code and f"--location-name {LOCATION}" in user_code
    for name in ("webserver", "daemon"):
        assert "/opt/dagster/dagster_home/workspace.yaml" in services[name]["command"], name
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and 'pip install ".[postgres,s3]"' in dockerfile
    assert "COPY deploy/compose-dagster.yaml $DAGSTER_HOME/dagster.yaml" in dockerfile
    assert "COPY deploy/compose-workspace.yaml $DAGSTER_HOME/workspace.yaml" in dockerfile
    # Every role gets the same DAGSTER_PG_* / LSVQ_* / AWS_* environment (the run workers inherit user_code's).
    anchors = compose["x-dagster-env"] | compose["x-lsvq-env"]
    for name in ("user_code", "webserver", "daemon"):
        assert services[name]["environment"] == anchors, name
    instance = load("compose-dagster.yaml")
    pg_vars = {field["env"] for field in instance["storage"]["postgres"]["postgres_db"].values() if isinstance(field, dict)}
    assert pg_vars <= set(anchors)
    known = {s.var for s in SETTINGS if s.var} | PENDING_VARS
    assert {k for k in anchors if k.startswith("LSVQ_")} <= known
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(anchors)
    # Published ports on the host's loopback only.
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_helm_values_mirror_the_deploy_file() -> None:
    values, deploy = load("helm/values.yaml"), load("dagster-postgres.yaml")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    runs, pools = deploy["concurrency"]["runs"], deploy["concurrency"]["pools"]
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert values["concurrency"]["runs"]["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    assert values["concurrency"]["pools"] == {"granularity": pools["granularity"], "defaultLimit": pools["default_limit"]}
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is deploy["run_monitoring"]["enabled"] is True
    (user_code,) = values["dagster-user-deployments"]["deployments"]
    assert user_code["dagsterApiGrpcArgs"][:2] == ["-m", "lsvq_assets.definitions"]
    assert user_code["includeConfigInLaunchedRuns"]["enabled"] is True
    assert user_code["envConfigMaps"] and user_code["envSecrets"]
