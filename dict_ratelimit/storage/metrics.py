"""Reading snapshot pairs and writing metrics and threshold evaluations.

A previous reading counts only within a day (``MAX_PREVIOUS_AGE``; both ways apply the same
rule, so they produce the same rows). Two ways to pick the snapshots to compute, one way to
compute and write them:
- by key (a tick, the watch lane): exactly the snapshots waiting in ``metric_backlog``, each
  with its previous reading found by one bounded index probe; no search of history by time;
- by window (a backfill): every snapshot of the window with ``LAG`` over the window plus the
  last snapshot before it of every policy (the first snapshot of a day uses the day before).
Both add the monitor's own POLICIES_LIST / POLICIES_READ calls between the two readings
(``own_calls``), which the metrics subtract from those buckets' demand.
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
from dict_ratelimit.storage.queues import KEYS_CTE, Key, key_parameters, take_keys

_SNAPSHOT_FIELDS = (
    "{a}.ispb, {a}.policy, {a}.response_time, {a}.available_tokens, {a}.capacity, "
    "{a}.refill_tokens, {a}.refill_period_sec, {a}.source"
)

# The last reading of the same policy before {at}, within a day. {low} is a constant lower
# bound so that the planner prunes partitions before it runs.
_PREVIOUS = """
        SELECT {columns}
        FROM dict_ratelimit.policy_snapshot AS x
        WHERE x.ispb = {owner}.ispb AND x.policy = {owner}.policy
          AND x.response_time < {at} AND x.response_time >= {at} - interval '1 day'
          AND x.response_time >= {low}
        ORDER BY x.response_time DESC LIMIT 1
"""

# From a relation ``pairs`` (a snapshot, its source and its previous reading) to the columns
# the metrics need: the Bridge's counts of the sweep and the monitor's own calls in between.
_FINISH = """
SELECT pairs.ispb, pairs.policy, pairs.response_time, pairs.available_tokens, pairs.capacity,
       pairs.refill_tokens, pairs.refill_period_sec, pairs.prev_response_time,
       pairs.prev_available, pairs.prev_capacity, pairs.prev_refill_tokens,
       pairs.prev_refill_period_sec, rs.not_found, rs.total,
       CASE
           WHEN pairs.prev_response_time IS NULL THEN 0
           -- consecutive POLICIES_LIST readings: a listing reads every policy, so the only
           -- listing in between is the one that produced this reading
           WHEN pairs.policy = 'POLICIES_LIST' THEN (pairs.source = 'list')::int
           WHEN pairs.policy = 'POLICIES_READ' THEN (
               SELECT count(*) FROM dict_ratelimit.policy_snapshot AS g
               WHERE g.source = 'get' AND g.ispb = pairs.ispb
                 AND g.response_time > pairs.prev_response_time
                 AND g.response_time <= pairs.response_time
                 AND g.response_time >= %(low)s)::int
           ELSE 0
       END AS own_calls,
       -- DICT's 429s since the previous reading, from the Bridge's counts of the windows that
       -- ended in between; NULL (unknown) when the Bridge reported no window in between
       CASE WHEN EXISTS (
           SELECT 1 FROM dict_ratelimit.request_stats_window AS w
           WHERE w.ispb = pairs.ispb
             AND w.window_end > coalesce(pairs.prev_response_time,
                                         pairs.response_time - interval '1 microsecond')
             AND w.window_end <= pairs.response_time AND w.window_end >= %(low)s)
       THEN (
           SELECT coalesce(sum(t.throttled), 0) FROM dict_ratelimit.policy_request_stats AS t
           WHERE t.ispb = pairs.ispb AND t.policy = pairs.policy
             AND t.window_end > coalesce(pairs.prev_response_time,
                                         pairs.response_time - interval '1 microsecond')
             AND t.window_end <= pairs.response_time AND t.window_end >= %(low)s)
       END AS throttled,
       coalesce(pairs.prev_response_time, (
           SELECT w.window_end - make_interval(secs => w.window_seconds)
           FROM dict_ratelimit.request_stats_window AS w
           WHERE w.ispb = pairs.ispb AND w.window_end = pairs.response_time
             AND w.window_end >= %(low)s)) AS throttled_since
