"""Writing readings: participant and policy upserts plus append-only snapshots."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
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
)
_COLUMNS = ", ".join(SNAPSHOT_COLUMNS)

_UPSERT_PARTICIPANTS = """
    INSERT INTO dict_ratelimit.participant AS p (ispb, category, category_changed_at)
    SELECT DISTINCT ON (ispb) ispb, category, response_time
    FROM policy_snapshot_staging ORDER BY ispb, response_time DESC
    ON CONFLICT (ispb) DO UPDATE SET
        category = EXCLUDED.category,
        -- DICT's time of the first reading with the new category
        category_changed_at = CASE WHEN p.category IS DISTINCT FROM EXCLUDED.category
                                   THEN EXCLUDED.category_changed_at
                                   ELSE p.category_changed_at END,
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

_INSERT_SNAPSHOTS = f"""
    INSERT INTO dict_ratelimit.policy_snapshot ({_COLUMNS})
    SELECT {_COLUMNS} FROM policy_snapshot_staging
    ON CONFLICT (ispb, policy, response_time) DO NOTHING
"""


def store_readings(connection: Connection, readings: Sequence[PolicyReading]) -> int:
    """Upsert participants and policies, append snapshots; returns snapshots newly stored.

    Runs in the caller's transaction, so one sweep is stored whole or not at all. Re-storing
    the same readings stores nothing new. The batch is COPied into a staging table and spread
    with three INSERT ... SELECT statements (participants, policies, snapshots).
    """
    if not readings:
        return 0
    # A month whose partition is missing (retention job not run for a while) gets one now,
    # so a reading is never refused for its date.
    ensure_month_partitions(connection, "policy_snapshot", (r.response_time for r in readings))
    stage_rows(
        connection,
        "policy_snapshot",
        SNAPSHOT_COLUMNS,
        ((getattr(r, column) for column in SNAPSHOT_COLUMNS) for r in readings),
    )
    # exec_driver_sql: database errors surface as SQLAlchemy exceptions (IntegrityError...)
    connection.exec_driver_sql(_UPSERT_PARTICIPANTS)
    connection.exec_driver_sql(_UPSERT_POLICIES)
    inserted = connection.exec_driver_sql(_INSERT_SNAPSHOTS).rowcount
    return max(inserted, 0)


@dataclass(frozen=True)
class PreviousReadings:
    """What the last readings said, for comparison with a new sweep."""

    shapes: dict[tuple[str, str], BucketShape]  # latest reading of every known policy
    last_sweep: dict[tuple[str, str], BucketShape]  # only the participant's newest reading


def previous_readings(connection: Connection, ispbs: Sequence[str]) -> PreviousReadings:
    """Latest reading per (ispb, policy) of these participants, through the indexed view."""
    rows = connection.execute(
        sa.text(
            "SELECT ispb, policy, response_time, capacity, refill_tokens, refill_period_sec "
            "FROM dict_ratelimit.latest_policy_state WHERE ispb = ANY(:ispbs)"
        ),
        {"ispbs": list(ispbs)},
    ).all()
    newest: dict[str, dt.datetime] = {}
    for row in rows:
        newest[row.ispb] = max(newest.get(row.ispb, row.response_time), row.response_time)
    shapes = {
        (row.ispb, row.policy): BucketShape(row.capacity, row.refill_tokens, row.refill_period_sec)
        for row in rows
    }
    last_sweep = {
        (row.ispb, row.policy): shapes[(row.ispb, row.policy)]
        for row in rows
        if row.response_time == newest[row.ispb]
    }
    return PreviousReadings(shapes=shapes, last_sweep=last_sweep)
