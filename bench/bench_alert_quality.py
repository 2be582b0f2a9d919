"""Alert quality against the simulator's ground truth, and outbox-to-broker latency.

    .venv/bin/python bench/bench_alert_quality.py [--minutes 60] [--every 300] [--scenarios a,b]

For every built-in scenario: two participants (categories A and D), a monitor_job run every
``--every`` simulated seconds (production: 300) for ``--minutes``, then compares the alert
episodes with the simulator's 429s (ground truth, per policy and minute). An *exhaustion
episode* is a run of minutes with 429s (a gap of 5 quiet minutes splits runs). Reported:
- caught: exhaustion episodes with an alert open at or before the first 429's minute ends;
- lead: median seconds from the alert opening to the start of that minute (negative = late);
- alerts per exhaustion: alert episodes overlapping each exhaustion episode;
- false: alert episodes with no 429 on that policy while open (or within 15 min after opening).
Then the latency from the outbox commit to the broker receipt: publishes every event through
``publish_alert_events`` to a Pulsar-protocol broker (the test broker) and reports
``published_at - created_at`` (excluding the sensor's 30 s interval, which adds up to 30 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dict_ratelimit_tests

import dagster as dg
import sqlalchemy as sa
from _database import bench_database

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.events import publish_alert_events
from dict_ratelimit.defs.monitor import TICK_TAGS
from dict_ratelimit.defs.resources import (
    AlertRulesResource,
    BridgeResource,
    PostgresResource,
    PulsarResource,
    ThresholdsResource,
)
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.scenarios import BUILTIN_SCENARIOS, load_scenario
from dict_ratelimit.simulator.server import start_server
from dict_ratelimit_tests.pulsar_broker.broker import PulsarTestBroker

PARTICIPANTS = {"12345678": "A", "87654321": "D"}
START = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)


def exhaustion_episodes(simulator: Simulator, ispb: str) -> dict[str, list[tuple[int, int]]]:
    """Per policy: (first, last) minute of each run of minutes with 429s."""
    episodes: dict[str, list[tuple[int, int]]] = {}
    for policy, series in simulator._participant(ispb).stats.items():  # ground truth
        minutes = sorted(minute for minute, counts in series if counts.get(429))
        runs: list[tuple[int, int]] = []
        for minute in minutes:
            if runs and minute - runs[-1][1] <= 5:
                runs[-1] = (runs[-1][0], minute)
            else:
                runs.append((minute, minute))
        if runs:
            episodes[policy] = runs
    return episodes


def run_scenario(url: sa.URL, engine: sa.Engine, name: str, minutes: int, every: int) -> dict:
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "TRUNCATE dict_ratelimit.alert_event, dict_ratelimit.alert, "
            "dict_ratelimit.alert_track, dict_ratelimit.policy_snapshot, "
            "dict_ratelimit.policy_metric, dict_ratelimit.threshold_evaluation, "
            "dict_ratelimit.policy_request_stats, dict_ratelimit.policy, "
            "dict_ratelimit.participant CASCADE"
        )
    clock = ManualClock(START)
    simulator = Simulator(PARTICIPANTS, load_scenario(name), clock)
    server, port, _ = start_server(simulator)
    resources = {
        "postgres": PostgresResource(database_url=url.render_as_string(hide_password=False)),
        "bridge": BridgeResource(
            target=f"127.0.0.1:{port}",
            participants=",".join(PARTICIPANTS),
            max_clock_skew_seconds=0,
        ),
        "thresholds": ThresholdsResource(),
        "alert_rules": AlertRulesResource(),
    }
    job = build_definitions(resources).resolve_job_def("monitor_job")
    with dg.DagsterInstance.ephemeral() as instance:
        for _ in range(minutes * 60 // every):
            clock.advance(every)
            job.execute_in_process(
                instance=instance, partition_key=clock.now().strftime("%Y-%m-%d"), tags=TICK_TAGS
            )
    server.stop(grace=None)
    with engine.connect() as connection:
        alerts = connection.execute(
            sa.text(
                "SELECT ispb, policy, opened_at, resolved_at FROM dict_ratelimit.alert "
                "WHERE policy <> '*'"
            )
        ).fetchall()
    base = START
    exhaustions, caught, leads, per_exhaustion = 0, 0, [], []
    true_alerts: set[int] = set()
    for ispb in PARTICIPANTS:
        for policy, runs in exhaustion_episodes(simulator, ispb).items():
            mine = [(i, a) for i, a in enumerate(alerts) if (a.ispb, a.policy) == (ispb, policy)]
            for first, last in runs:
                exhaustions += 1
                start = base + dt.timedelta(minutes=first)
                end = base + dt.timedelta(minutes=last + 1)
                overlapping = [
                    (i, a)
                    for i, a in mine
                    if a.opened_at <= end and (a.resolved_at or end) >= start
                ]
                per_exhaustion.append(len(overlapping))
                for i, a in mine:
                    if a.opened_at <= end + dt.timedelta(minutes=15) and (
                        a.resolved_at is None or a.resolved_at >= start
                    ):
                        true_alerts.add(i)
                in_time = [
                    a for _, a in overlapping if a.opened_at <= start + dt.timedelta(minutes=1)
                ]
                if in_time:
                    caught += 1
                    leads.append((start - min(a.opened_at for a in in_time)).total_seconds())
    return {
        "scenario": name,
        "exhaustions": exhaustions,
        "caught": caught,
        "lead_median_s": statistics.median(leads) if leads else None,
        "alerts_per_exhaustion": statistics.mean(per_exhaustion) if per_exhaustion else None,
        "alert_episodes": len(alerts),
        "false_alerts": len(alerts) - len(true_alerts),
    }


def publish_all(url: sa.URL) -> None:
    """One sensor evaluation against a Pulsar-protocol broker on loopback."""
    with PulsarTestBroker(deduplication=True) as broker:
        with dg.build_sensor_context(
            resources={
                "postgres": PostgresResource(
                    database_url=url.render_as_string(hide_password=False)
                ),
                "pulsar": PulsarResource(service_url=broker.url),
            }
        ) as context:
            publish_alert_events(context)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--every", type=int, default=300)
    parser.add_argument("--scenarios", default=",".join(BUILTIN_SCENARIOS))
    args = parser.parse_args()
    with bench_database() as (url, engine):
        print("| scenario | exhaustion episodes | caught by first 429 | median lead | "
              "alerts per exhaustion | alert episodes | false alerts |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in args.scenarios.split(","):
            r = run_scenario(url, engine, name, args.minutes, args.every)
            lead = "" if r["lead_median_s"] is None else f"{r['lead_median_s']:.0f} s"
            ratio = (
                "" if r["alerts_per_exhaustion"] is None else f"{r['alerts_per_exhaustion']:.2f}"
            )
            print(
                f"| {name} | {r['exhaustions']} | {r['caught']} | {lead} | {ratio} | "
                f"{r['alert_episodes']} | {r['false_alerts']} |",
                flush=True,
            )
        # latency: the last scenario's outbox, published in one sensor evaluation
        with engine.connect() as connection:
            pending = connection.exec_driver_sql(
                "SELECT count(*) FROM dict_ratelimit.alert_event"
            ).scalar_one()
        if pending:
            with engine.begin() as connection:  # as if committed just now
                connection.exec_driver_sql(
                    "UPDATE dict_ratelimit.alert_event SET created_at = clock_timestamp()"
                )
            publish_all(url)
            with engine.connect() as connection:
                values = sorted(
                    row[0]
                    for row in connection.exec_driver_sql(
                        "SELECT extract(epoch FROM published_at - created_at)::float "
                        "FROM dict_ratelimit.alert_event"
                    )
                )
            print(
                f"\ncommit -> broker receipt, {len(values)} events in one sensor evaluation: "
                f"p50 {statistics.median(values) * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms "
                "(plus up to 30 s waiting for the sensor's next evaluation)"
            )


if __name__ == "__main__":
    main()
