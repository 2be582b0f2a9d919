"""``monitor_tick``: one row per sweep (durations, answered/failed, Bridge errors by class)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dict_ratelimit.storage.bulk import ensure_month_partitions

_RECORD = """
WITH inserted AS (
    INSERT INTO dict_ratelimit.monitor_tick (polled_at, shard, participants, answered, failed,
                                             readings, bridge_errors, bridge_seconds,
                                             duration_seconds)
    VALUES (:polled_at, :shard, :participants, :answered, :failed, :readings,
            CAST(:errors AS jsonb), :bridge_seconds, :duration_seconds)
    ON CONFLICT (polled_at, shard) DO NOTHING
    RETURNING failed, bridge_errors
), increments AS (
    SELECT 'sweeps' AS counter, 1::bigint AS value FROM inserted
    UNION ALL
    SELECT 'participants_failed', failed FROM inserted
    UNION ALL
    SELECT 'bridge_error:' || e.key, e.value::bigint
    FROM inserted, jsonb_each_text(inserted.bridge_errors) AS e
)
INSERT INTO dict_ratelimit.monitor_counter AS c (counter, value)
SELECT counter, value FROM increments
ON CONFLICT (counter) DO UPDATE SET value = c.value + EXCLUDED.value
"""


def record_tick(
    connection: Connection,
    *,
    polled_at: dt.datetime,
    participants: int,
    answered: int,
    failed: int,
    readings: int,
    bridge_errors: Mapping[str, int],
    bridge_seconds: float,
    duration_seconds: float,
    shard: str = "all",
) -> None:
    """Store one sweep of ``shard`` (``all``, or ``INDEX/COUNT``) and add it to the running
    counters (caller's transaction); the same ``polled_at`` of the same shard twice is kept,
    and counted, once."""
    ensure_month_partitions(connection, "monitor_tick", [polled_at])
    connection.execute(
        sa.text(_RECORD),
        {
            "polled_at": polled_at,
            "shard": shard,
            "participants": participants,
            "answered": answered,
            "failed": failed,
            "readings": readings,
            "errors": json.dumps(dict(bridge_errors)),
            "bridge_seconds": bridge_seconds,
            "duration_seconds": duration_seconds,
        },
    )
