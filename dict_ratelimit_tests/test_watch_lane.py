"""The watch lane against the simulator and a real database: a key scan that empties a bucket
between two sweeps is alerted before DICT's first 429, within the monitor's own budget, and a
participant whose POLICIES_READ runs low is left alone while the others are watched."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.defs.resources import ClockResource, WatchResource
from dict_ratelimit.defs.watch import watch_sensor
from dict_ratelimit_tests.prometheus_tools import scrape_exporter
from dict_ratelimit_tests.simulation import RunningSimulator, running_simulator
from dict_ratelimit_tests.ticks import monitor_resources, run_tick

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]

ANTISCAN = "ENTRIES_READ_PARTICIPANT_ANTISCAN"
SCANNED = {"12345678": "A"}
STATS = {"request_stats_window_seconds": 300}


def evaluate_lane(sim: RunningSimulator, resources: dict[str, object]) -> dg.SensorResult:
    """One tick of the ``watch_hot_buckets`` sensor at the simulator's time."""
    sensor = watch_sensor(15)
    lane_resources = {
        **resources,
        "watch": WatchResource(),
        "clock": ClockResource(frozen_at=sim.clock.now().isoformat()),
    }
    with dg.build_sensor_context(resources=lane_resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def run_minutes(
    sim: RunningSimulator, resources: dict[str, object], until_s: int, *, lane: bool
) -> list[dg.SensorResult]:
    """Sweeps every 5 minutes from the simulator's start; with ``lane``, the sensor every 15 s
    in between (what the daemon does)."""
    results = []
    for second in range(0, until_s, 15):
        if second % 300 == 0:
            assert run_tick(sim, resources).success
        elif lane:
            results.append(evaluate_lane(sim, resources))
        sim.advance(15)
    return results


def opened_at(engine: Engine, ispb: str, policy: str) -> dt.datetime | None:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT min(opened_at) FROM dict_ratelimit.alert WHERE ispb = :i AND policy = :p"
            ),
            {"i": ispb, "p": policy},
        ).scalar_one()


def first_429(sim: RunningSimulator, ispb: str, policy: str) -> dt.datetime:
    [first, *_] = sim.simulator.buckets(ispb)[policy].intervals
    assert first.rejected > 0
    return sim.simulator.seconds_to_datetime(first.start)


@pytest.mark.parametrize("lane", [True, False], ids=["with-lane", "sweeps-only"])
def test_a_key_scan_between_two_sweeps_is_alerted_before_dicts_first_429(
    db_url: URL, engine: Engine, lane: bool
) -> None:
    """The scan starts at 10 min and empties the anti-scan bucket about three minutes later:
    the sweeps at 10 and 15 min see it full, then empty (the alert comes after the 429s); the
    lane sees the 404 surge in the Bridge's counts at 10:15 and reads the bucket going down."""
    ispb = next(iter(SCANNED))
    with running_simulator(SCANNED, "key-scan") as sim:
        resources = monitor_resources(sim, db_url, list(SCANNED), bridge_options=STATS)
        results = run_minutes(sim, resources, 960, lane=lane)
        truth = first_429(sim, ispb, ANTISCAN)
        own_reads = sim.simulator.buckets(ispb)["POLICIES_READ"]
        assert own_reads.intervals == []  # the monitor never emptied its own budget

    alerted = opened_at(engine, ispb, ANTISCAN)
    assert alerted is not None
    start = sim.simulator.seconds_to_datetime(0)
    assert dt.timedelta(minutes=12) < truth - start < dt.timedelta(minutes=14)
    if not lane:
        assert alerted >= truth  # the 5-minute cadence alone is too late
        return
    with engine.connect() as connection:
        episodes = connection.execute(
            sa.text("SELECT count(*) FROM dict_ratelimit.alert WHERE policy = :p"),
            {"p": ANTISCAN},
        ).scalar_one()
    assert episodes == 1  # readings every 15 s open one episode, they do not flap
    lead = (truth - alerted).total_seconds()
    assert lead >= 60, f"alerted only {lead:.0f} s before the first 429"
    with engine.connect() as connection:
        watched = connection.execute(
            sa.text(
                "SELECT policy, count(*) AS reads, min(polled_at) AS first "
                "FROM dict_ratelimit.policy_snapshot WHERE source = 'get' GROUP BY policy"
            )
        ).fetchall()
    by_policy = {row.policy: row for row in watched}
    # the spend is exported per participant and call (increase(...[1h]) = spend per hour)
    samples = scrape_exporter(engine)
    exported = {
        s.labels["call"]: s.value
        for s in samples["dict_rate_limit_monitor_calls_total"]
        if s.labels["ispb"] == ispb
    }
    assert exported == {"list_policies": 4, "get_policy": sum(row.reads for row in watched)}
    assert ANTISCAN in by_policy
    # the first lane read of the scanned bucket comes from the 404 surge, 15 s after the sweep
    assert by_policy[ANTISCAN].first - start <= dt.timedelta(minutes=10, seconds=16)
    # within budget: at most half of POLICIES_READ's 60/min over the 16 minutes
    assert sum(row.reads for row in watched) <= 30 * 16
    reported = [r for r in results if r.asset_events]
    assert reported, "a round that read records materializations"
    [snapshot] = [e for e in reported[0].asset_events if e.asset_key.path == ["policy_snapshots"]]
    assert snapshot.metadata["source"].value == "watch"
    spend = snapshot.metadata["own_calls_last_hour"].value
    assert spend[ispb]["list_policies"] >= 3 and spend[ispb]["get_policy"] >= 1  # type: ignore[index]
    assert "404" in str(snapshot.metadata["hot"].value) or "demand" in str(
        snapshot.metadata["hot"].value
    )
    assert all(
        r.skip_reason is not None and r.skip_reason.skip_message.startswith("read (no run): ")
        for r in reported
    )  # what Dagster shows as the tick's reason
    quiet = [r for r in results if not r.asset_events]
    assert all(
        r.skip_reason is not None and r.skip_reason.skip_message.startswith("nothing read")
        for r in quiet
    )


