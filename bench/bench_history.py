"""Does a tick cost the same in month 13 as on day 1? Queries and ticks over stored history.

    .venv/bin/python bench/bench_history.py [--participants 10] [--history-policies 10]
        [--months 13] [--first-days 30] [--older-step 300] [--repeat 5] [--plans docs/plans]

Starts its own embedded PostgreSQL (fsync on), measures ticks and queries on an empty
database, then loads ``--first-days`` (30) of synthetic five-minute history by COPY
(``bench/_history.py``: snapshots, metrics, evaluations, request counts, sweeps, alert
history) for N participants into another database and measures again:

- every query of the tick (previous readings, the store with its late-reading probe, the
  metric pairs by key, the alert tracks and observations), of the watch lane, the
  latest-state views and each exporter query: median of ``--repeat`` runs, with realistic
  parameters (the newest sweep);
- whole ticks through the pipeline (sweep of all 28 listed policies against the simulator on
  loopback, store, derive, alerts): median and max of ``--repeat`` ticks, by stage;

then loads the remaining ``--months - 1`` older months (``--older-step`` seconds between their
readings: 300 = five-minute readings like the first month; more keeps big runs on this disk),
measures everything again, and finally drops the oldest month through the retention code
(DETACH … CONCURRENTLY, then DROP), reporting the time the parents were locked. The plans of
the slowest queries at the end are written to ``--plans``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _database import bench_server  # bench/ is on sys.path when run as a script
from _history import load_history

from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.clock import FixedClock
from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES, LISTED_POLICY_NAMES
from dict_ratelimit.domain.retention import RetentionPolicy, add_months, month_start
from dict_ratelimit.exporter import collector
from dict_ratelimit.exporter.collector import DictRateLimitCollector
from dict_ratelimit.pipeline.tick import PipelineSettings, run_tick
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.scenarios import load_scenario
from dict_ratelimit.simulator.server import start_server
from dict_ratelimit.storage import alerts as alert_storage
from dict_ratelimit.storage import metrics as metric_storage
from dict_ratelimit.storage import snapshots as snapshot_storage
from dict_ratelimit.storage import watch as watch_storage
from dict_ratelimit.storage.partitions import apply_retention
from dict_ratelimit.storage.queues import key_parameters

UTC = dt.timezone.utc


class _Done(Exception):
    """No older months to load: the measurements are complete."""


def _queries(
    ispbs: list[str], keys: list[tuple[str, str, dt.datetime]]
) -> dict[str, tuple[str, dict]]:
    by_key = key_parameters(keys)
    newest = by_key["last"]
    return {
        "tick: previous readings": (
            snapshot_storage._PREVIOUS_READINGS,
            {"ispbs": ispbs, "low": newest - dt.timedelta(days=1, minutes=5), "high": newest},
        ),
        "tick: metric pairs by key": (metric_storage._BY_KEYS, by_key),
        "tick: alert tracks": (alert_storage._TRACKS, {}),
        **{
            f"tick: alert observations by key ({table})": (sql, by_key)
            for table, sql in alert_storage.OBSERVATION_READS.items()
        },
        "view: latest_policy_health": ("SELECT * FROM dict_ratelimit.latest_policy_health", {}),
        "exporter: latest per policy": (
            collector._LATEST,
            {"low": newest - dt.timedelta(days=2), "high": newest},
        ),
        "exporter: open alerts": (collector._OPEN_ALERTS, {}),
        "exporter: alert totals": (collector._ALERT_TOTALS, {}),
        "exporter: latest sweep": (collector._LATEST_TICK, {}),
        "exporter: counters": (collector._MONITOR_COUNTERS, {}),
        "exporter: outbox": (collector._OUTBOX, {}),
        "exporter: participant freshness": (collector._PARTICIPANT_FRESHNESS, {}),
        "exporter: own calls": (collector._OWN_CALLS, {}),
        "watch: bucket state": (
            watch_storage._BUCKETS,
            {"ispbs": ispbs, "low": newest - dt.timedelta(days=2), "high": newest},
        ),
        "watch: own calls (budget)": (
            watch_storage._OWN_CALLS,
            {
                "ispbs": ispbs,
                "low": newest - dt.timedelta(days=1, minutes=6),
                "high": newest + dt.timedelta(days=1),
                "list_policy": "POLICIES_LIST",
                "since": newest - dt.timedelta(minutes=6),
            },
        ),
        "watch: spend last hour": (
            watch_storage._SPEND,
            {"ispbs": ispbs, "since": newest - dt.timedelta(hours=1), "now": newest},
        ),
    }


def _time_query(engine, sql: str, params: dict, repeat: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        query = cursor.mogrify(sql, params).decode()
        for _ in range(repeat + 1):  # the first run warms the cache and is not counted
            started = time.perf_counter()
            cursor.execute(query)
            cursor.fetchall()
            samples.append(time.perf_counter() - started)
        cursor.close()
    return statistics.median(samples[1:])


def _plan(engine, sql: str, params: dict) -> str:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        query = cursor.mogrify(sql, params).decode()
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}")
        text = "\n".join(row[0] for row in cursor.fetchall())
        cursor.close()
    return text


def _newest_keys(engine) -> list[tuple[str, str, dt.datetime]]:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        newest = connection.exec_driver_sql(
            "SELECT max(last_reading_at) FROM dict_ratelimit.participant"
        ).scalar()
        rows = connection.exec_driver_sql(
            "SELECT ispb, policy, response_time FROM dict_ratelimit.policy_snapshot "
            "WHERE response_time >= %(t)s",
            {"t": newest - dt.timedelta(minutes=4)},
        ).fetchall()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def measure(engine, ispbs, sim, clock, client, repeat, label) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    settings = PipelineSettings(
        known_policies=KNOWN_POLICY_NAMES,
        max_skew=None,
        stats_window=dt.timedelta(minutes=5),
        max_concurrency=32,
    )
    ticks: list[dict[str, float]] = []
    for _ in range(repeat):
        clock.advance(300)
        sim.now()  # the simulator's own replay is not the monitor's cost
        report = run_tick(engine, client, ispbs, settings, FixedClock(clock.now()))
        assert not report.poll.failures, report.poll.failures
        ticks.append(report.timings)
    queries = _queries(ispbs, _newest_keys(engine))
    timed = {
        name: _time_query(engine, sql, params, repeat) for name, (sql, params) in queries.items()
    }
    scrape = []
    scraper = DictRateLimitCollector(engine, clock=FixedClock(clock.now()))
    for _ in range(repeat):
        started = time.perf_counter()
        list(scraper.collect())
        scrape.append(time.perf_counter() - started)
    timed["exporter: whole scrape (collect)"] = statistics.median(scrape)
    stages = {
        f"tick: {stage} (pipeline)": statistics.median(t[stage] for t in ticks)
        for stage in ("bridge_seconds", "store_seconds", "derive_seconds", "alerts_seconds")
    }
    totals = [t["total_seconds"] for t in ticks]
    return {
        "label": label,
        "queries": {**stages, **timed},
        "tick_total_median": statistics.median(totals),
        "tick_total_max": max(totals),
        "plans": queries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--history-policies", type=int, default=10)
    parser.add_argument("--months", type=int, default=13)
    parser.add_argument("--first-days", type=int, default=30)
    parser.add_argument("--older-step", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--plans", type=Path, default=None)
    args = parser.parse_args()

    ispbs = [f"{20_000_000 + i:08d}" for i in range(args.participants)]
    policies = list(LISTED_POLICY_NAMES)[: args.history_policies]
    now = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    month_ago = now - dt.timedelta(days=args.first_days)
    oldest = dt.datetime.combine(
        add_months(month_start(now.date()), -args.months), dt.time(), tzinfo=UTC
    )
    results = []
    with bench_server() as database:
        _, empty = database("empty")
        _, engine = database("bench")
        clock = ManualClock(now - dt.timedelta(hours=1))
        sim = Simulator(dict.fromkeys(ispbs, "A"), load_scenario("steady"), clock)
        server, port, _ = start_server(sim, max_workers=32)
        try:
            with BridgeClient(f"127.0.0.1:{port}", deadline_seconds=30) as client:
                # on an empty database: ticks an hour before the history's end (its readings
                # are then deleted, so the history loads as it would on a new install)
                results.append(measure(empty, ispbs, sim, clock, client, args.repeat, "empty"))
                print(f"loading {args.first_days} days for {len(ispbs)} participants × "
                      f"{len(policies)} policies", file=sys.stderr)  # fmt: skip
                loaded = load_history(engine, ispbs, month_ago, now, policies=policies)
                clock.advance((now - clock.now()).total_seconds())
                results.append(
                    measure(
                        engine, ispbs, sim, clock, client, args.repeat, f"{args.first_days} days"
                    )
                )
                if args.months <= 1:
                    raise _Done
                print(f"loading {args.months - 1} older months (step {args.older_step} s)",
                      file=sys.stderr)  # fmt: skip
                more = load_history(engine, ispbs, oldest, month_ago, policies=policies,
                                    step=args.older_step, seed=11)  # fmt: skip
                for table, rows in more.items():
                    loaded[table] = loaded.get(table, 0) + rows
                results.append(
                    measure(engine, ispbs, sim, clock, client, args.repeat, f"{args.months} months")
                )
        except _Done:
            pass
        finally:
            server.stop(None)
        with engine.connect() as connection:
            size = connection.exec_driver_sql(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            ).scalar()
            month_rows = connection.exec_driver_sql(
                "SELECT count(*) FROM dict_ratelimit.policy_snapshot WHERE response_time < %(t)s",
                {"t": dt.datetime.combine(add_months(oldest.date(), 1), dt.time(), tzinfo=UTC)},
            ).scalar()
        today = now.date()
        drop = None
        if args.months > 1:
            policy = RetentionPolicy(retention_months=args.months - 1)
            drop = apply_retention(engine, policy, today)
        if args.plans is not None:
            args.plans.mkdir(parents=True, exist_ok=True)
            last = results[-1]
            slowest = sorted(
                (name for name in last["plans"]), key=lambda n: -last["queries"].get(n, 0)
            )[:4]
            for name in slowest:
                sql, params = last["plans"][name]
                slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
                (args.plans / f"{args.participants}p-{slug}.txt").write_text(
                    f"-- {name}, {args.months} months, {args.participants} participants\n"
                    + _plan(engine, sql, params)
                    + "\n"
                )

    print(
        f"\nhistory: {loaded['policy_snapshot']:,} snapshots ({loaded['policy_metric']:,} "
        f"metric, {loaded['threshold_evaluation']:,} evaluation rows), database {size}\n"
    )
    labels = [r["label"] for r in results]
    base, last = results[0], results[-1]
    print(
        f"| query ({args.participants} participants) | "
        + " | ".join(labels)
        + f" | {labels[-1]} / {labels[1]} | {labels[-1]} / {labels[0]} |"
    )
    print("|---|" + "---:|" * (len(results) + 2))
    for name, value in base["queries"].items():
        cells = " | ".join(f"{r['queries'][name] * 1000:.1f} ms" for r in results)
        later, loaded_first = last["queries"][name], results[1]["queries"][name]
        print(f"| {name} | {cells} | {later / loaded_first:.2f} | {later / value:.2f} |")
    for key, title in (
        ("tick_total_median", "whole tick, median"),
        ("tick_total_max", "whole tick, max"),
    ):
        cells = " | ".join(f"{r[key]:.3f} s" for r in results)
        print(
            f"| **{title}** | {cells} | {last[key] / results[1][key]:.2f} | "
            f"{last[key] / base[key]:.2f} |"
        )
    if drop is not None:
        locks = drop.parent_lock_seconds
        print(
            f"\nretention dropped {len(drop.dropped)} partitions of the oldest month "
            f"({month_rows:,} snapshots in it): parents locked max "
            f"{max(locks.values(), default=0) * 1000:.1f} ms (DETACH CONCURRENTLY), "
            f"drops {sum(drop.drop_seconds.values()) * 1000:.0f} ms in all"
        )


if __name__ == "__main__":
    main()
