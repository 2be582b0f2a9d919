"""The alert-event outbox: what is still to publish, and marking what the broker took."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class OutboxRow:
    id: int  # also the Pulsar sequence_id
    event_id: str
    type: str
    ispb: str
    policy: str
    severity: str | None
    occurred_at: dt.datetime
    created_at: dt.datetime
    payload: str  # the CloudEvents JSON document
    published_at: dt.datetime | None = None


_COLUMNS = (
    "id, event_id, type, ispb, policy, severity, occurred_at, created_at, payload::text, "
    "published_at"
)


def unpublished(connection: Connection, limit: int) -> list[OutboxRow]:
    """The oldest unpublished rows, in id (= commit) order."""
    rows = connection.exec_driver_sql(
        f"SELECT {_COLUMNS} FROM dict_ratelimit.alert_event WHERE published_at IS NULL "
        "ORDER BY id LIMIT %(limit)s",
        {"limit": limit},
    ).fetchall()
    return [OutboxRow(*row) for row in rows]


def events_after(
    connection: Connection, after_id: int, limit: int, *, published_only: bool = True
) -> list[OutboxRow]:
    where = "id > %(after)s" + (" AND published_at IS NOT NULL" if published_only else "")
    rows = connection.exec_driver_sql(
        f"SELECT {_COLUMNS} FROM dict_ratelimit.alert_event WHERE {where} "
        "ORDER BY id LIMIT %(limit)s",
        {"after": after_id, "limit": limit},
    ).fetchall()
    return [OutboxRow(*row) for row in rows]


def latest_events(
    connection: Connection, limit: int, *, published_only: bool = True
) -> list[OutboxRow]:
    """The newest ``limit`` rows, oldest first."""
    where = "WHERE published_at IS NOT NULL" if published_only else ""
    rows = connection.exec_driver_sql(
        f"SELECT {_COLUMNS} FROM dict_ratelimit.alert_event {where} "
        "ORDER BY id DESC LIMIT %(limit)s",
        {"limit": limit},
    ).fetchall()
    return [OutboxRow(*row) for row in reversed(rows)]


def backlog(connection: Connection) -> int:
    return connection.execute(
        sa.text("SELECT count(*) FROM dict_ratelimit.alert_event WHERE published_at IS NULL")
    ).scalar_one()


def mark_published(connection: Connection, receipts: Sequence[tuple[int, dt.datetime]]) -> None:
    """Set ``published_at`` to each row's broker receipt time."""
    if receipts:
        connection.execute(
            sa.text(
                "UPDATE dict_ratelimit.alert_event SET published_at = :at, "
                "attempts = attempts + 1, last_error = NULL WHERE id = :id"
            ),
            [{"id": row_id, "at": at} for row_id, at in receipts],
        )


def record_failure(connection: Connection, row_id: int, error: str) -> None:
    connection.execute(
        sa.text(
            "UPDATE dict_ratelimit.alert_event SET attempts = attempts + 1, last_error = :error "
            "WHERE id = :id"
        ),
        {"id": row_id, "error": error[:2000]},
    )


def purge_published(connection: Connection, older_than: dt.datetime) -> int:
    """Delete rows published before ``older_than`` (never an unpublished one)."""
    result = connection.execute(
        sa.text(
            "DELETE FROM dict_ratelimit.alert_event "
            "WHERE published_at IS NOT NULL AND published_at < :before"
        ),
        {"before": older_than},
    )
    return result.rowcount or 0
