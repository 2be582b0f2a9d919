"""What a capacity report shows, read from the capacity-planning tables (never recomputed:
the report says what the assets stored, so it matches what analysts query)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class ReportError(LookupError):
    """Nothing to report; the message says what is missing and how to get it."""


def month_bounds(month: dt.date) -> tuple[dt.date, dt.date]:
    """First day of ``month`` and of the month after."""
    first = month.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return first, following


def previous_month(month: dt.date) -> dt.date:
    return (month.replace(day=1) - dt.timedelta(days=1)).replace(day=1)


@dataclass
class ReportData:
    """One participant's month: daily rows, the month against the one before, the outlook."""

    ispb: str
    category: str | None
    month: dt.date
    time_zone: str
    days_in_month: int
    daily: list[dict[str, Any]] = field(default_factory=list)
    this_month: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_month: dict[str, dict[str, Any]] = field(default_factory=dict)
    outlooks: list[dict[str, Any]] = field(default_factory=list)
    focus_policy: str | None = None
    profile: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        """The chart data embedded in the HTML page."""

        def plain(value: object) -> object:
            if isinstance(value, dt.datetime | dt.date):
                return value.isoformat()
            if isinstance(value, float) and value != value:  # NaN
                return None
            return value

        document = {
            "ispb": self.ispb,
            "month": self.month.isoformat()[:7],
            "time_zone": self.time_zone,
            "daily": [{k: plain(v) for k, v in row.items()} for row in self.daily],
            "focus_policy": self.focus_policy,
            "profile": [{k: plain(v) for k, v in row.items()} for row in self.profile],
            "outlook": next(
                (
                    {k: plain(v) for k, v in row.items()}
                    for row in self.outlooks
                    if row["policy"] == self.focus_policy
                ),
                None,
            ),
        }
        # no "<" at all inside the <script> element: "</script>" would end it and "<!--" can
        # change how the parser reads the rest of the page
        return json.dumps(document, default=str).replace("<", "\\u003c")


_URGENCY = {"throttling": 0, "at_risk": 1, "growing": 2, "stable": 3, "insufficient_history": 4}


def _rows(connection: sa.Connection, sql: str, **params: object) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in connection.execute(sa.text(sql), params)]


def load_report(engine: Engine, ispb: str, month: dt.date) -> ReportData:
    """Everything the report of ``ispb`` for ``month`` shows; ReportError when there is none."""
    first, following = month_bounds(month)
    with engine.connect() as connection:
        participant = connection.execute(
            sa.text("SELECT category FROM dict_ratelimit.participant WHERE ispb = :ispb"),
            {"ispb": ispb},
        ).one_or_none()
        if participant is None:
            raise ReportError(f"participant {ispb} is not monitored (no row in participant)")
        daily = _rows(
            connection,
            "SELECT day, policy, time_zone, readings, gaps, gap_minutes, peak_utilization, "
            "min_remaining_ratio, minutes_warning, minutes_critical, minutes_exhausted, "
            "throttled_429, demand_max_per_min, peak_demand_share, refill_per_min "
            "FROM dict_ratelimit.policy_daily_usage "
            "WHERE ispb = :ispb AND day >= :first AND day < :following ORDER BY policy, day",
            ispb=ispb,
            first=first,
            following=following,
        )
        if not daily:
            raise ReportError(
                f"no daily usage of participant {ispb} in {first:%Y-%m}: materialize "
                "policy_daily_usage for those days (a backfill in the Dagster UI, one run)"
            )
        months = _rows(
            connection,
            "SELECT * FROM dict_ratelimit.policy_monthly_usage "
            "WHERE ispb = :ispb AND month IN (:this, :last)",
            ispb=ispb,
            this=first,
            last=previous_month(first),
        )
        outlooks = _rows(
            connection,
            "SELECT DISTINCT ON (policy) * FROM dict_ratelimit.capacity_outlook "
            "WHERE ispb = :ispb AND as_of::date <= :following "
            "ORDER BY policy, as_of DESC",
            ispb=ispb,
            following=following,
        )
    outlooks.sort(
        key=lambda r: (
            _URGENCY.get(r["status"], 9),
            r["first_429_at"] or dt.datetime.max.replace(tzinfo=dt.timezone.utc),
        )
    )
    report = ReportData(
        ispb=ispb,
        category=participant.category,
        month=first,
        time_zone=daily[0]["time_zone"],
        days_in_month=(following - first).days,
        daily=daily,
        this_month={r["policy"]: r for r in months if r["month"] == first},
        last_month={r["policy"]: r for r in months if r["month"] != first},
        outlooks=outlooks,
    )
    peaks = sorted(report.this_month.values(), key=lambda r: -(r["peak_utilization"] or 0.0))
    report.focus_policy = (
        outlooks[0]["policy"]
        if outlooks and outlooks[0]["status"] in ("throttling", "at_risk", "growing")
        else (peaks[0]["policy"] if peaks else None)
    )
    if report.focus_policy:
        with engine.connect() as connection:
            report.profile = _rows(
                connection,
                "SELECT hour_of_week, weekday, hour, weeks_seen, typical_share, peak_share "
                "FROM dict_ratelimit.policy_weekly_profile "
                "WHERE ispb = :ispb AND policy = :policy AND window_weeks = 4 "
                "ORDER BY hour_of_week",
                ispb=ispb,
                policy=report.focus_policy,
            )
    return report
