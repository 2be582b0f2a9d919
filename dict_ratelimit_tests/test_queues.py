"""The pipeline's work queues: taken oldest first, skipped when another run holds them, and
taken by address so that the cost does not depend on the queue's (always stale) statistics."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.engine import Engine

from dict_ratelimit.storage.queues import QUEUES, take_keys, take_statement
from dict_ratelimit_tests.timebase import base_time

pytestmark = pytest.mark.db

T = base_time()


def _enqueue(engine: Engine, queue: str, count: int, start: dt.datetime = T) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"INSERT INTO dict_ratelimit.{queue} (ispb, policy, response_time) "
            "SELECT lpad((i %% 1000)::text, 8, '0'), 'P' || (i / 1000)::text, "
            "       %(start)s + make_interval(secs => i / 1000) "
            "FROM generate_series(0, %(n)s - 1) AS i",
            {"start": start, "n": count},
        )


@pytest.mark.parametrize("queue", sorted(QUEUES))
def test_keys_are_taken_oldest_first_and_the_rest_waits(engine: Engine, queue: str) -> None:
    _enqueue(engine, queue, 3_000)  # three instants, 1,000 keys each
    with engine.begin() as connection:
        taken = take_keys(connection, queue, 1_500)
    assert len(taken) == 1_500
    assert {key[2] for key in taken} == {T, T + dt.timedelta(seconds=1)}
    assert sum(1 for key in taken if key[2] == T) == 1_000  # every key of the oldest instant
    assert taken == sorted(taken)
    with engine.connect() as connection:
        left = connection.exec_driver_sql(
            f"SELECT count(*), min(response_time) FROM dict_ratelimit.{queue}"
        ).one()
    assert left == (1_500, T + dt.timedelta(seconds=1))


def test_a_failed_transaction_puts_the_keys_back(engine: Engine) -> None:
    _enqueue(engine, "alert_backlog", 10)
    with pytest.raises(RuntimeError), engine.begin() as connection:
        assert len(take_keys(connection, "alert_backlog", 100)) == 10
        raise RuntimeError("the alert step failed")
    with engine.begin() as connection:
        assert len(take_keys(connection, "alert_backlog", 100)) == 10


def test_keys_held_by_another_run_are_skipped_not_waited_for(engine: Engine) -> None:
    _enqueue(engine, "metric_backlog", 20)
    with engine.connect() as holder:
        holding = holder.begin()
        held = take_keys(holder, "metric_backlog", 5)
        with engine.begin() as other:
            others = take_keys(other, "metric_backlog", 100)
        holding.rollback()
    assert len(held) == 5 and len(others) == 15
    assert not set(held) & set(others)


def test_the_take_does_not_depend_on_the_queues_statistics(engine: Engine) -> None:
    """Analysed while empty (what autovacuum sees between two ticks), a queue of thousands of
    keys was joined back to itself by a sequential scan per key (28,000 keys: over two
    minutes). The take goes by the rows' addresses: a TID scan, whatever the statistics."""
    for queue in sorted(QUEUES):
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                f"ANALYZE dict_ratelimit.{queue}"
            )
        _enqueue(engine, queue, 5_000)
        with engine.connect() as connection:
            transaction = connection.begin()
            plan = "\n".join(
                row[0]
                for row in connection.exec_driver_sql(
                    "EXPLAIN " + take_statement(queue), {"limit": 200_000}
                )
            )
            transaction.rollback()
        assert "Tid Scan" in plan, plan
        assert "Nested Loop" not in plan, plan


def test_an_unknown_queue_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown queue 'policy_snapshot'"):
        take_statement("policy_snapshot")
    with pytest.raises(ValueError, match="unknown queue"):
        take_keys(None, "alert_backlog; DROP TABLE x", 1)  # type: ignore[arg-type]
