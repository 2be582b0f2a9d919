"""Alerts from the simulator to a real Pulsar consumer, and the alert tables' guarantees."""

from __future__ import annotations

import datetime as dt
import json
import threading

import dagster as dg
import jsonschema
import psycopg2.errors
import pulsar
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.defs.events import publish_alert_events
from dict_ratelimit.defs.resources import ClockResource, PostgresResource, PulsarResource
from dict_ratelimit.domain.alerts import AlertRules
from dict_ratelimit.events.cloudevents import load_schema
from dict_ratelimit.events.publisher import DEFAULT_TOPIC
from dict_ratelimit.storage.alerts import apply_evaluations
from dict_ratelimit_tests.prometheus_tools import scrape_exporter
from dict_ratelimit_tests.pulsar_broker.broker import PulsarTestBroker
from dict_ratelimit_tests.simulation import running_simulator
from dict_ratelimit_tests.ticks import monitor_resources, run_tick

PARTICIPANTS = {"12345678": "A", "87654321": "D"}
ANTISCAN = "ENTRIES_READ_PARTICIPANT_ANTISCAN"

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]


def _events(engine: Engine) -> list[dict]:
    with engine.connect() as connection:
        return [
            row[0]
            for row in connection.execute(
                sa.text("SELECT payload FROM dict_ratelimit.alert_event ORDER BY id")
            )
        ]


def test_a_scan_attack_gives_one_episode_per_policy_delivered_in_order_once(
    db_url: URL, engine: Engine, pulsar_broker: PulsarTestBroker
) -> None:
    client = pulsar.Client(pulsar_broker.url, operation_timeout_seconds=5)
    consumer = client.subscribe(
        DEFAULT_TOPIC, "notifications", consumer_type=pulsar.ConsumerType.KeyShared
    )
    with running_simulator(PARTICIPANTS, "scan-attack") as sim:
        resources = monitor_resources(sim, db_url, list(PARTICIPANTS))
        sim.advance(540)  # the attack starts at 10 min; read every 90 s until ~34 min
        for _ in range(17):
            assert run_tick(sim, resources).success
            sim.advance(90)
        rerun = run_tick(sim, resources)  # the last tick's readings again: nothing new
        assert rerun.success
        [materialization] = rerun.asset_materializations_for_node("alerts")
        assert materialization.metadata["events_written"].value == 0
        # ground truth: which buckets really rejected requests (DICT 429) in the run
        rejected = {
            (ispb, policy)
            for ispb in PARTICIPANTS
            for policy, counts in sim.simulator.request_stats(ispb, dt.timedelta(hours=1))[
                2
            ].items()
            if counts.get(429)
        }

    events = _events(engine)
    schema = load_schema()
    for event in events:
        jsonschema.validate(event, schema, format_checker=jsonschema.FormatChecker())
    alerted = {(e["data"]["participant"], e["data"]["policy"]) for e in events}
    assert alerted == {(ispb, ANTISCAN) for ispb in PARTICIPANTS} == rejected
    for ispb in PARTICIPANTS:
        story = [e for e in events if e["data"]["participant"] == ispb]
        kinds = [e["type"].rsplit(".", 1)[1] for e in story]
        assert kinds[0] == "opened" and kinds[-1] == "resolved"
        assert "escalated" in kinds  # it got worse after opening: the bucket ran dry
        assert kinds.count("opened") == 1 and kinds.count("resolved") == 1
        assert len({e["data"]["alert_id"] for e in story}) == 1  # one episode
        assert story[-1]["data"]["peak_severity"] == "EXHAUSTED"

    with dg.build_sensor_context(
        resources={
            "postgres": PostgresResource(database_url=db_url.render_as_string(hide_password=False)),
            "pulsar": PulsarResource(service_url=pulsar_broker.url, timeout_seconds=5),
            "clock": ClockResource(),
        }
    ) as context:
        publish_alert_events(context)
    received = []
    while True:
        try:
            message = consumer.receive(timeout_millis=2000)
        except pulsar.Timeout:
            break
        consumer.acknowledge(message)
        received.append(json.loads(message.data()))
    client.close()
    assert [e["id"] for e in received] == [e["id"] for e in events]


