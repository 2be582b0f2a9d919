"""Reading snapshot pairs and writing metrics and threshold evaluations.

A previous reading counts only within a day (``MAX_PREVIOUS_AGE``; both ways apply the same
rule, so they produce the same rows). Two ways to pick the snapshots to compute:
- ``incremental``: per policy, the snapshots of the window newer than its newest metric row
  (one index probe per policy, then only the new rows of a tick); that metric row carries the
  previous reading of the first new snapshot, so no probe per snapshot is needed;
- ``window``: every snapshot of the window with ``LAG`` over the window plus the last snapshot
  before it of every policy (a backfill: the first snapshot of a day uses the day before).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dict_ratelimit.storage.bulk import (
    copy_frame,
    ensure_month_partitions,
    read_frame,
    stage_frame,
    stage_rows,
)

PAIR_COLUMNS = (
    "pairs.ispb, pairs.policy, pairs.response_time, pairs.available_tokens, pairs.capacity, "
    "pairs.refill_tokens, pairs.refill_period_sec, pairs.prev_response_time, "
    "pairs.prev_available, pairs.prev_capacity, pairs.prev_refill_tokens, "
    "pairs.prev_refill_period_sec, rs.not_found, rs.total"
)

# Shared pieces of the two queries below: both must apply the same one-day rule and the same
# previous-reading columns, or a tick and a backfill would not produce the same rows.
_LAST_BEFORE_START = """
        SELECT x.ispb, x.policy, x.response_time, x.available_tokens, x.capacity,
               x.refill_tokens, x.refill_period_sec
        FROM dict_ratelimit.policy_snapshot AS x
        WHERE x.ispb = {owner}.ispb AND x.policy = {owner}.policy
          AND x.response_time < %(start)s AND x.response_time >= %(start)s - interval '1 day'
        ORDER BY x.response_time DESC LIMIT 1
