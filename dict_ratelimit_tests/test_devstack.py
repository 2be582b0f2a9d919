"""`dict-ratelimit dev` brings the system up, runs a job through the daemon, and stops cleanly."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from dict_ratelimit.simulator.v1 import control_pb2 as ctl
from dict_ratelimit.simulator.v1 import control_pb2_grpc as ctl_grpc
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit.storage.embedded import EmbeddedPostgres, free_port
from dict_ratelimit_tests.prometheus_tools import scrape, value

pytestmark = [pytest.mark.e2e]


READY_TIMEOUT = 240


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]
    except urllib.error.HTTPError as error:  # the server's own words, not just "500"
        raise AssertionError(f"GraphQL {error.code}: {error.read().decode()[:2000]}") from None


def _launch(port: int, job: str, tags: dict[str, str] | None = None) -> str:
    tag_list = ", ".join(
        f'{{key: "{key}", value: "{value}"}}' for key, value in (tags or {}).items()
    )
    launched = _graphql(
        port,
        f"""mutation {{ launchRun(executionParams: {{selector: {{
        repositoryLocationName: "dict_ratelimit", repositoryName: "__repository__",
        jobName: "{job}"}}, runConfigData: "{{}}",
        executionMetadata: {{tags: [{tag_list}]}}}}) {{
        __typename ... on LaunchRunSuccess {{ run {{ runId }} }}
        ... on PythonError {{ message }} }} }}""",
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return str(launched["run"]["runId"])


def _status(port: int, run_id: str) -> str:
    query = f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}'
    return str(_graphql(port, query)["runOrError"]["status"])


def _launch_and_wait(port: int, job: str, tags: dict[str, str] | None = None) -> str:
    run_id = _launch(port, job, tags)
    status = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and status not in {"SUCCESS", "FAILURE", "CANCELED"}:
        time.sleep(1)
        status = _status(port, run_id)
    return str(status)


def _processes_of(data_dir: Path) -> list[int]:
    """Processes whose environment names this data folder: everything dev started."""
    marker = f"DICT_RATELIMIT_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen; output:\n{''.join(lines)[-4000:]}")


def test_dev_serves_dagster_on_embedded_postgres_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    port = free_port()
    exporter_port = free_port()
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "DICT_RATELIMIT_DATA_DIR": str(data_dir),
        "DICT_RATELIMIT_DAGSTER_PORT": str(port),
        "DICT_RATELIMIT_EXPORTER_PORT": str(exporter_port),
        "PYTHONUNBUFFERED": "1",
    }
    for inherited in (
        "DAGSTER_HOME",
        "DICT_RATELIMIT_BRIDGE_TARGET",
        "DICT_RATELIMIT_PARTICIPANTS",
        "DICT_RATELIMIT_PULSAR_URL",
    ):
        env.pop(inherited, None)
    embedded = not env.get("DATABASE_URL")
    early: list[str] = []
    interrupted = ""
    process = subprocess.Popen(
        [sys.executable, "-m", "dict_ratelimit.cli", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # as a shell starts `scripts/dev &`: SIGINT ignored, which exec would pass on to
        # Dagster and the broker (they would then wait out their grace period)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        early = _wait_for_line(process, "Dagster UI ready at", READY_TIMEOUT)

        data = _graphql(
            port,
            "{ repositoriesOrError { ... on RepositoryConnection { nodes { "
            "jobs { name } schedules { name scheduleState { status } } } } } }",
        )
        [repository] = data["repositoriesOrError"]["nodes"]
        assert "retention_job" in {job["name"] for job in repository["jobs"]}
        schedules = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
        assert schedules["retention_daily"] == "RUNNING"
        assert schedules["monitor_sweeps"] == "RUNNING"
        assert schedules["alert_watchdog"] == "RUNNING"
        sensors = _graphql(
            port,
            "{ repositoriesOrError { ... on RepositoryConnection { nodes { "
            "sensors { name sensorState { status } } } } } }",
        )["repositoriesOrError"]["nodes"][0]["sensors"]
        assert {s["name"]: s["sensorState"]["status"] for s in sensors} == {
            "publish_alert_events": "RUNNING",
            "watch_hot_buckets": "RUNNING",
        }

        assert _launch_and_wait(port, "retention_job") == "SUCCESS"
        today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        tick_tags = {"dagster/partition": today, "dict_ratelimit/mode": "incremental"}
        assert _launch_and_wait(port, "monitor_job", tick_tags) == "SUCCESS"
        if embedded:
            assert EmbeddedPostgres(data_dir / "postgres").running_server() is not None
            assert (data_dir / "dagster_home" / "dagster.yaml").is_file()
            engine = create_db_engine(
                EmbeddedPostgres(data_dir / "postgres").application_url("dict_ratelimit")
            )
            with engine.connect() as connection:
                stored = connection.execute(
                    sa.text(
                        "SELECT count(DISTINCT ispb), count(*) FROM dict_ratelimit.policy_snapshot"
                    )
                ).one()
            engine.dispose()
            # the demo's two participants, 28 policies each, per tick (the schedule may add one)
            assert stored[0] == 2 and stored[1] >= 56 and stored[1] % 56 == 0
        # the exporter serves the stored readings
        samples = scrape(exporter_port)
        assert value(samples, "dict_rate_limit_exporter_database_up") == 1
        tokens = samples["dict_rate_limit_available_tokens"]
        assert {(s.labels["ispb"], s.labels["category"]) for s in tokens} == {
            ("12345678", "A"), ("23456789", "D"),
        }  # fmt: skip
        if embedded:  # the server crashes: dev starts it again and everything carries on
            running = EmbeddedPostgres(data_dir / "postgres").running_server()
            assert running is not None
            os.kill(running[0], signal.SIGKILL)
            later = _wait_for_line(process, "embedded PostgreSQL back on port", 60)
            assert f"back on port {running[1]}" in later[-1]
            # the webserver's pooled connection to the old server fails once, then reconnects
            deadline = time.monotonic() + 30
            while True:
                try:
                    status = _launch_and_wait(port, "monitor_job", tick_tags)
                    break
                except AssertionError as error:
                    assert "server closed the connection" in str(error), error
                    assert time.monotonic() < deadline, error
                    time.sleep(1)
            assert status == "SUCCESS"
        # a run in progress when dev stops is cancelled, not failed
        simulator_port = int(
            re.search(r"DICT simulator on 127\.0\.0\.1:(\d+)", "".join(early)).group(1)
        )  # type: ignore[union-attr]
        with grpc.insecure_channel(f"127.0.0.1:{simulator_port}") as channel:
            ctl_grpc.SimulatorControlStub(channel).InjectFault(
                ctl.InjectFaultRequest(kind=ctl.DELAY, delay_ms=30_000, times=0)
            )
        interrupted = _launch(port, "monitor_job", tick_tags)
        deadline = time.monotonic() + 60
        while _status(port, interrupted) != "STARTED":
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.5)
        time.sleep(2)  # inside the (slowed) Bridge call
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "DICT simulator on 127.0.0.1:" in "".join(early)
    assert f"Prometheus exporter: http://127.0.0.1:{exporter_port}/metrics" in "".join(early)
    assert "Pulsar (embedded pulsar-lite): pulsar://127.0.0.1:" in "".join(early)
    assert _processes_of(data_dir) == []  # nothing left behind, code server included
    # every child heard the Ctrl-C itself
    assert [line for line in output.splitlines() if "did not stop within" in line] == []
    assert re.search(r"cancelled \d+ run\(s\) in progress", output), output[-3000:]
    if embedded:
        assert "embedded PostgreSQL stopped" in output
        assert EmbeddedPostgres(data_dir / "postgres").running_server() is None
        server = EmbeddedPostgres(data_dir / "postgres")
        server.ensure_running()
        try:
            engine = create_db_engine(server.application_url("dagster"))
            with engine.connect() as connection:
                status = connection.execute(
                    sa.text("SELECT status FROM runs WHERE run_id = :id"), {"id": interrupted}
                ).scalar()
            engine.dispose()
        finally:
            server.stop()
        assert status == "CANCELED"
