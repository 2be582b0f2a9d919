"""Writing readings: participant and policy upserts plus append-only snapshots."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from dict_ratelimit.domain.readings import BucketShape, PolicyReading
from dict_ratelimit.storage.bulk import ensure_month_partitions, stage_rows

SNAPSHOT_COLUMNS = (
    "ispb",
    "policy",
    "response_time",
    "polled_at",
    "category",
    "available_tokens",
    "capacity",
    "refill_tokens",
    "refill_period_sec",
    "correlation_id",
    "source",
)
_COLUMNS = ", ".join(SNAPSHOT_COLUMNS)

_UPSERT_PARTICIPANTS = """
    INSERT INTO dict_ratelimit.participant AS p (ispb, category, category_changed_at,
                                                 last_reading_at, last_received_at,
                                                 last_listing_at)
    SELECT DISTINCT ON (ispb) ispb, category, response_time, response_time, polled_at,
           max(response_time) FILTER (WHERE source = 'list') OVER (PARTITION BY ispb)
    FROM policy_snapshot_staging ORDER BY ispb, response_time DESC
    ON CONFLICT (ispb) DO UPDATE SET
        -- a late reading (older than what is stored) changes neither category nor freshness
        category = CASE WHEN EXCLUDED.last_reading_at >= coalesce(p.last_reading_at, '-infinity')
                        THEN EXCLUDED.category ELSE p.category END,
        -- DICT's time of the first reading with the new category
        category_changed_at = CASE
            WHEN EXCLUDED.last_reading_at >= coalesce(p.last_reading_at, '-infinity')
             AND p.category IS DISTINCT FROM EXCLUDED.category
            THEN EXCLUDED.category_changed_at ELSE p.category_changed_at END,
        last_reading_at = greatest(p.last_reading_at, EXCLUDED.last_reading_at),
        last_received_at = greatest(p.last_received_at, EXCLUDED.last_received_at),
        last_listing_at = greatest(p.last_listing_at, EXCLUDED.last_listing_at),
        last_seen_at = now()
"""

_UPSERT_POLICIES = """
    INSERT INTO dict_ratelimit.policy AS p (ispb, policy, capacity, refill_tokens,
                                            refill_period_sec)
    SELECT DISTINCT ON (ispb, policy) ispb, policy, capacity, refill_tokens, refill_period_sec
    FROM policy_snapshot_staging ORDER BY ispb, policy, response_time DESC
    ON CONFLICT (ispb, policy) DO UPDATE SET
        capacity = EXCLUDED.capacity,
        refill_tokens = EXCLUDED.refill_tokens,
        refill_period_sec = EXCLUDED.refill_period_sec,
        last_seen_at = now()
    -- rewriting thousands of unchanged rows every tick would double its write cost: update a
    -- changed shape at once, and last_seen_at at most hourly
    WHERE (p.capacity, p.refill_tokens, p.refill_period_sec)
          IS DISTINCT FROM (EXCLUDED.capacity, EXCLUDED.refill_tokens, EXCLUDED.refill_period_sec)
       OR p.last_seen_at < now() - interval '1 hour'
"""

# Store the new snapshots and queue them for the metrics step, with the next reading of their
# policy when one already exists (a late or retried reading changes its successor's "previous
# reading"). The successor probe sees the table as it was before this statement: it finds
# readings stored by earlier sweeps only, and is bounded so that it touches two months at most.
_INSERT_SNAPSHOTS = f"""
WITH inserted AS (
    INSERT INTO dict_ratelimit.policy_snapshot ({_COLUMNS})
    SELECT {_COLUMNS} FROM policy_snapshot_staging
    ON CONFLICT (ispb, policy, response_time) DO NOTHING
    RETURNING ispb, policy, response_time
), successors AS (
    SELECT nxt.ispb, nxt.policy, nxt.response_time
    FROM inserted AS i
    CROSS JOIN LATERAL (
        SELECT x.ispb, x.policy, x.response_time
        FROM dict_ratelimit.policy_snapshot AS x
        WHERE x.ispb = i.ispb AND x.policy = i.policy
          AND x.response_time > i.response_time
          AND x.response_time < i.response_time + interval '1 day'
          AND x.response_time > %(low)s AND x.response_time < %(high)s
        ORDER BY x.response_time LIMIT 1
    ) AS nxt
), queued AS (
    INSERT INTO dict_ratelimit.metric_backlog (ispb, policy, response_time)
    SELECT ispb, policy, response_time FROM inserted
    UNION
    SELECT ispb, policy, response_time FROM successors
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM successors),
       (SELECT count(*) FROM queued)
