"""Which monthly partitions must exist and which may be dropped.

History is kept in whole UTC months. "Keep 13 months" means: the current (partial) month plus
the 13 full months before it are never dropped, whatever day of the month the job runs. The
current and future months are never candidates for dropping, whatever the configuration.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MAX_MONTHS_AHEAD = 24


def month_start(day: dt.date) -> dt.date:
    """First day of the month containing ``day``."""
    return dt.date(day.year, day.month, 1)


def add_months(month: dt.date, months: int) -> dt.date:
    """First day of the month ``months`` after (or before, when negative) ``month``'s month."""
    index = month.year * 12 + (month.month - 1) + months
    return dt.date(index // 12, index % 12 + 1, 1)


@dataclass(frozen=True)
class RetentionPolicy:
    """How far ahead partitions are prepared and how many full months of history are kept."""

    retention_months: int = 13
    months_ahead: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.retention_months, bool) or not isinstance(self.retention_months, int):
            raise TypeError(
                f"retention_months must be an integer, got {type(self.retention_months).__name__}"
            )
        if isinstance(self.months_ahead, bool) or not isinstance(self.months_ahead, int):
            raise TypeError(
                f"months_ahead must be an integer, got {type(self.months_ahead).__name__}"
            )
        if self.retention_months < 1:
            raise ValueError(
                f"retention_months must be at least 1 (got {self.retention_months}): "
                "a retention below one month would drop the data the monitor is working on"
            )
        if not 0 <= self.months_ahead <= MAX_MONTHS_AHEAD:
            raise ValueError(
                f"months_ahead must be between 0 and {MAX_MONTHS_AHEAD} (got {self.months_ahead})"
            )

    def months_to_prepare(self, today: dt.date) -> list[dt.date]:
        """The current month and the ``months_ahead`` months after it, oldest first."""
        current = month_start(today)
        return [add_months(current, offset) for offset in range(self.months_ahead + 1)]

    def oldest_kept_month(self, today: dt.date) -> dt.date:
        """First day of the oldest month that must be kept."""
        return add_months(month_start(today), -self.retention_months)

    def is_expired(self, month: dt.date, today: dt.date) -> bool:
        """True when the whole month ``month`` lies before the kept window.

        The current and future months are never expired (retention_months >= 1 guarantees it,
        and the comparison below would say so even if that invariant were ever relaxed).
        """
        if month != month_start(month):
            raise ValueError(f"{month} is not the first day of a month")
        if month >= month_start(today):
            return False
        return month < self.oldest_kept_month(today)