def test_the_unique_index_rejects_a_second_open_episode_from_concurrent_writers(
    engine: Engine,
) -> None:
    insert = sa.text(
        "INSERT INTO dict_ratelimit.alert (alert_key, ispb, policy, status, severity, "
        "peak_severity, opened_at, last_observed_at, severity_history, reasons, message, "
        "sequence) VALUES (:key, '12345678', 'KEYS_CHECK', 'open', 'WARNING', 'WARNING', now(), "
        "now(), '[]', '[]', 'm', 1)"
    )
    first_inserted = threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def second_writer() -> None:
        first_inserted.wait(5)
        try:
            with engine.begin() as connection:  # waits on the first writer's uncommitted row
                connection.execute(insert, {"key": "b"})
            outcome["second"] = None
        except BaseException as error:
            outcome["second"] = error

    thread = threading.Thread(target=second_writer)
    thread.start()
    with engine.begin() as connection:
        connection.execute(insert, {"key": "a"})
        first_inserted.set()
        thread.join(0.5)
        assert thread.is_alive()  # blocked by the index until the first commits
    thread.join(5)
    error = outcome["second"]
    assert isinstance(error, sa.exc.IntegrityError)
    assert isinstance(error.orig, psycopg2.errors.UniqueViolation)
    assert "alert_one_open_per_identity" in str(error)
    # a resolved episode does not count: a new one may open
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE dict_ratelimit.alert SET status = 'resolved', resolved_at = now() "
                "WHERE alert_key = 'a'"
            )
        )
        connection.execute(insert, {"key": "c"})


def test_stale_data_and_a_silent_participant_raise_nodata_and_come_back(
    db_url: URL, engine: Engine
) -> None:
    rules = AlertRules()
    with running_simulator(PARTICIPANTS, "scan-attack") as sim:
        resources = monitor_resources(sim, db_url, list(PARTICIPANTS))
        sim.advance(540)
        assert run_tick(sim, resources).success
        sim.advance(90)
        assert run_tick(sim, resources).success  # the anti-scan alerts open (forecast)
        last = sim.clock.now()
        with engine.begin() as connection:
            report = apply_evaluations(
                connection, rules, list(PARTICIPANTS), now=last + dt.timedelta(minutes=16)
            )
        kinds = sorted(t.kind.value for t in report.transitions)
        # both open alerts go NODATA, and each silent participant gets one NODATA alert
        assert kinds == ["alert.nodata"] * 4
        assert {t.policy for t in report.transitions} == {ANTISCAN, "*"}
        with engine.begin() as connection:  # checked again: nothing new
            again = apply_evaluations(
                connection, rules, list(PARTICIPANTS), now=last + dt.timedelta(minutes=20)
            )
        assert again.transitions == []
        before = len(_events(engine))
        sim.advance(60)
        assert run_tick(sim, resources).success  # readings are back
    after = _events(engine)[before:]
    by_policy: dict[str, list[str]] = {}
    for event in after:
        by_policy.setdefault(event["data"]["policy"], []).append(event["type"].rsplit(".", 1)[1])
    assert by_policy["*"] == ["resolved", "resolved"]  # the dead man's switch clears
    # the policy episodes come back from NODATA (data_restored, or the severity change itself)
    assert len(by_policy[ANTISCAN]) == 2
    assert set(by_policy[ANTISCAN]) <= {"data_restored", "escalated", "deescalated"}
    with engine.connect() as connection:
        open_rows = connection.execute(
            sa.text("SELECT policy, status FROM dict_ratelimit.active_alerts")
        ).fetchall()
    assert {(row.policy, row.status) for row in open_rows} == {(ANTISCAN, "open")}


@pytest.mark.parametrize("published_days_ago", [10])
def test_retention_purges_only_published_events_past_their_days(
    engine: Engine, published_days_ago: int
) -> None:
    from dict_ratelimit.storage.outbox import purge_published
    from dict_ratelimit_tests.outbox_fixtures import write_episodes

    written = write_episodes(engine, [("12345678", "KEYS_CHECK")])
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE dict_ratelimit.alert_event SET published_at = now() - make_interval("
                "days => :days) WHERE id IN (SELECT id FROM dict_ratelimit.alert_event "
                "ORDER BY id LIMIT 2)"
            ),
            {"days": published_days_ago},
        )
        purged = purge_published(
            connection, dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=7)
        )
        left = connection.execute(
            sa.text("SELECT count(*) FROM dict_ratelimit.alert_event")
        ).scalar_one()
    assert purged == 2 and left == written - 2  # unpublished rows are never purged


