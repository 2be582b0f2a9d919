"""Capacity planning assets for analysts: ``policy_daily_usage``, ``policy_weekly_profile``,
``capacity_outlook``, their jobs and their daily schedules.

Days follow the report time zone (``DICT_RATELIMIT_REPORT_TIMEZONE``), so a partition is a
Brazilian business day and "Mondays 10:00" means 10:00 in São Paulo. The daily asset is
backfillable over the whole history in one run (a single-run backfill policy: one SQL pass per
month of days); the profile and the outlook are recomputed as of today's local midnight.
"""

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from dict_ratelimit.clock import clock_at
from dict_ratelimit.defs.resources import ClockResource, PostgresResource
from dict_ratelimit.defs.tables import metadata_table
from dict_ratelimit.defs.tags import run_logs_config
from dict_ratelimit.pipeline.capacity import (
    DailyReport,
    OutlookReport,
    ProfileReport,
    compute_daily_usage,
    compute_outlook,
    compute_weekly_profile,
)
from dict_ratelimit.settings import get_settings

_SETTINGS = get_settings()
REPORT_ZONE = _SETTINGS.report_zone

CAPACITY_DAYS = dg.DailyPartitionsDefinition(
    start_date=_SETTINGS.partitions_start.isoformat(),
    timezone=REPORT_ZONE.key,  # only finished local days
)


def _round(value: Any, digits: int = 4) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), digits)


