"""Capacity planning against a known truth: the simulator's weekly cycle and growth rate.

Six weeks of the ``weekly-growth`` scenario (KEYS_CHECK peaks at 61 % of its refill on Mondays
10:00 and grows 8 % a week) are read every five minutes, stored and derived; then the three
capacity steps run as of the end of that history. The simulator then keeps going, unread,
until KEYS_CHECK answers its first 429: the outlook must have named that day.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from dict_ratelimit.clock import FixedClock
from dict_ratelimit.pipeline.capacity import (
    compute_daily_usage,
    compute_outlook,
    compute_weekly_profile,
)
from dict_ratelimit_tests.capacity_history import (
    SAO_PAULO,
    first_429,
    monday_midnight_before,
    record_history,
    weekly_simulator,
)
from dict_ratelimit_tests.timebase import base_time

pytestmark = pytest.mark.timebased

ISPB = "60701190"
POLICIES = ("KEYS_CHECK", "ENTRIES_WRITE")
WEEKS = 6


@pytest.fixture(scope="module")
def history(pg_server, template_db):  # type: ignore[no-untyped-def]
    """Six weeks of history in one database shared by this module's tests (read-only)."""
    from dict_ratelimit_tests.conftest import create_test_database, drop_test_database

    name = "capacity_truth"
    url = create_test_database(pg_server, name, template=template_db)
    engine = sa.create_engine(url)
    start = monday_midnight_before(base_time(), WEEKS)
    end = start + dt.timedelta(weeks=WEEKS)
    outage = (start + dt.timedelta(days=15, hours=13), start + dt.timedelta(days=15, hours=15))
    simulator = weekly_simulator(start, ISPB)
    readings = record_history(engine, simulator, ISPB, end, POLICIES, skip=[outage])
    clock = FixedClock(end + dt.timedelta(hours=4))  # the daily run, early in the morning
    daily = compute_daily_usage(engine, start, end, SAO_PAULO, clock.now())
    profile = compute_weekly_profile(engine, clock.now(), SAO_PAULO)
    outlook = compute_outlook(engine, clock.now(), SAO_PAULO)
    throttled_at = first_429(simulator, ISPB, "KEYS_CHECK", dt.timedelta(weeks=4))
    yield {
        "engine": engine,
        "start": start,
        "end": end,
        "outage": outage,
        "readings": readings,
        "daily": daily,
        "profile": profile,
        "outlook": outlook,
        "first_429": throttled_at,
    }
    engine.dispose()
    drop_test_database(pg_server, name)


def _outlook(history, policy):  # type: ignore[no-untyped-def]
    rows = history["outlook"].rows
    return rows[rows["policy"] == policy].iloc[0]


def test_the_weekly_profile_finds_the_peak_hour(history) -> None:  # type: ignore[no-untyped-def]
    with history["engine"].connect() as connection:
        cells = connection.execute(
            sa.text(
                "SELECT window_weeks, hour_of_week, weekday, hour, weeks_seen, typical_share, "
                "peak_share FROM dict_ratelimit.policy_weekly_profile "
                "WHERE ispb = :ispb AND policy = 'KEYS_CHECK' ORDER BY window_weeks, hour_of_week"
            ),
            {"ispb": ISPB},
        ).fetchall()
    assert len(cells) == 2 * 168
    four = [c for c in cells if c.window_weeks == 4]
    thirteen = [c for c in cells if c.window_weeks == 13]
    top = max(four, key=lambda c: c.typical_share or 0)
    assert (top.hour_of_week, top.weekday, top.hour) == (10, "Monday", 10)
    # the monitor was down on the third Tuesday 13:00-15:00: the 13:00 cell saw three weeks
    # (the 15:00 sweep's Bridge counts, 14:55-15:00, still give 14:00 a figure)
    assert {c.hour_of_week for c in four if c.weeks_seen != 4} == {24 + 13}
    assert {c.weeks_seen for c in four} == {3, 4}
    # 13 weeks asked, six exist: the cells say so instead of averaging in zeros
    assert {c.weeks_seen for c in thirteen} == {WEEKS - 1, WEEKS}
    # the median of the last four Mondays 10:00: weeks 2-5 of 0.61 x 1.08^week
    expected = sorted(0.61 * 1.08 ** (k + 10 / 168) for k in range(2, 6))
    assert top.typical_share == pytest.approx((expected[1] + expected[2]) / 2, rel=0.02)
    assert top.peak_share == pytest.approx(expected[-1], rel=0.02)
    night = next(c for c in four if c.hour_of_week == 3)
    assert night.typical_share == pytest.approx(top.typical_share * 0.05, rel=0.1)


