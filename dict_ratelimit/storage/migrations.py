"""Schema migrations: the plain SQL files in ``sql/``, applied by yoyo-migrations.

yoyo keeps its bookkeeping tables (``_yoyo_migration``, ``_yoyo_log``, ``yoyo_lock``...) in the
database's default schema and takes a lock, so two processes migrating at once are safe. After
the files are applied, the monthly partitions from the current month onwards are created, so an
insert never fails at a month boundary even before the retention job has run once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL, Engine
from yoyo import get_backend, read_migrations

from dict_ratelimit.clock import SystemClock
from dict_ratelimit.domain.retention import RetentionPolicy
from dict_ratelimit.storage.database import normalize_url
from dict_ratelimit.storage.partitions import PartitionChanges, ensure_partitions


@dataclass(frozen=True)
class MigrationStatus:
    """Which migration files are applied and which are pending, in order."""

    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


def _yoyo_url(url: str | URL) -> str:
    # yoyo names the psycopg2 backend plain "postgresql"; the password stays in the string
    # (never logged) because yoyo needs it to connect.
    return normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _migrations(migrations_dir: Path):  # type: ignore[no-untyped-def]
    if not migrations_dir.is_dir():
        raise FileNotFoundError(f"migrations folder not found: {migrations_dir}")
    return read_migrations(str(migrations_dir))


def migration_status(url: str | URL, migrations_dir: Path) -> MigrationStatus:
    """Applied and pending migrations of the database at ``url``."""
    backend = get_backend(_yoyo_url(url))
    try:
        migrations = _migrations(migrations_dir)
        pending = {m.id for m in backend.to_apply(migrations)}
        return MigrationStatus(
            applied=[m.id for m in migrations if m.id not in pending],
            pending=[m.id for m in migrations if m.id in pending],
        )
    finally:
        backend.connection.close()


def migrate(
    url: str | URL,
    migrations_dir: Path,
    engine: Engine,
    *,
    policy: RetentionPolicy | None = None,
    today: dt.date | None = None,
) -> tuple[list[str], PartitionChanges]:
    """Apply pending migrations, then make sure this month's and the next months' partitions exist.

    Returns the ids of the migrations applied now (empty on a second run) and the partitions
    created.
    """
    backend = get_backend(_yoyo_url(url))
    try:
        migrations = _migrations(migrations_dir)
        with backend.lock():
            to_apply = backend.to_apply(migrations)
            backend.apply_migrations(to_apply)
    finally:
        backend.connection.close()
    today = today or SystemClock().now().date()
    changes = ensure_partitions(engine, policy or RetentionPolicy(), today)
    return [m.id for m in to_apply], changes
