"""Migrations from zero, a no-op second run, status; the CLI around them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import URL

from dict_ratelimit.cli import main
from dict_ratelimit.domain.retention import RetentionPolicy
from dict_ratelimit.settings import get_settings
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit.storage.migrations import migrate, migration_status


def _tables(url: URL) -> set[str]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'dict_ratelimit' AND c.relkind IN ('r', 'p', 'v')"
                )
            )
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def test_migrate_from_zero_then_second_run_is_a_no_op(
    empty_db_url: URL, migrations_dir: Path
) -> None:
    all_ids = sorted(
        p.name.removesuffix(".sql")
        for p in migrations_dir.glob("*.sql")
        if not p.name.endswith(".rollback.sql")
    )
    before = migration_status(empty_db_url, migrations_dir)
    assert before.applied == [] and before.pending == all_ids

    engine = create_db_engine(empty_db_url)
    try:
        applied, changes = migrate(
            empty_db_url,
            migrations_dir,
            engine,
            today=dt.date(2026, 11, 29),
            policy=RetentionPolicy(months_ahead=2),
        )
        assert applied == all_ids
        assert [name for name in changes.created if ".policy_snapshot_" in name] == [
            "dict_ratelimit.policy_snapshot_y2026m11",
            "dict_ratelimit.policy_snapshot_y2026m12",
            "dict_ratelimit.policy_snapshot_y2027m01",
        ]
        # six partitioned tables (snapshots, request stats and their windows, metrics,
        # evaluations, monitor ticks), three months each
        assert len(changes.created) == 6 * 3
        tables = _tables(empty_db_url)
        assert {
            "participant",
            "policy",
            "policy_snapshot",
            "latest_policy_state",
            "policy_metric",
            "threshold_evaluation",
            "policy_request_stats",
            "latest_policy_health",
        } <= tables

        applied_again, changes_again = migrate(
            empty_db_url, migrations_dir, engine, today=dt.date(2026, 11, 29)
        )
        assert applied_again == [] and changes_again.created == []
        assert _tables(empty_db_url) == tables
    finally:
        engine.dispose()
    after = migration_status(empty_db_url, migrations_dir)
    assert after.applied == all_ids and after.pending == []


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, empty_db_url: URL) -> URL:
    monkeypatch.setenv("DATABASE_URL", empty_db_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    yield empty_db_url
    get_settings.cache_clear()


def test_cli_status_tells_pending_then_applied(cli_env: URL) -> None:
    runner = CliRunner()
    pending = runner.invoke(main, ["db", "status"])
    assert pending.exit_code == 1, pending.output
    assert "pending  0001.schema-participants-policies-snapshots" in pending.output
    assert "pending  0002.metrics-evaluations-request-stats" in pending.output

    migrated = runner.invoke(main, ["db", "migrate"])
    assert migrated.exit_code == 0, migrated.output
    assert "applied  0001.schema-participants-policies-snapshots" in migrated.output
    assert "created  partition dict_ratelimit.policy_snapshot_y" in migrated.output

    again = runner.invoke(main, ["db", "migrate"])
    assert again.exit_code == 0 and "no pending migrations" in again.output

    status = runner.invoke(main, ["db", "status"])
    assert status.exit_code == 0, status.output
    assert "applied  0001.schema-participants-policies-snapshots" in status.output
    assert "pending" not in status.output
