"""The one place that reads the wall clock for business time.

Everything that decides (alert staleness, the watchdog, retention's "today", the exporter's
ages, forecasts, the tick's partition) asks a :class:`Clock` for "now" instead of calling
``datetime.now()``. Production uses :class:`SystemClock`; tests and replays use
:class:`FixedClock`, or any object with a ``now()`` method (the simulator's manual clock).
A test (``test_clock_discipline``) fails when code outside this module and the simulator reads
the wall clock directly. Durations (``time.monotonic``/``perf_counter``) are not business time.

Two clocks meet in this system: DICT's (every reading's ``ResponseTime``, the time of the
bucket) and ours (when we received the reading, ``polled_at``). Rates and forecasts use DICT's
clock only; freshness ("is this participant still being watched?") uses ours only, so a DICT
clock that runs behind or ahead of ours never makes a reading look stale or new.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    """Tells "now" (timezone-aware UTC)."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def __repr__(self) -> str:
        return "SystemClock()"


class FixedClock:
    """A clock that stands at ``at`` until moved (tests, replays, a pinned CLI run)."""

    def __init__(self, at: dt.datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("a clock's time must be timezone-aware")
        self._at = at.astimezone(dt.timezone.utc)

    def now(self) -> dt.datetime:
        return self._at

    def advance(self, seconds: float) -> dt.datetime:
        self._at += dt.timedelta(seconds=seconds)
        return self._at

    def __repr__(self) -> str:
        return f"FixedClock({self._at.isoformat()})"


def parse_instant(text: str) -> dt.datetime:
    """An ISO 8601 instant with a zone (``Z`` accepted), as UTC; ValueError otherwise."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +00:00)")
    return value.astimezone(dt.timezone.utc)


def clock_at(frozen_at: str | None) -> Clock:
    """The system clock, or a clock frozen at the ISO instant ``frozen_at``."""
    return FixedClock(parse_instant(frozen_at)) if frozen_at else SystemClock()
