"""The pure retention arithmetic: which months exist, which are dropped."""

from __future__ import annotations

import datetime as dt

import pytest

from dict_ratelimit.domain.retention import RetentionPolicy, add_months, month_start


def test_add_months_crosses_year_boundaries_both_ways() -> None:
    assert add_months(dt.date(2026, 11, 1), 2) == dt.date(2027, 1, 1)
    assert add_months(dt.date(2026, 1, 1), -1) == dt.date(2025, 12, 1)
    assert add_months(dt.date(2026, 1, 1), -13) == dt.date(2024, 12, 1)
    assert add_months(dt.date(2026, 1, 1), 0) == dt.date(2026, 1, 1)


def test_months_to_prepare_is_current_plus_months_ahead() -> None:
    policy = RetentionPolicy(months_ahead=2)
    assert policy.months_to_prepare(dt.date(2026, 11, 29)) == [
        dt.date(2026, 11, 1),
        dt.date(2026, 12, 1),
        dt.date(2027, 1, 1),
    ]
    assert RetentionPolicy(months_ahead=0).months_to_prepare(dt.date(2026, 2, 28)) == [
        dt.date(2026, 2, 1)
    ]


@pytest.mark.parametrize(
    ("today", "oldest_kept"),
    [
        (dt.date(2026, 11, 1), dt.date(2025, 10, 1)),  # start of month
        (dt.date(2026, 11, 15), dt.date(2025, 10, 1)),  # middle
        (dt.date(2026, 11, 30), dt.date(2025, 10, 1)),  # end
        (dt.date(2026, 1, 1), dt.date(2024, 12, 1)),  # year boundary
        (dt.date(2026, 12, 31), dt.date(2025, 11, 1)),
    ],
)
def test_thirteen_full_months_are_kept(today: dt.date, oldest_kept: dt.date) -> None:
    policy = RetentionPolicy(retention_months=13)
    assert policy.oldest_kept_month(today) == oldest_kept
    assert not policy.is_expired(oldest_kept, today)
    assert policy.is_expired(add_months(oldest_kept, -1), today)


def test_every_day_of_two_years_keeps_exactly_the_full_months_asked_for() -> None:
    """Whatever the day, the months before the current one that survive are exactly N."""
    for retention in (1, 3, 13):
        policy = RetentionPolicy(retention_months=retention)
        day = dt.date(2025, 1, 1)
        while day < dt.date(2027, 1, 1):
            current = month_start(day)
            past = [add_months(current, -k) for k in range(1, 30)]
            kept = [m for m in past if not policy.is_expired(m, day)]
            assert kept == past[:retention], (retention, day)
            day += dt.timedelta(days=1)


def test_current_and_future_months_are_never_expired() -> None:
    policy = RetentionPolicy(retention_months=1)
    today = dt.date(2026, 11, 29)
    for offset in range(0, 30):
        assert not policy.is_expired(add_months(month_start(today), offset), today)


@pytest.mark.parametrize("months", [0, -1, -13])
def test_retention_below_one_month_is_rejected(months: int) -> None:
    with pytest.raises(ValueError, match="retention_months must be at least 1"):
        RetentionPolicy(retention_months=months)


@pytest.mark.parametrize("value", [True, 1.5, "13"])
def test_retention_must_be_an_integer(value: object) -> None:
    with pytest.raises(TypeError, match="retention_months must be an integer"):
        RetentionPolicy(retention_months=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("months", [-1, 25])
def test_months_ahead_out_of_range_is_rejected(months: int) -> None:
    with pytest.raises(ValueError, match="months_ahead must be between 0 and 24"):
        RetentionPolicy(months_ahead=months)


def test_is_expired_wants_a_first_of_month() -> None:
    with pytest.raises(ValueError, match="not the first day of a month"):
        RetentionPolicy().is_expired(dt.date(2020, 1, 2), dt.date(2026, 1, 1))
