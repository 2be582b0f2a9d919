"""A reading of one DICT bucket, as the rest of the system sees it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyReading:
    """One policy's bucket in one DICT response.

    ``response_time`` is DICT's ResponseTime (timezone-aware, authoritative);
    ``polled_at`` is when our poll started. ``available_tokens`` may be negative.
    """

    ispb: str
    policy: str
    response_time: dt.datetime
    polled_at: dt.datetime
    category: str
    available_tokens: int
    capacity: int
    refill_tokens: int
    refill_period_sec: int
    correlation_id: str | None = None

    @property
    def remaining_ratio(self) -> float:
        """Available over capacity; below 0 when the bucket is overdrawn."""
        return self.available_tokens / self.capacity
