"""The capacity-planning assets in Dagster: one run backfills every day, the schedules pick
the right local day on any date, and throttling in the history reaches the outlook."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.capacity import CAPACITY_DAYS, capacity_schedules
from dict_ratelimit.defs.resources import ClockResource, PostgresResource
from dict_ratelimit.defs.tables import metadata_table
from dict_ratelimit_tests.capacity_history import (
    SAO_PAULO,
    monday_midnight_before,
    record_history,
    weekly_simulator,
)
from dict_ratelimit_tests.ticks import materializations
from dict_ratelimit_tests.timebase import base_time

pytestmark = pytest.mark.timebased

ISPB = "60746948"
WEEKS = 8  # the eighth Monday peak of KEYS_CHECK throttles (weekly-growth scenario)


def _day(at: dt.datetime) -> str:
    return at.astimezone(SAO_PAULO).strftime("%Y-%m-%d")


@pytest.fixture
def history(engine: Engine) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    start = monday_midnight_before(base_time(), WEEKS)
    end = start + dt.timedelta(weeks=WEEKS)
    record_history(engine, weekly_simulator(start, ISPB), ISPB, end, ("KEYS_CHECK",))
    yield start, end


def _run(db_url: URL, now: dt.datetime, job: str, **kwargs: object) -> dg.ExecuteInProcessResult:
    resources = {
        "postgres": PostgresResource(database_url=db_url.render_as_string(hide_password=False)),
        "clock": ClockResource(frozen_at=now.isoformat()),
    }
    with dg.partition_loading_context(effective_dt=now):
        result = (
            build_definitions(resources)
            .resolve_job_def(job)
            .execute_in_process(raise_on_error=False, **kwargs)  # type: ignore[arg-type]
        )
    assert result.success
    return result


def test_one_run_backfills_every_day_and_the_outlook_sees_the_throttling(
    history: tuple[dt.datetime, dt.datetime], db_url: URL, engine: Engine
) -> None:
    start, end = history
    now = end + dt.timedelta(hours=3)
    first, last = _day(start), _day(end - dt.timedelta(minutes=1))
    result = _run(
        db_url,
        now,
        "capacity_daily_job",
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )
    events = materializations(result, "policy_daily_usage")
    assert len(events) == WEEKS * 7  # one run, one step: every day's partition materialized
    daily = events[0]
    metadata = {key: value.value for key, value in daily.metadata.items()}
    assert metadata["days"] == WEEKS * 7 and metadata["rows_written"] == WEEKS * 7
    # KEYS_CHECK refills its whole capacity every minute, on the minute of every reading: no
    # reading ever sees it drained, and the throttling is known from the Bridge's counts only
    assert metadata["throttled_429_total"] > 0
    assert metadata["minutes_exhausted_total"] == 0 and metadata["peak_utilization_max"] == 0
    hottest = daily.metadata["hottest_policies"].value
    assert hottest.records[0].data["policy"] == f"{ISPB}/KEYS_CHECK"
    with engine.connect() as connection:
        throttled_days = connection.execute(
            sa.text(
                "SELECT day, throttled_429, minutes_exhausted FROM "
                "dict_ratelimit.policy_daily_usage WHERE throttled_429 > 0 ORDER BY day"
            )
        ).fetchall()
        month = connection.execute(
            sa.text("SELECT sum(throttled_429) FROM dict_ratelimit.policy_monthly_usage")
        ).scalar_one()
    # the last Monday (week 7), nothing before: the simulator's first 429s
    last_monday = (start + dt.timedelta(weeks=7)).astimezone(SAO_PAULO).date()
    assert [row.day for row in throttled_days] == [last_monday]
    assert month == metadata["throttled_429_total"]

    result = _run(db_url, now, "capacity_outlook_job")
    [profile] = materializations(result, "policy_weekly_profile")
    assert profile.metadata["rows_written"].value == 2 * 168
    top = profile.metadata["hottest_hours"].value.records[0].data
    assert top["when"] == "Monday 10:00" and top["weeks_seen"] == 4
    [outlook] = materializations(result, "capacity_outlook")
    assert outlook.metadata["count_throttling"].value == 1
    urgent = outlook.metadata["most_urgent"].value.records[0].data
    assert urgent["status"] == "throttling"
    assert "It was throttled in the last 30 days" in urgent["recommendation"]
    with engine.connect() as connection:
        latest = connection.execute(
            sa.text("SELECT status, as_of FROM dict_ratelimit.latest_capacity_outlook")
        ).one()
    assert latest.status == "throttling"
    assert latest.as_of == end  # the local midnight the data runs up to


def test_recomputing_a_day_whose_readings_are_gone_keeps_its_row(
    history: tuple[dt.datetime, dt.datetime], db_url: URL, engine: Engine
) -> None:
    start, end = history
    now = end + dt.timedelta(hours=3)
    day = _day(start + dt.timedelta(days=1))
    _run(db_url, now, "capacity_daily_job", partition_key=day)
    with engine.begin() as connection:
        before = connection.execute(
            sa.text("SELECT readings, peak_utilization FROM dict_ratelimit.policy_daily_usage")
        ).one()
        # retention dropped that day's readings (as it does after 13 months)
        connection.execute(
            sa.text(
                "DELETE FROM dict_ratelimit.policy_metric WHERE "
                "(response_time AT TIME ZONE 'America/Sao_Paulo')::date = :day"
            ),
            {"day": dt.date.fromisoformat(day)},
        )
    result = _run(db_url, now, "capacity_daily_job", partition_key=day)
    [daily] = materializations(result, "policy_daily_usage")
    assert daily.metadata["rows_written"].value == 0
    with engine.connect() as connection:
        after = connection.execute(
            sa.text("SELECT readings, peak_utilization FROM dict_ratelimit.policy_daily_usage")
        ).one()
    assert after == before and before.readings == 288


def test_the_outlook_of_a_monitor_without_history_says_so(db_url: URL, engine: Engine) -> None:
    now = base_time()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO dict_ratelimit.participant (ispb, category) VALUES (:ispb, 'A');"
                "INSERT INTO dict_ratelimit.policy (ispb, policy, capacity, refill_tokens, "
                "refill_period_sec) VALUES (:ispb, 'ENTRIES_READ_PARTICIPANT_ANTISCAN', 50000, "
                "25000, 60)"
            ),
            {"ispb": ISPB},
        )
    result = _run(db_url, now, "capacity_outlook_job")
    [outlook] = materializations(result, "capacity_outlook")
    assert outlook.metadata["count_insufficient_history"].value == 1
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT weeks_used, recommendation FROM dict_ratelimit.capacity_outlook")
        ).one()
    assert row.weeks_used == 0 and "only 0 usable week(s)" in row.recommendation


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        # 00:30 in São Paulo (03:30 UTC) on the first of a month: the last day of the previous
        ("2027-03-01T03:30:00+00:00", "2027-02-28"),
        ("2028-03-01T03:30:00+00:00", "2028-02-29"),  # leap day
        ("2027-01-01T03:30:00+00:00", "2026-12-31"),  # year end
    ],
)
def test_the_daily_schedule_runs_the_local_day_that_just_ended(at: str, expected: str) -> None:
    definitions = build_definitions()
    daily = definitions.resolve_schedule_def("capacity_daily_schedule")
    when = dt.datetime.fromisoformat(at)
    with dg.partition_loading_context(effective_dt=when):
        context = dg.build_schedule_context(
            scheduled_execution_time=when, repository_def=definitions.get_repository_def()
        )
        [request] = list(daily.evaluate_tick(context).run_requests or [])
    assert request.partition_key == expected and request.run_key == expected
    assert CAPACITY_DAYS.timezone == "America/Sao_Paulo"


def test_the_outlook_schedule_runs_daily_at_one_local_time() -> None:
    outlook = capacity_schedules()[1]
    assert outlook.cron_schedule == "0 1 * * *"
    assert outlook.execution_timezone == "America/Sao_Paulo"
    assert outlook.default_status == dg.DefaultScheduleStatus.RUNNING


def test_readings_off_the_hour_cover_midnight_and_a_day_with_counts_only_keeps_its_429s(
    db_url: URL, engine: Engine
) -> None:
    start = monday_midnight_before(base_time(), WEEKS)
    end = start + dt.timedelta(weeks=WEEKS)
    simulator = weekly_simulator(start, ISPB)
    offset = dt.timedelta(minutes=2)
    record_history(engine, simulator, ISPB, end, ("KEYS_CHECK",), offset=offset)
    throttled_monday = (start + dt.timedelta(weeks=7)).astimezone(SAO_PAULO).date()
    with engine.begin() as connection:  # that day's readings were refused: counts only
        for table in ("threshold_evaluation", "policy_metric"):
            connection.execute(
                sa.text(
                    f"DELETE FROM dict_ratelimit.{table} WHERE "
                    "(response_time AT TIME ZONE 'America/Sao_Paulo')::date = :day"
                ),
                {"day": throttled_monday},
            )
    now = end + dt.timedelta(hours=3)
    _run(
        db_url,
        now,
        "capacity_daily_job",
        tags={
            "dagster/asset_partition_range_start": _day(start),
            "dagster/asset_partition_range_end": _day(end - dt.timedelta(minutes=1)),
        },
    )
    with engine.connect() as connection:
        rows = {
            r.day: r
            for r in connection.execute(
                sa.text("SELECT * FROM dict_ratelimit.policy_daily_usage ORDER BY day")
            )
        }
    first_day = start.astimezone(SAO_PAULO).date()
    # the day before's 23:57 reading speaks for 00:00-00:02: no gap at midnight
    around = {throttled_monday, throttled_monday + dt.timedelta(days=1)}  # the gap's days
    for day, row in rows.items():
        if day == first_day or day in around:
            continue
        assert (row.readings, row.gaps, row.gap_minutes) == (288, 0, 0), day
        assert row.observed_minutes == pytest.approx(1440)
    # the very first reading (00:07) has nothing before it
    assert rows[first_day].gap_minutes == pytest.approx(7) and rows[first_day].gaps == 0
    counts_only = rows[throttled_monday]
    assert counts_only.readings == 0 and counts_only.peak_utilization is None
    assert counts_only.throttled_429 > 0 and counts_only.demand_source == "bridge_stats"
    # Sunday's 23:57 reading covers Monday until 00:12; the rest of Monday is one gap
    assert counts_only.gaps == 1 and counts_only.gap_minutes == pytest.approx(1440 - 12)
    assert counts_only.peak_demand_share > 1  # over the refill the policy table knows
    # the stretch without readings touches Monday and Tuesday (until its 00:02), not Sunday
    tuesday = rows[throttled_monday + dt.timedelta(days=1)]
    assert tuesday.gaps == 1 and tuesday.gap_minutes == pytest.approx(2)


def test_metadata_tables_take_rows_with_and_without_values() -> None:
    table = metadata_table(
        [("policy", "string"), ("first_429_at", "string")],
        [{"policy": "a", "first_429_at": None}, {"policy": "b", "first_429_at": "2027-01-04"}],
    )
    assert [record.data for record in table.value.records] == [
        {"policy": "a", "first_429_at": None},
        {"policy": "b", "first_429_at": "2027-01-04"},
    ]