def test_the_trend_recovers_the_growth_rate(history) -> None:  # type: ignore[no-untyped-def]
    keys = _outlook(history, "KEYS_CHECK")
    assert keys["weeks_used"] == WEEKS
    assert keys["growth_low_per_week"] <= 0.08 <= keys["growth_high_per_week"]
    assert keys["growth_per_week"] == pytest.approx(0.08, abs=0.005)
    assert keys["fit_mad"] < 0.02
    writes = _outlook(history, "ENTRIES_WRITE")
    assert writes["growth_low_per_week"] <= 0.01 <= writes["growth_high_per_week"]
    assert writes["status"] in ("growing", "stable")
    as_of = history["outlook"].as_of
    assert writes["first_429_at"] is None or writes["first_429_at"] > as_of + dt.timedelta(weeks=26)


def test_the_outlook_names_the_day_of_the_first_429(history) -> None:  # type: ignore[no-untyped-def]
    keys = _outlook(history, "KEYS_CHECK")
    truth = history["first_429"]
    assert truth is not None, "the simulator never throttled within four weeks"
    # the eighth Monday peak: week 7 of the scenario, 10:00 local
    assert truth.astimezone(SAO_PAULO).weekday() == 0
    assert truth.astimezone(SAO_PAULO).hour == 10
    assert abs(keys["first_429_at"] - truth) < dt.timedelta(days=1)
    assert keys["first_429_earliest_at"] <= truth <= keys["first_429_latest_at"]
    assert abs(keys["peak_exceeds_refill_at"] - truth) < dt.timedelta(days=1)
    assert keys["status"] == "at_risk"
    assert keys["peak_weekday"] == "Monday" and keys["peak_hour"] == 10
    text = keys["recommendation"]
    assert "KEYS_CHECK peaks at" in text and "Mondays 10:00" in text and "+8.0%/week" in text
    peaks = json.loads(keys["weekly_peaks"])
    assert [p["used"] for p in peaks] == [False] * (13 - WEEKS) + [True] * WEEKS


def test_daily_usage_counts_gaps_not_zeros(history) -> None:  # type: ignore[no-untyped-def]
    outage_day = history["outage"][0].astimezone(SAO_PAULO).date()
    with history["engine"].connect() as connection:
        rows = {
            r.day: r
            for r in connection.execute(
                sa.text(
                    "SELECT * FROM dict_ratelimit.policy_daily_usage "
                    "WHERE ispb = :ispb AND policy = 'KEYS_CHECK' ORDER BY day"
                ),
                {"ispb": ISPB},
            )
        }
    assert len(rows) == WEEKS * 7
    normal = rows[outage_day - dt.timedelta(days=1)]
    assert normal.readings == 288 and normal.gaps == 0
    assert normal.gap_minutes == pytest.approx(0, abs=0.01)
    down = rows[outage_day]
    assert down.readings == 288 - 24
    assert down.gaps == 1
    # the 12:55 reading speaks for 15 minutes; nothing covers 13:10-15:00
    assert down.gap_minutes == pytest.approx(110, abs=0.01)
    assert down.observed_minutes + down.gap_minutes == pytest.approx(1440)
    monday = rows[history["start"].astimezone(SAO_PAULO).date() + dt.timedelta(weeks=5)]
    assert monday.demand_source == "bridge_stats"
    # the peak hour's five-minute windows: 0.61 x 1.08^(5 + 10/168) x 70/min
    assert monday.demand_max_per_min == pytest.approx(0.61 * 1.08 ** (5 + 10 / 168) * 70, rel=0.03)
    assert monday.throttled_429 == 0 and monday.minutes_exhausted == 0
    assert history["daily"].rows_written == WEEKS * 7 * len(POLICIES)
