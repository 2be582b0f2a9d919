"""Monthly range partitions of every partitioned table in the ``dict_ratelimit`` schema.

Partitioned tables are discovered from the catalog (``relkind = 'p'``), so a table added by a
later migration is maintained without touching this module. A partition of month M of table T
is named ``T_yYYYYmMM`` and holds ``[M-01 00:00 UTC, next month 00:00 UTC)``. Names and bounds
are built from ``datetime.date`` values only, never from text given by a user; partitions whose
names do not follow the pattern are reported as unmanaged and left alone.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dict_ratelimit.domain.retention import RetentionPolicy, add_months, month_start
from dict_ratelimit.storage.database import SCHEMA

_NAME = re.compile(r"^(?P<parent>[a-z_][a-z0-9_]*)_y(?P<year>\d{4})m(?P<month>\d{2})$")
LOCK_TIMEOUT = "10s"
#: A concurrent detach waits for the transactions that still see the partition; one that is
#: cancelled by this timeout leaves the detach pending, and the next run finalizes it.
DETACH_TIMEOUT = "5min"


@dataclass(frozen=True)
class Partition:
    """One monthly partition of a parent table."""

    parent: str
    month: dt.date

    @property
    def name(self) -> str:
        return partition_name(self.parent, self.month)


@dataclass
class PartitionChanges:
    """What a maintenance pass did, as qualified partition names (for run metadata)."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)
    #: per dropped partition: seconds its parent was locked (the DETACH) and the DROP took
    parent_lock_seconds: dict[str, float] = field(default_factory=dict)
    drop_seconds: dict[str, float] = field(default_factory=dict)


def partition_name(parent: str, month: dt.date) -> str:
    """``parent_yYYYYmMM``; refuses anything but a first-of-month date and a plain table name."""
    if type(month) is not dt.date:  # datetime is a date subclass: refuse it too
        raise TypeError(f"month must be a datetime.date, got {type(month).__name__}")
    if month != month_start(month):
        raise ValueError(f"{month} is not the first day of a month")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", parent):
        raise ValueError(f"invalid table name {parent!r}")
    return f"{parent}_y{month.year:04d}m{month.month:02d}"


def partitioned_tables(connection: Connection) -> list[str]:
    """Names of the partitioned (parent) tables in the schema, sorted."""
    rows = connection.execute(
        sa.text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relkind = 'p' ORDER BY c.relname"
        ),
        {"schema": SCHEMA},
    )
    return [row[0] for row in rows]


def existing_partitions(connection: Connection, parent: str) -> tuple[list[Partition], list[str]]:
    """(managed monthly partitions sorted by month, names of unmanaged partitions)."""
    managed, unmanaged, _pending = _children(connection, parent)
    return managed, unmanaged


def _children(connection: Connection, parent: str) -> tuple[list[Partition], list[str], set[str]]:
    """Managed partitions, unmanaged names, and the names whose detach is still pending (a
    ``DETACH … CONCURRENTLY`` that was interrupted)."""
    rows = connection.execute(
        sa.text(
            "SELECT child.relname, i.inhdetachpending FROM pg_inherits i "
            "JOIN pg_class child ON child.oid = i.inhrelid "
            "JOIN pg_class parent ON parent.oid = i.inhparent "
            "JOIN pg_namespace n ON n.oid = parent.relnamespace "
            "WHERE n.nspname = :schema AND parent.relname = :parent"
        ),
        {"schema": SCHEMA, "parent": parent},
    )
    managed: list[Partition] = []
    unmanaged: list[str] = []
    pending: set[str] = set()
    for name, detach_pending in rows:
        match = _NAME.match(name)
        if detach_pending:
            pending.add(name)
        if match and match["parent"] == parent and 1 <= int(match["month"]) <= 12:
            managed.append(Partition(parent, dt.date(int(match["year"]), int(match["month"]), 1)))
        else:
            unmanaged.append(name)
    return sorted(managed, key=lambda p: p.month), sorted(unmanaged), pending


def _qualified(connection: Connection, name: str) -> str:
    quote = connection.dialect.identifier_preparer.quote
    return f"{quote(SCHEMA)}.{quote(name)}"


