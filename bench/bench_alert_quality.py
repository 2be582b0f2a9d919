"""Alert quality against the simulator's ground truth: the five-minute baseline beside the
production settings, per scenario; the watch lane's cost; outbox-to-broker latency.

    .venv/bin/python bench/bench_alert_quality.py [--minutes 60] [--scenarios a,b]
        [--modes 5-min,5-min+counts,production] [--run-overhead 10]

Every scenario runs once per mode, each on a fresh database, with two participants (categories
A and D) and the simulator's clock driven in 5-s steps (levels sampled at every step):

- ``5-min``: a monitor_job run every 300 s, no request counts (the system before the lane);
- ``5-min+counts``: the same with the Bridge's request counts (DICT's 429s between readings);
- ``production``: counts, plus the ``watch_hot_buckets`` sensor every 15 s between the runs,
  with the default budget.

Ground truth is the simulator's buckets: an *exhaustion* is a run of empty intervals during
which DICT rejected requests (intervals less than 5 min apart are one exhaustion); its *drain*
is the time from the bucket's first sample below half-full, after its last sample at 90 % or
more, to its first 429 (a stepped bucket bounces back at every refill step on its way down; a
"slow" exhaustion drained in two minutes or more). An alert *relates* to an exhaustion when it was
open at some point from 15 min before the first 429 to 5 min after the last one. Reported per
scenario and mode: exhaustions (slow ones), alerted before the first 429 (slow ones), at most
60 s after it, never alerted, median lead (first 429 − opening of the first related alert),
false alerts (relating to no exhaustion), alert episodes per exhaustion, and the monitor's own
DICT calls per participant and hour (GetPolicy, listings; the busiest participant), with the
busiest minute, and whether its own buckets ever ran empty.

Then the lane's cost: the sensor's evaluation time (reading to alert in the same tick), and,
with ``--run-overhead N``, N monitor_job runs on an instance with Dagster's Postgres storage
(what a run per lane round would pay before the daemon's process launch is counted).
Results go to docs/measurements.md by hand, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dict_ratelimit_tests

import dagster as dg
import sqlalchemy as sa
from _database import DatabaseFactory, bench_server

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.events import publish_alert_events
from dict_ratelimit.defs.metrics import tick_partition
from dict_ratelimit.defs.monitor import TICK_TAGS
from dict_ratelimit.defs.resources import (
    AlertRulesResource,
    BridgeResource,
    ClockResource,
    PostgresResource,
    PulsarResource,
    ThresholdsResource,
    WatchResource,
)
from dict_ratelimit.defs.watch import watch_sensor
from dict_ratelimit.devstack import dagster_environment
from dict_ratelimit.domain.watch import WatchRules
from dict_ratelimit.settings import project_root
from dict_ratelimit.simulator.bucket import TokenBucket
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.scenarios import load_scenario
from dict_ratelimit.simulator.server import start_server
from dict_ratelimit_tests.pulsar_broker.broker import PulsarTestBroker

PARTICIPANTS = {"12345678": "A", "87654321": "D"}
START = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
SCENARIOS = "steady,scan-attack,key-scan,burst-recovery,slow-leak,category-downgrade,demo"
STEP_S = 5
SWEEP_S = 300
LANE_S = 15
MERGE_GAP_S = 300
SLOW_DRAIN_S = 120
MODES = {
    "5-min": {"counts": False, "lane": False},
    "5-min+counts": {"counts": True, "lane": False},
    "production": {"counts": True, "lane": True},
}


@dataclass
class Exhaustion:
    ispb: str
    policy: str
    first_429: dt.datetime
    end: dt.datetime
    drain_s: float | None  # from half-full (after its last time 90 % full); None: never full

    @property
    def slow(self) -> bool:
        return self.drain_s is not None and self.drain_s >= SLOW_DRAIN_S


@dataclass
class Outcome:
    scenario: str
    mode: str
    exhaustions: list[Exhaustion] = field(default_factory=list)
    before: int = 0
    slow_before: int = 0
    within_60: int = 0
    never: int = 0
    leads: list[float] = field(default_factory=list)
    slow_leads: list[float] = field(default_factory=list)
    per_exhaustion: list[int] = field(default_factory=list)
    alert_episodes: int = 0
    false_alerts: int = 0
    reads_per_hour: float = 0.0
    listings_per_hour: float = 0.0
    busiest_minute: tuple[int, int] = (0, 0)
    own_bucket_emptied: bool = False
    sensor_seconds: list[float] = field(default_factory=list)


def exhaustions(
    buckets: dict[tuple[str, str], TokenBucket],
    samples: dict[tuple[str, str], list[tuple[float, float]]],
    end_s: float,
) -> list[Exhaustion]:
    """Ground truth: every bucket's runs of empty intervals with rejected requests."""
    found = []
    for (ispb, policy), bucket in buckets.items():
        runs: list[list[float]] = []
        for interval in bucket.intervals:
            if interval.rejected == 0:
                continue
            stop = interval.end if interval.end is not None else end_s
            if runs and interval.start - runs[-1][1] < MERGE_GAP_S:
                runs[-1][1] = stop
            else:
                runs.append([interval.start, stop])
        series = samples[(ispb, policy)]
        for first, last in runs:
            full = [t for t, ratio in series if t <= first and ratio >= 0.9]
            below = [t for t, ratio in series if full and full[-1] <= t <= first and ratio < 0.5]
            found.append(
                Exhaustion(
                    ispb,
                    policy,
                    START + dt.timedelta(seconds=first),
                    START + dt.timedelta(seconds=last),
                    (first - below[0] if below else 0.0) if full else None,
                )
            )
    return found


