"""SQL of the capacity-planning tables: daily usage, hourly demand, profile and outlook rows.

Days and hours are local to the report time zone, computed by PostgreSQL (``AT TIME ZONE``),
so a day's row covers the same instants as the Dagster daily partition it belongs to.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dict_ratelimit.domain.catalog import POLICIES
from dict_ratelimit.storage.bulk import copy_frame, read_frame

#: A reading speaks for the time until the next one, but never for more than this (the same
#: cap ``policy_hourly`` uses); longer silences are gaps.
HOLD_SECONDS = 900

#: Tokens a 404 costs beyond the first, per policy: the Bridge's request counts become token
#: demand with them (anti-scan buckets charge three tokens for a 404).
_EXTRA_NOT_FOUND = [(spec.name, spec.not_found_cost - 1) for spec in POLICIES]

_COSTS = "unnest(%(cost_policies)s::text[], %(cost_extra)s::int[]) AS c(policy, extra)"

_DAILY_SQL = f"""
WITH timeline AS (
    -- from one hold before the range: the last reading of the day before covers its first minutes
    SELECT m.ispb, m.policy, m.response_time, m.utilization_ratio, m.remaining_ratio,
           m.available_tokens, m.capacity, m.refill_per_min, m.demand_per_min, e.level,
           (m.response_time AT TIME ZONE %(tz)s)::date AS day,
           LAG(m.response_time) OVER w AS prev_time,
           LEAD(m.response_time) OVER w AS next_time
    FROM dict_ratelimit.policy_metric AS m
    LEFT JOIN dict_ratelimit.threshold_evaluation AS e USING (ispb, policy, response_time)
    WHERE m.response_time >= %(start)s - make_interval(secs => {HOLD_SECONDS})
      AND m.response_time < %(end)s + make_interval(secs => {HOLD_SECONDS})
    WINDOW w AS (PARTITION BY m.ispb, m.policy ORDER BY m.response_time)
), covered AS (
    -- each reading speaks until the next one, at most HOLD_SECONDS
    SELECT t.*,
           LEAST(coalesce(t.next_time, 'infinity'),
                 t.response_time + make_interval(secs => {HOLD_SECONDS})) AS cover_end,
           ((t.day + 1)::timestamp AT TIME ZONE %(tz)s) AS day_end
    FROM timeline AS t
    WHERE t.response_time < %(end)s
), spans AS (
    -- the part of each reading's cover inside its own day, and what spills past midnight
    SELECT ispb, policy, day, level, response_time AS span_start,
           LEAST(cover_end, day_end) AS span_end
    FROM covered WHERE response_time >= %(start)s
    UNION ALL
    SELECT ispb, policy, day + 1, level, day_end, cover_end
    FROM covered WHERE cover_end > day_end AND day_end < %(end)s
), coverage AS (
    SELECT ispb, policy, day,
           sum(EXTRACT(EPOCH FROM span_end - span_start)) AS held,
           sum(EXTRACT(EPOCH FROM span_end - span_start)) FILTER (WHERE level = 'WARNING')
             AS held_warning,
           sum(EXTRACT(EPOCH FROM span_end - span_start)) FILTER (WHERE level = 'CRITICAL')
             AS held_critical,
           sum(EXTRACT(EPOCH FROM span_end - span_start)) FILTER (WHERE level = 'EXHAUSTED')
             AS held_exhausted
    FROM spans
    GROUP BY ispb, policy, day
), daily AS (
    SELECT ispb, policy, day,
           count(*) AS readings,
           -- stretches of more than HOLD_SECONDS without a reading that touch the day: after
           -- each reading, and the one that ends at the day's first reading
           count(*) FILTER (
               WHERE coalesce(next_time, 'infinity') - response_time
                     > make_interval(secs => {HOLD_SECONDS})
                 AND response_time + make_interval(secs => {HOLD_SECONDS}) < day_end)
             + ((min(response_time)
                 - coalesce((array_agg(prev_time ORDER BY response_time))[1],
                            (day::timestamp AT TIME ZONE %(tz)s)))
                > make_interval(secs => {HOLD_SECONDS}))::int AS gaps,
           max(capacity) AS capacity,
           (array_agg(refill_per_min ORDER BY response_time DESC))[1] AS refill_per_min,
           max(utilization_ratio) AS peak_utilization,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY utilization_ratio) AS p95_utilization,
           min(remaining_ratio) AS min_remaining_ratio,
           min(available_tokens) AS min_available_tokens,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY demand_per_min) AS token_p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY demand_per_min) AS token_p95,
           max(demand_per_min) AS token_max
    FROM covered
    WHERE response_time >= %(start)s
    GROUP BY ispb, policy, day
), windows AS (
    -- a Bridge window belongs to the day (and hour) of its middle, as in hourly_demand
    SELECT s.ispb, s.policy,
           ((s.window_end - make_interval(secs => s.window_seconds / 2.0))
             AT TIME ZONE %(tz)s)::date AS day,
           s.total, coalesce((s.responses ->> '429')::bigint, 0) AS throttled,
           (s.total + coalesce(c.extra, 0) * s.not_found) * 60.0 / s.window_seconds AS rate
    FROM dict_ratelimit.policy_request_stats AS s
    LEFT JOIN {_COSTS} USING (policy)
    WHERE s.window_end >= %(start)s AND s.window_end < %(end)s + interval '1 day'
), stats AS (
    SELECT ispb, policy, day, sum(total) AS requests, sum(throttled) AS throttled_429,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY rate) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY rate) AS p95,
           max(rate) AS top
    FROM windows
    WHERE day >= (%(start)s AT TIME ZONE %(tz)s)::date
      AND day < (%(end)s AT TIME ZONE %(tz)s)::date
    GROUP BY ispb, policy, day
), combined AS (
    -- a day with the Bridge's counts but no reading (the readings were refused, or lost)
    -- keeps its 429s and demand: the counts are the only record of them
    SELECT ispb, policy, day,
           coalesce(d.readings, 0) AS readings,
           coalesce(cv.held, 0) / 60.0 AS observed_minutes,
           coalesce(d.gaps, 1) AS gaps,
           EXTRACT(EPOCH FROM ((day + 1)::timestamp AT TIME ZONE %(tz)s)
                              - (day::timestamp AT TIME ZONE %(tz)s)) / 60.0
             - coalesce(cv.held, 0) / 60.0 AS gap_minutes,
           d.capacity,
           coalesce(d.refill_per_min,
                    (SELECT p.refill_tokens * 60.0 / p.refill_period_sec
                     FROM dict_ratelimit.policy AS p
                     WHERE p.ispb = st.ispb AND p.policy = st.policy)) AS refill_per_min,
           d.peak_utilization, d.p95_utilization, d.min_remaining_ratio,
           d.min_available_tokens,
           coalesce(cv.held_warning, 0) / 60.0 AS minutes_warning,
           coalesce(cv.held_critical, 0) / 60.0 AS minutes_critical,
           coalesce(cv.held_exhausted, 0) / 60.0 AS minutes_exhausted,
           st.requests, st.throttled_429,
           CASE WHEN st.requests IS NOT NULL THEN 'bridge_stats'
                WHEN d.token_max IS NOT NULL THEN 'tokens' END AS demand_source,
           CASE WHEN st.requests IS NOT NULL THEN st.p50 ELSE d.token_p50 END AS demand_p50,
           CASE WHEN st.requests IS NOT NULL THEN st.p95 ELSE d.token_p95 END AS demand_p95,
           CASE WHEN st.requests IS NOT NULL THEN st.top ELSE d.token_max END AS demand_max
    FROM daily AS d
    FULL JOIN stats AS st USING (ispb, policy, day)
    LEFT JOIN coverage AS cv USING (ispb, policy, day)
)
INSERT INTO dict_ratelimit.policy_daily_usage AS u (
    ispb, policy, day, time_zone, readings, observed_minutes, gaps, gap_minutes, capacity,
    refill_per_min, peak_utilization, p95_utilization, min_remaining_ratio,
    min_available_tokens, minutes_warning, minutes_critical, minutes_exhausted, requests,
    throttled_429, demand_source, demand_p50_per_min, demand_p95_per_min, demand_max_per_min,
    peak_demand_share, computed_at
)
SELECT ispb, policy, day, %(tz)s, readings, observed_minutes, gaps,
       GREATEST(gap_minutes, 0), capacity, refill_per_min, peak_utilization, p95_utilization,
       min_remaining_ratio, min_available_tokens, minutes_warning, minutes_critical,
       minutes_exhausted, requests, throttled_429, demand_source, demand_p50, demand_p95,
       demand_max, demand_max / NULLIF(refill_per_min, 0), %(computed_at)s
