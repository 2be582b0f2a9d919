"""The pure capacity-planning math: the robust trend, weekly peaks, the bucket projection and
the outlook's words."""

from __future__ import annotations

import datetime as dt
import math
import random
from zoneinfo import ZoneInfo

import pytest

from dict_ratelimit.domain.capacity import (
    HOURS_PER_WEEK,
    WEEK,
    OutlookInput,
    buffer_minutes,
    describe_hour,
    hour_of_week,
    outlook,
    project,
    theil_sen,
    weekly_peaks,
)
from dict_ratelimit.simulator.scenarios import ScenarioError, load_scenario, parse_scenario

SP = ZoneInfo("America/Sao_Paulo")
UTC = dt.timezone.utc
#: A Monday 00:00 in São Paulo (03:00 UTC); any Monday would do.
MONDAY = dt.datetime(2027, 3, 1, 3, 0, tzinfo=UTC)


def test_theil_sen_ignores_two_wild_weeks_that_pull_least_squares_away() -> None:
    xs = [float(x) for x in range(13)]
    ys = [0.05 * x - 0.4 for x in xs]
    ys[3] += 1.5  # an incident week
    ys[9] -= 1.0  # a holiday
    trend = theil_sen(xs, ys)
    assert trend.slope == pytest.approx(0.05, abs=1e-9)
    assert trend.intercept == pytest.approx(-0.4, abs=1e-9)
    mean_x, mean_y = sum(xs) / 13, sum(ys) / 13
    least_squares = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    assert abs(least_squares - 0.05) > 0.02  # the line a mean would have drawn
    assert trend.slope_low <= 0.05 <= trend.slope_high


@pytest.mark.parametrize("weeks", [6, 13])
def test_the_band_misses_the_true_slope_as_rarely_on_each_side_as_it_says(weeks: int) -> None:
    rng = random.Random(16)
    below = above = 0
    trials = 2000
    for _ in range(trials):
        xs = [float(x) for x in range(weeks)]
        ys = [0.03 * x + rng.gauss(0, 0.05) for x in xs]
        trend = theil_sen(xs, ys)
        below += trend.slope_high < 0.03
        above += trend.slope_low > 0.03
    # a 95 % band: about 2.5 % out on each side (Sen's ranks round to whole slopes)
    assert 0.005 <= below / trials <= 0.04 and 0.005 <= above / trials <= 0.04
    assert abs(below - above) / trials < 0.015


def test_a_trend_needs_three_points() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        theil_sen([0.0, 1.0], [0.0, 1.0])


def test_hours_of_the_week_are_local() -> None:
    assert hour_of_week(MONDAY.astimezone(SP)) == 0
    assert hour_of_week((MONDAY + dt.timedelta(days=6, hours=23)).astimezone(SP)) == 167
    assert hour_of_week(MONDAY) == 3  # the same instant in UTC is Monday 03:00
    assert describe_hour(10) == "Mondays 10:00" and describe_hour(24 * 4 + 17) == "Fridays 17:00"


def test_weekly_peaks_take_each_blocks_highest_hour_and_mark_sparse_blocks() -> None:
    end = MONDAY + 3 * WEEK
    hours = []
    for block in range(3):
        for hour in range(HOURS_PER_WEEK):
            if block == 1 and hour >= 40:  # the monitor was down most of that week
                continue
            share = 0.5 + 0.1 * block if hour == 10 else 0.1
            hours.append((MONDAY + block * WEEK + dt.timedelta(hours=hour), share))
    peaks = weekly_peaks(hours, end, 4)
    assert [p.usable for p in peaks] == [False, True, False, True]
    assert peaks[0].hours_seen == 0 and peaks[0].share == 0  # no data: unusable, not a zero
    assert peaks[3].share == pytest.approx(0.7) and peaks[3].at == MONDAY + 2 * WEEK + dt.timedelta(
        hours=10
    )


def _shape(peak_how: int = 10) -> list[float]:
    shape = [0.2] * HOURS_PER_WEEK
    shape[peak_how] = 1.0
    return shape


def test_a_bucket_without_buffer_throttles_in_the_first_hour_above_its_refill() -> None:
    # peak 0.9 growing 5 %/week crosses 1 after ln(1/0.9)/ln(1.05) = 2.16 weeks: the Monday
    # 10:00 of the third week is the first above the refill
    result = project(_shape(), 0.9, math.log(1.05), MONDAY, capacity_minutes=0, time_zone=SP)
    third_monday_ten = MONDAY + 3 * WEEK + dt.timedelta(hours=10)
    assert result.exceeds_refill_at == third_monday_ten
    assert result.first_429_at == third_monday_ten


def test_a_deep_bucket_rides_out_peaks_the_shallow_one_cannot() -> None:
    # an hour at 150 % drains 30 minutes of refill: a 60-minute buffer survives it
    deep = project(_shape(), 1.5, 0.0, MONDAY, capacity_minutes=60, time_zone=SP)
    assert deep.exceeds_refill_at is not None and deep.first_429_at is None
    shallow = project(_shape(), 1.5, 0.0, MONDAY, capacity_minutes=20, time_zone=SP)
    assert shallow.first_429_at == shallow.exceeds_refill_at + dt.timedelta(minutes=40)
    # growing, the deep bucket's first 429 comes weeks after its peak first passed the refill
    growing = project(_shape(), 0.95, math.log(1.02), MONDAY, capacity_minutes=60, time_zone=SP)
    assert growing.first_429_at - growing.exceeds_refill_at > 10 * WEEK


