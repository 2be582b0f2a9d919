"""Exact increments: each pass computes what was stored since the last one, nothing else,
and a late reading is computed with its successor corrected, as a backfill would."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dict_ratelimit.domain.thresholds import ThresholdConfig
from dict_ratelimit.pipeline.derive import derive_backlog, derive_window
from dict_ratelimit.storage.snapshots import store_readings
from dict_ratelimit_tests.helpers import reading
from dict_ratelimit_tests.timebase import base_time

pytestmark = [pytest.mark.db, pytest.mark.timebased]

T = base_time()
CONFIG = ThresholdConfig()
METRICS = (
    "SELECT response_time, prev_response_time, elapsed_seconds, available_tokens, "
    "demand_per_min, demand_lower_per_min, demand_upper_per_min, time_to_429_s "
    "FROM dict_ratelimit.policy_metric ORDER BY response_time"
)


def _store(engine: Engine, *readings):  # type: ignore[no-untyped-def]
    with engine.begin() as connection:
        return store_readings(connection, list(readings))


def _rows(engine: Engine, sql: str = METRICS) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(sql))]


def _backlogs(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM dict_ratelimit.metric_backlog), "
                "(SELECT count(*) FROM dict_ratelimit.alert_backlog)"
            )
        ).one()


def test_a_late_reading_is_computed_and_its_successor_corrected(engine: Engine) -> None:
    first = reading(T, available=30_000)
    third = reading(T + dt.timedelta(minutes=10), available=20_000)
    _store(engine, first, third)
    assert derive_backlog(engine, CONFIG).metric_rows == 2
    before = {row[0]: row for row in _rows(engine)}
    assert before[third.response_time][1:3] == (T, 600)  # computed against the first

    late = reading(T + dt.timedelta(minutes=5), available=26_000)  # a retried participant
    stored = _store(engine, late)
    assert (stored.inserted, stored.late_successors, stored.queued) == (1, 1, 2)
    report = derive_backlog(engine, CONFIG)
    assert report.snapshots_read == 2 and report.metric_rows == 2
    after = {row[0]: row for row in _rows(engine)}
    assert after[late.response_time][1:3] == (T, 300)
    assert after[third.response_time][1:3] == (late.response_time, 300)  # corrected
    assert after[third.response_time][4] != before[third.response_time][4]  # new demand

    # the same rows as a backfill of the day computes from the stored snapshots
    ticked = _rows(engine)
    derive_window(engine, T - dt.timedelta(days=1), T + dt.timedelta(days=1), CONFIG)
    assert _rows(engine) == ticked


def test_a_pass_computes_exactly_what_was_stored_since_the_last_one(engine: Engine) -> None:
    _store(engine, *(reading(T + dt.timedelta(minutes=5 * i), available=30_000) for i in range(3)))
    assert _backlogs(engine) == (3, 0)
    first = derive_backlog(engine, CONFIG)
    assert (first.snapshots_read, first.queued_for_alerts) == (3, 3)
    assert _backlogs(engine) == (0, 3)
    again = derive_backlog(engine, CONFIG)  # nothing new: nothing read, nothing written
    assert (again.snapshots_read, again.metric_rows) == (0, 0)
    _store(engine, reading(T + dt.timedelta(minutes=15), available=29_000))
    assert derive_backlog(engine, CONFIG).snapshots_read == 1
    assert len(_rows(engine)) == 4


def test_a_failed_pass_leaves_its_work_for_the_next(engine: Engine) -> None:
    _store(engine, reading(T), reading(T + dt.timedelta(minutes=5)))

    class Broken(ThresholdConfig):
        def for_policy(self, policy: str):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        derive_backlog(engine, Broken())
    assert _backlogs(engine) == (2, 0) and _rows(engine) == []  # rolled back, nothing lost
    assert derive_backlog(engine, CONFIG).metric_rows == 2