def _bound(month: dt.date) -> str:
    text = f"{month.isoformat()} 00:00:00+00"
    if not re.fullmatch(r"\d{4}-\d{2}-01 00:00:00\+00", text):  # belt and braces
        raise ValueError(f"unexpected partition bound {text!r}")
    return text


def _exists(connection: Connection, name: str) -> bool:
    # a query of pg_class sees what committed before this statement; to_regclass would answer
    # from the backend's catalog caches, stale until it next locks a relation
    return bool(
        connection.execute(
            sa.text(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_class AS c "
                "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relname = :name)"
            ),
            {"schema": SCHEMA, "name": name},
        ).scalar()
    )


def create_partition(connection: Connection, parent: str, month: dt.date) -> bool:
    """Create the partition of ``parent`` for ``month`` unless it exists; True when created."""
    name = partition_name(parent, month)
    if _exists(connection, name):
        return False
    # Shards storing at the same moment into a month without its partition: one creates it,
    # the others wait for its commit here and then find it. (Only when it is missing: a lock
    # held to the end of every store would put the shards' stores in a queue.)
    connection.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": f"{SCHEMA}.{name}"}
    )
    if _exists(connection, name):
        return False
    connection.execute(
        sa.text(
            f"CREATE TABLE {_qualified(connection, name)} "
            f"PARTITION OF {_qualified(connection, parent)} "
            f"FOR VALUES FROM ('{_bound(month)}') TO ('{_bound(add_months(month, 1))}')"
        )
    )
    return True


def ensure_partitions(engine: Engine, policy: RetentionPolicy, today: dt.date) -> PartitionChanges:
    """Create the current and the next ``months_ahead`` monthly partitions of every parent."""
    changes = PartitionChanges()
    with engine.begin() as connection:
        connection.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        for parent in partitioned_tables(connection):
            for month in policy.months_to_prepare(today):
                if create_partition(connection, parent, month):
                    changes.created.append(f"{SCHEMA}.{partition_name(parent, month)}")
    return changes


def apply_retention(engine: Engine, policy: RetentionPolicy, today: dt.date) -> PartitionChanges:
    """Create upcoming partitions and drop the expired ones of every partitioned table.

    Idempotent: a second pass on the same day creates and drops nothing. Only whole partitions
    are dropped; the current and future months are never touched. Each expired partition is
    first detached with ``DETACH PARTITION … CONCURRENTLY`` (the parent keeps serving reads
    and writes: only a SHARE UPDATE EXCLUSIVE lock), then dropped in a transaction of its own,
    so unlinking gigabytes of files never holds a lock on the parent. A detach left pending
    by an interrupted run is finished first (``FINALIZE``).
    """
    changes = ensure_partitions(engine, policy, today)
    expired: list[tuple[str, str, bool]] = []  # (parent, partition, detach pending)
    with engine.begin() as connection:
        for parent in partitioned_tables(connection):
            managed, unmanaged, pending = _children(connection, parent)
            changes.unmanaged.extend(
                f"{SCHEMA}.{name}" for name in unmanaged if name not in pending
            )
            for partition in managed:
                qualified_name = f"{SCHEMA}.{partition.name}"
                if policy.is_expired(partition.month, today):
                    expired.append((parent, partition.name, partition.name in pending))
                else:
                    changes.kept.append(qualified_name)
    if not expired:
        return changes
    with engine.connect() as raw:
        connection = raw.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(sa.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        connection.execute(sa.text(f"SET statement_timeout = '{DETACH_TIMEOUT}'"))
        for parent, name, detach_pending in expired:
            mode = "FINALIZE" if detach_pending else "CONCURRENTLY"
            started = time.perf_counter()
            connection.execute(
                sa.text(
                    f"ALTER TABLE {_qualified(connection, parent)} "
                    f"DETACH PARTITION {_qualified(connection, name)} {mode}"
                )
            )
            detached = time.perf_counter()
            connection.execute(sa.text(f"DROP TABLE {_qualified(connection, name)}"))
            qualified_name = f"{SCHEMA}.{name}"
            changes.parent_lock_seconds[qualified_name] = detached - started
            changes.drop_seconds[qualified_name] = time.perf_counter() - detached
            changes.dropped.append(qualified_name)
        connection.execute(sa.text("RESET statement_timeout"))
        connection.execute(sa.text("RESET lock_timeout"))
    return changes