def test_no_growth_below_the_refill_never_throttles() -> None:
    assert (
        project(_shape(), 0.99, 0.0, MONDAY, capacity_minutes=0, time_zone=SP).first_429_at is None
    )
    assert (
        project(_shape(), 0.5, -0.1, MONDAY, capacity_minutes=0, time_zone=SP).first_429_at is None
    )
    slow = project(_shape(), 0.5, math.log(1.001), MONDAY, capacity_minutes=0, time_zone=SP)
    assert slow.exceeds_refill_at is None  # 693 weeks away: beyond the two-year horizon


def test_dicts_stepped_refill_leaves_capacity_minus_one_period_as_buffer() -> None:
    assert buffer_minutes(70, 70, 70) == 0  # KEYS_CHECK
    assert buffer_minutes(36_000, 1_200, 1_200) == 29  # ENTRIES_WRITE
    assert buffer_minutes(50, 100, 100) == 0 and buffer_minutes(10, 1, 0) == 0


def _input(policy: str, shares: list[float], **extra: object) -> OutlookInput:
    as_of = MONDAY + len(shares) * WEEK
    peaks_at = [(MONDAY + i * WEEK + dt.timedelta(hours=10), s) for i, s in enumerate(shares)]
    hours = [
        (MONDAY + i * WEEK + dt.timedelta(hours=h), 0.2 * s)
        for i, s in enumerate(shares)
        for h in range(HOURS_PER_WEEK)
        if h != 10
    ] + peaks_at
    values = {
        "ispb": "12345678",
        "policy": policy,
        "as_of": as_of,
        "time_zone": SP,
        "capacity": 50_000.0,
        "refill_tokens": 25_000.0,
        "refill_per_min": 25_000.0,
        "category": "A",
        "weekly_peaks": weekly_peaks(hours, as_of, 13),
        "shape": _shape(),
    }
    values.update(extra)
    return OutlookInput(**values)  # type: ignore[arg-type]


def test_the_outlook_of_a_growing_antiscan_bucket_names_the_date_and_the_category() -> None:
    shares = [0.7 * 1.04**week for week in range(8)]
    result = outlook(_input("ENTRIES_READ_PARTICIPANT_ANTISCAN", shares))
    assert result.status == "at_risk" and result.weeks_used == 8
    assert result.trend is not None
    assert result.trend.growth_per_week == pytest.approx(0.04, abs=1e-6)
    # Mondays 10:00 after as_of: 0.7 x 1.04^8.06 = 0.958, then 0.996, then 1.036
    peak_hour = MONDAY + 10 * WEEK + dt.timedelta(hours=10)
    assert result.projection.exceeds_refill_at == peak_hour
    # a minute of buffer (50,000 - 25,000 tokens at 25,000/min) lasts ~28 min at 103.6 %
    first = result.projection.first_429_at
    assert first is not None and peak_hour < first < peak_hour + dt.timedelta(hours=1)
    by_category = {c.category: c for c in result.categories}
    assert set(by_category) == set("ABCDEFGH")
    assert by_category["A"].first_429_at == result.projection.first_429_at
    assert by_category["B"].first_429_at < by_category["A"].first_429_at
    text = result.recommendation
    assert "ENTRIES_READ_PARTICIPANT_ANTISCAN peaks at 96% of its refill on Mondays 10:00" in text
    assert "+4.0%/week" in text and "Plan within the quarter" in text
    assert "Category what-if (DICT's reference tables, category A today)" in text
    assert "No category holds this demand for two years." in text


def test_a_flat_bucket_is_stable_and_a_short_history_says_how_short() -> None:
    flat = outlook(_input("ENTRIES_WRITE", [0.3, 0.31, 0.29, 0.3, 0.3, 0.31]))
    assert flat.status == "stable" and flat.projection.first_429_at is None
    assert "does not throttle within two years" in flat.recommendation
    assert "No action needed" in flat.recommendation and flat.categories == ()
    short = outlook(_input("ENTRIES_WRITE", [0.3, 0.35, 0.4]))
    assert short.status == "insufficient_history" and short.trend is None
    assert short.recommendation.startswith("ENTRIES_WRITE: only 3 usable week(s)")
    throttled = outlook(_input("KEYS_CHECK", [0.9, 1.1], throttled_429_30d=12))
    assert throttled.status == "throttling" and "12 429s" in throttled.recommendation