def _count(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _daily_metadata(report: DailyReport, window: str) -> dict[str, Any]:
    summary = report.summary
    worst = summary.nlargest(10, "peak_utilization") if not summary.empty else summary
    total = (lambda column: float(summary[column].fillna(0).sum())) if not summary.empty else None
    return {
        "window": window,
        "days": report.days,
        "rows_written": report.rows_written,
        "policies": len(summary),
        "peak_utilization_max": _round(summary["peak_utilization"].max()) if total else None,
        "throttled_429_total": int(total("throttled_429")) if total else 0,
        "minutes_exhausted_total": round(total("minutes_exhausted"), 1) if total else 0.0,
        "gaps_total": int(total("gaps")) if total else 0,
        "hottest_policies": metadata_table(
            [
                ("policy", "string"),
                ("peak_utilization", "float"),
                ("min_remaining_ratio", "float"),
                ("minutes_exhausted", "float"),
                ("throttled_429", "int"),
                ("peak_demand_share", "float"),
            ],
            [
                {
                    "policy": f"{r['ispb']}/{r['policy']}",
                    "peak_utilization": _round(r["peak_utilization"]),
                    "min_remaining_ratio": _round(r["min_remaining_ratio"]),
                    "minutes_exhausted": _round(r["minutes_exhausted"], 1),
                    "throttled_429": None
                    if pd.isna(r["throttled_429"])
                    else int(r["throttled_429"]),
                    "peak_demand_share": _round(r["peak_demand_share"]),
                }
                for r in worst.to_dict("records")
            ],
        ),
        "seconds": round(report.seconds, 2),
    }


@dg.asset(
    # local days over UTC-day metric partitions: Dagster maps no time window across zones, so
    # the dependency is declared on the metrics as a whole (the SQL reads the local day's range)
    deps=[
        dg.AssetDep(name, partition_mapping=dg.AllPartitionMapping())
        for name in ("policy_metrics", "threshold_evaluations")
    ],
    partitions_def=CAPACITY_DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="capacity",
    kinds={"postgres"},
    description="Per participant, policy and local day (dict_ratelimit.policy_daily_usage): "
    "peak and p95 utilization, least remaining, minutes at WARNING/CRITICAL/EXHAUSTED, the "
    "Bridge's 429s, demand p50/p95/max against the refill, readings and gaps (a day without "
    "readings has no row: missing is not zero).",
)
def policy_daily_usage(
    context: dg.AssetExecutionContext, postgres: PostgresResource, clock: ClockResource
) -> dg.MaterializeResult:
    span = context.partition_time_window
    report = compute_daily_usage(
        postgres.engine,
        span.start,
        span.end,
        REPORT_ZONE,
        clock.clock().now(),
        progress=context.log.info,
    )
    window = f"{span.start:%Y-%m-%d} → {span.end:%Y-%m-%d} ({REPORT_ZONE.key})"
    context.log.info(f"daily usage {window}: {report.rows_written} rows in {report.seconds:.1f} s")
    return dg.MaterializeResult(metadata=_daily_metadata(report, window))


def _profile_metadata(report: ProfileReport) -> dict[str, Any]:
    hottest = report.hottest
    return {
        "window_end": report.window_end.isoformat(),
        "policies": report.pairs,
        "rows_written": report.rows_written,
        "peak_share_max": _round(hottest["peak_share"].max()) if not hottest.empty else None,
        "hottest_hours": metadata_table(
            [
                ("policy", "string"),
                ("when", "string"),
                ("typical_share", "float"),
                ("peak_share", "float"),
                ("weeks_seen", "int"),
            ],
            [
                {
                    "policy": f"{r['ispb']}/{r['policy']}",
                    "when": f"{r['weekday']} {int(r['hour']):02d}:00",
                    "typical_share": _round(r["typical_share"]),
                    "peak_share": _round(r["peak_share"]),
                    "weeks_seen": int(r["weeks_seen"]),
                }
                for r in hottest.to_dict("records")
            ],
        ),
        "seconds": round(report.seconds, 2),
    }


@dg.asset(
    deps=["policy_metrics"],
    group_name="capacity",
    kinds={"postgres", "pandas"},
    description="Demand per hour of the local week as a share of the refill, over the last 4 "
    "and 13 weeks, with how many weeks saw each hour (dict_ratelimit.policy_weekly_profile).",
)
def policy_weekly_profile(
    context: dg.AssetExecutionContext, postgres: PostgresResource, clock: ClockResource
) -> dg.MaterializeResult:
    report = compute_weekly_profile(
        postgres.engine, clock.clock().now(), REPORT_ZONE, progress=context.log.info
    )
    return dg.MaterializeResult(metadata=_profile_metadata(report))


def _outlook_metadata(report: OutlookReport) -> dict[str, Any]:
    rows = report.rows
    statuses = rows["status"].value_counts().to_dict() if not rows.empty else {}
    soonest = rows["weeks_to_first_429"].min() if not rows.empty else None
    return {
        "as_of": report.as_of.isoformat(),
        "policies": len(rows),
        **{
            f"count_{status}": int(statuses.get(status, 0))
            for status in ("throttling", "at_risk", "growing", "stable", "insufficient_history")
        },
        "weeks_to_first_429_min": _round(soonest, 2),
        "failed": len(report.failed),
        "failed_buckets": dg.MetadataValue.json(report.failed[:20]),
        "outlooks_pruned": report.pruned,
        "most_urgent": metadata_table(
            [
                ("policy", "string"),
                ("status", "string"),
                ("weekly_peak_share", "float"),
                ("growth_per_week", "float"),
                ("first_429_at", "string"),
                ("recommendation", "string"),
            ],
            [
                {
                    "policy": f"{r['ispb']}/{r['policy']}",
                    "status": r["status"],
                    "weekly_peak_share": _round(r["weekly_peak_share"]),
                    "growth_per_week": _round(r["growth_per_week"]),
                    "first_429_at": None
                    if pd.isna(r["first_429_at"])
                    else pd.Timestamp(r["first_429_at"]).isoformat(),
                    "recommendation": r["recommendation"],
                }
                for r in rows.head(10).to_dict("records")
            ],
        ),
        "seconds": round(report.seconds, 2),
    }


@dg.asset(
    deps=[policy_weekly_profile, policy_daily_usage],
    group_name="capacity",
    kinds={"postgres", "pandas"},
    description="Per participant and policy (dict_ratelimit.capacity_outlook, newest in "
    "latest_capacity_outlook): weekly-peak trend with its 95 % band, when the bucket would "
    "first throttle at that growth, category what-ifs, and a recommendation in words.",
)
def capacity_outlook(
    context: dg.AssetExecutionContext, postgres: PostgresResource, clock: ClockResource
) -> dg.MaterializeResult:
    report = compute_outlook(
        postgres.engine, clock.clock().now(), REPORT_ZONE, progress=context.log.info
    )
    for line in report.failed:  # one line per bucket the math could not take
        context.log.warning(f"capacity outlook skipped {line}")
    return dg.MaterializeResult(metadata=_outlook_metadata(report))


capacity_daily_job = dg.define_asset_job(
    "capacity_daily_job",
    selection=[policy_daily_usage],  # partitioned like its asset: one local day per run
    description="Daily usage of one local day (or, as a backfill, of a range in one run).",
)
capacity_outlook_job = dg.define_asset_job(
    "capacity_outlook_job",
    selection=[policy_weekly_profile, capacity_outlook],
    description="The weekly profile, then the outlook, as of today's local midnight.",
)


def capacity_schedules(json_logs: bool = False) -> list[dg.ScheduleDefinition]:
    """Yesterday's usage at 00:30 local, then the profile and the outlook at 01:00 local;
    both running by default."""
    loggers = run_logs_config(json_logs).get("loggers")
    run_config = dg.RunConfig(loggers=loggers) if loggers else None

    @dg.schedule(
        name="capacity_daily_schedule",
        job=capacity_daily_job,
        cron_schedule="30 0 * * *",
        execution_timezone=REPORT_ZONE.key,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily usage of the local day that just ended, at 00:30 local time.",
    )
    def daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        at = context.scheduled_execution_time or clock_at(None).now()
        ended = at.astimezone(REPORT_ZONE).date() - dt.timedelta(days=1)
        if ended < _SETTINGS.partitions_start:
            return dg.SkipReason(f"{ended} is before the first partition")
        day = ended.isoformat()
        return dg.RunRequest(run_key=day, partition_key=day, run_config=run_config or {})

    outlook = dg.ScheduleDefinition(
        name="capacity_outlook_daily",
        job=capacity_outlook_job,
        cron_schedule="0 1 * * *",
        execution_timezone=REPORT_ZONE.key,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        run_config=run_config,
        description="Weekly profile and capacity outlook, daily at 01:00 local time.",
    )
    return [daily, outlook]
