"""Monthly partitions on a real PostgreSQL: boundaries, retention, idempotence."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dict_ratelimit.domain.retention import RetentionPolicy, add_months
from dict_ratelimit.storage.partitions import (
    apply_retention,
    create_partition,
    existing_partitions,
    partition_name,
)
from dict_ratelimit.storage.snapshots import store_readings
from dict_ratelimit_tests.helpers import reading, utc
from dict_ratelimit_tests.timebase import base_time

pytestmark = [pytest.mark.db, pytest.mark.timebased]


def _months(engine: Engine, parent: str = "policy_snapshot") -> list[dt.date]:
    with engine.connect() as connection:
        managed, _ = existing_partitions(connection, parent)
    return [p.month for p in managed]


def _prepare_history(engine: Engine, first: dt.date, last: dt.date) -> list[dt.date]:
    """Partitions for every month first..last, each with one reading on its 15th."""
    months = []
    month = first
    with engine.begin() as connection:
        while month <= last:
            create_partition(connection, "policy_snapshot", month)
            months.append(month)
            month = add_months(month, 1)
        store_readings(
            connection,
            [reading(utc(m.year, m.month, 15, 12)) for m in months],
        )
    return months


def test_readings_on_both_sides_of_a_month_boundary_land_in_their_months(engine: Engine) -> None:
    today = base_time()
    next_month = add_months(dt.date(today.year, today.month, 1), 1)
    boundary = utc(next_month.year, next_month.month, 1)
    with engine.begin() as connection:
        stored = store_readings(
            connection,
            [
                reading(boundary - dt.timedelta(microseconds=1)),
                reading(boundary),
                reading(boundary + dt.timedelta(seconds=1)),
            ],
        )
    assert stored.inserted == 3
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT 'dict_ratelimit.' || c.relname, count(*) "
                "FROM dict_ratelimit.policy_snapshot s JOIN pg_class c ON c.oid = s.tableoid "
                "GROUP BY 1 ORDER BY 1"
            )
        ).all()
    before = add_months(next_month, -1)
    assert rows == [
        (f"dict_ratelimit.{partition_name('policy_snapshot', before)}", 1),
        (f"dict_ratelimit.{partition_name('policy_snapshot', next_month)}", 2),
    ]


def test_a_reading_in_a_month_without_partition_gets_one(engine: Engine) -> None:
    """Even if the retention job has not run for months, a reading is never refused."""
    assert dt.date(2031, 4, 1) not in _months(engine)
    with engine.begin() as connection:
        assert store_readings(connection, [reading(utc(2031, 4, 30, 23, 59))]).inserted == 1
    assert dt.date(2031, 4, 1) in _months(engine)


def test_the_table_itself_refuses_rows_outside_its_partitions(engine: Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError, match="no partition of relation"):
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO dict_ratelimit.policy_snapshot (ispb, policy, response_time, "
                    "polled_at, category, available_tokens, capacity, refill_tokens, "
                    "refill_period_sec) "
                    "VALUES ('12345678', 'X', '2001-01-01', now(), 'A', 1, 1, 1, 1)"
                )
            )


@pytest.mark.parametrize(
    ("today", "first_kept"),
    [
        (dt.date(2026, 11, 1), dt.date(2025, 10, 1)),
        (dt.date(2026, 11, 16), dt.date(2025, 10, 1)),
        (dt.date(2026, 11, 30), dt.date(2025, 10, 1)),
        (dt.date(2027, 1, 1), dt.date(2025, 12, 1)),
        (dt.date(2027, 1, 31), dt.date(2025, 12, 1)),
    ],
)
def test_retention_keeps_exactly_thirteen_full_months(
    engine: Engine, today: dt.date, first_kept: dt.date
) -> None:
    months = _prepare_history(engine, dt.date(2025, 1, 1), dt.date(2027, 3, 1))
    policy = RetentionPolicy(retention_months=13, months_ahead=2)

    changes = apply_retention(engine, policy, today)

    remaining = _months(engine)
    assert remaining[0] == first_kept
    current = dt.date(today.year, today.month, 1)
    assert len([m for m in remaining if m < current]) == 13
    expected_dropped = [m for m in months if m < first_kept]
    assert [name for name in changes.dropped if ".policy_snapshot_" in name] == [
        f"dict_ratelimit.{partition_name('policy_snapshot', m)}" for m in expected_dropped
    ]
    # whole partitions are dropped: every kept month still has its reading
    with engine.connect() as connection:
        counts = dict(
            connection.execute(
                sa.text(
                    "SELECT date_trunc('month', response_time AT TIME ZONE 'UTC')::date, count(*) "
                    "FROM dict_ratelimit.policy_snapshot GROUP BY 1"
                )
            ).all()
        )
    assert counts == {m: 1 for m in months if m >= first_kept}


def test_retention_is_idempotent_and_prepares_months_ahead(engine: Engine) -> None:
    _prepare_history(engine, dt.date(2030, 1, 1), dt.date(2031, 5, 1))
    policy = RetentionPolicy(retention_months=13, months_ahead=2)
    today = dt.date(2031, 5, 10)

    first = apply_retention(engine, policy, today)
    assert [name for name in first.created if ".policy_snapshot_" in name] == [
        "dict_ratelimit.policy_snapshot_y2031m06",
        "dict_ratelimit.policy_snapshot_y2031m07",
    ]
    tables = {"policy_snapshot", "policy_metric", "threshold_evaluation", "policy_request_stats"}
    for table in tables:  # every partitioned table of the schema is maintained
        assert f"dict_ratelimit.{table}_y2031m07" in first.created
    assert "dict_ratelimit.policy_snapshot_y2030m03" in first.dropped
    assert "dict_ratelimit.policy_snapshot_y2030m04" in first.kept
    second = apply_retention(engine, policy, today)
    assert second.created == [] and second.dropped == []
    assert second.kept == first.kept


def test_retention_never_drops_the_current_or_future_months(engine: Engine) -> None:
    _prepare_history(engine, dt.date(2026, 9, 1), dt.date(2027, 2, 1))
    changes = apply_retention(engine, RetentionPolicy(retention_months=1), dt.date(2026, 11, 1))
    assert [n for n in changes.dropped if ".policy_snapshot_" in n] == [
        "dict_ratelimit.policy_snapshot_y2026m09"
    ]
    assert _months(engine)[0] == dt.date(2026, 10, 1)
    assert dt.date(2027, 2, 1) in _months(engine)


def test_partitions_not_named_by_month_are_left_alone(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE dict_ratelimit.policy_snapshot_legacy PARTITION OF "
                "dict_ratelimit.policy_snapshot FOR VALUES FROM ('1999-01-01') TO ('2000-01-01')"
            )
        )
    changes = apply_retention(engine, RetentionPolicy(), dt.date(2026, 11, 29))
    assert changes.unmanaged == ["dict_ratelimit.policy_snapshot_legacy"]
    assert "dict_ratelimit.policy_snapshot_legacy" not in changes.dropped


def test_partition_names_come_from_validated_dates_only() -> None:
    assert partition_name("policy_snapshot", dt.date(2026, 1, 1)) == "policy_snapshot_y2026m01"
    with pytest.raises(TypeError):
        partition_name("policy_snapshot", dt.datetime(2026, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        partition_name("policy_snapshot", "2026-01-01")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first day"):
        partition_name("policy_snapshot", dt.date(2026, 1, 2))
    with pytest.raises(ValueError, match="invalid table name"):
        partition_name("x; DROP TABLE y", dt.date(2026, 1, 1))


def test_a_month_is_detached_before_it_is_dropped_and_the_lock_time_reported(
    engine: Engine,
) -> None:
    _prepare_history(engine, dt.date(2026, 9, 1), dt.date(2026, 11, 1))
    changes = apply_retention(engine, RetentionPolicy(retention_months=1), dt.date(2026, 11, 1))
    dropped = "dict_ratelimit.policy_snapshot_y2026m09"
    assert dropped in changes.dropped
    assert set(changes.parent_lock_seconds) == set(changes.dropped) == set(changes.drop_seconds)
    assert all(0 <= seconds < 5 for seconds in changes.parent_lock_seconds.values())
    with engine.connect() as connection:
        assert (
            connection.execute(sa.text("SELECT to_regclass(:n)"), {"n": dropped}).scalar() is None
        )


def test_a_detach_left_pending_by_an_interrupted_run_is_finished(engine: Engine) -> None:
    """A concurrent detach waits for older snapshots; cancelled there, it stays pending (the
    partition belongs to no month any more, but still to its parent) until FINALIZE."""
    _prepare_history(engine, dt.date(2026, 9, 1), dt.date(2026, 11, 1))
    old = "dict_ratelimit.policy_snapshot_y2026m09"
    reader = engine.connect()
    reader.execute(sa.text("SELECT count(*) FROM dict_ratelimit.policy_snapshot"))  # a snapshot
    try:
        with engine.connect() as raw:
            detacher = raw.execution_options(isolation_level="AUTOCOMMIT")
            detacher.execute(sa.text("SET statement_timeout = '500ms'"))
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                detacher.execute(
                    sa.text(
                        f"ALTER TABLE dict_ratelimit.policy_snapshot DETACH PARTITION {old} "
                        "CONCURRENTLY"
                    )
                )
    finally:
        reader.close()
    with engine.connect() as connection:
        pending = connection.execute(
            sa.text(
                "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = CAST(:n AS regclass)"
            ),
            {"n": old},
        ).scalar()
    assert pending is True
    changes = apply_retention(engine, RetentionPolicy(retention_months=1), dt.date(2026, 11, 1))
    assert old in changes.dropped and old not in changes.unmanaged


def test_two_shards_creating_the_same_missing_month_both_succeed(engine: Engine) -> None:
    """Two shards store into a month that has no partition yet, at the same moment: one
    creates it, the other waits for that commit and finds it (no "already exists" failure
    that would lose its readings)."""
    month = dt.date(2031, 7, 1)
    created = threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        with engine.begin() as connection:
            outcome["first"] = create_partition(connection, "monitor_tick", month)
            created.set()
            time.sleep(0.5)  # still uncommitted while the second one tries

    def second() -> None:
        created.wait(10)
        try:
            with engine.begin() as connection:
                outcome["second"] = create_partition(connection, "monitor_tick", month)
        except sa.exc.DBAPIError as error:
            outcome["second"] = error

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert outcome == {"first": True, "second": False}
    assert month in _months(engine, "monitor_tick")
