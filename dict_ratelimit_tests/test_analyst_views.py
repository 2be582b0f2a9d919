"""The analyst views and functions with known readings and known answers."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dict_ratelimit.domain.retention import add_months, month_start
from dict_ratelimit.storage.bulk import ensure_month_partitions
from dict_ratelimit.storage.partitions import create_partition, partition_name
from dict_ratelimit_tests.timebase import base_time

pytestmark = [pytest.mark.db, pytest.mark.timebased]

H0 = base_time().replace(minute=0)
ISPB, POLICY = "12345678", "ENTRIES_WRITE"
#: (minutes after H0, level, available tokens, demand per minute)
READINGS = [
    (50, "OK", 30_000, 10.0),
    (55, "WARNING", 7_000, 20.0),
    (62, "CRITICAL", 3_000, 30.0),
    (90, "EXHAUSTED", 0, 40.0),  # 28 minutes after the previous one: a gap
]
AS_OF = H0 + dt.timedelta(minutes=96)


def _insert(engine: Engine, readings: list[tuple[int, str, int, float]]) -> None:
    times = [H0 + dt.timedelta(minutes=m) for m, *_ in readings]
    with engine.begin() as connection:
        for table in ("policy_metric", "threshold_evaluation"):
            ensure_month_partitions(connection, table, times)
        for at, (_, level, available, demand) in zip(times, readings, strict=True):
            connection.execute(
                sa.text(
                    "INSERT INTO dict_ratelimit.policy_metric (ispb, policy, response_time, "
                    "available_tokens, capacity, refill_tokens, refill_period_sec, "
                    "remaining_ratio, utilization_ratio, refill_per_min, demand_per_min, "
                    "exhaustion_state, recovery_state, burst_absorbable_tokens) VALUES (:i, :p, "
                    ":at, :a, 36000, 1200, 60, :a / 36000.0, 1 - :a / 36000.0, 1200, :d, "
                    "'unknown', 'unknown', :a)"
                ),
                {"i": ISPB, "p": POLICY, "at": at, "a": available, "d": demand},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO dict_ratelimit.threshold_evaluation (ispb, policy, "
                    "response_time, level, level_rank, remaining_ratio, reasons, thresholds) "
                    "VALUES (:i, :p, :at, :level, :rank, :a / 36000.0, '[]', :t)"
                ),
                {
                    "i": ISPB,
                    "p": POLICY,
                    "at": at,
                    "level": level,
                    "rank": ["OK", "WARNING", "CRITICAL", "EXHAUSTED"].index(level),
                    "a": available,
                    "t": json.dumps({}),
                },
            )


def _hourly(engine: Engine, start: dt.datetime, end: dt.datetime, as_of: dt.datetime) -> list:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT * FROM dict_ratelimit.policy_hourly(:start, :end, :as_of) ORDER BY hour"
            ),
            {"start": start, "end": end, "as_of": as_of},
        ).fetchall()


def test_policy_hourly_counts_elapsed_time_split_at_the_hour(engine: Engine) -> None:
    _insert(engine, READINGS)
    first, second = _hourly(engine, H0, H0 + dt.timedelta(hours=2), AS_OF)
    assert first.hour == H0 and second.hour == H0 + dt.timedelta(hours=1)
    # H0: OK 50→55, WARNING 55→60 (the rest of that reading spills into the next hour)
    assert (first.readings, first.minutes_ok, first.minutes_warning) == (2, 5, 5)
    assert (first.minutes_critical, first.minutes_exhausted) == (0, 0)
    assert (first.min_available, first.avg_available, first.max_available) == (
        7000,
        8500.0 + 10_000,
        30000,
    )
    # H0+1: WARNING 60→62, CRITICAL 62→77 (a reading holds at most 15 min: the gap is not
    # time in a level), EXHAUSTED 90→96 (the newest reading counts up to as_of, not 15 min)
    assert second.readings == 2
    assert (second.minutes_warning, second.minutes_critical, second.minutes_exhausted) == (2, 15, 6)
    assert second.minutes_ok == 0
    total = sum(
        float(row.minutes_ok + row.minutes_warning + row.minutes_critical + row.minutes_exhausted)
        for row in (first, second)
    )
    assert total <= (AS_OF - (H0 + dt.timedelta(minutes=50))).total_seconds() / 60
    assert (first.demand_p50_per_min, second.demand_p50_per_min) == (15, 35)


def test_policy_hourly_never_counts_time_after_as_of(engine: Engine) -> None:
    _insert(engine, READINGS[:1])
    [row] = _hourly(engine, H0, H0 + dt.timedelta(hours=1), H0 + dt.timedelta(minutes=53))
    assert row.minutes_ok == 3  # not 10 (the end of the hour) nor 15 (the cap)
    assert _hourly(engine, H0, H0 + dt.timedelta(hours=1), H0 + dt.timedelta(minutes=40)) == []


def test_policy_hourly_reads_only_the_partitions_of_its_range(engine: Engine) -> None:
    _insert(engine, READINGS)
    month = month_start(H0.date())
    far = [add_months(month, -3), add_months(month, 3)]
    with engine.begin() as connection:
        for table in ("policy_metric", "threshold_evaluation"):
            for other in far:
                create_partition(connection, table, other)
        plan = "\n".join(
            row[0]
            for row in connection.execute(
                sa.text("EXPLAIN SELECT * FROM dict_ratelimit.policy_hourly(:start, :end, :as_of)"),
                {"start": H0, "end": H0 + dt.timedelta(hours=2), "as_of": AS_OF},
            )
        )
    for table in ("policy_metric", "threshold_evaluation"):
        assert partition_name(table, month) in plan
        for other in far:
            assert partition_name(table, other) not in plan