def busiest(times: list[dt.datetime]) -> int:
    """The most calls in any 60-s window."""
    times = sorted(times)
    best, low = 0, 0
    for high, at in enumerate(times):
        while at - times[low] >= dt.timedelta(minutes=1):
            low += 1
        best = max(best, high - low + 1)
    return best


def score(outcome: Outcome, engine: sa.Engine, minutes: int) -> None:
    end = START + dt.timedelta(minutes=minutes)
    with engine.connect() as connection:
        alerts = connection.execute(
            sa.text(
                "SELECT ispb, policy, opened_at, resolved_at FROM dict_ratelimit.alert "
                "WHERE policy <> '*'"
            )
        ).fetchall()
        calls = connection.execute(
            sa.text(
                "SELECT DISTINCT ispb, source, polled_at, "
                "CASE WHEN source = 'get' THEN policy END AS policy "
                "FROM dict_ratelimit.policy_snapshot"
            )
        ).fetchall()
    outcome.alert_episodes = len(alerts)
    related_any: set[int] = set()
    for exhaustion in outcome.exhaustions:
        window_start = exhaustion.first_429 - dt.timedelta(minutes=15)
        window_end = exhaustion.end + dt.timedelta(minutes=5)
        related = [
            (i, a)
            for i, a in enumerate(alerts)
            if (a.ispb, a.policy) == (exhaustion.ispb, exhaustion.policy)
            and a.opened_at <= window_end
            and (a.resolved_at or end) >= window_start
        ]
        related_any.update(i for i, _ in related)
        outcome.per_exhaustion.append(len(related))
        if not related:
            outcome.never += 1
            continue
        opened = min(a.opened_at for _, a in related)
        lead = (exhaustion.first_429 - opened).total_seconds()
        outcome.leads.append(lead)
        if exhaustion.slow:
            outcome.slow_leads.append(lead)
        if lead >= 0:
            outcome.before += 1
            outcome.slow_before += exhaustion.slow
        if lead >= -60:
            outcome.within_60 += 1
    outcome.false_alerts = len(alerts) - len(related_any)
    hours = minutes / 60
    for ispb in PARTICIPANTS:
        gets = [c.polled_at for c in calls if c.ispb == ispb and c.source == "get"]
        lists = [c.polled_at for c in calls if c.ispb == ispb and c.source == "list"]
        if len(gets) / hours >= outcome.reads_per_hour:
            outcome.reads_per_hour = len(gets) / hours
            outcome.listings_per_hour = len(lists) / hours
        outcome.busiest_minute = (
            max(outcome.busiest_minute[0], busiest(gets)),
            max(outcome.busiest_minute[1], busiest(lists)),
        )