def test_a_category_change_is_published_as_its_own_event(db_url: URL, engine: Engine) -> None:
    with running_simulator(PARTICIPANTS, "steady") as sim:
        resources = monitor_resources(sim, db_url, list(PARTICIPANTS))
        assert run_tick(sim, resources).success
        sim.simulator.set_category("87654321", "C")
        sim.advance(300)
        assert run_tick(sim, resources).success
        sim.advance(300)
        assert run_tick(sim, resources).success  # the new category again: no second event
    changes = [e for e in _events(engine) if e["type"].endswith("participant.category_changed")]
    assert len(changes) == 1
    [change] = changes
    jsonschema.validate(change, load_schema(), format_checker=jsonschema.FormatChecker())
    data = change["data"]
    assert (data["participant"], data["previous_category"], data["category"]) == (
        "87654321", "D", "C",
    )  # fmt: skip
    assert change["subject"] == "87654321" and data["policy"] == "*"


@pytest.mark.parametrize("behind", [dt.timedelta(minutes=20), dt.timedelta(hours=2)])
def test_a_dict_clock_behind_ours_still_alerts_and_never_goes_nodata(
    db_url: URL, engine: Engine, behind: dt.timedelta
) -> None:
    """With the skew check off, DICT's ResponseTime lags our clock: the CRITICAL evaluations
    still open alerts (nothing filters them out by time), and fresh readings are not stale."""
    with running_simulator(PARTICIPANTS, "scan-attack") as sim:
        resources = monitor_resources(
            sim, db_url, list(PARTICIPANTS), bridge_options={"max_clock_skew_seconds": 0}
        )
        sim.advance(540)
        for _ in range(4):
            assert run_tick(sim, resources, our_clock_ahead=behind.total_seconds()).success
            sim.advance(90)
    events = _events(engine)
    kinds = {(e["data"]["participant"], e["type"].rsplit(".", 1)[1]) for e in events}
    assert {(ispb, "opened") for ispb in PARTICIPANTS} <= kinds
    assert not [e for e in events if e["type"].endswith("nodata")]
    with engine.connect() as connection:
        open_rows = connection.execute(
            sa.text("SELECT ispb, policy, status FROM dict_ratelimit.active_alerts")
        ).fetchall()
    assert {(r.ispb, r.policy, r.status) for r in open_rows} == {
        (ispb, ANTISCAN, "open") for ispb in PARTICIPANTS
    }


def test_the_skew_check_refuses_a_far_dict_clock_and_says_so_with_nodata(
    db_url: URL, engine: Engine
) -> None:
    """With the check on (10 min), DICT 20 min behind: readings are refused, named, and the
    silence becomes the participant's NODATA alert, never nothing."""
    with running_simulator(PARTICIPANTS, "scan-attack") as sim:
        resources = monitor_resources(sim, db_url, list(PARTICIPANTS))
        first = run_tick(sim, resources, our_clock_ahead=1200)
        [check] = [
            e for e in first.get_asset_check_evaluations() if e.check_name == "complete_reading"
        ]
        assert not check.passed
        assert check.metadata["invalid_fields"].value == dict.fromkeys(PARTICIPANTS, "ResponseTime")
        sim.advance(16 * 60)
        assert run_tick(sim, resources, our_clock_ahead=1200).success
    nodata = [e for e in _events(engine) if e["type"].endswith("nodata")]
    assert {(e["data"]["participant"], e["data"]["policy"]) for e in nodata} == {
        (ispb, "*") for ispb in PARTICIPANTS
    }