FROM combined
ON CONFLICT (ispb, policy, day) DO UPDATE SET
    time_zone = EXCLUDED.time_zone, readings = EXCLUDED.readings,
    observed_minutes = EXCLUDED.observed_minutes, gaps = EXCLUDED.gaps,
    gap_minutes = EXCLUDED.gap_minutes, capacity = EXCLUDED.capacity,
    refill_per_min = EXCLUDED.refill_per_min, peak_utilization = EXCLUDED.peak_utilization,
    p95_utilization = EXCLUDED.p95_utilization,
    min_remaining_ratio = EXCLUDED.min_remaining_ratio,
    min_available_tokens = EXCLUDED.min_available_tokens,
    minutes_warning = EXCLUDED.minutes_warning, minutes_critical = EXCLUDED.minutes_critical,
    minutes_exhausted = EXCLUDED.minutes_exhausted, requests = EXCLUDED.requests,
    throttled_429 = EXCLUDED.throttled_429, demand_source = EXCLUDED.demand_source,
    demand_p50_per_min = EXCLUDED.demand_p50_per_min,
    demand_p95_per_min = EXCLUDED.demand_p95_per_min,
    demand_max_per_min = EXCLUDED.demand_max_per_min,
    peak_demand_share = EXCLUDED.peak_demand_share, computed_at = EXCLUDED.computed_at