def run_scenario(
    database: DatabaseFactory, name: str, mode: str, minutes: int, index: int
) -> Outcome:
    url, engine = database(f"quality_{index}")
    counts, lane = MODES[mode]["counts"], MODES[mode]["lane"]
    clock = ManualClock(START)
    simulator = Simulator(PARTICIPANTS, load_scenario(name), clock)
    server, port, _ = start_server(simulator)
    resources: dict[str, object] = {
        "postgres": PostgresResource(database_url=url.render_as_string(hide_password=False)),
        "bridge": BridgeResource(
            target=f"127.0.0.1:{port}",
            participants=",".join(PARTICIPANTS),
            max_clock_skew_seconds=0,
            retry_wait_seconds=0.1,
            request_stats_window_seconds=SWEEP_S if counts else 0,
        ),
        "thresholds": ThresholdsResource(),
        "alert_rules": AlertRulesResource(),
        "watch": WatchResource(),
    }
    job = build_definitions(resources).resolve_job_def("monitor_job")
    sensor = watch_sensor(LANE_S)
    outcome = Outcome(name, mode)
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for second in range(0, minutes * 60, STEP_S):
            for ispb in PARTICIPANTS:
                for policy, bucket in simulator.buckets(ispb).items():
                    samples.setdefault((ispb, policy), []).append(
                        (float(second), bucket.level / bucket.capacity)
                    )
            now = clock.now()
            frozen = ClockResource(frozen_at=now.isoformat())
            if second % SWEEP_S == 0:
                with dg.partition_loading_context(effective_dt=now):
                    result = job.execute_in_process(
                        instance=instance,
                        partition_key=tick_partition(now),
                        tags=TICK_TAGS,
                        resources={"clock": frozen},
                        raise_on_error=False,
                    )
                if not result.success:
                    raise SystemExit(f"{name}/{mode}: the tick at {now} failed")
            elif lane and second % LANE_S == 0:
                started = time.perf_counter()
                with dg.build_sensor_context(
                    instance=instance, resources={**resources, "clock": frozen}
                ) as context:
                    sensor(context)
                outcome.sensor_seconds.append(time.perf_counter() - started)
            clock.advance(STEP_S)
    buckets = {
        (ispb, policy): bucket
        for ispb in PARTICIPANTS
        for policy, bucket in simulator.buckets(ispb).items()
    }
    server.stop(grace=None)
    outcome.exhaustions = exhaustions(buckets, samples, float(minutes * 60))
    outcome.own_bucket_emptied = any(
        bucket.intervals
        for (_, policy), bucket in buckets.items()
        if policy.startswith("POLICIES_")
    )
    score(outcome, engine, minutes)
    return outcome


def row(o: Outcome) -> str:
    total, slow = len(o.exhaustions), sum(e.slow for e in o.exhaustions)
    lead = f"{statistics.median(o.leads):.0f} s" if o.leads else "–"
    slow_lead = f"{statistics.median(o.slow_leads):.0f} s" if o.slow_leads else "–"
    ratio = f"{max(o.per_exhaustion)}" if o.per_exhaustion else "–"
    return (
        f"| {o.scenario} | {o.mode} | {total} ({slow}) | {o.before} ({o.slow_before}) | "
        f"{o.within_60} | {o.never} | {lead} ({slow_lead}) | {o.false_alerts} | {ratio} | "
        f"{o.reads_per_hour:.0f} / {o.listings_per_hour:.0f} | "
        f"{o.busiest_minute[0]} / {o.busiest_minute[1]} | "
        f"{'EMPTIED' if o.own_bucket_emptied else 'no'} |"
    )


