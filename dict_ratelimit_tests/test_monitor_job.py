"""monitor_job against the simulator and a real database: rows, failures, checks, retries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.monitor import TICK_TAGS
from dict_ratelimit.simulator.v1 import control_pb2 as ctl
from dict_ratelimit_tests.simulation import START, RunningSimulator, running_simulator
from dict_ratelimit_tests.ticks import monitor_resources, run_tick
from dict_ratelimit_tests.timebase import before_next_midnight, day_key

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]


PARTICIPANTS = {"12345678": "A", "87654321": "D"}


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with running_simulator(PARTICIPANTS, "scan-attack") as running:
        yield running


def _resources(sim: RunningSimulator, db_url: URL) -> dict[str, object]:
    return monitor_resources(sim, db_url, list(PARTICIPANTS))


def _tick(sim: RunningSimulator, db_url: URL, instance: dg.DagsterInstance | None = None):  # type: ignore[no-untyped-def]
    return run_tick(sim, _resources(sim, db_url), instance)


def _metadata(result) -> dict:  # type: ignore[no-untyped-def]
    [materialization] = result.asset_materializations_for_node("policy_snapshots")
    return {key: value.value for key, value in materialization.metadata.items()}


def _checks(result) -> dict:  # type: ignore[no-untyped-def]
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _rows(engine: Engine) -> list[sa.Row]:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT ispb, policy, response_time, available_tokens, capacity, category "
                "FROM dict_ratelimit.policy_snapshot ORDER BY response_time, ispb, policy"
            )
        ).all()


def test_three_ticks_store_exactly_the_simulators_buckets(
    sim: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    expected = []
    for tick in range(3):
        if tick:
            sim.advance(300)
        result = _tick(sim, db_url)
        assert result.success
        metadata = _metadata(result)
        assert metadata["rows_inserted"] == 56
        assert metadata["participants_answered"] == 2
        checks = _checks(result)
        assert checks["complete_reading"].passed and checks["bucket_shape_unchanged"].passed
        now = START + dt.timedelta(seconds=300 * tick)
        assert metadata["dict_response_time_max"] == now.isoformat()
        for ispb, category in PARTICIPANTS.items():
            for name, bucket in sorted(sim.simulator.buckets(ispb).items()):
                expected.append((ispb, name, now, bucket.available, bucket.capacity, category))

    rows = [tuple(row) for row in _rows(engine)]
    assert rows == sorted(expected, key=lambda r: (r[2], r[0], r[1]))
    assert len(rows) == 3 * 2 * 28


def test_rerunning_a_tick_stores_nothing_new(
    sim: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    assert _tick(sim, db_url).success
    before = _rows(engine)
    again = _tick(sim, db_url)  # same DICT ResponseTime: the same readings
    assert again.success
    assert _metadata(again)["rows_inserted"] == 0
    assert _rows(engine) == before


def test_a_failing_participant_is_reported_and_the_others_stored(
    sim: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    sim.inject(ctl.PERMISSION_DENIED, participant="87654321")  # until cleared
    result = _tick(sim, db_url)

    assert result.success  # not blocking: the others' metrics and alerts still run
    check = _checks(result)["complete_reading"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert result.asset_materializations_for_node("alerts")
    assert check.metadata["missing_participants"].value == ["87654321"]
    metadata = _metadata(result)
    assert metadata["rows_inserted"] == 28
    assert "87654321" in metadata["participants_failed"]
    assert metadata["bridge_errors_by_class"] == {"permission_denied": 1}
    stored = {(row.ispb, row.policy) for row in _rows(engine)}
    assert {ispb for ispb, _ in stored} == {"12345678"}  # nothing partial for the failed one
    assert len(stored) == 28


def test_a_bridge_down_for_everyone_retries_the_step(
    sim: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    sim.inject(ctl.UNAVAILABLE, times=6)  # 2 participants x 3 attempts: the first step attempt
    result = _tick(sim, db_url)
    assert result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 1
    assert len(_rows(engine)) == 56


def test_a_bridge_down_for_good_fails_after_the_retries(
    sim: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    sim.inject(ctl.UNAVAILABLE)
    result = _tick(sim, db_url)
    assert not result.success
    assert _rows(engine) == []


def test_a_vanished_policy_is_named_by_the_completeness_check(
    sim: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    assert _tick(sim, db_url).success
    with engine.begin() as connection:  # pretend DICT listed one more policy last time
        connection.execute(
            sa.text(
                "INSERT INTO dict_ratelimit.policy (ispb, policy, capacity, refill_tokens, "
                "refill_period_sec) VALUES ('12345678', 'RETIRED_POLICY', 10, 1, 60)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO dict_ratelimit.policy_snapshot (ispb, policy, response_time, "
                "polled_at, category, available_tokens, capacity, refill_tokens, "
                "refill_period_sec) VALUES ('12345678', 'RETIRED_POLICY', :t, :t, 'A', 5, 10, "
                "1, 60)"
            ),
            {"t": START},
        )
    sim.advance(300)
    result = _tick(sim, db_url)
    check = _checks(result)["complete_reading"]
    assert not check.passed
    assert check.metadata["vanished_policies"].value == ["12345678/RETIRED_POLICY"]


def test_a_category_change_is_flagged_by_the_non_blocking_shape_check(
    sim: RunningSimulator, db_url: URL, engine: Engine
) -> None:
    assert _tick(sim, db_url).success
    sim.control.SetCategory(ctl.SetCategoryRequest(participant="12345678", category="D"))
    sim.advance(300)
    result = _tick(sim, db_url)
    assert result.success  # a warning, not a failure
    check = _checks(result)["bucket_shape_unchanged"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    changes = check.metadata["changes"].value
    assert any(
        "12345678/ENTRIES_READ_PARTICIPANT_ANTISCAN: capacity 50000→16000" in c for c in changes
    )
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT category, category_changed_at FROM dict_ratelimit.participant "
                "WHERE ispb = '12345678'"
            )
        ).one()
    assert (row.category, row.category_changed_at) == ("D", START + dt.timedelta(seconds=300))


def test_metadata_names_the_worst_policy(sim: RunningSimulator, db_url: URL) -> None:
    sim.advance(1200)  # the scan attack has drained the anti-scan bucket
    result = _tick(sim, db_url)
    metadata = _metadata(result)
    assert metadata["worst_policy"].endswith("/ENTRIES_READ_PARTICIPANT_ANTISCAN")
    assert metadata["worst_remaining_ratio"] <= 0.5
    assert metadata["bridge_latency_max_seconds"] > 0


def test_monitor_schedule_skips_while_a_monitor_run_is_active() -> None:
    definitions = build_definitions()
    schedule = definitions.resolve_schedule_def("monitor_sweeps")
    with dg.instance_for_test() as instance:
        when = before_next_midnight(START, 5)
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=when,
            repository_def=definitions.get_repository_def(),
        )
        request = schedule.evaluate_tick(context).run_requests[0]
        assert request.run_key == when.isoformat()
        assert request.partition_key == day_key(when)  # the tick's day, UTC
        assert request.tags.items() >= TICK_TAGS.items()
        instance.add_run(
            dg.DagsterRun(job_name="monitor_job", run_id="r1", status=dg.DagsterRunStatus.STARTED)
        )
        skipped = schedule.evaluate_tick(context)
        assert skipped.run_requests == [] and "still queued or running" in skipped.skip_message


def test_postgres_down_fails_the_tick_cleanly_and_the_next_one_stores(
    sim: RunningSimulator, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Its own server, stopped during the tick: the step retries, then fails naming the
    database; nothing half-stored; after the restart the next tick stores everything."""
    from sqlalchemy.engine import make_url

    from dict_ratelimit.storage.database import create_db_engine
    from dict_ratelimit.storage.embedded import EmbeddedPostgres
    from dict_ratelimit.storage.migrations import migrate
    from dict_ratelimit_tests.conftest import MIGRATIONS_DIR

    server = EmbeddedPostgres(tmp_path / "pg", fast_unsafe=True)
    server.ensure_running()
    url = make_url(server.application_url("dict"))
    engine = create_db_engine(url)
    migrate(url, MIGRATIONS_DIR, engine)
    engine.dispose()
    try:
        server.stop_server()
        down = _tick(sim, url)
        assert not down.success
        retries = [e for e in down.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        assert len(retries) == 3
        failure = down.get_step_failure_events()[0].step_failure_data.error
        assert "127.0.0.1" in (failure.cause.message if failure.cause else failure.message)

        assert server.ensure_running().port == make_url(url).port  # the same port again
        sim.advance(300)
        up = _tick(sim, url)
        assert up.success
        engine = create_db_engine(url)
        assert len(_rows(engine)) == 56
        engine.dispose()
    finally:
        server.stop_server()