def test_a_participant_short_of_policies_read_is_spared_and_the_others_are_watched(
    db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    """Both participants are scanned from 5 min; the other clients of 87654321 spend POLICIES_READ
    at 1.5× its refill, so by the 5-min sweep it is under a third full: the lane slows down for
    87654321, then stops reading it (and says why) while it watches 12345678 every 15 s."""
    starved, healthy = "87654321", "12345678"
    scenario = {
        "name": "scan-and-starved-reads",
        "traffic": [
            {"policy": ANTISCAN, "from_s": 0, "to_s": 300, "refill_factor": 0.4},
            {
                "policy": ANTISCAN,
                "from_s": 300,
                "to_s": 10**9,
                "refill_factor": 0.54,
                "not_found_share": 0.8,
            },
            {
                "policy": "POLICIES_READ",
                "from_s": 0,
                "to_s": 10**9,
                "refill_factor": 1.5,
                "participant": starved,
            },
        ],
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    participants = {healthy: "A", starved: "A"}
    with running_simulator(participants, str(path)) as sim:
        resources = monitor_resources(sim, db_url, sorted(participants), bridge_options=STATS)
        results = run_minutes(sim, resources, 540, lane=True)
    with engine.connect() as connection:
        reads = connection.execute(
            sa.text(
                "SELECT ispb, polled_at FROM dict_ratelimit.policy_snapshot "
                "WHERE source = 'get' ORDER BY polled_at"
            )
        ).fetchall()
    held: list[tuple[str, str]] = []
    for result in results:
        for event in result.asset_events:
            if event.asset_key.path != ["policy_snapshots"]:
                continue
            for key, why in event.metadata["held_back"].value.items():  # type: ignore[union-attr]
                if key.startswith(starved):
                    held.append((str(event.metadata["watched_at"].value), why))
    healthy_reads = [r.polled_at for r in reads if r.ispb == healthy]
    starved_reads = [r.polled_at for r in reads if r.ispb == starved]
    assert len(healthy_reads) >= 10  # every 15 s once CRITICAL
    # POLICIES_READ at 30 % by the 5-min sweep: the lane slows down (at most a read or two
    # while the estimate is between a quarter and a half), then stops below a quarter
    assert len(starved_reads) <= 2
    assert held and all("POLICIES_READ at" in why for _, why in held)
    assert any("the lane stops below 25%" in why for _, why in held)
    first_stop = min(dt.datetime.fromisoformat(at) for at, why in held if "stops" in why)
    assert all(at < first_stop for at in starved_reads)