"""


@dataclass(frozen=True)
class StoredReadings:
    """What :func:`store_readings` wrote."""

    inserted: int = 0  # new snapshots (a re-stored reading is not new)
    late_successors: int = 0  # existing readings queued again because an older one arrived
    queued: int = 0  # metric backlog rows added


def store_readings(connection: Connection, readings: Sequence[PolicyReading]) -> StoredReadings:
    """Upsert participants and policies, append snapshots, queue them for the metrics step.

    Runs in the caller's transaction, so one sweep is stored whole or not at all. Re-storing
    the same readings stores and queues nothing. The batch is COPied into a staging table and
    spread with three INSERT ... SELECT statements (participants, policies, snapshots).
    """
    if not readings:
        return StoredReadings()
    # A month whose partition is missing (retention job not run for a while) gets one now,
    # so a reading is never refused for its date.
    ensure_month_partitions(connection, "policy_snapshot", (r.response_time for r in readings))
    stage_rows(
        connection,
        "policy_snapshot",
        SNAPSHOT_COLUMNS,
        [[getattr(r, column) for column in SNAPSHOT_COLUMNS] for r in readings],
    )
    # exec_driver_sql: database errors surface as SQLAlchemy exceptions (IntegrityError...)
    connection.exec_driver_sql(_UPSERT_PARTICIPANTS)
    connection.exec_driver_sql(_UPSERT_POLICIES)
    times = [r.response_time for r in readings]
    inserted, successors, queued = connection.exec_driver_sql(
        _INSERT_SNAPSHOTS,
        {"low": min(times), "high": max(times) + dt.timedelta(days=1)},
    ).one()
    return StoredReadings(inserted=inserted, late_successors=successors, queued=queued)


@dataclass(frozen=True)
class PreviousReadings:
    """What the last readings said, for comparison with a new sweep."""

    shapes: dict[tuple[str, str], BucketShape]  # latest reading of every known policy
    last_sweep: dict[tuple[str, str], BucketShape]  # only the participant's newest reading


_PREVIOUS_READINGS = """
SELECT p.ispb, p.policy, s.response_time, s.capacity, s.refill_tokens, s.refill_period_sec,
       (s.response_time = pa.last_listing_at) AS in_last_listing
FROM dict_ratelimit.policy AS p
JOIN dict_ratelimit.participant AS pa ON pa.ispb = p.ispb
CROSS JOIN LATERAL (
    SELECT x.response_time, x.capacity, x.refill_tokens, x.refill_period_sec
    FROM dict_ratelimit.policy_snapshot AS x
    WHERE x.ispb = p.ispb AND x.policy = p.policy
      AND x.response_time <= pa.last_reading_at
      AND x.response_time >= pa.last_reading_at - interval '1 day'
      -- the same bounds as constants: pruned when planned, not only while running
      AND x.response_time >= %(low)s AND x.response_time <= %(high)s
    ORDER BY x.response_time DESC LIMIT 1
) AS s
WHERE p.ispb = ANY(%(ispbs)s)
"""


def reading_bounds(
    connection: Connection, ispbs: Sequence[str] | None = None
) -> tuple[dt.datetime, dt.datetime] | None:
    """(a day before the oldest, the newest) of the participants' newest readings: constant
    bounds within which every policy's newest reading lies. None when none was read yet."""
    where = "WHERE ispb = ANY(%(ispbs)s)" if ispbs is not None else ""
    low, high = connection.exec_driver_sql(
        "SELECT min(last_reading_at), max(last_reading_at) "
        f"FROM dict_ratelimit.participant {where}",
        {"ispbs": list(ispbs or ())},
    ).one()
    if low is None:
        return None
    return low - dt.timedelta(days=1), high


def previous_readings(connection: Connection, ispbs: Sequence[str]) -> PreviousReadings:
    """Latest shape per (ispb, policy) of these participants, and which policies their newest
    full listing had: one probe per policy in the day before the participant's newest reading."""
    bounds = reading_bounds(connection, ispbs)
    if bounds is None:
        return PreviousReadings(shapes={}, last_sweep={})
    rows = connection.exec_driver_sql(
        _PREVIOUS_READINGS, {"ispbs": list(ispbs), "low": bounds[0], "high": bounds[1]}
    ).fetchall()
    shapes = {
        (row.ispb, row.policy): BucketShape(row.capacity, row.refill_tokens, row.refill_period_sec)
        for row in rows
    }
    last_sweep = {
        key: shapes[key] for key, row in zip(shapes, rows, strict=True) if row.in_last_listing
    }
    return PreviousReadings(shapes=shapes, last_sweep=last_sweep)
