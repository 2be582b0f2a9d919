"""The exporter: series read from a real database at scrape time, over real HTTP."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.exporter.collector import DictRateLimitCollector
from dict_ratelimit.exporter.exposition import CONTENT_TYPE
from dict_ratelimit.exporter.server import start_exporter
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit.storage.embedded import EmbeddedPostgres, free_port
from dict_ratelimit.storage.migrations import migrate
from dict_ratelimit.storage.ticks import record_tick
from dict_ratelimit_tests.conftest import MIGRATIONS_DIR
from dict_ratelimit_tests.prometheus_tools import (
    exporter_with_database_down,
    scrape,
    scrape_exporter,
    value,
)
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


def test_sharded_sweeps_add_up_and_the_least_recent_shard_sets_the_last_sweep(
    engine: Engine, exporter_port: int
) -> None:
    """The shards of the newest sweep's split count together; the stalled shard (its latest
    sweep 90 min old) sets the last-sweep time, so staleness shows however long it stalls;
    sweeps of an earlier split (three shards, half an hour ago) are not counted."""
    base = dt.datetime(2026, 2, 28, 23, 30, tzinfo=dt.timezone.utc)
    sweeps = [  # (minutes after base, shard, participants, answered, failed, duration)
        (-90, "1/2", 5, 5, 0, 3.5),  # shard 1 has not swept since
        (-30, "0/3", 9, 9, 0, 99.0),  # an earlier split, within the hour
        (-30, "1/3", 9, 9, 0, 99.0),  # the same instant: both kept
        (0, "0/2", 5, 5, 0, 1.5),
        (20, "0/2", 5, 4, 1, 2.5),
    ]
    with engine.begin() as connection:
        for minutes, shard, participants, answered, failed, duration in sweeps:
            record_tick(
                connection,
                polled_at=base + dt.timedelta(minutes=minutes),
                participants=participants,
                answered=answered,
                failed=failed,
                readings=answered * 28,
                bridge_errors={"unavailable": failed} if failed else {},
                bridge_seconds=duration / 2,
                duration_seconds=duration,
                shard=shard,
            )
    samples = scrape(exporter_port)
    assert value(samples, "dict_rate_limit_monitoring_participants_answered") == 4 + 5
    assert value(samples, "dict_rate_limit_monitoring_participants_failed") == 1
    assert value(samples, "dict_rate_limit_monitoring_duration_seconds") == 3.5
    assert (
        value(samples, "dict_rate_limit_monitoring_last_sweep_timestamp_seconds")
        == (base - dt.timedelta(minutes=90)).timestamp()
    )
    assert value(samples, "dict_rate_limit_monitoring_sweeps_total") == 5

    with engine.begin() as connection:  # back to one run per tick: only that sweep counts
        record_tick(
            connection, polled_at=base + dt.timedelta(minutes=25), participants=10,
            answered=10, failed=0, readings=280, bridge_errors={}, bridge_seconds=1.0,
            duration_seconds=2.0,
        )  # fmt: skip
    samples = scrape(exporter_port)
    assert value(samples, "dict_rate_limit_monitoring_participants_answered") == 10
    assert value(samples, "dict_rate_limit_monitoring_duration_seconds") == 2.0


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
    run = exporter_with_database_down(f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    assert run.database_up == 0
    assert run.returncode == 0


def _get(port: int, path: str, encoding: str = "") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if encoding:
        request.add_header("Accept-Encoding", encoding)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_metrics_gzipped_when_asked_and_404_elsewhere(exporter_port: int) -> None:
    status, headers, body = _get(exporter_port, "/metrics", "gzip, deflate")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    assert headers["Content-Encoding"] == "gzip"
    assert b"dict_rate_limit_exporter_database_up 1.0" in gzip.decompress(body)
    status, headers, body = _get(exporter_port, "/metrics")
    assert "Content-Encoding" not in headers and b"exporter_database_up 1.0" in body
    assert _get(exporter_port, "/other")[0] == 404


def test_abandoned_requests_are_not_served_and_cost_no_queue(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 clients that sent their request and left, against a collection taking 0.3 s: the
    next scrape still answers within 2 s (served one after another, they took 30 s)."""
    original = DictRateLimitCollector.collect

    def slow(self):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return original(self)

    monkeypatch.setattr(DictRateLimitCollector, "collect", slow)
    server, thread = start_exporter(engine, "127.0.0.1", 0)
    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", server.server_port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.close()
        time.sleep(0.2)
        started = time.monotonic()
        samples = scrape(server.server_port)
        took = time.monotonic() - started
        collections = server.flight.collections  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        thread.join(5)
    assert value(samples, "dict_rate_limit_exporter_database_up") == 1
    assert took < 2, took
    assert collections < 10  # the departed were dropped or shared one collection


def test_a_broken_query_blanks_only_its_own_collector(
    db_url: URL, engine: Engine, exporter_port: int
) -> None:
    with running_simulator(PARTICIPANTS, "steady") as sim:
        assert run_tick(sim, monitor_resources(sim, db_url, list(PARTICIPANTS))).success
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE dict_ratelimit.alert_counter"))
    samples = scrape(exporter_port)
    success = {
        s.labels["collector"]: s.value
        for s in samples["dict_rate_limit_exporter_collector_success"]
    }
    assert success == {
        "policies": 1, "participants": 1, "alerts": 0, "outbox": 1, "monitor": 1, "throttling": 1,
        "own_calls": 1, "capacity": 1,
    }  # fmt: skip
    assert value(samples, "dict_rate_limit_exporter_database_up") == 1
    assert len(samples["dict_rate_limit_available_tokens"]) == 56  # the others are all there
    assert "dict_rate_limit_alerts_created_total" not in samples