-- never replace a day seen through readings by one seen through the Bridge's counts only
WHERE EXCLUDED.readings > 0 OR u.readings = 0
"""


def _cost_params() -> dict[str, object]:
    return {
        "cost_policies": [name for name, _ in _EXTRA_NOT_FOUND],
        "cost_extra": [extra for _, extra in _EXTRA_NOT_FOUND],
    }


def upsert_daily_usage(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    time_zone: str,
    computed_at: dt.datetime,
) -> int:
    """Recompute the daily rows of the local days in ``[start, end)``; returns rows written.

    A (participant, policy, day) without any reading in the source keeps the row it had: the
    retention job drops readings after 13 months, and re-running an old day must not erase
    what was learnt from it while they existed (nor replace it by the Bridge's counts alone).
    """
    result = connection.exec_driver_sql(
        _DAILY_SQL,
        {
            "start": start,
            "end": end,
            "tz": time_zone,
            "computed_at": computed_at,
            **_cost_params(),
        },
    )
    return int(result.rowcount or 0)


def daily_summary(connection: Connection, first_day: dt.date, last_day: dt.date) -> pd.DataFrame:
    """Per (participant, policy) over the days ``[first_day, last_day]``: the worst of them."""
    return read_frame(
        connection,
        "SELECT ispb, policy, count(*) AS days, sum(readings) AS readings, "
        "sum(gaps) AS gaps, max(peak_utilization) AS peak_utilization, "
        "min(min_remaining_ratio) AS min_remaining_ratio, "
        "sum(minutes_exhausted) AS minutes_exhausted, sum(throttled_429) AS throttled_429, "
        "max(peak_demand_share) AS peak_demand_share "
        "FROM dict_ratelimit.policy_daily_usage WHERE day BETWEEN %(first)s AND %(last)s "
        "GROUP BY ispb, policy",
        {"first": first_day, "last": last_day},
    )


_HOURLY_SQL = f"""
WITH tokens AS (
    SELECT m.ispb, m.policy, date_trunc('hour', m.response_time AT TIME ZONE %(tz)s) AS hour,
           avg(m.demand_per_min / m.refill_per_min) AS token_share,
           max(m.demand_per_min / m.refill_per_min) AS burst_share,
           (array_agg(m.refill_per_min ORDER BY m.response_time DESC))[1] AS refill_per_min,
           count(*) AS readings
    FROM dict_ratelimit.policy_metric AS m
    WHERE m.response_time >= %(start)s AND m.response_time < %(end)s
      AND m.ispb = ANY(%(ispbs)s::char(8)[])
    GROUP BY 1, 2, 3
), stats AS (
    SELECT s.ispb, s.policy,
           date_trunc('hour', (s.window_end - make_interval(secs => s.window_seconds / 2.0))
                              AT TIME ZONE %(tz)s) AS hour,
           sum(s.total + coalesce(c.extra, 0) * s.not_found) * 60.0 / sum(s.window_seconds)
             AS demand_per_min
    FROM dict_ratelimit.policy_request_stats AS s
    LEFT JOIN {_COSTS} USING (policy)
    WHERE s.window_end >= %(start)s AND s.window_end < %(end)s + interval '1 hour'
      AND s.ispb = ANY(%(ispbs)s::char(8)[])
    GROUP BY 1, 2, 3
)
SELECT j.ispb, j.policy, j.hour,
       coalesce(j.stats_demand / NULLIF(j.refill_per_min, 0), j.token_share) AS share,
       j.burst_share, j.refill_per_min, j.readings
FROM (
    -- an hour with the Bridge's counts but no reading keeps its demand, over the current refill
    SELECT ispb, policy, hour, st.demand_per_min AS stats_demand, t.token_share, t.burst_share,
           coalesce(t.refill_per_min,
                    (SELECT p.refill_tokens * 60.0 / p.refill_period_sec
                     FROM dict_ratelimit.policy AS p
                     WHERE p.ispb = st.ispb AND p.policy = st.policy)) AS refill_per_min,
           coalesce(t.readings, 0) AS readings
    FROM tokens AS t
    FULL JOIN stats AS st USING (ispb, policy, hour)
) AS j
WHERE j.hour >= (%(start)s AT TIME ZONE %(tz)s) AND j.hour < (%(end)s AT TIME ZONE %(tz)s)
ORDER BY j.ispb, j.policy, j.hour
"""


def hourly_demand(
    connection: Connection,
    start: dt.datetime,
    end: dt.datetime,
    time_zone: str,
    ispbs: Sequence[str],
) -> pd.DataFrame:
    """Demand per (participant, policy, local hour) as a share of the refill.

    ``share`` comes from the Bridge's request counts when it reported them for that hour
    (every request, 429s included: what the institution *wanted* to send), otherwise from the
    bucket readings (readings of a full bucket give no figure, so such hours are missing, never
    zero). ``hour`` is the local wall-clock hour, without a zone.
    """
    frame = read_frame(
        connection,
        _HOURLY_SQL,
        {"start": start, "end": end, "tz": time_zone, "ispbs": list(ispbs), **_cost_params()},
    )
    frame["hour"] = pd.to_datetime(frame["hour"])
    return frame


def monitored_policies(connection: Connection) -> pd.DataFrame:
    """Every (participant, policy) with its current bucket and the participant's category."""
    return read_frame(
        connection,
        "SELECT p.ispb, p.policy, p.capacity, p.refill_tokens, "
        "p.refill_tokens * 60.0 / p.refill_period_sec AS refill_per_min, pa.category "
        "FROM dict_ratelimit.policy AS p JOIN dict_ratelimit.participant AS pa USING (ispb) "
        "ORDER BY p.ispb, p.policy",
        {},
    )


PROFILE_COLUMNS = (
    "ispb", "policy", "window_weeks", "hour_of_week", "weekday", "hour", "weeks_seen",
    "typical_share", "peak_share", "burst_share", "refill_per_min", "window_start",
    "window_end", "time_zone", "computed_at",
)  # fmt: skip


def replace_weekly_profile(
    connection: Connection, ispbs: Sequence[str], frame: pd.DataFrame
) -> int:
    """Swap the profile rows of ``ispbs`` for ``frame`` in the caller's transaction."""
    connection.execute(
        sa.text("DELETE FROM dict_ratelimit.policy_weekly_profile WHERE ispb = ANY(:ispbs)"),
        {"ispbs": list(ispbs)},
    )
    if not frame.empty:
        copy_frame(connection, "dict_ratelimit.policy_weekly_profile", frame[list(PROFILE_COLUMNS)])
    return len(frame)


OUTLOOK_COLUMNS = (
    "ispb", "policy", "as_of", "status", "category", "capacity", "refill_per_min",
    "weeks_used", "weekly_peak_share", "peak_hour_of_week", "peak_weekday", "peak_hour",
    "growth_per_week", "growth_low_per_week", "growth_high_per_week", "fit_mad",
    "peak_exceeds_refill_at", "first_429_at", "first_429_earliest_at", "first_429_latest_at",
    "weeks_to_first_429", "throttled_429_30d", "minutes_exhausted_30d", "categories",
    "weekly_peaks", "recommendation", "time_zone", "computed_at",
)  # fmt: skip


def replace_outlooks(
    connection: Connection, as_of: dt.datetime, ispbs: Sequence[str], frame: pd.DataFrame
) -> int:
    """Write the outlook rows of ``ispbs`` at ``as_of`` (a re-run of the same day replaces its
    rows; earlier days' outlooks stay, so analysts can see how the forecast moved)."""
    connection.execute(
        sa.text(
            "DELETE FROM dict_ratelimit.capacity_outlook "
            "WHERE as_of = :as_of AND ispb = ANY(:ispbs)"
        ),
        {"as_of": as_of, "ispbs": list(ispbs)},
    )
    if not frame.empty:
        copy_frame(connection, "dict_ratelimit.capacity_outlook", frame[list(OUTLOOK_COLUMNS)])
    return len(frame)


def prune_outlooks(connection: Connection, before: dt.datetime) -> int:
    """Delete the outlooks computed as of before ``before``; returns how many."""
    result = connection.execute(
        sa.text("DELETE FROM dict_ratelimit.capacity_outlook WHERE as_of < :before"),
        {"before": before},
    )
    return int(result.rowcount or 0)
