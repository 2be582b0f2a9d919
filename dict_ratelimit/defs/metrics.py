"""``policy_metrics`` and ``threshold_evaluations``: daily partitions (UTC), backfillable.

In ``monitor_job`` (run tag ``dict_ratelimit/mode=incremental``) they process only the
snapshots that have no row yet, from the partition's day and the day before (a tick just
after midnight still finds the last readings of yesterday). Any other materialization — a
backfill of a range of days in one run, or a partition materialized from the UI — deletes and
recomputes its whole window from the stored snapshots: same snapshots, same rows.
"""

import datetime as dt
import time

import dagster as dg
import pandas as pd

from dict_ratelimit.analysis import evaluations_frame, metrics_frame
from dict_ratelimit.defs.resources import PostgresResource, ThresholdsResource
from dict_ratelimit.defs.snapshots import policy_snapshots
from dict_ratelimit.settings import get_settings
from dict_ratelimit.storage.metrics import (
    load_metrics_for_evaluation,
    load_pairs,
    write_rows,
)

MODE_TAG = "dict_ratelimit/mode"
INCREMENTAL = "incremental"

DAILY = dg.DailyPartitionsDefinition(
    start_date=get_settings().partitions_start,
    timezone="UTC",
    end_offset=1,  # today's partition exists while today is running
)


def _window(context: dg.AssetExecutionContext) -> tuple[dt.datetime, dt.datetime, bool]:
    window = context.partition_time_window
    start, end = window.start, window.end
    incremental = context.run.tags.get(MODE_TAG) == INCREMENTAL
    if incremental:
        start -= dt.timedelta(days=1)
    return start, end, incremental


def _top(frame: pd.DataFrame, column: str, label: str, limit: int = 5) -> dg.MetadataValue:
    rows = frame.dropna(subset=[column]).nsmallest(limit, column)
    lines = [f"| policy | {label} | available | capacity |", "|---|---:|---:|---:|"]
    for row in rows.itertuples(index=False):
        value = getattr(row, column)
        shown = f"{value:.1%}" if column == "remaining_ratio" else f"{value:,.0f} s"
        lines.append(
            f"| {row.ispb}/{row.policy} | {shown} | {row.available_tokens:,} | {row.capacity:,} |"
        )
    return dg.MetadataValue.md("\n".join(lines) if len(lines) > 2 else "(none)")


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[policy_snapshots],
    group_name="dict",
    kinds={"postgres", "numpy"},
    description="Refill-aware metrics per snapshot (dict_ratelimit.policy_metric): consumption "
    "bounds, demand estimate with its range and censoring, time to first 429, recovery, "
    "headroom, 404 share.",
)
def policy_metrics(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    thresholds: ThresholdsResource,
) -> dg.MaterializeResult:
    config = thresholds.config()
    start, end, incremental = _window(context)
    timings: dict[str, float] = {}
    with postgres.engine.begin() as connection:
        started = time.perf_counter()
        pairs = load_pairs(connection, start, end, incremental=incremental)
        timings["load_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        frame = metrics_frame(pairs, config)
        timings["compute_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        written = write_rows(
            connection,
            "policy_metric",
            frame,
            replace_window=None if incremental else (start, end),
        )
        timings["write_seconds"] = time.perf_counter() - started
    context.log.info(
        f"{'incremental' if incremental else 'recomputed'} {start:%Y-%m-%d %H:%M} → "
        f"{end:%Y-%m-%d %H:%M}: {len(pairs)} snapshots, {written} metric rows"
    )
    censored = frame["censored"].value_counts().to_dict() if not frame.empty else {}
    notes = frame["estimate_note"].value_counts().to_dict() if not frame.empty else {}
    return dg.MaterializeResult(
        metadata={
            "mode": "incremental" if incremental else "recompute window",
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "snapshots_read": len(pairs),
            "rows_written": written,
            "censored_empty": int(censored.get("empty", 0)),
            "censored_full": int(censored.get("full", 0)),
            "without_estimate": dg.MetadataValue.json({str(k): int(v) for k, v in notes.items()}),
            "worst_by_remaining_ratio": _top(frame, "remaining_ratio", "left")
            if not frame.empty
            else "(none)",
            "worst_by_time_to_429": _top(frame, "time_to_429_s", "first 429 in")
            if not frame.empty
            else "(none)",
            **{name: round(value, 3) for name, value in timings.items()},
        }
    )


@dg.asset(
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[policy_metrics],
    group_name="dict",
    kinds={"postgres"},
    description="Level of every snapshot (OK/WARNING/CRITICAL/EXHAUSTED) with its reasons and "
    "the thresholds used (dict_ratelimit.threshold_evaluation).",
)
def threshold_evaluations(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    thresholds: ThresholdsResource,
) -> dg.MaterializeResult:
    config = thresholds.config()
    start, end, incremental = _window(context)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with postgres.engine.begin() as connection:
        metrics = load_metrics_for_evaluation(connection, start, end, incremental=incremental)
        timings["load_seconds"] = time.perf_counter() - started
        frame = evaluations_frame(metrics, config)
        timings["compute_seconds"] = time.perf_counter() - started - timings["load_seconds"]
        written = write_rows(
            connection,
            "threshold_evaluation",
            frame,
            replace_window=None if incremental else (start, end),
        )
    timings["write_seconds"] = (
        time.perf_counter() - started - timings["load_seconds"] - timings["compute_seconds"]
    )
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
    lines = ["| policy | level | left |", "|---|---|---:|"] + [
        f"| {r.ispb}/{r.policy} | {r.level} | {r.remaining_ratio:.1%} |"
        for r in alarming.head(10).itertuples(index=False)
    ]
    return dg.MaterializeResult(
        metadata={
            "mode": "incremental" if incremental else "recompute window",
            "rows_written": written,
            "count_ok": int(levels.get("OK", 0)),
            "count_warning": int(levels.get("WARNING", 0)),
            "count_critical": int(levels.get("CRITICAL", 0)),
            "count_exhausted": int(levels.get("EXHAUSTED", 0)),
            "latest_not_ok": dg.MetadataValue.md("\n".join(lines) if len(lines) > 2 else "(none)"),
            "seconds": round(time.perf_counter() - started, 3),
            **{name: round(value, 3) for name, value in timings.items()},
        }
    )
