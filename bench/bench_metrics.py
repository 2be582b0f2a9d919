"""Benchmark the metric assets: a 30-day backfill and the incremental share of one tick.

    .venv/bin/python bench/bench_metrics.py [--days 30] [--policies 30] [--participants 100]

1. Fills an embedded PostgreSQL with ``days`` x 288 readings x ``policies`` (one participant,
   a random walk of the balance with DICT-like shapes), then backfills ``metrics_job`` over
   the whole range in one run and reports the asset metadata's load / compute / write times.
2. Adds one tick of ``participants`` x 28 readings and runs the incremental
   (``dict_ratelimit/mode=incremental``) materialization of both assets for that day.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import sqlalchemy as sa
from _database import bench_database  # bench/ is on sys.path when run as a script

from dict_ratelimit.definitions import build_definitions
from dict_ratelimit.defs.metrics import INCREMENTAL, MODE_TAG
from dict_ratelimit.defs.resources import BridgeResource, PostgresResource, ThresholdsResource
from dict_ratelimit.domain.retention import RetentionPolicy
from dict_ratelimit.storage.partitions import ensure_partitions

FILL = """
INSERT INTO dict_ratelimit.participant (ispb, category)
SELECT lpad((10000000 + i)::text, 8, '0'), 'A' FROM generate_series(0, :participants - 1) i
ON CONFLICT DO NOTHING;
INSERT INTO dict_ratelimit.policy (ispb, policy, capacity, refill_tokens, refill_period_sec)
SELECT '10000000', 'POLICY_' || j, 36000, 1200, 60 FROM generate_series(1, :policies) j;
INSERT INTO dict_ratelimit.policy_snapshot (ispb, policy, response_time, polled_at, category,
    available_tokens, capacity, refill_tokens, refill_period_sec)
SELECT '10000000', 'POLICY_' || j, t, t, 'A',
       (18000 + 17000 * sin(extract(epoch FROM t) / 3600.0 + j) * random())::bigint,
       36000, 1200, 60
FROM generate_series(1, :policies) j,
     generate_series(:start, :end - interval '5 minutes', interval '5 minutes') t;
ANALYZE dict_ratelimit.policy_snapshot;
"""

NEW_POLICIES = """
INSERT INTO dict_ratelimit.policy (ispb, policy, capacity, refill_tokens, refill_period_sec)
SELECT p.ispb, 'P_' || j, 36000, 1200, 60
FROM dict_ratelimit.participant p, generate_series(1, 28) j ON CONFLICT DO NOTHING
"""
TICK = """
INSERT INTO dict_ratelimit.policy_snapshot (ispb, policy, response_time, polled_at, category,
    available_tokens, capacity, refill_tokens, refill_period_sec)
SELECT p.ispb, 'P_' || j, :t, :t, 'A', (30000 * random())::bigint, 36000, 1200, 60
FROM dict_ratelimit.participant p, generate_series(1, 28) j
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--policies", type=int, default=30)
    parser.add_argument("--participants", type=int, default=100)
    args = parser.parse_args()
    end = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    start = end - dt.timedelta(days=args.days)
    with bench_database() as (url, engine):
        for month in (start.date(), end.date()):
            ensure_partitions(engine, RetentionPolicy(months_ahead=1), month)
        params = {
            "start": start,
            "end": end,
            "policies": args.policies,
            "participants": args.participants,
        }
        with engine.begin() as connection:
            for statement in FILL.split(";"):
                if statement.strip():
                    connection.execute(sa.text(statement), params)
            count = connection.execute(
                sa.text("SELECT count(*) FROM dict_ratelimit.policy_snapshot")
            ).scalar()
        print(f"{count:,} snapshots over {args.days} days x {args.policies} policies")
        resources = {
            "postgres": PostgresResource(database_url=url.render_as_string(False)),
            "bridge": BridgeResource(target="unused:1", participants="10000000"),
            "thresholds": ThresholdsResource(),
        }
        job = build_definitions(resources).resolve_job_def("metrics_job")
        last_day = (end - dt.timedelta(days=1)).strftime("%Y-%m-%d")
        started = time.perf_counter()
        result = job.execute_in_process(
            tags={
                "dagster/asset_partition_range_start": start.strftime("%Y-%m-%d"),
                "dagster/asset_partition_range_end": last_day,
            }
        )
        wall = time.perf_counter() - started
        [metrics, *_] = result.asset_materializations_for_node("policy_metrics")
        [levels, *_] = result.asset_materializations_for_node("threshold_evaluations")
        m = {k: v.value for k, v in metrics.metadata.items()}
        print(
            f"backfill: run wall {wall:.1f}s; policy_metrics load {m['load_seconds']}s, "
            f"compute {m['compute_seconds']}s, write {m['write_seconds']}s "
            f"({m['rows_written']:,} rows); threshold_evaluations "
            f"{levels.metadata['seconds'].value}s"
        )

        # one tick of `participants` x 28 new readings, processed incrementally
        with engine.begin() as connection:
            connection.execute(sa.text(NEW_POLICIES))
        incremental = build_definitions(resources).resolve_job_def("metrics_job")
        timings = []
        for minutes_before_end in (6, 1):  # catch up a previous reading, then time a tick
            with engine.begin() as connection:
                connection.execute(
                    sa.text(TICK), {"t": end - dt.timedelta(minutes=minutes_before_end)}
                )
            started = time.perf_counter()
            run = incremental.execute_in_process(
                partition_key=last_day, tags={MODE_TAG: INCREMENTAL}
            )
            timings.append(time.perf_counter() - started)
        rows = run.asset_materializations_for_node("policy_metrics")[0].metadata
        tick_levels = run.asset_materializations_for_node("threshold_evaluations")[0].metadata
        body = sum(rows[k].value for k in ("load_seconds", "compute_seconds", "write_seconds"))
        print(
            f"incremental asset bodies: policy_metrics {body:.3f}s (load "
            f"{rows['load_seconds'].value}s, compute {rows['compute_seconds'].value}s, write "
            f"{rows['write_seconds'].value}s), threshold_evaluations "
            f"{tick_levels['seconds'].value:.3f}s (load {tick_levels['load_seconds'].value}s, "
            f"compute {tick_levels['compute_seconds'].value}s, write "
            f"{tick_levels['write_seconds'].value}s)"
        )
        print(
            f"incremental tick ({args.participants} participants x 28 policies): run wall "
            f"{timings[-1]:.2f}s, metrics {rows['rows_written'].value} rows"
        )


if __name__ == "__main__":
    main()
