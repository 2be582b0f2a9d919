"""Writing readings: participant and policy upserts plus append-only snapshots."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from dict_ratelimit.domain.readings import BucketShape, PolicyReading
from dict_ratelimit.domain.retention import month_start
from dict_ratelimit.storage.partitions import create_partition
from dict_ratelimit.storage.tables import policy_snapshot

_UPSERT_PARTICIPANT = sa.text(
    """
    INSERT INTO dict_ratelimit.participant AS p (ispb, category, first_seen_at, last_seen_at)
    VALUES (:ispb, :category, now(), now())
    ON CONFLICT (ispb) DO UPDATE SET
        category = EXCLUDED.category,
        category_changed_at = CASE
            WHEN p.category IS DISTINCT FROM EXCLUDED.category AND p.category IS NOT NULL
            THEN :response_time ELSE p.category_changed_at END,
        last_seen_at = now()
    """
)

_UPSERT_POLICY = sa.text(
    """
    INSERT INTO dict_ratelimit.policy AS p
        (ispb, policy, capacity, refill_tokens, refill_period_sec, first_seen_at, last_seen_at)
    VALUES (:ispb, :policy, :capacity, :refill_tokens, :refill_period_sec, now(), now())
    ON CONFLICT (ispb, policy) DO UPDATE SET
        capacity = EXCLUDED.capacity,
        refill_tokens = EXCLUDED.refill_tokens,
        refill_period_sec = EXCLUDED.refill_period_sec,
        last_seen_at = now()
    """
)

_INSERT_SNAPSHOTS = (
    pg_insert(policy_snapshot)
    .on_conflict_do_nothing(index_elements=["ispb", "policy", "response_time"])
    .returning(policy_snapshot.c.ispb)
)
_SNAPSHOT_COLUMNS = [column.name for column in policy_snapshot.columns]


def store_readings(connection: Connection, readings: Sequence[PolicyReading]) -> int:
    """Upsert participants and policies, append snapshots; returns snapshots newly stored.

    Runs in the caller's transaction, so one participant's reading is stored whole or not at
    all. Re-storing the same readings stores nothing new.
    """
    if not readings:
        return 0
    # A month whose partition is missing (retention job not run for a while) gets one now,
    # so a reading is never refused for its date.
    for month in sorted(
        {month_start(r.response_time.astimezone(dt.timezone.utc).date()) for r in readings}
    ):
        create_partition(connection, "policy_snapshot", month)
    latest_per_participant = {r.ispb: r for r in sorted(readings, key=_by_time)}
    for reading in latest_per_participant.values():
        connection.execute(
            _UPSERT_PARTICIPANT,
            {
                "ispb": reading.ispb,
                "category": reading.category,
                "response_time": reading.response_time,
            },
        )
    latest_per_policy = {(r.ispb, r.policy): r for r in sorted(readings, key=_by_time)}
    connection.execute(_UPSERT_POLICY, [asdict(r) for r in latest_per_policy.values()])
    rows = [{column: getattr(r, column) for column in _SNAPSHOT_COLUMNS} for r in readings]
    # SQLAlchemy batches this executemany into multi-row INSERTs (insertmanyvalues) instead
    # of a round trip per row; RETURNING yields only the rows that were new.
    return len(connection.execute(_INSERT_SNAPSHOTS, rows).all())


def _by_time(reading: PolicyReading):  # type: ignore[no-untyped-def]
    return reading.response_time


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