FROM pairs
LEFT JOIN dict_ratelimit.policy_request_stats AS rs
       ON rs.ispb = pairs.ispb AND rs.policy = pairs.policy
      AND rs.window_end = pairs.response_time AND rs.window_end >= %(low)s
"""

_BY_KEYS = f"""
WITH {KEYS_CTE}, pairs AS (
    SELECT {_SNAPSHOT_FIELDS.format(a="s")},
           prev.response_time AS prev_response_time, prev.available_tokens AS prev_available,
           prev.capacity AS prev_capacity, prev.refill_tokens AS prev_refill_tokens,
           prev.refill_period_sec AS prev_refill_period_sec
    FROM keys AS k
    JOIN dict_ratelimit.policy_snapshot AS s
      ON s.ispb = k.ispb AND s.policy = k.policy AND s.response_time = k.response_time
     AND s.response_time >= %(first)s AND s.response_time <= %(last)s
    LEFT JOIN LATERAL ({
    _PREVIOUS.format(
        columns="x.response_time, x.available_tokens, x.capacity, x.refill_tokens, "
        "x.refill_period_sec",
        owner="s",
        at="s.response_time",
        low="%(low)s",
    )
}) AS prev ON true
)
{_FINISH}
ORDER BY pairs.ispb, pairs.policy, pairs.response_time
"""

_LAST_BEFORE_START = _PREVIOUS.format(
    columns=_SNAPSHOT_FIELDS.format(a="x"), owner="p", at="%(start)s", low="%(low)s"
)

_BY_WINDOW = f"""
WITH base AS (
    SELECT {_SNAPSHOT_FIELDS.format(a="s")}
    FROM dict_ratelimit.policy_snapshot AS s
    WHERE s.response_time >= %(start)s AND s.response_time < %(end)s
    UNION ALL
    SELECT before.ispb, before.policy, before.response_time, before.available_tokens,
           before.capacity, before.refill_tokens, before.refill_period_sec, before.source
    FROM dict_ratelimit.policy AS p
    CROSS JOIN LATERAL ({_LAST_BEFORE_START}) AS before
), lagged AS (
    SELECT base.*,
           lag(response_time) OVER w AS prev_response_time,
           lag(available_tokens) OVER w AS prev_available,
           lag(capacity) OVER w AS prev_capacity,
           lag(refill_tokens) OVER w AS prev_refill_tokens,
           lag(refill_period_sec) OVER w AS prev_refill_period_sec
    FROM base
    WINDOW w AS (PARTITION BY ispb, policy ORDER BY response_time)
), pairs AS (
    SELECT * FROM lagged WHERE response_time >= %(start)s
)
{_FINISH}
ORDER BY pairs.ispb, pairs.policy, pairs.response_time
"""

_PAIR_DATES = ("response_time", "prev_response_time", "throttled_since")


def load_pairs_for_keys(connection: Connection, keys: Sequence[Key]) -> pd.DataFrame:
    """The snapshots named by ``keys`` with their previous reading (see the module doc)."""
    return read_frame(connection, _BY_KEYS, key_parameters(keys), parse_dates=_PAIR_DATES)


def load_window_pairs(connection: Connection, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Every snapshot of ``[start, end)`` with its previous reading (a backfill)."""
    return read_frame(
        connection,
        _BY_WINDOW,
        {"start": start, "end": end, "low": start - dt.timedelta(days=1)},
        parse_dates=_PAIR_DATES,
    )


def take_metric_backlog(
    connection: Connection,
    limit: int,
    ispbs: Sequence[str] | None = None,
    everyone: Sequence[str] | None = None,
) -> tuple[list[Key], int]:
    """Remove up to ``limit`` keys (oldest first; a shard's when ``ispbs`` is given, see
    :func:`take_keys`) from ``metric_backlog``, in the caller's transaction (a failure puts
    them back); returns them and how many still wait (everyone's)."""
    keys = take_keys(connection, "metric_backlog", limit, ispbs, everyone)
    left = connection.exec_driver_sql("SELECT count(*) FROM dict_ratelimit.metric_backlog").scalar()
    return keys, int(left or 0)


