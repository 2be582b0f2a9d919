"""What the watch lane needs to decide: every bucket's newest state, and the monitor's own
spend per participant. Bounded like the exporter's queries (the day before each participant's
newest reading; constant bounds for the planner)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from dict_ratelimit.domain.watch import LIST_POLICY, READ_POLICY, BucketView, BudgetView
from dict_ratelimit.storage.snapshots import reading_bounds

_BUCKETS = """
SELECT p.ispb, p.policy, s.capacity, s.refill_tokens, s.refill_period_sec, s.available_tokens,
       s.polled_at, s.response_time, m.time_to_429_s, m.demand_upper_per_min,
       coalesce(e.level_rank, 0) AS level_rank
FROM dict_ratelimit.policy AS p
JOIN dict_ratelimit.participant AS pa ON pa.ispb = p.ispb
CROSS JOIN LATERAL (
    SELECT x.capacity, x.refill_tokens, x.refill_period_sec, x.available_tokens, x.polled_at,
           x.response_time
    FROM dict_ratelimit.policy_snapshot AS x
    WHERE x.ispb = p.ispb AND x.policy = p.policy
      AND x.response_time <= pa.last_reading_at
      AND x.response_time >= pa.last_reading_at - interval '1 day'
      AND x.response_time >= %(low)s AND x.response_time <= %(high)s
    ORDER BY x.response_time DESC LIMIT 1
) AS s
LEFT JOIN LATERAL (
    SELECT pm.time_to_429_s, pm.demand_upper_per_min FROM dict_ratelimit.policy_metric AS pm
    WHERE pm.ispb = p.ispb AND pm.policy = p.policy AND pm.response_time = s.response_time
      AND pm.response_time >= %(low)s AND pm.response_time <= %(high)s
    LIMIT 1
) AS m ON true
LEFT JOIN LATERAL (
    SELECT te.level_rank FROM dict_ratelimit.threshold_evaluation AS te
    WHERE te.ispb = p.ispb AND te.policy = p.policy AND te.response_time = s.response_time
      AND te.response_time >= %(low)s AND te.response_time <= %(high)s
    LIMIT 1
) AS e ON true
WHERE p.ispb = ANY(%(ispbs)s)
"""

# The monitor's own calls of the last few minutes per participant, by our clock: one row per
# GetPolicy reading, one per listing (a listing stores a row per policy at one DICT time).
_OWN_CALLS = """
SELECT s.ispb, s.source, s.polled_at, s.response_time
FROM dict_ratelimit.policy_snapshot AS s
WHERE s.ispb = ANY(%(ispbs)s)
  AND s.response_time >= %(low)s AND s.response_time <= %(high)s
  AND (s.source = 'get' OR s.policy = %(list_policy)s)
  AND s.polled_at >= %(since)s
"""

#: How far back the lane looks for its own calls (the budget is per minute; POLICIES_READ's
#: estimate needs the calls since its newest reading, which a sweep refreshes every 5 min).
OWN_CALLS_LOOKBACK = dt.timedelta(minutes=6)


def watch_state(
    connection: Connection, ispbs: Sequence[str], now: dt.datetime
) -> tuple[list[BucketView], dict[str, BudgetView]]:
    """Every bucket of these participants as last read, and each one's budget."""
    bounds = reading_bounds(connection, ispbs)
    if bounds is None:
        return [], {}
    low, high = bounds
    rows = connection.exec_driver_sql(
        _BUCKETS, {"ispbs": list(ispbs), "low": low, "high": high}
    ).fetchall()
    buckets = [
        BucketView(
            ispb=row.ispb,
            policy=row.policy,
            capacity=row.capacity,
            refill_tokens=row.refill_tokens,
            refill_period_sec=row.refill_period_sec,
            available=row.available_tokens,
            level_rank=row.level_rank,
            time_to_429_s=row.time_to_429_s,
            demand_upper_per_min=row.demand_upper_per_min,
            received_at=row.polled_at,
        )
        for row in rows
    ]
    calls = connection.exec_driver_sql(
        _OWN_CALLS,
        {
            "ispbs": list(ispbs),
            "low": high - OWN_CALLS_LOOKBACK - dt.timedelta(days=1),
            "high": high + dt.timedelta(days=1),
            "list_policy": LIST_POLICY,
            "since": now - OWN_CALLS_LOOKBACK,
        },
    ).fetchall()
    return buckets, budgets(buckets, [(c.ispb, c.source, c.polled_at) for c in calls], now)


