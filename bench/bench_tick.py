"""Benchmark one monitor tick against the simulator: Bridge calls and insert, separately.

    .venv/bin/python bench/bench_tick.py [--repeat 5] [--participants 1,10,100]

Starts its own embedded PostgreSQL (fsync on, as in dev) and a simulator on loopback, runs N
ticks per size (each tick 300 simulated seconds after the previous one; the simulator replays
that traffic before the clock starts, since a real Bridge has no such cost) and prints the
median and max of: the concurrent ListPolicies sweep (gRPC + validation), the insert
transaction, the whole asset body measured by a monitor_job run, and the alerts step
(load + compute + write of the alert machine, from its metadata). Results are recorded in
docs/measurements.md by hand, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

from _database import bench_database  # bench/ is on sys.path when run as a script

from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.bridge.poller import poll_participants
from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.monitor import TICK_TAGS
from dict_ratelimit.defs.resources import BridgeResource, PostgresResource, ThresholdsResource
from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.scenarios import load_scenario
from dict_ratelimit.simulator.server import start_server
from dict_ratelimit.storage.database import create_db_engine
from dict_ratelimit.storage.snapshots import store_readings


def bench_size(url: str, participants: int, repeat: int) -> dict[str, float]:
    ispbs = [f"{10_000_000 + i:08d}" for i in range(participants)]
    clock = ManualClock(dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    simulator = Simulator(dict.fromkeys(ispbs, "A"), load_scenario("steady"), clock)
    server, port, _ = start_server(simulator, max_workers=32)
    engine = create_db_engine(url)
    sweeps, inserts, bodies, alert_steps = [], [], [], []
    try:
        with BridgeClient(f"127.0.0.1:{port}") as client:
            for _ in range(repeat):
                clock.advance(300)
                simulator.now()  # replay the simulated traffic first: not the Bridge's cost
                started = time.perf_counter()
                result = poll_participants(client, ispbs, KNOWN_POLICY_NAMES, max_skew=None)
                sweeps.append(time.perf_counter() - started)
                assert not result.failures, result.failures
                started = time.perf_counter()
                with engine.begin() as connection:
                    stored = store_readings(connection, result.all_readings)
                inserts.append(time.perf_counter() - started)
                assert stored == participants * 28
        job = build_definitions(
            {
                "postgres": PostgresResource(database_url=url),
                "bridge": BridgeResource(
                    target=f"127.0.0.1:{port}",
                    participants=",".join(ispbs),
                    max_clock_skew_seconds=0,
                ),
                "thresholds": ThresholdsResource(),
            }
        ).resolve_job_def("monitor_job")
        for _ in range(repeat):
            clock.advance(300)
            simulator.now()
            run = job.execute_in_process(
                raise_on_error=False,
                partition_key=clock.now().strftime("%Y-%m-%d"),
                tags=TICK_TAGS,
            )
            [materialization] = run.asset_materializations_for_node("policy_snapshots")
            bodies.append(materialization.metadata["total_seconds"].value)
            [alerts] = run.asset_materializations_for_node("alerts")
            alert_steps.append(
                sum(alerts.metadata[k].value for k in ("load_seconds", "compute_seconds",
                                                        "write_seconds"))
            )  # fmt: skip
    finally:
        engine.dispose()
        server.stop(None)
    return {
        "sweep_median": statistics.median(sweeps),
        "sweep_max": max(sweeps),
        "insert_median": statistics.median(inserts),
        "insert_max": max(inserts),
        "asset_body_median": statistics.median(bodies),
        "alerts_median": statistics.median(alert_steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--participants", default="1,10,100")
    args = parser.parse_args()
    with bench_database() as (url, _engine):
        print(
            f"{'participants':>12} {'rows':>6} {'sweep p50':>10} {'sweep max':>10} "
            f"{'insert p50':>10} {'insert max':>10} {'asset body p50':>15} {'alerts p50':>11}"
        )
        for size in (int(n) for n in args.participants.split(",")):
            r = bench_size(url.render_as_string(hide_password=False), size, args.repeat)
            print(
                f"{size:>12} {size * 28:>6} {r['sweep_median']:>9.3f}s "
                f"{r['sweep_max']:>9.3f}s {r['insert_median']:>9.3f}s "
                f"{r['insert_max']:>9.3f}s {r['asset_body_median']:>14.3f}s "
                f"{r['alerts_median']:>10.3f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
