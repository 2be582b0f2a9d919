"""Taking work from the pipeline's queues (``metric_backlog``, ``alert_backlog``).

A queue swings from empty to tens of thousands of rows within one tick, so its statistics are
always wrong: analysed while empty, the planner believed a few rows and joined the picked keys
back to the queue with a sequential scan per key (quadratic: 8,400 keys took 11 s, 28,000 keys
over two minutes). Deleting by the picked rows' physical addresses (``ctid = ANY(...)``, a TID
scan) costs the same whatever the statistics say.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

Key = tuple[str, str, dt.datetime]  # (ispb, policy, response_time)

#: The queues this module may take from (table names are not parameters in SQL).
QUEUES = frozenset({"metric_backlog", "alert_backlog"})


def shard_filter(column: str = "ispb") -> str:
    """The condition on ``column`` that selects a shard's rows: its participants
    (``%(ispbs)s``) and, when ``%(everyone)s`` (the whole list) is not NULL, every participant
    not in the list: one shard takes what a participant dropped from the list left behind, so
    nothing waits forever."""
    return (
        f"({column} = ANY(%(ispbs)s::char(8)[]) OR (%(everyone)s::char(8)[] IS NOT NULL"
        f" AND NOT {column} = ANY(%(everyone)s::char(8)[])))"
    )


def take_statement(queue: str, *, of_participants: bool = False) -> str:
    """The DELETE … RETURNING that takes up to ``%(limit)s`` keys from ``queue`` (only a
    shard's, :func:`shard_filter`, when ``of_participants``)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; expected one of {sorted(QUEUES)}")
    where = f" WHERE {shard_filter()}" if of_participants else ""
    return (
        f"DELETE FROM dict_ratelimit.{queue} WHERE ctid = ANY(ARRAY("
        f"  SELECT ctid FROM dict_ratelimit.{queue}{where}"
        "   ORDER BY response_time LIMIT %(limit)s FOR UPDATE SKIP LOCKED)) "
        "RETURNING ispb, policy, response_time"
    )


def take_keys(
    connection: Connection,
    queue: str,
    limit: int,
    ispbs: Sequence[str] | None = None,
    everyone: Sequence[str] | None = None,
) -> list[Key]:
    """Remove up to ``limit`` keys, oldest reading first, from ``queue`` in the caller's
    transaction (a failure puts them back); rows another transaction holds are skipped. With
    ``ispbs``, only those participants' keys (a shard's), and with ``everyone`` also those of
    participants not in it (one shard's duty). Returned sorted by key (identity, then time)."""
    # refuses an unknown queue before any SQL runs
    statement = take_statement(queue, of_participants=ispbs is not None)
    parameters: dict[str, Any] = {
        "limit": limit,
        "ispbs": list(ispbs or []),
        "everyone": None if everyone is None else list(everyone),
    }
    rows = connection.exec_driver_sql(statement, parameters).fetchall()
    return sorted((row[0], row[1], row[2]) for row in rows)


#: The CTE ``keys`` of a keyed read: the arrays of :func:`key_parameters` as rows
#: (ispb, policy, response_time, n), n being the key's position (1-based) in the list.
KEYS_CTE = """keys AS (
    SELECT * FROM unnest(%(ispbs)s::char(8)[], %(policies)s::text[], %(times)s::timestamptz[])
        WITH ORDINALITY AS k(ispb, policy, response_time, n)
)"""


def key_parameters(keys: Sequence[Key]) -> dict[str, Any]:
    """Parameters of a keyed read: the keys as three arrays (``unnest`` them) and, as constants
    the planner prunes partitions with, their oldest and newest time (``first``, ``last``) and
    a day before the oldest (``low``, for the previous reading)."""
    times = [key[2] for key in keys]
    first, last = (min(times), max(times)) if times else (None, None)
    return {
        "ispbs": [key[0] for key in keys],
        "policies": [key[1] for key in keys],
        "times": times,
        "first": first,
        "last": last,
        "low": first - dt.timedelta(days=1) if first is not None else None,
    }
