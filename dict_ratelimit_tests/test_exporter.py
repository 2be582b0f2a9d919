"""The exporter: series read from a real database at scrape time, over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.exporter.server import start_exporter
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit.storage.embedded import free_port
from dict_ratelimit_tests.prometheus_tools import scrape, value
from dict_ratelimit_tests.simulation import running_simulator
from dict_ratelimit_tests.ticks import monitor_resources, run_tick

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]


PARTICIPANTS = {"12345678": "A", "87654321": "D"}
ANTISCAN = "ENTRIES_READ_PARTICIPANT_ANTISCAN"


@pytest.fixture
def exporter_port(engine: Engine) -> Iterator[int]:
    server, thread = start_exporter(engine, "127.0.0.1", 0)
    yield server.server_port
    server.shutdown()
    thread.join(5)


def test_the_scrape_reflects_the_database(db_url: URL, engine: Engine, exporter_port: int) -> None:
    with running_simulator(PARTICIPANTS, "scan-attack") as sim:
        resources = monitor_resources(sim, db_url, list(PARTICIPANTS))
        sim.advance(540)
        assert run_tick(sim, resources).success
        sim.advance(90)
        assert run_tick(sim, resources).success
    samples = scrape(exporter_port)
    assert value(samples, "dict_rate_limit_exporter_database_up") == 1
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT * FROM dict_ratelimit.latest_policy_health")
        ).fetchall()
    assert len(samples["dict_rate_limit_available_tokens"]) == len(rows) == 56
    for row in rows:
        labels = {"ispb": row.ispb, "policy": row.policy, "category": PARTICIPANTS[row.ispb]}
        assert value(samples, "dict_rate_limit_available_tokens", **labels) == row.available_tokens
        assert value(samples, "dict_rate_limit_capacity", **labels) == row.capacity
        assert value(samples, "dict_rate_limit_utilization_percent", **labels) == pytest.approx(
            100 * (1 - row.remaining_ratio)
        )
        projection = [
            s
            for s in samples.get("dict_rate_limit_exhaustion_projection_seconds", [])
            if s.labels["ispb"] == row.ispb and s.labels["policy"] == row.policy
        ]
        if row.exhaustion_state in ("never", "unknown"):
            assert projection == []  # absent, not 0
        else:
            assert projection[0].value == pytest.approx(row.time_to_429_s or 0.0)
        found = [
            s for s in samples.get("dict_rate_limit_error_404_rate", [])
            if s.labels["ispb"] == row.ispb and s.labels["policy"] == row.policy
        ]  # fmt: skip
        assert (found == []) == (row.not_found_share is None)
    # the scan attack: both anti-scan buckets alerting, CRITICAL by forecast
    for ispb in PARTICIPANTS:
        assert value(samples, "dict_rate_limit_level", ispb=ispb, policy=ANTISCAN) == 2
        assert (
            value(
                samples,
                "dict_rate_limit_alert_open",
                ispb=ispb,
                policy=ANTISCAN,
                severity="CRITICAL",
            )
            == 1
        )
        assert value(samples, "dict_rate_limit_alerts_created_total", ispb=ispb) == 1
        assert value(samples, "dict_rate_limit_alerts_resolved_total", ispb=ispb) == 0
        assert value(samples, "dict_rate_limit_monitor_budget_tokens", ispb=ispb,
                     policy="POLICIES_LIST") >= 0  # fmt: skip
        assert value(samples, "dict_rate_limit_snapshot_age_seconds", ispb=ispb) >= 0
    assert value(samples, "dict_rate_limit_alerts_open", severity="CRITICAL") == 2
    assert value(samples, "dict_rate_limit_alert_events_unpublished") == 2
    assert value(samples, "dict_rate_limit_monitoring_sweeps_total") == 2
    assert value(samples, "dict_rate_limit_monitoring_participants_answered") == 2
    assert value(samples, "dict_rate_limit_monitoring_duration_seconds") > 0
    # labels stay bounded: ispb, policy, category (+ severity/status on alerts)
    for sample in samples["dict_rate_limit_available_tokens"]:
        assert set(sample.labels) == {"ispb", "policy", "category"}


def test_bridge_errors_are_counted_by_class(
    db_url: URL, engine: Engine, exporter_port: int
) -> None:
    from dict_ratelimit.simulator.v1 import control_pb2 as ctl

    with running_simulator(PARTICIPANTS, "steady") as sim:
        sim.inject(ctl.PERMISSION_DENIED, participant="87654321")
        assert run_tick(sim, monitor_resources(sim, db_url, list(PARTICIPANTS))).success
    samples = scrape(exporter_port)
    assert (
        value(samples, "dict_rate_limit_bridge_errors_total", error_class="permission_denied") == 1
    )
    assert value(samples, "dict_rate_limit_monitoring_participants_failed") == 1


def test_a_database_that_is_down_fails_the_scrape_cleanly() -> None:
    dead = create_db_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/x", connect_timeout=2)
    server, thread = start_exporter(dead, "127.0.0.1", 0)
    try:
        first = scrape(server.server_port)
        second = scrape(server.server_port)
    finally:
        server.shutdown()
        thread.join(5)
        dead.dispose()
    assert value(first, "dict_rate_limit_exporter_database_up") == 0
    assert "dict_rate_limit_available_tokens" not in first  # no stale values
    assert value(second, "dict_rate_limit_exporter_scrape_errors_total") == 2


def test_the_exporter_command_starts_and_serves_while_the_database_is_down() -> None:
    env = {**os.environ, "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/x"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dict_ratelimit.cli", "exporter", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert match, line
        samples = scrape(int(match.group(1)))
        assert value(samples, "dict_rate_limit_exporter_database_up") == 0
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(15)
    assert process.returncode == 0
