"""The report as plain text for the terminal: the month per policy, against the month before,
then the outlook's recommendations, most urgent first."""

from __future__ import annotations

from typing import Any

from dict_ratelimit.report.data import ReportData

#: Policies shown in the month table: those that did anything worth a line.
SHOWN_WHEN_PEAK_AT_LEAST = 0.05


def worth_a_line(row: dict[str, Any]) -> bool:
    """Used or demanded at least 5 % of the bucket, or throttled at all."""
    return (
        (row["peak_utilization"] or 0) >= SHOWN_WHEN_PEAK_AT_LEAST
        or (row["peak_demand_share"] or 0) >= SHOWN_WHEN_PEAK_AT_LEAST
        or bool(row["throttled_429"])
    )


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _change(this: dict[str, Any], last: dict[str, Any] | None) -> str:
    """How the peak and the 429s moved since the previous month."""
    if last is None:
        return "no data the month before"
    peak = (this["peak_utilization"] or 0.0) - (last["peak_utilization"] or 0.0)
    throttled = (this["throttled_429"] or 0) - (last["throttled_429"] or 0)
    return f"peak {peak * 100:+.1f} pp, 429s {throttled:+,}"


def month_lines(report: ReportData) -> list[str]:
    """The month table: one line per policy that ran at all, hottest first."""
    rows = sorted(report.this_month.values(), key=lambda r: -(r["peak_utilization"] or 0.0))
    lines = [
        f"{'POLICY':<36} {'PEAK USED':>9} {'LEAST LEFT':>10} {'MIN EXH.':>8} {'429s':>8} "
        f"{'DEMAND/REFILL':>13}  VS PREVIOUS MONTH"
    ]
    quiet = 0
    for row in rows:
        if not worth_a_line(row):
            quiet += 1
            continue
        lines.append(
            f"{row['policy']:<36} {_percent(row['peak_utilization']):>9} "
            f"{_percent(row['min_remaining_ratio']):>10} "
            f"{_number(row['minutes_exhausted']):>8} {_number(row['throttled_429']):>8} "
            f"{_number(row['peak_demand_share'], 2):>13}  "
            f"{_change(row, report.last_month.get(row['policy']))}"
        )
    if quiet:
        lines.append(f"(and {quiet} policies that never reached 5 % of their bucket)")
    return lines


def summary(report: ReportData) -> str:
    """The whole text report."""
    observed_days = len({row["day"] for row in report.daily})
    readings = sum(row["readings"] for row in report.daily)
    gaps = sum(row["gaps"] for row in report.daily)
    unobserved = sum(row["gap_minutes"] for row in report.daily)
    zones = sorted({row["time_zone"] for row in report.daily})
    lines = [
        f"Capacity report: participant {report.ispb} (category {report.category or '?'}), "
        f"{report.month:%B %Y}, days in {report.time_zone}",
        f"Days with readings: {observed_days} of {report.days_in_month}; readings "
        f"{readings:,}; gaps {gaps:,} ({unobserved:,.0f} policy-minutes without a reading)",
        *(
            [
                "Warning: this month's days were computed in several time zones "
                f"({', '.join(zones)}): backfill policy_daily_usage after changing "
                "DICT_RATELIMIT_REPORT_TIMEZONE."
            ]
            if len(zones) > 1
            else []
        ),
        "",
        *month_lines(report),
        "",
    ]
    if report.outlooks:
        as_of = max(row["as_of"] for row in report.outlooks)
        lines.append(f"Outlook (as of {as_of:%Y-%m-%d %H:%M %Z}), most urgent first:")
        for row in report.outlooks:
            if row["status"] == "stable" and not row["throttled_429_30d"]:
                continue
            lines.append(f"  [{row['status']}] {row['recommendation']}")
        stable = sum(1 for row in report.outlooks if row["status"] == "stable")
        if stable:
            lines.append(f"  ({stable} policies stable: no action needed)")
    else:
        lines.append("Outlook: none computed yet (materialize capacity_outlook).")
    return "\n".join(lines)