HEADER = (
    "| scenario | mode | exhaustions (slow) | alerted before first 429 (slow) | "
    "≤ 60 s after | never | median lead (slow) | false alerts | max alerts per exhaustion | "
    "own calls/h: reads / listings | busiest minute: reads / listings | own bucket empty |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def run_overhead(database: DatabaseFactory, repeat: int) -> list[float]:
    """Seconds per monitor_job run on an instance whose runs and events go to Postgres through
    dagster-postgres (as deployed), against a steady simulator."""
    app_url, _ = database("overhead_app")
    instance_url, _ = database("overhead_dagster", schema=False)
    home = Path(tempfile.mkdtemp(prefix="bench-dagster-home-"))
    shutil.copyfile(project_root() / "dagster.yaml", home / "dagster.yaml")
    saved = dict(os.environ)
    os.environ.update(dagster_environment(app_url, instance_url, home))
    clock = ManualClock(START)
    simulator = Simulator(PARTICIPANTS, load_scenario("steady"), clock)
    server, port, _ = start_server(simulator)
    resources = {
        "postgres": PostgresResource(database_url=app_url.render_as_string(hide_password=False)),
        "bridge": BridgeResource(
            target=f"127.0.0.1:{port}",
            participants=",".join(PARTICIPANTS),
            max_clock_skew_seconds=0,
        ),
        "thresholds": ThresholdsResource(),
        "alert_rules": AlertRulesResource(),
    }
    job = build_definitions(resources).resolve_job_def("monitor_job")
    seconds = []
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for _ in range(repeat):
                clock.advance(SWEEP_S)
                now = clock.now()
                started = time.perf_counter()
                with dg.partition_loading_context(effective_dt=now):
                    job.execute_in_process(
                        instance=instance,
                        partition_key=tick_partition(now),
                        tags=TICK_TAGS,
                        resources={"clock": ClockResource(frozen_at=now.isoformat())},
                    )
                seconds.append(time.perf_counter() - started)
    finally:
        server.stop(grace=None)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)
    return seconds


def publish_latency(url: sa.URL, engine: sa.Engine) -> str:
    """Commit → broker receipt of the outbox of one run, in one sensor evaluation."""
    with engine.connect() as connection:
        pending = connection.exec_driver_sql(
            "SELECT count(*) FROM dict_ratelimit.alert_event"
        ).scalar_one()
    if not pending:
        return "no events to publish"
    with engine.begin() as connection:  # as if committed just now
        connection.exec_driver_sql(
            "UPDATE dict_ratelimit.alert_event SET created_at = clock_timestamp()"
        )
    with PulsarTestBroker(deduplication=True) as broker:
        with dg.build_sensor_context(
            resources={
                "postgres": PostgresResource(
                    database_url=url.render_as_string(hide_password=False)
                ),
                "pulsar": PulsarResource(service_url=broker.url),
                "clock": ClockResource(),
            }
        ) as context:
            publish_alert_events(context)
    with engine.connect() as connection:
        values = sorted(
            row[0]
            for row in connection.exec_driver_sql(
                "SELECT extract(epoch FROM published_at - created_at)::float "
                "FROM dict_ratelimit.alert_event"
            )
        )
    return (
        f"commit -> broker receipt, {len(values)} events in one sensor evaluation: "
        f"p50 {statistics.median(values) * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms "
        "(plus up to 30 s waiting for the sensor's next evaluation)"
    )


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, " + (
        f"max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--scenarios", default=SCENARIOS)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--run-overhead", type=int, default=0, metavar="N")
    args = parser.parse_args()
    rules = WatchRules()
    print(
        f"{args.minutes} simulated minutes per run, participants {PARTICIPANTS}; budget per "
        f"participant: {rules.read_budget_ratio:.0%} of POLICIES_READ (30 reads/min, 1,800/h), "
        f"{rules.list_budget_ratio:.0%} of POLICIES_LIST (1.5 listings/min, 90/h)\n"
    )
    sensor_seconds: list[float] = []
    index = 0
    with bench_server() as database:
        print(HEADER)
        for name in args.scenarios.split(","):
            for mode in args.modes.split(","):
                index += 1
                outcome = run_scenario(database, name, mode, args.minutes, index)
                sensor_seconds += outcome.sensor_seconds
                print(row(outcome), flush=True)
        if sensor_seconds:
            print(f"\nwatch lane sensor evaluation (reading to alert): {_ms(sensor_seconds)}")
        if args.run_overhead:
            overhead = run_overhead(database, args.run_overhead)
            print(f"monitor_job run, Postgres run storage: {_ms(overhead)}")
        print(publish_latency(*database(f"quality_{index}", schema=False)))


if __name__ == "__main__":
    main()