def queue_for_alerts(connection: Connection, frame: pd.DataFrame) -> int:
    """Put the evaluations of ``frame`` in ``alert_backlog`` (the alert step takes them)."""
    if frame.empty:
        return 0
    stage_frame(connection, "alert_backlog", frame.loc[:, ["ispb", "policy", "response_time"]])
    return max(
        connection.exec_driver_sql(
            "INSERT INTO dict_ratelimit.alert_backlog (ispb, policy, response_time) "
            "SELECT ispb, policy, response_time FROM alert_backlog_staging ON CONFLICT DO NOTHING"
        ).rowcount,
        0,
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
    "not_found_share", "own_calls", "throttled", "throttled_since",
)  # fmt: skip

EVALUATION_COLUMNS = (
    "ispb", "policy", "response_time", "level", "level_rank", "remaining_ratio",
    "time_to_429_s", "reasons", "thresholds",
)  # fmt: skip

_TARGETS = {"policy_metric": METRIC_COLUMNS, "threshold_evaluation": EVALUATION_COLUMNS}
_KEY_COLUMNS = ("ispb", "policy", "response_time")


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
    snapshots, same rows). Without it, a row that exists is replaced (the successor of a late
    reading is computed again with its new previous reading; anything else recomputes to the
    same values).
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
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in columns if name not in _KEY_COLUMNS)
    written = connection.exec_driver_sql(
        f"INSERT INTO dict_ratelimit.{table} ({names}) SELECT {names} FROM {staging} "
        f"ON CONFLICT (ispb, policy, response_time) DO UPDATE SET {updates}, "
        "computed_at = now()",
    ).rowcount
    return max(written, 0)


StatsRow = tuple[str, str, dt.datetime, int, str, int, int, int]


def store_request_stats(
    connection: Connection,
    rows: Sequence[StatsRow],
    windows: Sequence[tuple[str, dt.datetime, int]] = (),
) -> int:
    """Store the Bridge's counts: (ispb, policy, window_end, window_seconds, responses json,
    total, not_found, throttled) rows, the windows they cover (a policy absent from a covered
    window had no response: 0, not unknown), and the running total of 429s per policy.
    Storing the same window twice changes nothing. Returns the count rows stored."""
    if windows:
        ensure_month_partitions(connection, "request_stats_window", (w[1] for w in windows))
        staging = stage_rows(
            connection, "request_stats_window", ("ispb", "window_end", "window_seconds"), windows
        )
        connection.exec_driver_sql(
            "INSERT INTO dict_ratelimit.request_stats_window (ispb, window_end, window_seconds) "
            f"SELECT ispb, window_end, window_seconds FROM {staging} ON CONFLICT DO NOTHING"
        )
    if not rows:
        return 0
    ensure_month_partitions(connection, "policy_request_stats", (row[2] for row in rows))
    columns = (
        "ispb", "policy", "window_end", "window_seconds", "responses", "total", "not_found",
        "throttled",
    )  # fmt: skip
    staging = stage_rows(connection, "policy_request_stats", columns, rows)
    names = ", ".join(columns)
    stored = connection.exec_driver_sql(
        f"""
        WITH inserted AS (
            INSERT INTO dict_ratelimit.policy_request_stats ({names})
            SELECT {names} FROM {staging} ON CONFLICT (ispb, policy, window_end) DO NOTHING
            RETURNING ispb, policy, throttled
        ), counted AS (
            INSERT INTO dict_ratelimit.throttle_counter AS c (ispb, policy, total)
            SELECT ispb, policy, sum(throttled) FROM inserted WHERE throttled > 0
            GROUP BY ispb, policy
            ON CONFLICT (ispb, policy) DO UPDATE SET total = c.total + EXCLUDED.total
        )
        SELECT count(*) FROM inserted
        """
    ).scalar()
    return int(stored or 0)