"""
_LAG_PREVIOUS = """
           lag(response_time) OVER w AS prev_response_time,
           lag(available_tokens) OVER w AS prev_available,
           lag(capacity) OVER w AS prev_capacity,
           lag(refill_tokens) OVER w AS prev_refill_tokens,
           lag(refill_period_sec) OVER w AS prev_refill_period_sec"""
_JOIN_REQUEST_STATS = """LEFT JOIN dict_ratelimit.policy_request_stats AS rs
    ON rs.ispb = pairs.ispb AND rs.policy = pairs.policy AND rs.window_end = pairs.response_time"""

_INCREMENTAL = f"""
WITH newest AS (
    -- per policy, its newest metric row in the window: everything after it is new, and that
    -- row's snapshot is the previous reading of the first new one
    SELECT p.ispb, p.policy, m.response_time, m.available_tokens, m.capacity, m.refill_tokens,
           m.refill_period_sec
    FROM dict_ratelimit.policy AS p
    LEFT JOIN LATERAL (
        SELECT pm.response_time, pm.available_tokens, pm.capacity, pm.refill_tokens,
               pm.refill_period_sec
        FROM dict_ratelimit.policy_metric AS pm
        WHERE pm.ispb = p.ispb AND pm.policy = p.policy
          AND pm.response_time >= %(start)s AND pm.response_time < %(end)s
        ORDER BY pm.response_time DESC LIMIT 1
    ) AS m ON true
), fresh AS (
    SELECT s.ispb, s.policy, s.response_time, s.available_tokens, s.capacity, s.refill_tokens,
           s.refill_period_sec, false AS anchor
    FROM newest AS n
    JOIN dict_ratelimit.policy_snapshot AS s
      ON s.ispb = n.ispb AND s.policy = n.policy
     AND s.response_time > coalesce(n.response_time, %(start)s - interval '1 microsecond')
     AND s.response_time < %(end)s
), anchors AS (
    SELECT n.ispb, n.policy, n.response_time, n.available_tokens, n.capacity, n.refill_tokens,
           n.refill_period_sec, true AS anchor
    FROM newest AS n
    WHERE n.response_time IS NOT NULL
      AND EXISTS (SELECT 1 FROM fresh AS f WHERE f.ispb = n.ispb AND f.policy = n.policy)
    UNION ALL
    -- no metric in the window yet: the last snapshot before it (within a day)
    SELECT before.*, true AS anchor
    FROM newest AS n
    CROSS JOIN LATERAL ({_LAST_BEFORE_START.format(owner="n")}) AS before
    WHERE n.response_time IS NULL
      AND EXISTS (SELECT 1 FROM fresh AS f WHERE f.ispb = n.ispb AND f.policy = n.policy)
), pairs AS (
    SELECT base.*, {_LAG_PREVIOUS}
    FROM (SELECT * FROM fresh UNION ALL SELECT * FROM anchors) AS base
    WINDOW w AS (PARTITION BY ispb, policy ORDER BY response_time)
)
SELECT {PAIR_COLUMNS}
FROM pairs
{_JOIN_REQUEST_STATS}
WHERE NOT pairs.anchor
ORDER BY pairs.ispb, pairs.policy, pairs.response_time
"""

_WINDOW = f"""
WITH base AS (
    SELECT s.ispb, s.policy, s.response_time, s.available_tokens, s.capacity, s.refill_tokens,
           s.refill_period_sec
    FROM dict_ratelimit.policy_snapshot AS s
    WHERE s.response_time >= %(start)s AND s.response_time < %(end)s
    UNION ALL
    SELECT before.*
    FROM dict_ratelimit.policy AS p
    CROSS JOIN LATERAL ({_LAST_BEFORE_START.format(owner="p")}) AS before
), pairs AS (
    SELECT base.*, {_LAG_PREVIOUS}
    FROM base
    WINDOW w AS (PARTITION BY ispb, policy ORDER BY response_time)
)
SELECT {PAIR_COLUMNS}
FROM pairs
{_JOIN_REQUEST_STATS}
WHERE pairs.response_time >= %(start)s
ORDER BY pairs.ispb, pairs.policy, pairs.response_time
"""


def load_pairs(
    connection: Connection, start: dt.datetime, end: dt.datetime, *, incremental: bool
) -> pd.DataFrame:
    """Snapshots of ``[start, end)`` with their previous snapshot (see the module doc)."""
    return read_frame(
        connection,
        _INCREMENTAL if incremental else _WINDOW,
        {"start": start, "end": end},
        parse_dates=("response_time", "prev_response_time"),
    )


METRIC_COLUMNS = (
    "ispb", "policy", "response_time", "prev_response_time", "elapsed_seconds",
    "available_tokens", "capacity", "refill_tokens", "refill_period_sec", "remaining_ratio",
    "utilization_ratio", "refill_per_min", "naive_drop_per_min", "consumed_lower_stepped",
    "consumed_upper_stepped", "consumed_lower_continuous", "consumed_upper_continuous",
    "drain_rate_lower_continuous_per_min", "demand_continuous_per_min",
    "demand_stepped_min_per_min", "demand_stepped_max_per_min", "demand_lower_per_min",
    "demand_upper_per_min", "demand_per_min", "censored", "estimate_note",
    "forecast_demand_per_min", "exhaustion_state", "time_to_429_stepped_s",
    "time_to_429_continuous_s", "time_to_429_s", "recovery_state", "recovery_to_clear_s",
    "recovery_to_full_s", "headroom_per_min", "burst_absorbable_tokens", "demand_seconds_left",
    "not_found_share",
)  # fmt: skip

EVALUATION_COLUMNS = (
    "ispb", "policy", "response_time", "level", "level_rank", "remaining_ratio",
    "time_to_429_s", "reasons", "thresholds",
)  # fmt: skip

_TARGETS = {"policy_metric": METRIC_COLUMNS, "threshold_evaluation": EVALUATION_COLUMNS}


def _months(times: pd.Series) -> list[dt.datetime]:
    """One datetime per distinct UTC month of ``times`` (cheap for 260k rows)."""
    utc = times.dt.tz_convert("UTC")
    keys = pd.unique(utc.dt.year * 12 + (utc.dt.month - 1))
    return [dt.datetime(int(k) // 12, int(k) % 12 + 1, 1, tzinfo=dt.timezone.utc) for k in keys]


def write_rows(
    connection: Connection,
    table: str,
    frame: pd.DataFrame,
    *,
    replace_window: tuple[dt.datetime, dt.datetime] | None = None,
) -> int:
    """Write ``frame`` into ``policy_metric`` or ``threshold_evaluation``; returns rows written.

    With ``replace_window`` every row of that window is deleted first (a backfill: same
    snapshots, same rows). Without it, rows that already exist are left alone (a re-run of a
    tick writes nothing twice).
    """
    columns = _TARGETS[table]
    if replace_window is not None:
        connection.execute(
            sa.text(
                f"DELETE FROM dict_ratelimit.{table} "
                "WHERE response_time >= :start AND response_time < :end"
            ),
            {"start": replace_window[0], "end": replace_window[1]},
        )
    if frame.empty:
        return 0
    ensure_month_partitions(connection, table, _months(frame["response_time"]))
    if replace_window is not None:
        # the window is empty now: straight into the table (the serial tag keeps monitor runs
        # from writing at the same time)
        copy_frame(connection, f"dict_ratelimit.{table}", frame.loc[:, list(columns)])
        return len(frame)
    staging = stage_frame(connection, table, frame.loc[:, list(columns)])
    names = ", ".join(columns)
    inserted = connection.exec_driver_sql(
        f"INSERT INTO dict_ratelimit.{table} ({names}) SELECT {names} FROM {staging} "
        "ON CONFLICT (ispb, policy, response_time) DO NOTHING"
    ).rowcount
    return max(inserted, 0)


def load_metrics_for_evaluation(
    connection: Connection, start: dt.datetime, end: dt.datetime, *, incremental: bool
) -> pd.DataFrame:
    """Metric rows of the window to evaluate (incremental: those without an evaluation)."""
    missing = (
        "AND NOT EXISTS (SELECT 1 FROM dict_ratelimit.threshold_evaluation e "
        "WHERE e.ispb = m.ispb AND e.policy = m.policy AND e.response_time = m.response_time)"
        if incremental
        else ""
    )
    return read_frame(
        connection,
        "SELECT m.ispb, m.policy, m.response_time, m.available_tokens, m.capacity, "
        "m.remaining_ratio, m.time_to_429_s, m.exhaustion_state "
        "FROM dict_ratelimit.policy_metric m "
        f"WHERE m.response_time >= %(start)s AND m.response_time < %(end)s {missing} "
        "ORDER BY m.ispb, m.policy, m.response_time",
        {"start": start, "end": end},
        parse_dates=("response_time",),
    )


def store_request_stats(
    connection: Connection, rows: Sequence[tuple[str, str, dt.datetime, int, str, int, int]]
) -> int:
    """(ispb, policy, window_end, window_seconds, responses json, total, not_found) rows."""
    if not rows:
        return 0
    ensure_month_partitions(connection, "policy_request_stats", (row[2] for row in rows))
    columns = ("ispb", "policy", "window_end", "window_seconds", "responses", "total", "not_found")
    staging = stage_rows(connection, "policy_request_stats", columns, rows)
    names = ", ".join(columns)
    return max(
        connection.exec_driver_sql(
            f"INSERT INTO dict_ratelimit.policy_request_stats ({names}) "
            f"SELECT {names} FROM {staging} ON CONFLICT (ispb, policy, window_end) DO NOTHING"
        ).rowcount,
        0,
    )
