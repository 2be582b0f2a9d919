"""Flat in history: every query of the tick, the alerts and the exporter reads only the
partitions of the recent past, however many months are kept.

History of 17 months is stored (a reading a day, then the last hour every five minutes); each
query runs under ``EXPLAIN ANALYZE`` and the monthly partitions it actually executed (pruned
when planned or while running) must all lie within the last two months.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dict_ratelimit.domain.retention import add_months, month_start
from dict_ratelimit.domain.thresholds import ThresholdConfig
from dict_ratelimit.exporter import collector
from dict_ratelimit.pipeline.derive import derive_backlog
from dict_ratelimit.storage import alerts as alert_storage
from dict_ratelimit.storage import metrics as metric_storage
from dict_ratelimit.storage import snapshots as snapshot_storage
from dict_ratelimit.storage.queues import key_parameters
from dict_ratelimit.storage.ticks import record_tick
from dict_ratelimit_tests.helpers import reading
from dict_ratelimit_tests.timebase import base_time

pytestmark = [pytest.mark.db, pytest.mark.timebased]

NOW = base_time()
PARTICIPANTS = ("12345678", "87654321")
POLICIES = ("ENTRIES_WRITE", "KEYS_CHECK", "POLICIES_LIST")
_PARTITION = re.compile(r" on ([a-z_]+_y\d{4}m\d{2})")


def _oldest_allowed() -> str:
    """The previous month: older partitions are history; newer ones (the current month and
    the few empty months prepared ahead) cost the same whatever is stored."""
    month = add_months(month_start(NOW.date()), -1)
    return f"y{month.year:04d}m{month.month:02d}"


def _readings(at: dt.datetime, available: int = 30_000) -> list:  # type: ignore[type-arg]
    return [
        reading(at, ispb=i, policy=p, available=available) for i in PARTICIPANTS for p in POLICIES
    ]


@pytest.fixture
def history(engine: Engine) -> Engine:
    day = NOW - dt.timedelta(days=17 * 31)
    with engine.begin() as connection:
        while day < NOW - dt.timedelta(days=1):
            snapshot_storage.store_readings(connection, _readings(day))
            day += dt.timedelta(days=1)
        for minutes in range(60, 0, -5):
            at = NOW - dt.timedelta(minutes=minutes)
            snapshot_storage.store_readings(connection, _readings(at, 30_000 - minutes * 100))
            record_tick(
                connection, polled_at=at, participants=2, answered=2, failed=0, readings=6,
                bridge_errors={}, bridge_seconds=0.1, duration_seconds=0.2,
            )  # fmt: skip
    derive_backlog(engine, ThresholdConfig())
    with engine.begin() as connection:
        alert_storage.apply_evaluations(connection, alert_storage.AlertRules(), PARTICIPANTS, NOW)
    with engine.connect() as connection:
        months = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE c.relname LIKE 'policy_snapshot_y%'"
            )
        ).scalar_one()
    assert months >= 17
    return engine


def _executed_partitions(connection: Connection, sql: str, params: dict) -> set[str]:
    cursor = connection.connection.cursor()
    try:
        query = cursor.mogrify(sql, params).decode()
        cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {query}")
        lines = [row[0] for row in cursor.fetchall()]
    finally:
        cursor.close()
    return {
        match.group(1)
        for line in lines
        if "never executed" not in line
        for match in _PARTITION.finditer(line)
    }


def _assert_recent(executed: set[str]) -> None:
    oldest = _oldest_allowed()
    old = {name for name in executed if name.rsplit("_", 1)[1] < oldest}
    assert old == set(), f"reads old partitions: {sorted(old)}"


def _latest_keys(connection: Connection) -> list[tuple[str, str, dt.datetime]]:
    rows = connection.execute(
        sa.text(
            "SELECT ispb, policy, response_time FROM dict_ratelimit.policy_snapshot "
            "WHERE response_time >= :since"
        ),
        {"since": NOW - dt.timedelta(minutes=6)},
    ).fetchall()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_the_tick_queries_read_only_recent_partitions(history: Engine) -> None:
    with history.connect() as connection:
        keys = _latest_keys(connection)
        assert keys
        key_params = key_parameters(keys)
        checks = {
            "previous readings": (
                snapshot_storage._PREVIOUS_READINGS,
                {
                    "ispbs": list(PARTICIPANTS),
                    "low": NOW - dt.timedelta(days=1, minutes=5),
                    "high": NOW,
                },
            ),
            "pairs by key": (metric_storage._BY_KEYS, key_params),
            **{
                f"alert observations: {table}": (sql, key_params)
                for table, sql in alert_storage.OBSERVATION_READS.items()
            },
        }
        for name, (sql, params) in checks.items():
            executed = _executed_partitions(connection, sql, params)
            assert executed, name
            _assert_recent(executed)

    # storing a sweep (its late-reading probe included), rolled back
    with history.connect() as connection:
        transaction = connection.begin()
        staged = _readings(NOW)
        snapshot_storage.store_readings(connection, staged[:1])  # stages and creates partitions
        executed = _executed_partitions(  # same session: it sees the staging table
            connection,
            snapshot_storage._INSERT_SNAPSHOTS,
            {"low": NOW, "high": NOW + dt.timedelta(days=1)},
        )
        transaction.rollback()
    _assert_recent(executed)


def test_the_exporter_and_analyst_queries_read_only_recent_partitions(history: Engine) -> None:
    with history.connect() as connection:
        bounds = {"low": NOW - dt.timedelta(days=2), "high": NOW}  # what the collector passes
        for sql in (
            collector._LATEST,
            collector._LATEST_TICK,
            "SELECT * FROM dict_ratelimit.latest_policy_state",
        ):
            executed = _executed_partitions(connection, sql, bounds)
            assert executed
            _assert_recent(executed)
        hourly = _executed_partitions(
            connection,
            "SELECT * FROM dict_ratelimit.policy_hourly(%(start)s, %(end)s, %(now)s)",
            {"start": NOW - dt.timedelta(hours=1), "end": NOW, "now": NOW},
        )
        _assert_recent(hourly)


def test_running_counters_survive_retention(history: Engine) -> None:
    """The exporter's totals are kept by the writers, not counted over the stored history."""
    with history.connect() as connection:
        before = dict(connection.execute(sa.text(collector._MONITOR_COUNTERS)).fetchall())
        connection.execute(sa.text("TRUNCATE dict_ratelimit.monitor_tick"))
        connection.commit()
        after = dict(connection.execute(sa.text(collector._MONITOR_COUNTERS)).fetchall())
    assert before["sweeps"] == 12 and after == before