def test_the_weekly_growth_scenario_grows_each_hour_and_bad_growth_is_refused() -> None:
    scenario = load_scenario("weekly-growth")
    keys = [t for t in scenario.traffic if t.policy == "KEYS_CHECK"]
    monday_ten = next(t for t in keys if t.from_s == 10 * 3600)
    assert monday_ten.refill_factor == pytest.approx(0.61)
    assert monday_ten.growth_factor(0) == 1.0
    assert monday_ten.growth_factor(3599) == 1.0  # constant within the hour
    assert monday_ten.growth_factor(7 * 86_400) == pytest.approx(1.08)
    with pytest.raises(ScenarioError, match="growth_per_week"):
        parse_scenario(
            {
                "name": "bad",
                "traffic": [
                    {
                        "policy": "KEYS_CHECK",
                        "from_s": 0,
                        "to_s": 60,
                        "rpm": 1,
                        "growth_per_week": 3,
                    }
                ],
            },
            "inline",
        )


NEW_YORK = ZoneInfo("America/New_York")


def test_weeks_across_a_clock_change_are_real_weeks() -> None:
    # 13 weeks up to a local midnight just after New York fell back (2026-11-01): 13 x 168
    # hours of real time, one block each, and the last hour lands in the last block
    end = dt.datetime(2026, 11, 2, tzinfo=NEW_YORK)
    first = end.astimezone(UTC) - 13 * WEEK
    hours = [(first + dt.timedelta(hours=h), 0.5) for h in range(13 * HOURS_PER_WEEK)]
    peaks = weekly_peaks(hours, end, 13)
    assert [p.hours_seen for p in peaks] == [HOURS_PER_WEEK] * 13
    # and a projection across spring-forward walks real hours
    spring = dt.datetime(2027, 3, 8, tzinfo=NEW_YORK)
    result = project(_shape(), 1.2, 0.0, spring - WEEK, capacity_minutes=0, time_zone=NEW_YORK)
    assert result.first_429_at == dt.datetime(2027, 3, 1, 10, tzinfo=NEW_YORK)


def _hourly(as_of: dt.datetime, refill_before: float, refill_after: float, growth: float):  # type: ignore[no-untyped-def]
    """13 weeks of hourly demand (tokens/min) growing by ``growth`` a week, on a bucket whose
    refill changes half-way, as the storage layer returns it (shares of that hour's refill)."""
    import pandas as pd

    rows = []
    start = as_of - 13 * WEEK
    for hour in range(13 * HOURS_PER_WEEK):
        at = start + dt.timedelta(hours=hour)
        demand = 600 * (1 + growth) ** (hour / HOURS_PER_WEEK) * (1.0 if hour % 168 == 10 else 0.3)
        refill = refill_before if hour < 6 * HOURS_PER_WEEK else refill_after
        local = at.astimezone(SP).replace(tzinfo=None)
        rows.append(("12345678", "ENTRIES_WRITE", local, demand / refill, None, refill, 12))
    return pd.DataFrame(
        rows,
        columns=["ispb", "policy", "hour", "share", "burst_share", "refill_per_min", "readings"],
    )


@pytest.mark.parametrize(("before", "after", "growth"), [(1200, 800, 0.0), (800, 1600, 0.03)])
def test_a_refill_change_is_not_read_as_a_change_of_demand(
    before: float, after: float, growth: float
) -> None:
    import pandas as pd

    from dict_ratelimit.pipeline.capacity import outlook_rows

    as_of = MONDAY + 13 * WEEK
    policies = pd.DataFrame(
        [{"ispb": "12345678", "policy": "ENTRIES_WRITE", "capacity": 36_000,
          "refill_tokens": after, "refill_per_min": after, "category": None}]
    )  # fmt: skip
    failed: list[str] = []
    [row] = outlook_rows(
        _hourly(as_of, before, after, growth), policies, pd.DataFrame(), as_of, SP, as_of, failed
    ).to_dict("records")
    assert failed == []
    assert row["growth_per_week"] == pytest.approx(growth, abs=0.002)
    assert row["weekly_peak_share"] == pytest.approx(600 * (1 + growth) ** 13 / after, rel=0.02)
    assert row["category"] is None and "category ?" not in row["recommendation"]


def test_one_buckets_bad_data_is_named_and_the_others_get_their_outlook() -> None:
    import pandas as pd

    from dict_ratelimit.pipeline.capacity import outlook_rows

    as_of = MONDAY + 13 * WEEK
    policies = pd.DataFrame(
        [{"ispb": "12345678", "policy": "ENTRIES_WRITE", "capacity": 36_000,
          "refill_tokens": 1200, "refill_per_min": 1200, "category": "A"},
         {"ispb": "12345678", "policy": "KEYS_CHECK", "capacity": 70,
          "refill_tokens": 70, "refill_per_min": 0, "category": "A"}]
    )  # fmt: skip
    hourly = _hourly(as_of, 1200, 1200, 0.01)
    hourly = pd.concat([hourly, hourly.assign(policy="KEYS_CHECK")], ignore_index=True)
    failed: list[str] = []
    rows = outlook_rows(hourly, policies, pd.DataFrame(), as_of, SP, as_of, failed)
    assert list(rows["policy"]) == ["ENTRIES_WRITE"]
    assert len(failed) == 1 and failed[0] == (
        "12345678/KEYS_CHECK: ValueError: the bucket's refill per minute is 0.0, "
        "not a positive number"
    )
