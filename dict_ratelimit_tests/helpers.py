"""Small builders for readable test data."""

from __future__ import annotations

import datetime as dt

from dict_ratelimit.domain.readings import PolicyReading


def utc(*args: int) -> dt.datetime:
    """A timezone-aware UTC datetime."""
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


def reading(
    at: dt.datetime,
    *,
    ispb: str = "12345678",
    policy: str = "ENTRIES_WRITE",
    available: int = 30_000,
    capacity: int = 36_000,
    refill_tokens: int = 1_200,
    refill_period_sec: int = 60,
    category: str = "A",
) -> PolicyReading:
    """A reading with DICT-like defaults (ENTRIES_WRITE: 36,000, 1,200/min)."""
    return PolicyReading(
        ispb=ispb,
        policy=policy,
        response_time=at,
        polled_at=at - dt.timedelta(milliseconds=150),
        category=category,
        available_tokens=available,
        capacity=capacity,
        refill_tokens=refill_tokens,
        refill_period_sec=refill_period_sec,
        correlation_id=f"{abs(hash((ispb, policy, at))):032x}"[:32],
    )
