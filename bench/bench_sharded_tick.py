"""Benchmark a whole monitor tick as Dagster runs, unsharded and in shards, one process per run.

    .venv/bin/python bench/bench_sharded_tick.py [--participants 100,300,1000] [--shards 4]
                                                 [--repeat 3]

Starts an embedded PostgreSQL (fsync on, as in dev) holding the application database and the
Dagster instance's database, and a DICT simulator on loopback whose clock follows the wall
clock. Each tick starts one Python process per run, as the Kubernetes run launcher starts one
pod per run: the process imports the project, loads the definitions from the environment
(``DICT_RATELIMIT_*``, ``DATABASE_URL``, ``DAGSTER_HOME`` with our dagster.yaml: runs and
events in PostgreSQL) and executes ``monitor_job`` in process with the tick's tags (a shard's
tag when sharded). All runs of a tick start together; the tick's wall time is from the first
start to the last exit. For every run: its wall time (process start to exit), the time to
import and load the definitions, the run itself, and the peak resident memory of its process
(``ru_maxrss`` from ``wait4``). One warm-up tick per size and mode is not counted (the first
tick also creates the alert tracks). Results go to docs/measurements.md by hand, with the
machine they ran on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _database import bench_server  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]


def child(shard: str | None) -> None:
    """One run, in this process: what a run worker does, minus the daemon."""
    started = time.perf_counter()
    import dagster as dg

    from dict_ratelimit.definitions import build_definitions
    from dict_ratelimit.defs.metrics import tick_partition
    from dict_ratelimit.defs.monitor import TICK_TAGS
    from dict_ratelimit.defs.tags import SHARD_KEY, shard_tags
    from dict_ratelimit.domain.shards import Shard

    job = build_definitions().resolve_job_def("monitor_job")
    tags = dict(TICK_TAGS)
    if shard is not None:
        tags |= shard_tags(Shard.parse(shard)) | {SHARD_KEY: shard}
    loaded = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=tick_partition(dt.datetime.now(dt.timezone.utc)),
            tags=tags,
            raise_on_error=False,
        )
    done = time.perf_counter()
    [snapshots] = [
        e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
        if e.step_materialization_data.materialization.asset_key == dg.AssetKey("policy_snapshots")
    ]
    print(
        json.dumps(
            {
                "success": result.success,
                "load_seconds": loaded - started,
                "run_seconds": done - loaded,
                "rows": snapshots.metadata["rows_inserted"].value,
                "bridge_seconds": snapshots.metadata["bridge_seconds"].value,
            }
        )
    )


def _tick(environment: dict[str, str], shards: list[str | None], simulator) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Bring the simulator to now and hold its clock there (replaying every participant's
    traffic is the simulator's cost, not the Bridge's); then start one process per shard at
    once, wait for all; per-run and whole-tick figures."""
    clock = simulator.clock
    clock.advance((dt.datetime.now(dt.timezone.utc) - clock.now()).total_seconds())
    simulator.now()
    started = time.perf_counter()
    processes = []
    for shard in shards:
        arguments = [sys.executable, __file__, "--child"] + ([shard] if shard else [])
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed below) Dagster log: shown on failure
        process = subprocess.Popen(arguments, env=environment, stdout=subprocess.PIPE, stderr=log)
        processes.append((process, log, time.perf_counter()))
    runs = []
    for process, log, began in processes:
        _, status, usage = os.wait4(process.pid, 0)
        ended = time.perf_counter()
        process.returncode = os.waitstatus_to_exitcode(status)
        output = process.stdout.read() if process.stdout else b""
        log.seek(0)
        if process.returncode != 0:
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise SystemExit(f"run process failed ({process.returncode})")
        log.close()
        report = json.loads(output.decode().strip().splitlines()[-1])
        if not report["success"]:
            raise SystemExit(f"run failed: {report}")
        report["wall_seconds"] = ended - began
        report["max_rss_mib"] = usage.ru_maxrss / 1024  # kilobytes on Linux
        runs.append(report)
    return {"wall_seconds": time.perf_counter() - started, "runs": runs}


