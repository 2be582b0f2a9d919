"""The code location loads, and the deployed dagster.yaml works on a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from dict_ratelimit.definitions import defs
from dict_ratelimit.defs.resources import PostgresResource
from dict_ratelimit.devstack import dagster_environment
from dict_ratelimit.settings import project_root
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit_tests.conftest import SessionServer, create_test_database, drop_test_database

pytestmark = [pytest.mark.e2e]


def test_definitions_are_loadable() -> None:
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("retention_job").executor_def is dg.in_process_executor


def test_dagster_cli_validates_the_workspace(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-w",
            str(project_root() / "workspace.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_retention_schedule_runs_daily_at_three_utc_and_is_on_by_default() -> None:
    schedule = defs.resolve_schedule_def("retention_daily")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "retention_job"


def test_database_url_is_an_env_var_not_a_literal() -> None:
    """The UI shows the variable name; the password never lands in the definitions."""
    resource = defs.resources["postgres"]
    assert isinstance(resource, PostgresResource)
    assert resource.database_url == dg.EnvVar("DATABASE_URL")


@pytest.fixture
def instance_home(
    tmp_path: Path, pg_server: SessionServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A DAGSTER_HOME with the repository's dagster.yaml, its env pointing at the test server."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(project_root() / "dagster.yaml", home / "dagster.yaml")
    db_name = f"dagster_{tmp_path.name[-20:].replace('-', '_').lower()}"
    instance_url = create_test_database(pg_server, db_name)
    for key, value in dagster_environment(pg_server.application, instance_url, home).items():
        monkeypatch.setenv(key, value)
    yield home
    drop_test_database(pg_server, db_name)


def test_deployed_instance_config_stores_runs_in_postgres(instance_home: Path, db_url: URL) -> None:
    with dg.DagsterInstance.from_config(str(instance_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        # the `concurrency:` section of dagster.yaml, as the daemon's queue reads it
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        per_value = {"applyLimitPerUniqueValue": True}  # one run per shard, and per "monitor"
        assert {"key": "dict_ratelimit/serial", "value": per_value, "limit": 1} in limits
        assert instance.scheduler.max_catchup_runs == 1
        assert instance.run_monitoring_enabled

        outcome = defs.resolve_job_def("retention_job").execute_in_process(
            instance=instance,
            resources={
                "postgres": PostgresResource(
                    database_url=db_url.render_as_string(hide_password=False)
                )
            },
        )
        assert outcome.success
        stored = instance.get_run_by_id(outcome.run_id)
        assert stored is not None and stored.status == dg.DagsterRunStatus.SUCCESS


def test_the_watch_lane_runs_by_default_every_15_s_and_is_stopped_when_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sensor = defs.resolve_sensor_def("watch_hot_buckets")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 15
    assert {"postgres", "bridge", "watch", "clock"} <= sensor.required_resource_keys

    from dict_ratelimit.definitions import build_definitions
    from dict_ratelimit.settings import get_settings

    monkeypatch.setenv("DICT_RATELIMIT_WATCH", "false")
    monkeypatch.setenv("DICT_RATELIMIT_WATCH_INTERVAL_SECONDS", "30")
    get_settings.cache_clear()
    try:
        disabled = build_definitions().resolve_sensor_def("watch_hot_buckets")
    finally:
        get_settings.cache_clear()
    assert disabled.default_status == dg.DefaultSensorStatus.STOPPED
    assert disabled.minimum_interval_seconds == 30


def test_runs_on_the_deployed_instance_reuse_connections_and_survive_losing_them(
    instance_home: Path, db_url: URL, pg_server: SessionServer
) -> None:
    """dagster.yaml's pooled storage: a run opens a handful of connections to the instance
    database (dagster-postgres alone: about 100), and connections the server dropped (a
    restart) are replaced before use instead of failing the run."""
    instance_db = os.environ["DAGSTER_PG_DB"]
    opened: list[str] = []

    def count(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        if dbapi_connection.info.dbname == instance_db:
            opened.append(instance_db)

    job = defs.resolve_job_def("retention_job")
    resources = {
        "postgres": PostgresResource(database_url=db_url.render_as_string(hide_password=False))
    }
    sa.event.listen(sa.engine.Engine, "connect", count)
    try:
        with dg.DagsterInstance.from_config(str(instance_home)) as instance:
            assert job.execute_in_process(instance=instance, resources=resources).success
            assert opened  # the counting works: the first run opened the pool's connections
            opened.clear()
            assert job.execute_in_process(instance=instance, resources=resources).success
            assert len(opened) <= 5, len(opened)

            admin = create_db_engine(pg_server.admin)
            try:
                with admin.connect() as connection:
                    dropped = connection.execute(
                        sa.text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = :db AND pid <> pg_backend_pid()"
                        ),
                        {"db": instance_db},
                    ).scalar()
            finally:
                admin.dispose()
            assert dropped and dropped > 0
            outcome = job.execute_in_process(instance=instance, resources=resources)
            assert outcome.success
            stored = instance.get_run_by_id(outcome.run_id)
            assert stored is not None and stored.status == dg.DagsterRunStatus.SUCCESS
    finally:
        sa.event.remove(sa.engine.Engine, "connect", count)


def test_disposing_an_instance_closes_its_pooled_connections(
    instance_home: Path, db_url: URL, pg_server: SessionServer
) -> None:
    """A code server builds an instance per sensor evaluation: each must give its pooled
    connections back when disposed, or they pile up until the garbage collector runs."""
    instance_db = os.environ["DAGSTER_PG_DB"]
    admin = create_db_engine(pg_server.admin)
    resources = {
        "postgres": PostgresResource(database_url=db_url.render_as_string(hide_password=False))
    }

    def open_connections() -> int:
        with admin.connect() as connection:
            return int(
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": instance_db},
                ).scalar()
                or 0
            )

    try:
        for _ in range(3):
            with dg.DagsterInstance.from_config(str(instance_home)) as instance:
                job = defs.resolve_job_def("retention_job")
                assert job.execute_in_process(instance=instance, resources=resources).success
                assert instance.get_runs_count() >= 1  # the schedule storage's pool too
                instance.all_instigator_state()
                assert open_connections() > 0
            # a closed connection's backend takes a moment to leave pg_stat_activity
            deadline = time.monotonic() + 5
            while open_connections() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert open_connections() == 0
    finally:
        admin.dispose()
