"""The instant the time-dependent tests start from: today by default, any instant on demand.

``DICT_RATELIMIT_TEST_BASE_TIME`` (an ISO instant) moves every simulator, manual clock and
pinned "now" of the suite to another date. ``.ci/run`` runs the tests marked ``timebased``
again at the last minutes of a month and on a leap day, so that no test (and no code) depends
on the calendar it was written on.
"""

from __future__ import annotations

import datetime as dt
import os

from dict_ratelimit.clock import SystemClock, parse_instant

BASE_TIME_ENV = "DICT_RATELIMIT_TEST_BASE_TIME"


def base_time() -> dt.datetime:
    """The suite's base instant (UTC, whole minute): the environment's, or now."""
    text = os.environ.get(BASE_TIME_ENV)
    now = parse_instant(text) if text else SystemClock().now()
    return now.replace(second=0, microsecond=0)


def before_next_midnight(at: dt.datetime, minutes: int) -> dt.datetime:
    """``minutes`` before the first UTC midnight after ``at`` (a day boundary to cross)."""
    midnight = dt.datetime.combine(
        at.astimezone(dt.timezone.utc).date() + dt.timedelta(days=1),
        dt.time(0, 0),
        tzinfo=dt.timezone.utc,
    )
    return midnight - dt.timedelta(minutes=minutes)


def day_key(at: dt.datetime) -> str:
    """The daily partition key (UTC day) of ``at``."""
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")