def bench(
    database, participants: int, shard_count: int, repeat: int, simulator, target: str
) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Ticks of ``participants`` in ``shard_count`` runs (1: unsharded), on fresh databases."""
    from dict_ratelimit.devstack import dagster_environment

    suffix = f"{participants}_{shard_count}"
    url, _ = database(f"app_{suffix}")
    instance_url, _ = database(f"dagster_{suffix}", schema=False)
    home = Path(tempfile.mkdtemp(prefix="bench-dagster-home-"))
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    ispbs = [f"{10_000_000 + i:08d}" for i in range(participants)]
    environment = {
        **os.environ,
        **dagster_environment(url, instance_url, home),
        "DICT_RATELIMIT_BRIDGE_TARGET": target,
        "DICT_RATELIMIT_PARTICIPANTS": ",".join(ispbs),
        "DICT_RATELIMIT_MAX_CLOCK_SKEW_SECONDS": "0",
        "DICT_RATELIMIT_MONITOR_SHARDS": str(shard_count),
    }
    labels: list[str | None] = (
        [f"{i}/{shard_count}" for i in range(shard_count)] if shard_count > 1 else [None]
    )
    ticks = []
    try:
        for attempt in range(repeat + 1):
            tick = _tick(environment, labels, simulator)
            rows = sum(int(run["rows"]) for run in tick["runs"])  # type: ignore[index]
            if rows != participants * 28:
                raise SystemExit(f"tick stored {rows} rows, expected {participants * 28}")
            if attempt:  # the first is the warm-up
                ticks.append(tick)
            time.sleep(1.1)  # DICT's ResponseTime has a resolution of a second
    finally:
        shutil.rmtree(home, ignore_errors=True)
    runs = [run for tick in ticks for run in tick["runs"]]  # type: ignore[attr-defined]
    return {
        "tick_median": statistics.median(float(t["wall_seconds"]) for t in ticks),  # type: ignore[arg-type]
        "tick_max": max(float(t["wall_seconds"]) for t in ticks),  # type: ignore[arg-type]
        "run_wall_median": statistics.median(r["wall_seconds"] for r in runs),
        "load_median": statistics.median(r["load_seconds"] for r in runs),
        "run_median": statistics.median(r["run_seconds"] for r in runs),
        "bridge_median": statistics.median(r["bridge_seconds"] for r in runs),
        "rss_max": max(r["max_rss_mib"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", default="100,300,1000")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs="?", const="", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child or None)
        return

    from dict_ratelimit.simulator.clock import ManualClock
    from dict_ratelimit.simulator.engine import Simulator
    from dict_ratelimit.simulator.scenarios import load_scenario
    from dict_ratelimit.simulator.server import start_server

    sizes = [int(n) for n in args.participants.split(",")]
    everyone = [f"{10_000_000 + i:08d}" for i in range(max(sizes))]
    simulator = Simulator(
        dict.fromkeys(everyone, "A"),
        load_scenario("steady"),
        ManualClock(dt.datetime.now(dt.timezone.utc).replace(microsecond=0)),
    )
    server, port, _ = start_server(simulator, max_workers=64)
    print(
        f"{'participants':>12} {'runs':>5} {'tick p50':>9} {'tick max':>9} {'run wall p50':>13} "
        f"{'import+load p50':>16} {'run p50':>8} {'of it Bridge':>13} {'peak RSS':>9}"
    )
    try:
        with bench_server() as database:
            for size in sizes:
                for shard_count in (1, args.shards):
                    r = bench(
                        database, size, shard_count, args.repeat, simulator, f"127.0.0.1:{port}"
                    )
                    print(
                        f"{size:>12} {shard_count:>5} {r['tick_median']:>8.2f}s "
                        f"{r['tick_max']:>8.2f}s {r['run_wall_median']:>12.2f}s "
                        f"{r['load_median']:>15.2f}s {r['run_median']:>7.2f}s "
                        f"{r['bridge_median']:>12.2f}s "
                        f"{r['rss_max']:>6.0f} MiB",
                        flush=True,
                    )
    finally:
        server.stop(None)


if __name__ == "__main__":
    main()