def test_a_manual_tick_seconds_after_the_scheduled_one_opens_no_alert(
    db_url: URL, engine: Engine
) -> None:
    """The monitor's own two reads 9 s apart are not demand on POLICIES_LIST."""
    with running_simulator(PARTICIPANTS, "steady") as sim:
        resources = monitor_resources(sim, db_url, list(PARTICIPANTS))
        assert run_tick(sim, resources).success
        sim.advance(9)
        assert run_tick(sim, resources).success  # the manual tick
        sim.advance(51)
        assert run_tick(sim, resources).success  # the next scheduled one
    assert _events(engine) == []
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT elapsed_seconds, own_calls, demand_per_min, demand_lower_per_min, "
                "estimate_note "
                "FROM dict_ratelimit.policy_metric WHERE policy = 'POLICIES_LIST' "
                "AND prev_response_time IS NOT NULL ORDER BY response_time, ispb"
            )
        ).fetchall()
    assert [(r.elapsed_seconds, r.own_calls) for r in rows] == [(9, 1)] * 2 + [(51, 1)] * 2
    assert {r.estimate_note for r in rows[:2]} == {"previous reading too close for an estimate"}
    assert {r.demand_per_min for r in rows[:2]} == {None}
    # nobody else lists: our own call explains everything the bucket lost
    assert {r.demand_lower_per_min for r in rows[2:]} == {0.0}


@pytest.mark.parametrize("with_counts", [True, False])
def test_a_burst_between_two_readings_is_seen_through_dicts_429_counts(
    db_url: URL, engine: Engine, with_counts: bool
) -> None:
    """KEYS_CHECK (70, refilled each minute) is emptied from 10 to 13 min and full again
    before the next five-minute reading: only the Bridge's 429 counts tell."""
    with running_simulator(PARTICIPANTS, "burst-recovery") as sim:
        resources = monitor_resources(
            sim,
            db_url,
            list(PARTICIPANTS),
            bridge_options={"request_stats_window_seconds": 300 if with_counts else 0},
        )
        for minute in (0, 5, 10, 15):
            sim.advance(300 if minute else 0)
            assert run_tick(sim, resources).success
        truth = {
            ispb: sim.simulator.request_stats(ispb, dt.timedelta(minutes=6))[2]
            .get("KEYS_CHECK", {})
            .get(429, 0)
            for ispb in PARTICIPANTS
        }
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT m.ispb, m.available_tokens, m.capacity, m.throttled, e.level, e.reasons "
                "FROM dict_ratelimit.policy_metric m JOIN dict_ratelimit.threshold_evaluation e "
                "USING (ispb, policy, response_time) WHERE m.policy = 'KEYS_CHECK' AND "
                "m.response_time = (SELECT max(response_time) FROM dict_ratelimit.policy_metric)"
            )
        ).fetchall()
    assert len(rows) == 2
    for row in rows:
        assert row.available_tokens == row.capacity  # refilled: the reading alone says "fine"
        assert truth[row.ispb] > 0
        if with_counts:
            assert row.throttled == truth[row.ispb]
            assert row.level == "EXHAUSTED"
            [reason] = [r for r in row.reasons if r["code"] == "throttled"]
            assert (
                f"DICT throttled {truth[row.ispb]:,} requests of KEYS_CHECK since"
                in (reason["detail"])
            )
        else:
            assert row.throttled is None  # unknown, never 0
            assert row.level == "OK"
    opened = [
        e
        for e in _events(engine)
        if e["type"].endswith("alert.opened") and e["data"]["policy"] == "KEYS_CHECK"
    ]
    if with_counts:
        assert {e["data"]["participant"] for e in opened} == set(PARTICIPANTS)
        assert all(e["data"]["severity"] == "EXHAUSTED" for e in opened)
    else:
        assert opened == []
    # the exporter shows the count of the last window, and the running total
    samples = scrape_exporter(engine)
    for ispb in PARTICIPANTS:
        labels = {"ispb": ispb, "policy": "KEYS_CHECK"}
        total = samples.get("dict_rate_limit_dict_throttled_total", [])
        counted = [s.value for s in total if s.labels == labels]
        gauge = [
            s.value
            for s in samples.get("dict_rate_limit_throttled_requests", [])
            if s.labels["ispb"] == ispb and s.labels["policy"] == "KEYS_CHECK"
        ]
        if with_counts:
            assert counted == [truth[ispb]] and gauge == [truth[ispb]]
        else:
            assert counted == [] and gauge == []  # unknown: absent, never 0
