"""Storing readings (idempotent, negative allowed) and the latest-state view."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dict_ratelimit.domain.retention import RetentionPolicy
from dict_ratelimit.storage.partitions import ensure_partitions
from dict_ratelimit.storage.snapshots import store_readings
from dict_ratelimit_tests.helpers import reading, utc
from dict_ratelimit_tests.timebase import base_time

pytestmark = [pytest.mark.db, pytest.mark.timebased]


NOW = base_time()


def _latest(engine: Engine) -> dict[tuple[str, str], dict]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT * FROM dict_ratelimit.latest_policy_state"))
        return {(r.ispb, r.policy): r._asdict() for r in rows}


def test_storing_the_same_reading_twice_stores_it_once(engine: Engine) -> None:
    batch = [reading(NOW, policy=p) for p in ("ENTRIES_WRITE", "CLAIMS_READ")]
    with engine.begin() as connection:
        assert store_readings(connection, batch).inserted == 2
    with engine.begin() as connection:
        assert store_readings(connection, batch).inserted == 0
    with engine.connect() as connection:
        assert (
            connection.execute(
                sa.text("SELECT count(*) FROM dict_ratelimit.policy_snapshot")
            ).scalar()
            == 2
        )


def test_negative_available_tokens_are_stored_as_is(engine: Engine) -> None:
    with engine.begin() as connection:
        store_readings(connection, [reading(NOW, available=-17)])
    assert _latest(engine)[("12345678", "ENTRIES_WRITE")]["available_tokens"] == -17


def test_available_above_capacity_is_refused_by_the_database(engine: Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError, match="available_at_most_capacity"):
        with engine.begin() as connection:
            store_readings(connection, [reading(NOW, available=36_001, capacity=36_000)])


def test_category_change_is_recorded_with_dicts_time(engine: Engine) -> None:
    earlier, later = NOW - dt.timedelta(minutes=5), NOW
    with engine.begin() as connection:
        store_readings(connection, [reading(earlier, category="A")])
    with engine.connect() as connection:
        first = connection.execute(
            sa.text("SELECT category, category_changed_at FROM dict_ratelimit.participant")
        ).one()
    assert tuple(first) == ("A", earlier)  # in category A since its first reading
    with engine.begin() as connection:
        store_readings(connection, [reading(later, category="C")])
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT category, category_changed_at FROM dict_ratelimit.participant")
        ).one()
    assert row.category == "C"
    assert row.category_changed_at == later


def test_latest_view_returns_the_newest_reading_per_policy_across_partitions(
    engine: Engine,
) -> None:
    ensure_partitions(engine, RetentionPolicy(), dt.date(2026, 9, 1))
    readings = [
        reading(utc(2026, 9, 30, 23, 55), ispb="11111111", policy="ENTRIES_WRITE", available=1),
        reading(utc(2026, 10, 1, 0, 0), ispb="11111111", policy="ENTRIES_WRITE", available=2),
        reading(utc(2026, 11, 3, 8, 0), ispb="11111111", policy="ENTRIES_WRITE", available=9_000),
        reading(utc(2026, 9, 12), ispb="11111111", policy="KEYS_CHECK", available=70, capacity=70),
        reading(utc(2026, 10, 31, 23, 59), ispb="22222222", policy="ENTRIES_WRITE", available=-3),
        reading(utc(2026, 9, 1), ispb="22222222", policy="ENTRIES_WRITE", available=5),
    ]
    with engine.begin() as connection:
        store_readings(connection, readings)

    latest = _latest(engine)

    # KEYS_CHECK of 11111111 was last read weeks before that participant's newest reading: a
    # policy DICT stopped listing leaves the latest-state view after a day
    assert set(latest) == {("11111111", "ENTRIES_WRITE"), ("22222222", "ENTRIES_WRITE")}
    newest = latest[("11111111", "ENTRIES_WRITE")]
    assert newest["response_time"] == utc(2026, 11, 3, 8, 0)
    assert newest["available_tokens"] == 9_000
    assert newest["remaining_ratio"] == pytest.approx(0.25)
    assert float(newest["refill_per_minute"]) == pytest.approx(1_200)
    assert latest[("22222222", "ENTRIES_WRITE")]["available_tokens"] == -3


def test_latest_view_probes_the_index_instead_of_scanning_history(engine: Engine) -> None:
    """With months of history, the plan is one index probe per policy (no seq scan, no sort)."""
    ensure_partitions(engine, RetentionPolicy(months_ahead=0), dt.date(2026, 6, 1))
    ensure_partitions(engine, RetentionPolicy(months_ahead=0), dt.date(2026, 7, 1))
    ensure_partitions(engine, RetentionPolicy(months_ahead=0), dt.date(2026, 8, 1))
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO dict_ratelimit.participant (ispb, category, last_reading_at) "
                "SELECT lpad(i::text, 8, '0'), 'A', '2026-08-31' FROM generate_series(1, 20) i"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO dict_ratelimit.policy (ispb, policy, capacity, refill_tokens, "
                "refill_period_sec) SELECT lpad(i::text, 8, '0'), 'POLICY_' || j, 100, 10, 60 "
                "FROM generate_series(1, 20) i, generate_series(1, 10) j"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO dict_ratelimit.policy_snapshot (ispb, policy, response_time, "
                "polled_at, category, available_tokens, capacity, refill_tokens, "
                "refill_period_sec) "
                "SELECT p.ispb, p.policy, t, t, 'A', 50, 100, 10, 60 FROM dict_ratelimit.policy p, "
                "generate_series('2026-06-01'::timestamptz, '2026-08-31', interval '1 hour') t"
            )
        )
        connection.execute(sa.text("ANALYZE dict_ratelimit.policy_snapshot"))
        connection.execute(sa.text("ANALYZE dict_ratelimit.policy"))
    with engine.connect() as connection:
        plan = "\n".join(
            row[0]
            for row in connection.execute(
                sa.text("EXPLAIN SELECT * FROM dict_ratelimit.latest_policy_state")
            )
        )
        assert (
            connection.execute(
                sa.text("SELECT count(*) FROM dict_ratelimit.latest_policy_state")
            ).scalar()
            == 200
        )
    assert "Seq Scan on policy_snapshot" not in plan, plan
    assert "Index" in plan and "Limit" in plan, plan
    assert "Sort" not in plan, plan