def budgets(
    buckets: Sequence[BucketView],
    calls: Sequence[tuple[str, str, dt.datetime]],
    now: dt.datetime,
) -> dict[str, BudgetView]:
    """Per participant: its POLICIES_* shapes, the estimate of POLICIES_READ now (its newest
    reading, plus the refill since, minus what the other clients spend at their upper demand
    estimate and the monitor's GetPolicy calls since), and the monitor's calls of the last
    minute."""
    minute_ago = now - dt.timedelta(minutes=1)
    result: dict[str, BudgetView] = {}
    by_ispb: dict[str, dict[str, BucketView]] = {}
    for bucket in buckets:
        by_ispb.setdefault(bucket.ispb, {})[bucket.policy] = bucket
    for ispb, mine in by_ispb.items():
        read, listing = mine.get(READ_POLICY), mine.get(LIST_POLICY)
        gets = [at for who, source, at in calls if who == ispb and source == "get"]
        lists = [at for who, source, at in calls if who == ispb and source == "list"]
        available = None
        if read is not None:
            since = max(0.0, (now - read.received_at).total_seconds())
            # the other clients of the ISPB spend it too: at most their upper demand estimate
            others = read.demand_upper_per_min or 0.0
            refilled = (read.refill_per_min - others) * since / 60.0
            spent = sum(1 for at in gets if at > read.received_at)
            available = max(0.0, min(read.capacity, read.available + refilled) - spent)
        result[ispb] = BudgetView(
            ispb=ispb,
            read_refill_per_min=read.refill_per_min if read else 60.0,
            read_capacity=read.capacity if read else 200,
            read_available=available,
            list_refill_per_min=listing.refill_per_min if listing else 6.0,
            get_calls_last_minute=sum(1 for at in gets if at > minute_ago),
            list_calls_last_minute=sum(1 for at in lists if at > minute_ago),
        )
    return result


# The monitor's own answered calls of the last hour per participant. DICT's response time is
# within the allowed clock skew of our receipt time; the hour's margin on it lets the planner
# use the (ispb, policy, response_time) index and prune to the newest partition.
_SPEND = """
SELECT s.ispb,
       count(*) FILTER (WHERE s.source = 'get') AS get_policy,
       count(DISTINCT s.polled_at) FILTER (WHERE s.source = 'list') AS list_policies
FROM dict_ratelimit.policy_snapshot AS s
WHERE s.ispb = ANY(%(ispbs)s)
  AND s.response_time >= %(since)s - interval '1 hour'
  AND s.response_time <= %(now)s + interval '1 hour'
  AND s.polled_at >= %(since)s AND s.polled_at <= %(now)s
GROUP BY s.ispb
"""


def spend_last_hour(
    connection: Connection, ispbs: Sequence[str], now: dt.datetime
) -> dict[str, dict[str, int]]:
    """Per participant: the monitor's GetPolicy and ListPolicies calls of the last hour (each
    one token of POLICIES_READ or POLICIES_LIST), sweeps and watch lane together."""
    rows = connection.exec_driver_sql(
        _SPEND, {"ispbs": list(ispbs), "since": now - dt.timedelta(hours=1), "now": now}
    ).fetchall()
    return {
        row.ispb: {"get_policy": int(row.get_policy), "list_policies": int(row.list_policies)}
        for row in rows
    }
