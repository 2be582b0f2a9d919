"""``policy_metrics`` and ``threshold_evaluations``: one step, daily partitions (UTC).

Both assets are materialized together by one step (``pipeline.derive``), so a metric row and
its level are always written in the same transaction.

In ``monitor_job`` (run tag ``dict_ratelimit/mode=incremental``) the step takes exactly the
snapshots waiting in the metric backlog (those the tick stored, and the next reading of any
that arrived late), whatever their day; the run's partition is the tick's day. Any other
materialization (a backfill of a range of days in one run, or a partition launched from the
UI) deletes and recomputes its whole window from the stored snapshots: same snapshots, same
rows.
"""

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd

from dict_ratelimit import tracing
from dict_ratelimit.defs.resources import BridgeResource, PostgresResource, ThresholdsResource
from dict_ratelimit.defs.snapshots import policy_snapshots
from dict_ratelimit.defs.tables import metadata_table
from dict_ratelimit.defs.tags import run_shard, shard_scope
from dict_ratelimit.pipeline.derive import DeriveReport, derive_backlog, derive_window
from dict_ratelimit.settings import get_settings

MODE_TAG = "dict_ratelimit/mode"
INCREMENTAL = "incremental"

DAILY = dg.DailyPartitionsDefinition(
    start_date=get_settings().partitions_start.isoformat(),
    timezone="UTC",
    end_offset=1,  # today's partition exists while today is running
)

POLICY_METRICS = dg.AssetSpec(
    "policy_metrics",
    deps=[policy_snapshots],
    group_name="dict",
    kinds={"postgres", "numpy"},
    description="Refill-aware metrics per snapshot (dict_ratelimit.policy_metric): consumption "
    "bounds, demand estimate with its range and censoring (the monitor's own calls excluded), "
    "time to first 429, recovery, headroom, 404 share.",
)
THRESHOLD_EVALUATIONS = dg.AssetSpec(
    "threshold_evaluations",
    deps=["policy_metrics"],
    group_name="dict",
    kinds={"postgres"},
    description="Level of every snapshot (OK/WARNING/CRITICAL/EXHAUSTED) with its reasons and "
    "the thresholds used (dict_ratelimit.threshold_evaluation).",
)


def _top(frame: pd.DataFrame, column: str, limit: int = 5) -> dg.MetadataValue:
    """The ``limit`` policies with the smallest ``column`` (least left, first 429 soonest)."""
    rows = frame if frame.empty else frame.dropna(subset=[column]).nsmallest(limit, column)
    return metadata_table(
        [("policy", "string"), (column, "float"), ("available_tokens", "int"), ("capacity", "int")],
        [
            {
                "policy": f"{row['ispb']}/{row['policy']}",
                column: round(float(row[column]), 4),
                "available_tokens": int(row["available_tokens"]),
                "capacity": int(row["capacity"]),
            }
            for row in rows.to_dict("records")
        ],
    )


def _metrics_metadata(report: DeriveReport, window: str) -> dict[str, Any]:
    frame = report.metrics
    censored = frame["censored"].value_counts().to_dict() if not frame.empty else {}
    notes = frame["estimate_note"].value_counts().to_dict() if not frame.empty else {}
    return {
        "mode": "incremental (backlog)" if report.mode == "backlog" else "recompute window",
        "window": window,
        "days_written": dg.MetadataValue.json(report.days),
        "snapshots_read": report.snapshots_read,
        "rows_written": report.metric_rows,
        "backlog_left": report.backlog_left,
        "censored_empty": int(censored.get("empty", 0)),
        "censored_full": int(censored.get("full", 0)),
        "without_estimate": dg.MetadataValue.json({str(k): int(v) for k, v in notes.items()}),
        "worst_by_remaining_ratio": _top(frame, "remaining_ratio"),
        "worst_by_time_to_429": _top(frame, "time_to_429_s"),
        **{name: round(value, 3) for name, value in report.timings.items()},
    }


def _evaluations_metadata(report: DeriveReport) -> dict[str, Any]:
    frame = report.evaluations
    levels = frame["level"].value_counts().to_dict() if not frame.empty else {}
    latest = (
        frame.sort_values("response_time").groupby(["ispb", "policy"]).tail(1)
        if not frame.empty
        else frame
    )
    alarming = (
        latest[latest["level_rank"] > 0].sort_values(
            ["level_rank", "remaining_ratio"], ascending=[False, True]
        )
        if not latest.empty
        else latest
    )
    not_ok = metadata_table(
        [("policy", "string"), ("level", "string"), ("remaining_ratio", "float")],
        [
            {
                "policy": f"{r.ispb}/{r.policy}",
                "level": r.level,
                "remaining_ratio": round(float(r.remaining_ratio), 4),
            }
            for r in alarming.head(10).itertuples(index=False)
        ],
    )
    return {
        "mode": "incremental (backlog)" if report.mode == "backlog" else "recompute window",
        "rows_written": report.evaluation_rows,
        "queued_for_alerts": report.queued_for_alerts,
        "count_ok": int(levels.get("OK", 0)),
        "count_warning": int(levels.get("WARNING", 0)),
        "count_critical": int(levels.get("CRITICAL", 0)),
        "count_exhausted": int(levels.get("EXHAUSTED", 0)),
        "latest_not_ok": not_ok,
    }


@dg.multi_asset(
    name="derive_metrics_and_levels",
    specs=[POLICY_METRICS, THRESHOLD_EVALUATIONS],
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Computes the metrics and the level of every new (or backfilled) snapshot in "
    "one transaction.",
)
def derive_metrics_and_levels(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    thresholds: ThresholdsResource,
    bridge: BridgeResource,
):  # type: ignore[no-untyped-def]
    with tracing.run_trace(context.run.run_id, "monitor derive_metrics_and_levels"):
        results = list(_derive(context, postgres, thresholds, bridge))  # no context over a yield
    yield from results


def _derive(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    thresholds: ThresholdsResource,
    bridge: BridgeResource,
):  # type: ignore[no-untyped-def]
    config = thresholds.config()
    if context.run.tags.get(MODE_TAG) == INCREMENTAL:
        shard = run_shard(context.run.tags)
        members, everyone = shard_scope(context.run.tags, bridge.participant_list())
        report = derive_backlog(postgres.engine, config, ispbs=members, everyone=everyone)
        window = f"metric backlog of shard {shard.label}" if shard else "metric backlog"
    else:
        span = context.partition_time_window
        start, end = span.start, span.end
        report = derive_window(postgres.engine, start, end, config)
        window = f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}"
    context.log.info(
        f"{report.mode} ({window}): {report.snapshots_read} snapshots, "
        f"{report.metric_rows} metric rows, {report.evaluation_rows} evaluations, "
        f"{report.queued_for_alerts} queued for the alerts"
    )
    yield dg.MaterializeResult(
        asset_key="policy_metrics", metadata=_metrics_metadata(report, window)
    )
    yield dg.MaterializeResult(
        asset_key="threshold_evaluations", metadata=_evaluations_metadata(report)
    )


def tick_partition(now: dt.datetime) -> str:
    """The daily partition a tick at ``now`` runs under (UTC day)."""
    return now.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")
