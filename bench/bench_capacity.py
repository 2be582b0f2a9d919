"""Backfill the capacity-planning assets over months of history: wall time, rows, peak RSS.

    .venv/bin/python bench/bench_capacity.py [--participants 10] [--policies 10] [--months 13]
        [--end 2026-12-04T00:00:00Z] [--hours-after 4] [--repeat 3]
        [--recent-days N --older-step 3600] [--plan /tmp/daily-plan.txt]

Starts its own embedded PostgreSQL (fsync on, default settings) and loads ``--months`` of
synthetic history ending at ``--end`` (default: today's UTC midnight, read once from the
system clock) for N participants × Q listed policies by COPY (``bench/_history.py``:
snapshots, metric rows, evaluations, request counts, sweeps, resolved alerts). Five-minute
readings throughout, unless ``--recent-days`` is given: then only the newest N days are
five-minute readings and the older ones ``--older-step`` seconds apart (a disk-sized big run).

Then, ``--repeat`` times, through Dagster (``dagster.materialize`` on an ephemeral instance,
resources ``postgres`` = the bench database and ``clock`` frozen ``--hours-after`` hours after
the history's end, partitions evaluated at that instant):

1. ``policy_daily_usage`` over every local day (America/Sao_Paulo) of the history as ONE run
   (a partition range; the asset's single-run backfill policy) — checked: one run, one step,
   every day of the range recorded as materialized;
2. ``policy_weekly_profile``;
3. ``capacity_outlook``.

Reports per asset the run's wall time (each run and the median), the asset body's own
``seconds`` metadata, the rows in its table, and the process's peak RSS during that run
(VmHWM, reset to the current RSS before each run through ``/proc/self/clear_refs``; the RSS
at the start, memory the load left behind, is shown with it); exits 1 when a run fails
or a check does not hold. ``--plan PATH`` writes ``EXPLAIN (ANALYZE, BUFFERS)`` of the daily
SQL for the newest full local month (in a rolled-back transaction). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
from _database import bench_server  # bench/ is on sys.path when run as a script
from _history import load_history
from sqlalchemy.engine import Engine

from dict_ratelimit.clock import Clock, SystemClock, parse_instant
from dict_ratelimit.defs.capacity import (
    CAPACITY_DAYS,
    REPORT_ZONE,
    capacity_outlook,
    policy_daily_usage,
    policy_weekly_profile,
)
from dict_ratelimit.defs.resources import ClockResource, PostgresResource
from dict_ratelimit.domain.catalog import LISTED_POLICY_NAMES
from dict_ratelimit.storage import capacity as capacity_storage

UTC = dt.timezone.utc
ASSETS = {
    "policy_daily_usage": (policy_daily_usage, "dict_ratelimit.policy_daily_usage"),
    "policy_weekly_profile": (policy_weekly_profile, "dict_ratelimit.policy_weekly_profile"),
    "capacity_outlook": (capacity_outlook, "dict_ratelimit.capacity_outlook"),
}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_CHUNK_LOG = re.compile(r"^daily usage (\S+) → (\S+): (\d+) rows \(([\d.]+) s so far\)")


class CheckFailed(Exception):
    """A run failed or did not do what the bench expects of it."""


def months_before(at: dt.datetime, months: int) -> dt.datetime:
    """The same day and time ``months`` calendar months earlier (the day clamped to the
    month's length)."""
    index = at.year * 12 + (at.month - 1) - months
    year, month = index // 12, index % 12 + 1
    return at.replace(year=year, month=month, day=min(at.day, calendar.monthrange(year, month)[1]))


def default_end(clock: Clock) -> dt.datetime:
    """Today's UTC midnight by ``clock``."""
    return dt.datetime.combine(clock.now().astimezone(UTC).date(), dt.time(), tzinfo=UTC)


def day_range(start: dt.datetime, end: dt.datetime, now: dt.datetime) -> tuple[str, str]:
    """First and last partition key covering ``[start, end)`` in the report zone, clipped to
    the partitions that exist at ``now``."""
    first = start.astimezone(REPORT_ZONE).date()
    last = (end - dt.timedelta(microseconds=1)).astimezone(REPORT_ZONE).date()
    with dg.partition_loading_context(effective_dt=now):
        keys = CAPACITY_DAYS.get_partition_keys(current_time=now)
    if not keys:
        raise CheckFailed(f"no daily partition exists at {now.isoformat()}")
    first_key = max(first.isoformat(), keys[0])
    last_key = min(last.isoformat(), keys[-1])
    if (first_key, last_key) != (first.isoformat(), last.isoformat()):
        print(
            f"note: the history's days {first} → {last} clipped to the partitions "
            f"{first_key} → {last_key}",
            file=sys.stderr,
        )
    return first_key, last_key


# -- peak RSS --------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux ≥ 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """The high-water mark since the last reset (VmHWM), in MiB."""
    return _status_kib("VmHWM") / 1024


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def lifetime_peak_rss_mib() -> float:
    """ru_maxrss: the process's peak so far (only until the first reset: clear_refs lowers
    it too)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- one materialization ---------------------------------------------------------------------


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def materialize_asset(
    name: str,
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    now: dt.datetime,
    engine: Engine,
    day_keys: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """One ``dagster.materialize`` of ``name`` (over the range ``day_keys`` when given);
    returns wall time, body seconds, rows, peak RSS and the daily step's chunk times."""
    asset, table = ASSETS[name]
    tags = {}
    if day_keys is not None:
        tags = {
            "dagster/asset_partition_range_start": day_keys[0],
            "dagster/asset_partition_range_end": day_keys[1],
        }
    runs_before = instance.get_runs_count()
    exact_peak = reset_peak_rss()
    rss_start = rss_mib()
    started = time.perf_counter()
    with dg.partition_loading_context(effective_dt=now):
        result = dg.materialize(
            [asset],
            instance=instance,
            resources=resources,
            tags=tags,
            run_config=QUIET,
            raise_on_error=False,
        )
    wall = time.perf_counter() - started
    peak = peak_rss_mib() if exact_peak else lifetime_peak_rss_mib()
    if not result.success:
        failures = [
            event.step_failure_data.error.to_string()  # type: ignore[union-attr]
            for event in result.all_events
            if event.is_step_failure and event.step_failure_data.error is not None
        ]
        raise CheckFailed(f"{name}: the run failed\n" + "\n".join(failures))
    runs = instance.get_runs_count() - runs_before
    steps = sum(1 for event in result.all_events if event.event_type_value == "STEP_START")
    if runs != 1 or steps != 1:
        raise CheckFailed(f"{name}: {runs} runs and {steps} step executions, expected 1 and 1")
    materializations = [
        event.step_materialization_data.materialization
        for event in result.get_asset_materialization_events()
    ]
    if not materializations:
        raise CheckFailed(f"{name}: no materialization")
    metadata = {key: value.value for key, value in materializations[0].metadata.items()}
    chunks: list[float] = []
    if day_keys is not None:
        partitions = instance.get_materialized_partitions(dg.AssetKey(name))
        with dg.partition_loading_context(effective_dt=now):
            wanted = CAPACITY_DAYS.get_partition_keys_in_range(dg.PartitionKeyRange(*day_keys))
        missing = set(wanted) - set(partitions)
        if missing:
            raise CheckFailed(f"{name}: {len(missing)} days of the range not recorded")
        so_far = 0.0
        for entry in instance.all_logs(result.run_id):
            found = _CHUNK_LOG.match(entry.user_message or "")
            if found:
                chunks.append(float(found[4]) - so_far)
                so_far = float(found[4])
    return {
        "wall": wall,
        "body": float(metadata.get("seconds", float("nan"))),
        "rows_written": metadata.get("rows_written"),
        "materializations": len(materializations),
        "table_rows": _count(engine, table),
        "peak_rss_mib": peak,
        "rss_start_mib": rss_start,
        "peak_exact": exact_peak,
        "chunks": chunks,
    }


def explain_daily(engine: Engine, end: dt.datetime, computed_at: dt.datetime) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the daily SQL for the newest full local month before
    ``end``, in a transaction that is rolled back."""
    local_end = end.astimezone(REPORT_ZONE).date()
    month_end = local_end.replace(day=1)
    month_begin = (month_end - dt.timedelta(days=1)).replace(day=1)
    start = dt.datetime.combine(month_begin, dt.time(), tzinfo=REPORT_ZONE)
    stop = dt.datetime.combine(month_end, dt.time(), tzinfo=REPORT_ZONE)
    params = {
        "start": start,
        "end": stop,
        "tz": REPORT_ZONE.key,
        "computed_at": computed_at,
        **capacity_storage._cost_params(),
    }
    with engine.connect() as connection:
        transaction = connection.begin()
        cursor = connection.connection.cursor()
        try:
            query = cursor.mogrify(capacity_storage._DAILY_SQL, params).decode()
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}")
            lines = [row[0] for row in cursor.fetchall()]
        finally:
            cursor.close()
            transaction.rollback()
    return f"-- daily usage SQL, local days {month_begin} → {month_end} (exclusive)\n" + "\n".join(
        lines
    )


# -- main ------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--policies", type=int, default=10, help="listed policies each")
    parser.add_argument("--months", type=int, default=13)
    parser.add_argument(
        "--end", type=parse_instant, default=None, help="the history's end (ISO instant)"
    )
    parser.add_argument("--hours-after", type=float, default=4.0, help="clock = end + this")
    parser.add_argument("--step", type=int, default=300, help="seconds between readings")
    parser.add_argument("--recent-days", type=int, default=None)
    parser.add_argument("--older-step", type=int, default=3600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plan", type=Path, default=None)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, clock: Clock) -> int:
    end = args.end or default_end(clock)
    start = months_before(end, args.months)
    now = end + dt.timedelta(hours=args.hours_after)
    ispbs = [f"{30_000_000 + i:08d}" for i in range(args.participants)]
    policies = list(LISTED_POLICY_NAMES)[: args.policies]
    day_keys = day_range(start, end, now)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in ASSETS}
    with bench_server() as database:
        url, engine = database("bench")
        print(
            f"loading {start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC for {len(ispbs)} "
            f"participants × {len(policies)} policies",
            file=sys.stderr,
        )
        load_started = time.perf_counter()
        if args.recent_days is None:
            loaded = load_history(engine, ispbs, start, end, policies=policies, step=args.step)
        else:
            split = max(start, end - dt.timedelta(days=args.recent_days))
            loaded = load_history(engine, ispbs, split, end, policies=policies, step=args.step)
            if split > start:
                older = load_history(engine, ispbs, start, split, policies=policies,
                                     step=args.older_step, seed=11)  # fmt: skip
                for table, rows in older.items():
                    loaded[table] = loaded.get(table, 0) + rows
        load_seconds = time.perf_counter() - load_started
        load_peak = lifetime_peak_rss_mib()
        with engine.connect() as connection:
            size = connection.exec_driver_sql(
                "SELECT pg_size_pretty(pg_database_size(current_database()))"
            ).scalar()
        print(f"loaded in {load_seconds:.0f} s, database {size}", file=sys.stderr)

        resources = {
            "postgres": PostgresResource(database_url=url.render_as_string(hide_password=False)),
            "clock": ClockResource(frozen_at=now.isoformat()),
        }
        instance = dg.DagsterInstance.ephemeral()
        try:
            for index in range(args.repeat):
                for name in ASSETS:
                    keys = day_keys if name == "policy_daily_usage" else None
                    print(f"run {index + 1}/{args.repeat}: {name}", file=sys.stderr, flush=True)
                    results[name].append(materialize_asset(name, instance, resources, now,
                                                           engine, keys))  # fmt: skip
                    print(f"  {results[name][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
            plan = explain_daily(engine, end, now) if args.plan is not None else None
        except CheckFailed as failure:
            print(f"FAILED: {failure}", file=sys.stderr)
            return 1
        finally:
            instance.dispose()
        pairs = len(ispbs) * len(policies)
        days = (dt.date.fromisoformat(day_keys[1]) - dt.date.fromisoformat(day_keys[0])).days + 1
        expected = {
            "policy_daily_usage": pairs * days,
            "policy_weekly_profile": pairs * 2 * 168,
            "capacity_outlook": pairs,
        }
    if plan is not None:
        args.plan.parent.mkdir(parents=True, exist_ok=True)
        args.plan.write_text(plan + "\n")

    print(
        f"\nhistory: {start:%Y-%m-%d} → {end:%Y-%m-%d} UTC ({args.months} months), "
        f"{args.participants} participants × {args.policies} policies, "
        f"{loaded['policy_metric']:,} metric rows ({loaded['policy_snapshot']:,} snapshots, "
        f"{loaded['threshold_evaluation']:,} evaluations, "
        f"{loaded['policy_request_stats']:,} request counts), database {size}; loaded in "
        f"{load_seconds:.0f} s (peak RSS {load_peak:.0f} MiB)\n"
        f"clock frozen at {now.isoformat()}; daily range {day_keys[0]} → {day_keys[1]} "
        f"({days} local days, {REPORT_ZONE.key})\n"
    )
    header = " | ".join(f"run {i + 1}" for i in range(args.repeat))
    print(f"| asset | {header} | median wall | asset body (median) | rows in table "
          f"(expected) | peak RSS (at start) |")  # fmt: skip
    print("|---|" + "---:|" * (args.repeat + 4))
    status = 0
    for name, runs in results.items():
        walls = [r["wall"] for r in runs]
        cells = " | ".join(f"{w:.1f} s" for w in walls)
        rows = runs[-1]["table_rows"]
        mark = "" if rows == expected[name] else " **≠**"
        if rows != expected[name]:
            status = 1
        exact = "" if runs[-1]["peak_exact"] else " (process lifetime)"
        print(
            f"| {name} | {cells} | **{statistics.median(walls):.1f} s** | "
            f"{statistics.median(r['body'] for r in runs):.1f} s | {rows:,} "
            f"({expected[name]:,}){mark} | {max(r['peak_rss_mib'] for r in runs):.0f} MiB "
            f"({min(r['rss_start_mib'] for r in runs):.0f} MiB){exact} |"
        )
    daily = results["policy_daily_usage"]
    chunks = [c for r in daily for c in r["chunks"]]
    if chunks:
        print(
            f"\ndaily usage: {len(daily[-1]['chunks'])} chunks (SQL passes) per run, "
            f"{statistics.median(chunks):.1f} s median each (min {min(chunks):.1f} s, "
            f"max {max(chunks):.1f} s); {daily[-1]['materializations']} materialization events "
            f"per run"
        )
    overall = max([load_peak] + [r["peak_rss_mib"] for runs in results.values() for r in runs])
    print(f"\npeak RSS of the process over the whole bench (the load included): {overall:.0f} MiB")
    if status:
        print("FAILED: a table does not hold the expected rows", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(_parse_args(argv), SystemClock()))


if __name__ == "__main__":
    main()