def _server_processes(postmaster: int) -> list[int]:
    """The postmaster and its children (the backends serving our connections)."""
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg", fast_unsafe=True)
    server.ensure_running()
    yield server
    server.stop_server()


def test_a_frozen_database_gives_database_up_0_within_the_budget(
    own_server: EmbeddedPostgres,
) -> None:
    engine = create_db_engine(own_server.application_url("app"), connect_timeout=2)
    migrate(engine.url, MIGRATIONS_DIR, engine)
    server, thread = start_exporter(engine, "127.0.0.1", 0, budget_seconds=3)
    info = own_server.running_server()
    assert info is not None
    frozen = _server_processes(info[0])
    try:
        assert value(scrape(server.server_port), "dict_rate_limit_exporter_database_up") == 1
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        samples = scrape(server.server_port)
        assert time.monotonic() - started < 5
        assert value(samples, "dict_rate_limit_exporter_database_up") == 0
        again = scrape(server.server_port)  # while the stuck collection still waits: at once
        assert value(again, "dict_rate_limit_exporter_database_up") == 0
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while value(scrape(server.server_port), "dict_rate_limit_exporter_database_up") != 1:
        assert time.monotonic() < deadline, "no recovery after SIGCONT"
        time.sleep(0.5)
    server.shutdown()
    thread.join(5)
    engine.dispose()


def test_after_a_kill_9_and_a_restart_the_exporter_recovers_on_its_own(
    own_server: EmbeddedPostgres,
) -> None:
    engine = create_db_engine(own_server.application_url("app"), connect_timeout=2)
    migrate(engine.url, MIGRATIONS_DIR, engine)
    server, thread = start_exporter(engine, "127.0.0.1", 0)
    try:
        assert value(scrape(server.server_port), "dict_rate_limit_exporter_database_up") == 1
        info = own_server.running_server()
        assert info is not None
        os.kill(info[0], signal.SIGKILL)
        time.sleep(0.5)
        assert value(scrape(server.server_port), "dict_rate_limit_exporter_database_up") == 0
        EmbeddedPostgres(own_server.data_dir, fast_unsafe=True).ensure_running()  # db start
        deadline = time.monotonic() + 30
        while value(scrape(server.server_port), "dict_rate_limit_exporter_database_up") != 1:
            assert time.monotonic() < deadline, "the exporter did not recover within 30 s"
            time.sleep(0.5)
    finally:
        server.shutdown()
        thread.join(5)
        engine.dispose()


def test_the_runbook_base_url_is_published_for_the_rules_links(engine: Engine) -> None:
    """DICT_RATELIMIT_RUNBOOK_BASE_URL reaches the Prometheus alerts through an info series
    (deploy/prometheus/tests: the links become absolute); unset, there is no such series."""
    base = "https://wiki.example.internal/dict-ratelimit/runbook"
    with_base = {f.name: f for f in DictRateLimitCollector(engine, runbook_base_url=base).collect()}
    [sample] = with_base["dict_rate_limit_runbook_info"].samples
    assert sample.labels == {"base_url": base} and sample.value == 1
    without = {f.name for f in DictRateLimitCollector(engine).collect()}
    assert "dict_rate_limit_runbook_info" not in without


def test_the_capacity_outlook_and_the_worrying_profiles_are_exported(engine: Engine) -> None:
    """Five weeks of the weekly-growth scenario: KEYS_CHECK is at risk, so its 168-hour
    profile is exported; the outlook's numbers are the stored ones."""
    from dict_ratelimit.pipeline.capacity import compute_outlook, compute_weekly_profile
    from dict_ratelimit_tests.capacity_history import (
        SAO_PAULO,
        monday_midnight_before,
        record_history,
        weekly_simulator,
    )
    from dict_ratelimit_tests.timebase import base_time

    start = monday_midnight_before(base_time(), 5)
    end = start + dt.timedelta(weeks=5)
    record_history(engine, weekly_simulator(start, "12345678"), "12345678", end, ("KEYS_CHECK",))
    compute_weekly_profile(engine, end, SAO_PAULO)
    compute_outlook(engine, end, SAO_PAULO)
    samples = scrape_exporter(engine)
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT * FROM dict_ratelimit.latest_capacity_outlook")
        ).one()
    labels = {"ispb": "12345678", "policy": "KEYS_CHECK"}
    assert row.status == "at_risk"
    assert value(samples, "dict_rate_limit_capacity_status", status="at_risk", **labels) == 1
    assert value(samples, "dict_rate_limit_capacity_weekly_peak_ratio", **labels) == pytest.approx(
        row.weekly_peak_share
    )
    for bound, stored in (
        ("estimate", row.growth_per_week),
        ("low", row.growth_low_per_week),
        ("high", row.growth_high_per_week),
    ):
        exported = value(samples, "dict_rate_limit_capacity_growth_per_week_ratio", bound=bound)
        assert exported == pytest.approx(stored)
    first = value(samples, "dict_rate_limit_capacity_first_429_timestamp_seconds", **labels)
    assert first == pytest.approx(row.first_429_at.timestamp())
    assert value(samples, "dict_rate_limit_capacity_outlook_timestamp_seconds") == end.timestamp()
    profile = samples["dict_rate_limit_capacity_profile_ratio"]
    assert len(profile) == 168
    monday_ten = value(
        samples, "dict_rate_limit_capacity_profile_ratio", weekday="Monday", hour="10"
    )
    assert monday_ten == max(s.value for s in profile)
