"""Sharded ticks: the participant list split over several runs per tick.

What must hold: every participant is in exactly one shard; the schedule asks for one run per
shard and holds back only a shard whose previous run is still active; a shard's run polls,
derives and alerts only its own participants; and ticks run as shards side by side store the
same readings and publish the same alert events, each exactly once, as unsharded ticks.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.tags import SERIAL_TAG, SHARD_KEY, run_participants, shard_tags
from dict_ratelimit.domain.shards import MAX_SHARDS, Shard, all_shards
from dict_ratelimit.settings import Settings, get_settings
from dict_ratelimit.storage.alerts import load_tracks
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit.storage.queues import take_keys
from dict_ratelimit_tests.conftest import TEMPLATE_DB, create_test_database, drop_test_database
from dict_ratelimit_tests.helpers import utc
from dict_ratelimit_tests.simulation import START, RunningSimulator, running_simulator
from dict_ratelimit_tests.ticks import materializations, monitor_resources, prepare_tick, run_tick
from dict_ratelimit_tests.timebase import before_next_midnight

ISPBS = [f"{10_000_000 + 7 * i:08d}" for i in range(23)]


# -- membership -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 23, 30])
def test_every_participant_is_in_exactly_one_shard_and_shards_are_balanced(count: int) -> None:
    shuffled = ISPBS[5:] + ISPBS[:5]  # the configured order does not matter
    parts = [shard.members(shuffled) for shard in all_shards(count)]
    flat = [ispb for part in parts for ispb in part]
    assert sorted(flat) == sorted(ISPBS) and len(flat) == len(set(flat))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    assert [shard.members(ISPBS) for shard in all_shards(count)] == parts  # stable


def test_a_shard_label_round_trips_and_nonsense_is_refused_clearly() -> None:
    assert Shard.parse(" 2/4 ") == Shard(2, 4) and Shard(2, 4).label == "2/4"
    for bad, message in [
        ("2-4", "not of the form INDEX/COUNT"),
        ("4/4", "index 4 is not between 0 and 3"),
        ("0/0", "count 0 is not between 1"),
        (f"0/{MAX_SHARDS + 1}", f"between 1 and {MAX_SHARDS}"),
        ("", "not of the form"),
    ]:
        with pytest.raises(ValueError, match=message):
            Shard.parse(bad)
    with pytest.raises(ValueError, match=f"run tag {SHARD_KEY}: shard 'x' is not"):
        run_participants({SHARD_KEY: "x"}, ISPBS)
    assert run_participants({}, ISPBS) == ISPBS  # a run without the tag: everyone


def test_shards_have_their_own_serial_value_and_one_shard_is_the_unsharded_tick() -> None:
    values = {shard_tags(shard)["dict_ratelimit/serial"] for shard in all_shards(4)}
    assert len(values) == 4 and "monitor" not in values
    assert shard_tags(Shard(0, 1)) == SERIAL_TAG  # exactly the tags of an unsharded tick


def test_the_shard_count_is_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICT_RATELIMIT_MONITOR_SHARDS", "4")
    assert Settings().monitor_shards == 4
    monkeypatch.setenv("DICT_RATELIMIT_MONITOR_SHARDS", "0")
    with pytest.raises(ValueError, match="monitor_shards"):
        Settings()


# -- schedules ------------------------------------------------------------------------------


def _definitions_with_shards(monkeypatch: pytest.MonkeyPatch, count: int) -> dg.Definitions:
    monkeypatch.setenv("DICT_RATELIMIT_MONITOR_SHARDS", str(count))
    get_settings.cache_clear()
    try:
        definitions = build_definitions()
        definitions.get_repository_def()  # resolved now, with the shard count set
        return definitions
    finally:
        monkeypatch.delenv("DICT_RATELIMIT_MONITOR_SHARDS")
        get_settings.cache_clear()


def _schedule_context(instance: dg.DagsterInstance, definitions: dg.Definitions, when: dt.datetime):  # type: ignore[no-untyped-def]
    return dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=when,
        repository_def=definitions.get_repository_def(),
    )


def _add_run(
    instance: dg.DagsterInstance, status: dg.DagsterRunStatus, tags: dict[str, str]
) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="monitor_job", run_id=run_id, status=status, tags=tags))
    return run_id


def test_the_schedule_asks_for_one_run_per_shard_and_holds_back_only_a_busy_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    definitions = _definitions_with_shards(monkeypatch, 4)
    schedule = definitions.resolve_schedule_def("monitor_sweeps")
    when = before_next_midnight(START, 5)
    with dg.instance_for_test() as instance:
        context = _schedule_context(instance, definitions, when)
        requests = schedule.evaluate_tick(context).run_requests
        assert [r.tags[SHARD_KEY] for r in requests] == ["0/4", "1/4", "2/4", "3/4"]
        assert len({r.run_key for r in requests}) == 4  # a retried tick duplicates none
        assert all(r.run_key.startswith(when.isoformat()) for r in requests)
        assert len({r.tags["dict_ratelimit/serial"] for r in requests}) == 4
        assert all(
            r.tags.items() >= {"dict_ratelimit/mode": "incremental"}.items() for r in requests
        )

        _add_run(instance, dg.DagsterRunStatus.STARTED, requests[2].tags)
        _add_run(instance, dg.DagsterRunStatus.SUCCESS, requests[0].tags)  # done: no hold
        again = schedule.evaluate_tick(context).run_requests
        assert [r.tags[SHARD_KEY] for r in again] == ["0/4", "1/4", "3/4"]

        for request in (requests[0], requests[1], requests[3]):
            _add_run(instance, dg.DagsterRunStatus.STARTING, request.tags)
        skipped = schedule.evaluate_tick(context)
        assert skipped.run_requests == []
        assert "shard(s) 0/4, 1/4, 2/4, 3/4" in skipped.skip_message


def test_the_watchdog_steps_in_when_one_shard_has_not_succeeded_recently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    definitions = _definitions_with_shards(monkeypatch, 2)
    watchdog = definitions.resolve_schedule_def("alert_watchdog")
    with dg.instance_for_test() as instance:
        for shard in all_shards(2):
            _finish(
                instance, _add_run(instance, dg.DagsterRunStatus.STARTED, {SHARD_KEY: shard.label})
            )
        ended = max(r.end_time for r in instance.get_run_records() if r.end_time)
        ended_at = dt.datetime.fromtimestamp(ended, dt.timezone.utc)
        soon = _schedule_context(instance, definitions, ended_at + dt.timedelta(minutes=3))
        result = watchdog.evaluate_tick(soon)
        assert result.run_requests == [] and "oldest of 2 shards" in result.skip_message

    # shard 0 succeeded a moment ago, shard 1's run failed: shard 1's participants have had
    # no tick, and three minutes on the watchdog runs the alert step for everyone
    with dg.instance_for_test() as instance:
        _finish(instance, _add_run(instance, dg.DagsterRunStatus.STARTED, {SHARD_KEY: "0/2"}))
        failed = _add_run(instance, dg.DagsterRunStatus.STARTED, {SHARD_KEY: "1/2"})
        instance.report_run_failed(instance.get_run_by_id(failed))
        ended = max(r.end_time for r in instance.get_run_records() if r.end_time)
        soon = dt.datetime.fromtimestamp(ended, dt.timezone.utc) + dt.timedelta(minutes=3)
        [request] = watchdog.evaluate_tick(
            _schedule_context(instance, definitions, soon)
        ).run_requests
        assert SHARD_KEY not in request.tags  # the watchdog looks after every participant
        assert request.tags.items() >= SERIAL_TAG.items()


def _finish(instance: dg.DagsterInstance, run_id: str) -> None:
    """Mark a run successful as its worker would (the run record gets its end time)."""
    instance.report_dagster_event(
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_SUCCESS.value,
            job_name="monitor_job",
            message="done",
        ),
        run_id,
    )


# -- queues ---------------------------------------------------------------------------------


def test_a_shard_takes_only_its_own_participants_keys_and_shard_0_the_unlisted(
    engine: Engine,
) -> None:
    """Shard members 11111111 (shard 0) and 33333333 (shard 1); 22222222 was dropped from
    the list with work still queued: shard 0 takes it, so nothing waits forever."""
    at = utc(2026, 3, 1, 12)
    everyone = ["11111111", "33333333"]
    with engine.begin() as connection:
        for ispb in ("11111111", "22222222", "33333333"):
            for table in ("metric_backlog", "alert_track"):
                connection.execute(
                    sa.text(
                        f"INSERT INTO dict_ratelimit.{table} (ispb, policy, "
                        f"{'response_time' if table == 'metric_backlog' else 'last_observed_at'})"
                        " VALUES (:ispb, 'ENTRIES_WRITE', :at)"
                    ),
                    {"ispb": ispb, "at": at},
                )
    with engine.begin() as connection:
        assert take_keys(connection, "metric_backlog", 100, []) == []  # an empty shard
        shard_1 = take_keys(connection, "metric_backlog", 100, ["33333333"])
        assert [key[0] for key in shard_1] == ["33333333"]
        shard_0 = take_keys(connection, "metric_backlog", 100, ["11111111"], everyone)
        assert [key[0] for key in shard_0] == ["11111111", "22222222"]
        assert sorted(load_tracks(connection, ["33333333"])) == [("33333333", "ENTRIES_WRITE")]
        assert sorted(ispb for ispb, _ in load_tracks(connection, ["11111111"], everyone)) == [
            "11111111",
            "22222222",
        ]
        assert len(load_tracks(connection)) == 3  # unsharded: every track
    with engine.connect() as connection:
        left = connection.execute(sa.text("SELECT count(*) FROM dict_ratelimit.metric_backlog"))
        assert left.scalar() == 0


# -- end to end -----------------------------------------------------------------------------

PARTICIPANTS = {"12345678": "A", "23456789": "D", "34567890": "B", "45678901": "A"}


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with running_simulator(PARTICIPANTS, "scan-attack") as running:
        yield running


@pytest.fixture
def reference_db_url(pg_server) -> Iterator[URL]:  # type: ignore[no-untyped-def]
    """A second migrated database, for the unsharded ticks to compare with."""
    name = f"drl_test_{uuid.uuid4().hex[:12]}"
    yield create_test_database(pg_server, name, template=TEMPLATE_DB)
    drop_test_database(pg_server, name)


_EVENTS = """
SELECT ispb, policy, type, severity, occurred_at FROM dict_ratelimit.alert_event
ORDER BY ispb, policy, occurred_at, id
"""


def _rows(url: URL, sql: str) -> list[tuple]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(sql))]
    finally:
        engine.dispose()


def test_shards_side_by_side_store_and_alert_exactly_like_one_unsharded_tick(
    sim: RunningSimulator, db_url: URL, reference_db_url: URL
) -> None:
    """The key scan drains the anti-scan buckets (10-25 min) and they recover: every tick is
    run once unsharded (reference database) and as two shards at the same time (threads)."""
    everyone = list(PARTICIPANTS)
    sharded = monitor_resources(sim, db_url, everyone)
    reference = monitor_resources(sim, reference_db_url, everyone)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for tick in range(9):
            if tick:
                sim.advance(300)
            assert run_tick(sim, reference).success
            ticks = [prepare_tick(sim, sharded, tags={SHARD_KEY: s.label}) for s in all_shards(2)]
            runs = list(pool.map(lambda tick: tick(), ticks))
            for shard, run in zip(all_shards(2), runs, strict=True):
                assert run.success, shard
                [snapshots] = materializations(run, "policy_snapshots")
                assert snapshots.metadata["shard"].value == shard.label
                assert snapshots.metadata["participants_monitored"].value == 2
                [alerts] = materializations(run, "alerts")
                assert alerts.metadata["shard"].value == shard.label

    identity = (
        "SELECT ispb, policy, response_time FROM dict_ratelimit.policy_snapshot ORDER BY 1, 2, 3"
    )
    assert _rows(db_url, identity) == _rows(reference_db_url, identity)
    assert len(_rows(db_url, identity)) == 9 * 4 * 28
    events = _rows(db_url, _EVENTS)
    assert events == _rows(reference_db_url, _EVENTS)  # each exactly once, nothing lost
    kinds = {event[2] for event in events}
    assert any(k.endswith("alert.opened") for k in kinds), kinds
    assert any(k.endswith("alert.resolved") for k in kinds), kinds
    waiting = (
        "SELECT (SELECT count(*) FROM dict_ratelimit.metric_backlog) "
        "+ (SELECT count(*) FROM dict_ratelimit.alert_backlog)"
    )
    assert _rows(db_url, waiting) == [(0,)]
    shards = _rows(
        db_url,
        "SELECT shard, count(*), sum(participants) FROM dict_ratelimit.monitor_tick "
        "GROUP BY shard ORDER BY shard",
    )
    assert shards == [("0/2", 9, 18), ("1/2", 9, 18)]


def test_a_shard_with_no_participant_runs_and_stores_an_empty_sweep(
    sim: RunningSimulator, db_url: URL
) -> None:
    """More shards than participants (four participants, shard 5 of 6): the run succeeds,
    polls nobody, and says so."""
    resources = monitor_resources(sim, db_url, list(PARTICIPANTS))
    run = run_tick(sim, resources, tags={SHARD_KEY: "5/6"})
    assert run.success
    [snapshots] = materializations(run, "policy_snapshots")
    assert snapshots.metadata["participants_monitored"].value == 0
    assert snapshots.metadata["rows_inserted"].value == 0
    [alerts] = materializations(run, "alerts")
    assert alerts.metadata["events_written"].value == 0
