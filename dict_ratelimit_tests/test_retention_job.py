"""retention_job end to end on a real database, with an injected 'today'."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.defs.resources import ClockResource, PostgresResource
from dict_ratelimit.defs.retention import purge_old_runs, retention_job
from dict_ratelimit.domain.retention import add_months
from dict_ratelimit.storage.embedded import free_port
from dict_ratelimit.storage.partitions import create_partition, existing_partitions
from dict_ratelimit_tests.timebase import base_time, before_next_midnight, day_key


def _run(  # type: ignore[no-untyped-def]
    url: str,
    instance: dg.DagsterInstance | None = None,
    clock: ClockResource | None = None,
    **config: object,
):
    return retention_job.execute_in_process(
        run_config={"ops": {"maintain_partitions": {"config": config}}},
        resources={
            "postgres": PostgresResource(database_url=url),
            "clock": clock or ClockResource(),
        },
        instance=instance,
        raise_on_error=False,
    )


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _metadata(result) -> dict:  # type: ignore[no-untyped-def]
    [event] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def test_job_creates_and_drops_partitions_and_reports_them(db_url: URL, engine: Engine) -> None:
    with engine.begin() as connection:
        month = dt.date(2029, 1, 1)
        while month <= dt.date(2030, 6, 1):
            create_partition(connection, "policy_snapshot", month)
            month = add_months(month, 1)

    result = _run(_url(db_url), today="2030-06-10", retention_months=13, months_ahead=2)

    assert result.success
    metadata = _metadata(result)
    assert metadata["today"] == "2030-06-10"
    assert metadata["oldest_kept_month"] == "2029-05-01"
    assert [name for name in metadata["created"] if ".policy_snapshot_" in name] == [
        "dict_ratelimit.policy_snapshot_y2030m07",
        "dict_ratelimit.policy_snapshot_y2030m08",
    ]
    assert "dict_ratelimit.policy_snapshot_y2029m04" in metadata["dropped"]
    assert metadata["dropped_count"] == len(metadata["dropped"])
    assert 0 <= metadata["parent_lock_seconds_max"] < 5  # DETACH … CONCURRENTLY per month
    drops = {record.data["partition"]: record.data for record in metadata["drops"].records}
    assert "dict_ratelimit.policy_snapshot_y2029m04" in drops
    assert all(row["parent_lock_ms"] >= 0 and row["drop_ms"] >= 0 for row in drops.values())
    with engine.connect() as connection:
        months = [p.month for p in existing_partitions(connection, "policy_snapshot")[0]]
    assert months[0] == dt.date(2029, 5, 1) and months[-1] == dt.date(2030, 8, 1)

    again = _run(_url(db_url), today="2030-06-10")
    assert again.success
    assert _metadata(again)["created_count"] == 0 and _metadata(again)["dropped_count"] == 0


@pytest.mark.parametrize("months", [0, -1])
def test_bad_retention_is_rejected_before_any_sql(months: int) -> None:
    """The database does not even exist: the error is about the configuration, not the network."""
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    with pytest.raises(Exception, match="retention_months must be at least 1"):
        retention_job.execute_in_process(
            run_config={"ops": {"maintain_partitions": {"config": {"retention_months": months}}}},
            resources={
                "postgres": PostgresResource(database_url=unreachable),
                "clock": ClockResource(),
            },
        )


@pytest.mark.timebased
def test_without_today_the_run_acts_on_its_clocks_day(db_url: URL) -> None:
    """The clock at 23:59 on the last day of a month: 'today' is still that month."""
    at = before_next_midnight(base_time(), 1)
    result = _run(_url(db_url), clock=ClockResource(frozen_at=at.isoformat()))
    assert result.success
    metadata = _metadata(result)
    assert metadata["today"] == day_key(at)
    current = f"policy_snapshot_y{at.year:04d}m{at.month:02d}"
    assert not any(current in name for name in metadata["dropped"])


def test_bad_today_is_rejected() -> None:
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    with pytest.raises(Exception, match="today must be an ISO date"):
        retention_job.execute_in_process(
            run_config={"ops": {"maintain_partitions": {"config": {"today": "2026-13-40"}}}},
            resources={
                "postgres": PostgresResource(database_url=unreachable),
                "clock": ClockResource(),
            },
        )


def test_finished_runs_older_than_the_retention_are_purged(db_url: URL) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        assert _run(_url(db_url), instance, dagster_run_retention_days=0).success
        assert _run(_url(db_url), instance, dagster_run_retention_days=0).success
        assert len(instance.get_runs()) == 2
        now = dt.datetime.now(dt.timezone.utc)
        assert purge_old_runs(instance, older_than_days=1, now=now) == 0
        assert purge_old_runs(instance, older_than_days=1, now=now + dt.timedelta(days=2)) == 2
        assert instance.get_runs() == []


def test_unreachable_database_fails_the_run_with_the_host_named() -> None:
    port = free_port()
    result = _run(f"postgresql://app:pw@127.0.0.1:{port}/dict", today="2026-11-29")
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    text = failure.message + "".join(c.message for c in ([failure.cause] if failure.cause else []))
    assert "127.0.0.1" in text and str(port) in text
    assert "pw@" not in text
